// The `vfio` command on a real kernel, in the booted mode: ls (table and
// JSON) and info against what the VM is known to hold — edu on vfio-pci, a
// second edu behind a bridge whose IOMMU group also holds a virtio-rng on
// its host driver — plus bar, doctor, bind/unbind through the kernel's real
// driver_override and drivers_probe, and the executable as a process.
//
// Most runs call main() in this process (a fresh context each, output
// captured): node under TCG costs seconds per process. The executable itself
// runs twice.
import t from 'tap';
import { spawnSync } from 'node:child_process';
import { readFileSync, readlinkSync, writeFileSync } from 'node:fs';
import { basename } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createVfio } from '../../../lib/index.js';
import { koffiSys } from '../../../lib/libc/koffi-sys.js';
import { realEnv } from '../../../lib/cli/env.js';
import { main } from '../../../lib/cli/main.js';
// Type-only: makes the guest compile (tsconfig.guest.json) emit the
// executable's entry, which the last subtest runs as a process.
import type {} from '../../../lib/cli/vfio.js';
import { guestEnv } from './guest-env.js';

const env = guestEnv();
if (env === null) {
  t.plan(0, 'VM guest test: runs inside the VM via `npm run test:vm`');
} else {
  const { mode, edu, edu2, rng } = env;
  const iommu = mode !== 'noiommu';
  const stateDir = '/tmp/vfio-cli-state';

  /** Runs `vfio ...args` in-process on the real machine; a fresh context each time. */
  const vfio = (...args: string[]): { code: number; out: string; err: string } => {
    let out = '';
    let err = '';
    const code = main(args, {
      ...realEnv(() => createVfio({ sys: koffiSys })),
      out: (s) => void (out += s),
      err: (s) => void (err += s),
      stateDir,
    });
    return { code, out, err };
  };
  const driverOf = (address: string): string | null => {
    try {
      return basename(readlinkSync(`/sys/bus/pci/devices/${address}/driver`));
    } catch {
      return null;
    }
  };
  const groupOf = (address: string): number => Number(basename(readlinkSync(`/sys/bus/pci/devices/${address}/iommu_group`)));

  interface LsEntry {
    address: string;
    vendor: string;
    device: string;
    driver: string | null;
    vfio: boolean;
    iommuGroup: number | null;
    noiommu: boolean;
    viable: boolean | null;
    blockers: { address: string; driver: string }[];
    groupMembers: { address: string; driver: string | null }[];
    mode: string | null;
  }
  const ls = (): Map<string, LsEntry> => {
    const r = vfio('ls', '--json');
    if (r.code !== 0) throw new Error(`vfio ls --json: exit ${r.code}: ${r.err}`);
    return new Map((JSON.parse(r.out) as LsEntry[]).map((d) => [d.address, d]));
  };

  t.test('vfio ls --json', async (t) => {
    const devices = ls();
    t.match(
      devices.get(edu),
      {
        address: edu,
        vendor: '0x1234',
        device: '0x11e8',
        driver: 'vfio-pci',
        vfio: true,
        iommuGroup: groupOf(edu),
        noiommu: !iommu,
        viable: true,
        blockers: [],
        mode,
      },
      'edu: on vfio-pci, viable, in the booted mode',
    );
    t.match(devices.get(rng), { driver: 'virtio-pci', vfio: false, mode: null }, 'the virtio-rng is on its host driver');
    if (iommu) {
      t.match(
        devices.get(edu2),
        { driver: 'vfio-pci', viable: false, blockers: [{ address: rng, driver: 'virtio-pci' }], mode },
        'edu2 shares its group with the rng: not viable',
      );
      // Behind a conventional bridge the group is the bridge and everything behind it.
      const members = devices.get(edu2)?.groupMembers ?? [];
      t.ok(members.some((m) => m.address === rng) && members.some((m) => m.address === edu2), 'edu2 and the rng are in one group');
      t.same(
        members.filter((m) => m.address !== edu2 && m.address !== rng && m.driver !== null && m.driver !== 'pcieport'),
        [],
        'the rest of it (the bridge) blocks nothing',
      );
    } else {
      t.match(devices.get(edu2), { driver: 'vfio-pci', viable: true, noiommu: true, mode }, 'no-IOMMU groups hold one device each');
      t.match(devices.get(rng), { iommuGroup: null, viable: null }, 'without an IOMMU a host-driven device has no group');
    }
    const table = vfio('ls');
    t.equal(table.code, 0);
    const group = iommu ? String(groupOf(edu)) : `noiommu-${groupOf(edu)}`;
    t.match(
      table.out,
      new RegExp(`\\n${edu.replace('.', '\\.')} +1234:11e8 +Unclassified device +vfio-pci +${group} +yes +${mode}\\n`),
      'the table row of edu',
    );
    t.same(vfio('ls', '--vfio', '--json').code, 0);
  });

  t.test('vfio info <edu>', async (t) => {
    const r = vfio('info', edu);
    t.equal(r.code, 0, r.err);
    t.equal(r.err, '');
    t.match(r.out, new RegExp(`^${edu.replace('.', '\\.')}  1234:11e8  Unclassified device \\(class 0x00ff00\\)\\n`));
    t.match(r.out, new RegExp(`\\n  mode +${mode} \\(`), 'the mode');
    t.match(r.out, /\n  iommu group +(noiommu-)?\d+ \(viable\)\n/, 'the group, viable');
    t.match(r.out, /\n +0 +bar0 +1 MiB +0x0 +read,write,mmap +/, 'BAR0: 1 MiB, mmap-able');
    t.match(r.out, /\n +7 +config +(256 B|4 KiB) +0x[0-9a-f]+ +read,write +-\n/, 'config space');
    t.match(r.out, /\n +1 +msi +1 +eventfd/, 'one MSI vector');
    t.match(r.out, /\n +0 +intx +1 +eventfd,maskable,automasked\n/, 'INTx');
    if (iommu)
      t.match(
        r.out,
        /\niova ranges:\n  0x0000000000000000 - 0x00000000fedfffff\n  0x00000000fef00000 - 0x[0-9a-f]{16}\n  granule 4 KiB/,
        'IOVA ranges around the MSI window',
      );
    else t.match(r.out, /\niova ranges:\n  none: no-IOMMU mode/);

    const j = vfio('info', edu, '--json');
    t.equal(j.code, 0, j.err);
    const info = JSON.parse(j.out) as {
      mode: string;
      info: { pci: boolean; reset: boolean; numRegions: number; numIrqs: number };
      regions: { name: string; size: number; mappable: boolean; readable: boolean; writable: boolean }[];
      irqs: { kind: string; count: number }[];
      iova: { ranges: { start: string; last: string }[]; granule: string } | null;
      groupMembers: { address: string; driver: string }[];
    };
    t.equal(info.mode, mode);
    t.match(info.info, { pci: true, numRegions: 9, numIrqs: 5 });
    t.match(info.regions[0], { name: 'bar0', size: 1 << 20, mappable: true, readable: true, writable: true });
    t.same(info.irqs.find((i) => i.kind === 'msi')?.count, 1);
    t.same(info.groupMembers, [{ address: edu, driver: 'vfio-pci' }]);
    if (iommu) t.match(info.iova, { granule: '0x1000', ranges: [{ start: '0x0', last: '0xfedfffff' }] });
    else t.equal(info.iova, null);
  });

  t.test('vfio info: devices it cannot open', async (t) => {
    const r2 = vfio('info', edu2);
    if (iommu) {
      t.equal(r2.code, 1, 'edu2: its group is not viable');
      t.match(r2.err, /^vfio info: .*E[A-Z]+.*\n$/, `a kernel or library refusal: ${r2.err.trim()}`);
      t.equal(r2.err.split('\n').length, 2, 'one line');
    } else {
      t.equal(r2.code, 0, r2.err);
    }
    t.same(vfio('info', rng), {
      code: 1,
      out: '',
      err: `vfio info: ${rng} is not managed by VFIO (it is bound to virtio-pci): bind it with \`vfio bind ${rng}\`\n`,
    });
    t.match(vfio('info', '0000:00:1f.6'), { code: 1, err: /^vfio info: ENODEV/ });
    t.match(vfio('info', 'edu'), { code: 2, err: /^vfio info: not a PCI address/ });
  });

  t.test('vfio bar <edu> 0', async (t) => {
    t.same(
      vfio('bar', edu, '0', '--read', '0'),
      { code: 0, out: '0x00000000/32 = 0x010000ed\n', err: '' },
      'identification through the mapped BAR',
    );
    t.same(
      vfio('bar', edu, '0', '--write', '4=0x12345678', '--read', '4'),
      { code: 0, out: '0x00000004/32 <- 0x12345678\n0x00000004/32 = 0xedcba987\n', err: '' },
      'the liveness register inverts',
    );
    const dump = vfio('bar', edu, '0', '--length', '16');
    t.match(dump.out, /^00000000  ed 00 00 01 /);
  });

  t.test('vfio doctor', async (t) => {
    const r = vfio('doctor', '--json');
    const checks = new Map((JSON.parse(r.out) as { name: string; status: string; message: string }[]).map((c) => [c.name, c]));
    t.match(checks.get('iommu'), { status: iommu ? 'ok' : 'warn' });
    t.match(checks.get('vfio-pci'), { status: 'ok' });
    t.match(checks.get('modes'), { status: 'ok', message: new RegExp(`available modes: .*${mode}`) });
    t.match(checks.get('permissions'), { status: 'ok' });
    if (iommu) {
      t.match(
        checks.get('devices'),
        { status: 'fail', message: new RegExp(`${edu2.replace('.', '\\.')} \\(${mode}, group not viable\\)`) },
        'edu2 is reported with its fix',
      );
      t.equal(r.code, 1);
    } else {
      t.match(checks.get('devices'), { status: 'ok' });
      t.equal(r.code, 0);
    }
  });

  t.test('vfio unbind / bind through the kernel', async (t) => {
    // Whatever happens, edu2 goes back to vfio-pci alone, as init left it
    // (and the rng to virtio-pci): the files after this one expect that.
    t.teardown(() => {
      if (driverOf(rng) !== 'virtio-pci') {
        if (driverOf(rng) !== null) writeFileSync(`/sys/bus/pci/devices/${rng}/driver/unbind`, rng);
        writeFileSync(`/sys/bus/pci/devices/${rng}/driver_override`, '\n');
        writeFileSync('/sys/bus/pci/drivers_probe', rng);
      }
      if (driverOf(edu2) !== 'vfio-pci') {
        writeFileSync(`/sys/bus/pci/devices/${edu2}/driver_override`, 'vfio-pci\n');
        writeFileSync('/sys/bus/pci/drivers_probe', edu2);
      }
    });
    const u = vfio('unbind', edu2);
    t.same(u, {
      code: 0,
      out: `${edu2}: unbound from vfio-pci, now has no driver (no previous driver remembered: the kernel chose)\n`,
      err: '',
    });
    t.equal(driverOf(edu2), null, 'no driver in this kernel takes edu');
    t.equal(readFileSync(`/sys/bus/pci/devices/${edu2}/driver_override`, 'utf8'), '(null)\n', 'driver_override cleared');
    if (iommu) {
      const refused = vfio('bind', edu2);
      t.same(refused, {
        code: 1,
        out: '',
        err: `vfio bind: IOMMU group ${groupOf(edu2)} of ${edu2} also holds ${rng} (virtio-pci) on host drivers: bind them too with --group, or unbind them first\n`,
      });
      t.equal(driverOf(edu2), null, 'nothing changed');
      const g = vfio('bind', edu2, '--group');
      t.same(g, { code: 0, out: `${edu2}: bound to vfio-pci (was no driver)\n${rng}: bound to vfio-pci (was virtio-pci)\n`, err: '' });
      t.match(ls().get(edu2), { viable: true, blockers: [] }, 'the whole group is on vfio-pci: viable');
      const back = vfio('unbind', edu2, '--group');
      t.same(back.code, 0, back.err);
      t.match(back.out, `${edu2}: unbound from vfio-pci, now has no driver\n`);
      t.match(back.out, `${rng}: unbound from vfio-pci, now bound to virtio-pci\n`, 'the rng is back on its driver');
      t.equal(driverOf(rng), 'virtio-pci');
    } else {
      t.same(vfio('bind', edu2), { code: 0, out: `${edu2}: bound to vfio-pci (was no driver)\n`, err: '' });
      t.equal(driverOf(edu2), 'vfio-pci');
      t.same(vfio('unbind', edu2), { code: 0, out: `${edu2}: unbound from vfio-pci, now has no driver\n`, err: '' });
    }
    t.same(JSON.parse(readFileSync(`${stateDir}/bind-state.json`, 'utf8')), {}, 'nothing left remembered');
  });

  t.test('the executable, as a process', async (t) => {
    const entry = fileURLToPath(new URL('../../../lib/cli/vfio.js', import.meta.url));
    const run = (...args: string[]) => spawnSync(process.execPath, [entry, ...args], { encoding: 'utf8' });
    const r = run('ls', '--json');
    t.equal(r.status, 0, r.stderr);
    t.match(
      (JSON.parse(r.stdout) as LsEntry[]).find((d) => d.address === edu),
      { driver: 'vfio-pci', mode },
    );
    const bad = run('bar', edu, '7');
    t.equal(bad.status, 2);
    t.equal(bad.stderr, 'vfio bar: BAR index must be 0 to 5, got "7" (see `vfio bar --help`)\n');
  });
}
