// `vfio ls` and `vfio info` on the fake kernel, in every mode: the table, the
// JSON, group viability, and what info reads from an opened device.
import t from 'tap';
import { createVfio } from '../../lib/core/context.js';
import { edu, pciDevice } from '../../lib/testing/index.js';
import { cliMachine } from './harness.js';

const MODES = ['cdev', 'group', 'noiommu'] as const;
const EDU = '0000:00:03.0';
const NO_LEAKS = { fds: 0, mappings: 0, pinned: 0 };

/** A NIC on a host driver, in edu's group 3 unless told otherwise. */
const nic = (group = 3, driver: string | null = 'e1000e', address = '0000:00:05.0') =>
  pciDevice({ address, group, vendor: 0x8086, device: 0x10d3, class: 0x020000, bars: [{ index: 0, size: 131072 }], driver });

interface LsEntry {
  address: string;
  vendor: string;
  device: string;
  class: string;
  className: string;
  driver: string | null;
  vfio: boolean;
  iommuGroup: number | null;
  noiommu: boolean;
  viable: boolean | null;
  blockers: { address: string; driver: string }[];
  groupMembers: { address: string; driver: string | null }[];
  mode: string | null;
  modeError: string | null;
}

for (const mode of MODES) {
  t.test(`${mode}: vfio ls`, async (t) => {
    const m = cliMachine({ mode, devices: [edu(), edu({ address: '0000:00:04.0', group: 6 })] });
    t.teardown(() => m.dispose());
    const r = m.run('ls');
    t.equal(r.code, 0);
    t.equal(r.err, '');
    const lines = r.out.trimEnd().split('\n');
    t.match(lines[0], /^ADDRESS\s+ID\s+CLASS\s+DRIVER\s+GROUP\s+VIABLE\s+MODE$/, 'header');
    t.equal(lines.length, 3, 'one line per device');
    const group = mode === 'noiommu' ? 'noiommu-3' : '3';
    t.match(lines[1], new RegExp(`^0000:00:03\\.0\\s+1234:11e8\\s+Unclassified device\\s+vfio-pci\\s+${group}\\s+yes\\s+${mode}$`));

    const j = m.run('ls', '--json');
    t.equal(j.code, 0);
    const list = JSON.parse(j.out) as LsEntry[];
    t.equal(list.length, 2);
    t.match(list[0], {
      address: EDU,
      vendor: '0x1234',
      device: '0x11e8',
      class: '0x00ff00',
      className: 'Unclassified device',
      driver: 'vfio-pci',
      vfio: true,
      iommuGroup: 3,
      noiommu: mode === 'noiommu',
      viable: true,
      blockers: [],
      groupMembers: [{ address: EDU, driver: 'vfio-pci' }],
      mode,
      modeError: null,
    });
    t.equal(list[1]?.address, '0000:00:04.0');
    t.same(m.kernel.leaks(), NO_LEAKS, 'ls opens nothing');
  });

  t.test(`${mode}: vfio info <edu>`, async (t) => {
    const m = cliMachine({ mode, devices: [edu()] });
    t.teardown(() => m.dispose());
    const r = m.run('info', '00:03.0');
    t.equal(r.code, 0, r.err);
    t.equal(r.err, '');
    t.match(r.out, /^0000:00:03\.0 {2}1234:11e8 {2}Unclassified device \(class 0x00ff00\)\n/);
    t.match(r.out, new RegExp(`\\n  mode +${mode} `));
    t.match(r.out, /\n  iommu group +(noiommu-)?3 \(viable\)\n +0000:00:03\.0 +vfio-pci +\(this device\)\n/);
    // edu on the root bus has no reset vfio-pci can use (no FLR, no PM reset, no bus reset), as on QEMU.
    t.match(r.out, /\n  device +flags 0x2 \[pci\], 9 regions, 5 irq indexes/);
    t.match(r.out, /\n +0 +bar0 +1 MiB +0x0 +read,write,mmap +-\n/, 'BAR0 with its flags');
    t.match(r.out, /\n +7 +config +256 B +0x70000000000 +read,write +-\n/, 'config space');
    t.match(r.out, /\n +1 +bar1 +0 +- +- +-\n/, 'an absent BAR');
    t.match(r.out, /\n +1 +msi +1 +eventfd(,noresize)?\n/, 'one MSI vector');
    t.match(r.out, /\n +0 +intx +1 +eventfd,maskable,automasked\n/, 'INTx');
    if (mode === 'noiommu') t.match(r.out, /iova ranges:\n  none: no-IOMMU mode/);
    else t.match(r.out, /iova ranges:\n  0x0000000000000000 - 0x00000000fedfffff\n/, 'the IOVA ranges around the MSI window');
    t.same(m.kernel.leaks(), NO_LEAKS, 'info releases the device');

    const j = m.run('info', EDU, '--json');
    t.equal(j.code, 0, j.err);
    const info = JSON.parse(j.out) as {
      mode: string;
      info: { pci: boolean; numRegions: number; numIrqs: number; flagNames: string[] };
      regions: { index: number; name: string; size: number; fdOffset: string; flagNames: string[]; mappable: boolean }[];
      irqs: { kind: string; count: number; flagNames: string[] }[];
      iova: { ranges: { start: string; last: string }[]; granule: string } | null;
      groupMembers: unknown[];
      viable: boolean;
    };
    t.equal(info.mode, mode);
    t.match(info.info, { pci: true, numRegions: 9, numIrqs: 5 });
    t.ok(info.info.flagNames.includes('pci'));
    t.match(info.regions[0], { index: 0, name: 'bar0', size: 1 << 20, fdOffset: '0x0', mappable: true });
    t.same(info.regions[0]?.flagNames, ['read', 'write', 'mmap']);
    t.same(
      info.irqs.map((i) => [i.kind, i.count]),
      [
        ['intx', 1],
        ['msi', 1],
        ['msix', 0],
        ['req', 1],
      ],
      'IRQ indexes with counts (ERR left out: edu is not PCI Express)',
    );
    if (mode === 'noiommu') t.equal(info.iova, null);
    else {
      t.equal(info.iova?.granule, '0x1000');
      t.match(info.iova?.ranges[0], { start: '0x0', last: '0xfedfffff' });
    }
    t.equal(info.viable, true);
    t.same(m.kernel.leaks(), NO_LEAKS);
  });
}

t.test('a group with a device on a host driver is not viable', async (t) => {
  const m = cliMachine({ mode: 'group', devices: [edu(), nic()] });
  t.teardown(() => m.dispose());
  const list = JSON.parse(m.run('ls', '--json').out) as LsEntry[];
  const [e, n] = list;
  t.match(e, { address: EDU, viable: false, blockers: [{ address: '0000:00:05.0', driver: 'e1000e' }] });
  t.same(e?.groupMembers, [
    { address: EDU, driver: 'vfio-pci' },
    { address: '0000:00:05.0', driver: 'e1000e' },
  ]);
  t.match(n, { address: '0000:00:05.0', driver: 'e1000e', vfio: false, mode: null, viable: false, className: 'Network controller' });
  t.match(n?.blockers[0], { address: '0000:00:05.0', driver: 'e1000e' }, 'a device on a host driver blocks its own group');
  const table = m.run('ls').out;
  t.match(table, /0000:00:03\.0 .* vfio-pci +3 +no +group\n/);
  t.match(table, /0000:00:05\.0 +8086:10d3 +Network controller +e1000e +3 +no\n/);
  const only = m.run('ls', '--vfio', '--json');
  t.same(
    (JSON.parse(only.out) as LsEntry[]).map((d) => d.address),
    [EDU],
    '--vfio keeps vfio-pci devices',
  );

  const r = m.run('info', EDU);
  t.equal(r.code, 1, 'a non-viable group cannot be opened');
  t.match(r.err, /^vfio info: .*EBUSY.*not viable.*0000:00:05\.0 is bound to e1000e.*\n$/);
  t.equal(r.err.split('\n').length, 2, 'one line');
});

t.test('ls: a vfio-pci device whose mode is not available', async (t) => {
  const m = cliMachine({ mode: 'group', type1: false, devices: [edu()] });
  t.teardown(() => m.dispose());
  const [e] = JSON.parse(m.run('ls', '--json').out) as LsEntry[];
  t.match(e, { mode: null, modeError: /ENXIO.*Type1/ });
  t.match(m.run('ls').out, /vfio-pci +3 +yes +!\n/, '! in the MODE column');
  t.match(m.run('ls', '--vfio').out, /0000:00:03\.0/);
});

t.test('ls --vfio with nothing bound, and a machine without PCI devices', async (t) => {
  const m = cliMachine({ mode: 'group', devices: [nic(5)] });
  t.teardown(() => m.dispose());
  t.match(m.run('ls', '--vfio'), { code: 0, out: /^no device is bound to vfio-pci/ });
  t.same(JSON.parse(m.run('ls', '--vfio', '--json').out), []);
  const empty = cliMachine({ mode: 'group', devices: [] });
  t.teardown(() => empty.dispose());
  t.match(empty.run('ls'), { code: 0, out: 'no PCI devices in sysfs\n' });
});

t.test('info: devices it cannot show', async (t) => {
  const m = cliMachine({ mode: 'cdev', devices: [edu(), nic(5), nic(7, null, '0000:00:07.0')] });
  t.teardown(() => m.dispose());
  const host = m.run('info', '0000:00:05.0');
  t.equal(host.code, 1);
  t.equal(host.err, 'vfio info: 0000:00:05.0 is not managed by VFIO (it is bound to e1000e): bind it with `vfio bind 0000:00:05.0`\n');
  t.match(m.run('info', '0000:00:07.0'), { code: 1, err: /not managed by VFIO \(no driver is bound\)/ });
  const missing = m.run('info', '0000:00:09.0');
  t.equal(missing.code, 1);
  t.match(missing.err, /^vfio info: ENODEV \(device 0000:00:09\.0: no such PCI device in .*\)\n$/);
  const bad = m.run('info', '00:03');
  t.equal(bad.code, 2);
  t.equal(bad.err, 'vfio info: not a PCI address: "00:03" (expected 0000:00:03.0 or 00:03.0) (see `vfio info --help`)\n');
  t.equal(m.run('info').code, 2, 'missing address');
  t.equal(m.run('info', EDU, EDU).code, 2, 'two addresses');
  t.equal(m.run('info', EDU, '--bogus').code, 2, 'unknown option');
  t.same(m.kernel.leaks(), NO_LEAKS);
});

t.test('info: the device is open in another process', async (t) => {
  const m = cliMachine({ mode: 'group', devices: [edu()] });
  t.teardown(() => m.dispose());
  const other = createVfio({ sys: m.kernel.sys, sysfs: m.kernel.sysfsRoot, dev: m.kernel.devRoot, proc: m.kernel.procRoot, env: {} });
  const dev = other.openDevice(EDU);
  const r = m.run('info', EDU);
  t.equal(r.code, 1);
  t.match(r.err, /^vfio info: open .*\/vfio\/3: EBUSY/);
  dev.release();
  other.close();
  t.equal(m.run('info', EDU).code, 0, 'works once the other user is gone');
  t.same(m.kernel.leaks(), NO_LEAKS);
});
