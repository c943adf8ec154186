// `vfio sriov`: a physical function's virtual functions: list them, create or
// remove them (sriov_numvfs), and hand them to vfio-pci.
//
// Kernel rules this follows (Documentation/PCI/pci-iov-howto.rst, and
// vfio_pci_core_sriov_configure for a PF on vfio-pci):
// - Writing N to sriov_numvfs creates N VFs, writing 0 removes them; a
//   non-zero write while VFs exist is EBUSY, so a change of count goes
//   through 0.
// - vfio-pci creates VFs only when loaded with enable_sriov=1 (ENOENT
//   otherwise), and sets each new VF's driver_override to vfio-pci, so that
//   its VFs land on vfio-pci and never on a host driver the PF's user did not
//   choose. Those VFs open only with the PF's VF token (Device.setVfToken).
// - Removing VFs that a program holds open waits until it releases them.
import { CliFailure, flag, nonNegativeInt, pciAddress, stringOption } from './args.js';
import { loadBindState } from './bind-state.js';
import { bindOne, write } from './bind.js';
import type { Command } from './command.js';
import { EXIT } from './command.js';
import { isVfioDriver } from './devices.js';
import type { CliEnv } from './env.js';
import { json, table } from './format.js';
import { physfnOf, sriovNumvfsFile, sriovOf, type SriovFunction } from '../host/sriov.js';
import { describePciDevice } from '../host/sysfs.js';

interface VfReport {
  readonly address: string;
  readonly driver: string | null;
  readonly iommuGroup: number | null;
}

function report(env: CliEnv, pf: string, s: SriovFunction): { pf: string; totalVfs: number; numVfs: number; vfs: VfReport[] } {
  const vfs = s.vfs.map((address) => {
    const d = describePciDevice(env.roots, address);
    return { address, driver: d.driver, iommuGroup: d.iommuGroup };
  });
  return { pf, totalVfs: s.totalVfs, numVfs: s.numVfs, vfs };
}

function requireSriov(env: CliEnv, pf: string): SriovFunction {
  describePciDevice(env.roots, pf);
  const s = sriovOf(env.roots, pf);
  if (s !== null) return s;
  const parent = physfnOf(env.roots, pf);
  throw new CliFailure(
    parent !== null ? `${pf} is a VF of ${parent}: give the PF` : `${pf} is not an SR-IOV physical function (it has no sriov_totalvfs)`,
  );
}

export const sriov: Command = {
  name: 'sriov',
  summary: "list, create or remove a PF's SR-IOV virtual functions",
  usage: 'sriov <pf> [--numvfs N] [--bind] [--json]',
  help: `Shows an SR-IOV physical function: how many VFs it can have
(sriov_totalvfs), how many it has (sriov_numvfs), and each VF's address,
driver and IOMMU group.

Options:
  --numvfs N    create N VFs (0 removes them); a different non-zero count
                removes the old ones first, as the kernel asks
  --bind        bind every VF that is not on vfio-pci to it (as \`vfio bind\`)
  --json        { pf, totalVfs, numVfs, vfs: [{ address, driver, iommuGroup }] }

A PF bound to vfio-pci creates VFs only when vfio-pci was loaded with
enable_sriov=1; its VFs go to vfio-pci, and a program opens them only with
the PF's VF token (the PF's user sets it). Needs root to change anything.

Examples:
  sudo vfio sriov 0000:01:00.0 --numvfs 2 --bind
  vfio sriov 01:00.0 --json`,
  options: { numvfs: { type: 'string' }, bind: { type: 'boolean' }, json: { type: 'boolean' } },
  positionals: { min: 1, max: 1, names: '<pf>' },
  run(args, env) {
    const pf = pciAddress(args.positionals[0] as string);
    let s = requireSriov(env, pf);
    const wanted = stringOption(args, 'numvfs');
    const lines: string[] = [];
    if (wanted !== undefined) {
      const n = nonNegativeInt(wanted, '--numvfs');
      if (n > s.totalVfs) throw new CliFailure(`${pf} can have at most ${s.totalVfs} VFs (sriov_totalvfs), not ${n}`);
      if (n !== s.numVfs) {
        const file = sriovNumvfsFile(env.roots, pf);
        const pfDriver = describePciDevice(env.roots, pf).driver;
        try {
          if (s.numVfs !== 0 && n !== 0) write(env, file, '0');
          write(env, file, String(n));
        } catch (err) {
          if (err instanceof CliFailure && /ENOENT/.test(err.message) && isVfioDriver(pfDriver)) {
            throw new CliFailure(
              `${err.message}; vfio-pci creates VFs only with enable_sriov=1: ` +
                'echo 1 | sudo tee /sys/module/vfio_pci/parameters/enable_sriov (or load it with vfio-pci.enable_sriov=1)',
            );
          }
          throw err;
        }
        const before = s.numVfs;
        s = requireSriov(env, pf);
        if (s.numVfs !== n) throw new CliFailure(`${pf}: asked for ${n} VFs, sriov_numvfs says ${s.numVfs}`);
        lines.push(n === 0 ? `${pf}: removed its ${before} VF(s)` : `${pf}: created ${n} VF(s)${before === 0 ? '' : ` (had ${before})`}`);
      }
    }
    if (flag(args, 'bind')) {
      const state = loadBindState(env.stateDir);
      for (const vf of s.vfs) {
        if (!isVfioDriver(describePciDevice(env.roots, vf).driver)) lines.push(bindOne(env, state, vf));
      }
    }
    const r = report(env, pf, s);
    if (flag(args, 'json')) {
      env.out(json(r));
      return EXIT.ok;
    }
    let text = lines.map((l) => `${l}\n`).join('');
    text += `${pf}: ${r.numVfs} of ${r.totalVfs} VFs\n`;
    if (r.vfs.length > 0) {
      text += table(
        ['VF', 'DRIVER', 'GROUP'],
        r.vfs.map((v) => [v.address, v.driver ?? '-', v.iommuGroup === null ? '-' : String(v.iommuGroup)]),
      );
    }
    env.out(text);
    return EXIT.ok;
  },
};
