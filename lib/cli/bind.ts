// `vfio bind` / `vfio unbind`: hand a device to vfio-pci and give it back,
// the way the kernel documents it (Documentation/driver-api/vfio.rst):
// driver_override names the one driver that may take the device, the current
// driver lets go through its `unbind` file, and `drivers_probe` asks the PCI
// core to bind again. The driver and driver_override the device had before
// are remembered (./bind-state.ts) and restored by unbind.
//
// Guarantees:
// - A group is never left half-bound by surprise: bind refuses while another
//   device of the IOMMU group is on a host driver that does DMA, unless
//   --group asks to bind those too (the group is not viable otherwise, and
//   VFIO would refuse it later, less clearly).
// - What the device had is saved before anything is changed.
// - Every step is checked: a bind that did not take is an error naming the
//   driver the device ended up with.
import { existsSync, readFileSync, readlinkSync } from 'node:fs';
import { basename, join } from 'node:path';
import { CliFailure, flag, pciAddress } from './args.js';
import { isDriverName, loadBindState, saveBindState, type BindState } from './bind-state.js';
import type { Command } from './command.js';
import { EXIT } from './command.js';
import { groupMembers, isVfioDriver } from './devices.js';
import type { CliEnv } from './env.js';
import { pciDeviceDir } from '../host/paths.js';
import { describePciDevice, groupBlockers } from '../host/sysfs.js';

const VFIO_PCI = 'vfio-pci';

function currentDriver(env: CliEnv, address: string): string | null {
  try {
    return basename(readlinkSync(join(pciDeviceDir(env.roots, address), 'driver')));
  } catch {
    return null;
  }
}

/** driver_override, or null when unset (the kernel shows "(null)"; old kernels lack the file). */
function currentOverride(env: CliEnv, address: string): string | null {
  try {
    const text = readFileSync(join(pciDeviceDir(env.roots, address), 'driver_override'), 'utf8').trim();
    return text === '' || text === '(null)' ? null : text;
  } catch {
    return null;
  }
}

/** Writes a sysfs control file; failures name the file and what to do. */
export function write(env: CliEnv, path: string, value: string): void {
  try {
    env.writeSysfs(path, value);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code ?? String(err);
    const hint =
      code === 'EACCES' || code === 'EPERM'
        ? ' (changing drivers needs root: run with sudo)'
        : code === 'ENOENT'
          ? ' (the kernel lacks this file)'
          : ' (the kernel log, `dmesg`, says why)';
    throw new CliFailure(`writing ${JSON.stringify(value.trim())} to ${path} failed: ${code}${hint}`);
  }
}

function describe(driver: string | null): string {
  return driver === null ? 'no driver' : driver;
}

/** Binds one device to vfio-pci, remembering what it had. */
export function bindOne(env: CliEnv, state: BindState, address: string): string {
  const dir = pciDeviceDir(env.roots, address);
  const before = currentDriver(env, address);
  if (isVfioDriver(before)) return `${address}: already bound to ${before}`;
  state[address] ??= { driver: before, driverOverride: currentOverride(env, address) };
  saveBindState(env.stateDir, state);
  write(env, join(dir, 'driver_override'), `${VFIO_PCI}\n`);
  if (before !== null) write(env, join(dir, 'driver', 'unbind'), address);
  write(env, join(env.roots.sysfs, 'bus', 'pci', 'drivers_probe'), address);
  const after = currentDriver(env, address);
  if (!isVfioDriver(after)) {
    throw new CliFailure(
      `${address}: vfio-pci did not take the device ` +
        `(${after === null ? 'it has no driver now' : `it is on ${after} now`}; \`dmesg\` says why)`,
    );
  }
  return `${address}: bound to ${after} (was ${describe(before)})`;
}

/** Gives one device back: restores driver_override and the remembered driver. */
function unbindOne(env: CliEnv, state: BindState, address: string): string {
  const dir = pciDeviceDir(env.roots, address);
  const before = currentDriver(env, address);
  if (!isVfioDriver(before)) return `${address}: not bound to a VFIO driver (${describe(before)}); nothing to do`;
  const remembered = state[address];
  // "\n" clears driver_override (the kernel treats an empty write as unset).
  write(env, join(dir, 'driver_override'), `${remembered?.driverOverride ?? ''}\n`);
  write(env, join(dir, 'driver', 'unbind'), address);
  if (remembered === undefined) {
    // Nothing remembered (bound by hand or at boot): let the kernel choose.
    write(env, join(env.roots.sysfs, 'bus', 'pci', 'drivers_probe'), address);
  } else if (remembered.driver !== null) {
    const drv = remembered.driver;
    const bindFile = join(env.roots.sysfs, 'bus', 'pci', 'drivers', drv, 'bind');
    if (!isDriverName(drv) || !existsSync(bindFile)) {
      throw new CliFailure(
        `${address}: unbound from ${before}, but its previous driver ${drv} is not loaded ` +
          `(modprobe ${drv}, then \`echo ${address} > ${bindFile}\`)`,
      );
    }
    write(env, bindFile, address);
  }
  delete state[address];
  saveBindState(env.stateDir, state);
  const after = currentDriver(env, address);
  if (remembered !== undefined && remembered.driver !== null && after !== remembered.driver) {
    throw new CliFailure(
      `${address}: unbound from ${before}, but ${remembered.driver} did not take it back ` +
        `(driver now ${describe(after)}; \`dmesg\` says why)`,
    );
  }
  const now = after === null ? 'has no driver' : `bound to ${after}`;
  const chosen = remembered === undefined ? ' (no previous driver remembered: the kernel chose)' : '';
  return `${address}: unbound from ${before}, now ${now}${chosen}`;
}

export const bind: Command = {
  name: 'bind',
  summary: 'bind a device to vfio-pci, remembering its driver',
  usage: 'bind <address> [--group]',
  help: `Binds a device to vfio-pci: sets its driver_override to vfio-pci, unbinds
its current driver, and asks the PCI core to probe it (drivers_probe). Its
previous driver and driver_override are remembered in
$VFIO_STATE_DIR/bind-state.json (default /run/vfio) for \`vfio unbind\`.

Every device of an IOMMU group must leave its DMA to VFIO before the group can
be used. If another device of the group is bound to a host driver (pcieport
and pci-stub are fine), bind refuses and names it, unless --group is given.

Options:
  --group       also bind the group's other devices that are on host drivers

Needs root. Exits 0 when the device is on vfio-pci afterwards (also when it
already was).

Example:
  sudo vfio bind 0000:01:00.0`,
  options: { group: { type: 'boolean' } },
  positionals: { min: 1, max: 1, names: '<address>' },
  run(args, env) {
    const address = pciAddress(args.positionals[0] as string);
    const desc = describePciDevice(env.roots, address);
    if (isVfioDriver(desc.driver) && !flag(args, 'group')) {
      env.out(`${address}: already bound to ${desc.driver}\n`);
      return EXIT.ok;
    }
    if (!existsSync(join(env.roots.sysfs, 'bus', 'pci', 'drivers', VFIO_PCI))) {
      throw new CliFailure('the vfio-pci driver is not loaded: run `sudo modprobe vfio-pci`');
    }
    const blockers = desc.iommuGroup === null ? [] : groupBlockers(env.roots, desc);
    if (blockers.length > 0 && !flag(args, 'group')) {
      const who = blockers.map((b) => `${b.address} (${b.driver})`).join(', ');
      throw new CliFailure(
        `IOMMU group ${desc.iommuGroup} of ${address} also holds ${who} on host drivers: bind them too with --group, or unbind them first`,
      );
    }
    const state = loadBindState(env.stateDir);
    const targets = [address, ...blockers.map((b) => b.address)];
    for (const target of targets) env.out(bindOne(env, state, target) + '\n');
    return EXIT.ok;
  },
};

export const unbind: Command = {
  name: 'unbind',
  summary: 'give a device back to the driver it had before `vfio bind`',
  usage: 'unbind <address> [--group]',
  help: `Unbinds a device from vfio-pci and restores what \`vfio bind\` remembered:
its driver_override and its previous driver (bound again through that
driver's bind file; a device that had none stays without one). A device that
vfio bind did not bind (bound at boot, or by hand) gets its driver_override
cleared and is probed: the kernel picks its driver.

The kernel waits for a device in use to be released before unbinding it: stop
the program using it first.

Options:
  --group       unbind every device of the IOMMU group that is on vfio-pci

Needs root. Exits 0 when the device is off vfio-pci afterwards (also when it
already was).

Example:
  sudo vfio unbind 0000:01:00.0`,
  options: { group: { type: 'boolean' } },
  positionals: { min: 1, max: 1, names: '<address>' },
  run(args, env) {
    const address = pciAddress(args.positionals[0] as string);
    const desc = describePciDevice(env.roots, address);
    const targets = flag(args, 'group')
      ? groupMembers(env.roots, desc)
          .filter((m) => m.address === address || isVfioDriver(m.driver))
          .map((m) => m.address)
      : [address];
    const state = loadBindState(env.stateDir);
    for (const target of targets) env.out(unbindOne(env, state, target) + '\n');
    return EXIT.ok;
  },
};
