// `vfio bind` / `vfio unbind` on the fake sysfs, whose PCI core answers
// driver_override, unbind, bind and drivers_probe as Linux does.
import t from 'tap';
import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { edu, pciDevice } from '../../lib/testing/index.js';
import { cliMachine } from './harness.js';

const NIC = '0000:00:05.0';
const NIC2 = '0000:00:06.0';
const EDU = '0000:00:03.0';
const nic = (address: string, group: number, driver: string | null = 'e1000e') =>
  pciDevice({ address, group, vendor: 0x8086, device: 0x10d3, class: 0x020000, bars: [{ index: 0, size: 131072 }], driver });

function state(dir: string): unknown {
  return JSON.parse(readFileSync(join(dir, 'bind-state.json'), 'utf8'));
}

t.test('bind remembers the driver, unbind restores it', async (t) => {
  const m = cliMachine({ mode: 'group', devices: [nic(NIC, 5)], native: { [NIC]: 'e1000e' } });
  t.teardown(() => m.dispose());
  const b = m.run('bind', '00:05.0');
  t.equal(b.code, 0, b.err);
  t.equal(b.out, `${NIC}: bound to vfio-pci (was e1000e)\n`);
  t.equal(m.driverOf(NIC), 'vfio-pci');
  t.same(
    m.writes,
    [
      [`bus/pci/devices/${NIC}/driver_override`, 'vfio-pci\n'],
      [`bus/pci/devices/${NIC}/driver/unbind`, NIC],
      ['bus/pci/drivers_probe', NIC],
    ],
    'driver_override, unbind, drivers_probe',
  );
  t.same(state(m.stateDir), { [NIC]: { driver: 'e1000e', driverOverride: null } }, 'the previous driver is remembered');

  const again = m.run('bind', NIC);
  t.match(again, { code: 0, out: `${NIC}: already bound to vfio-pci\n` }, 'binding twice is fine');

  m.writes.length = 0;
  const u = m.run('unbind', NIC);
  t.equal(u.code, 0, u.err);
  t.equal(u.out, `${NIC}: unbound from vfio-pci, now bound to e1000e\n`);
  t.equal(m.driverOf(NIC), 'e1000e');
  t.same(m.writes, [
    [`bus/pci/devices/${NIC}/driver_override`, '\n'],
    [`bus/pci/devices/${NIC}/driver/unbind`, NIC],
    ['bus/pci/drivers/e1000e/bind', NIC],
  ]);
  t.same(state(m.stateDir), {}, 'forgotten once restored');
  t.match(m.run('unbind', NIC), { code: 0, out: `${NIC}: not bound to a VFIO driver (e1000e); nothing to do\n` });
});

t.test('a device without a driver: bound, then left without one', async (t) => {
  const m = cliMachine({ mode: 'cdev', devices: [nic(NIC, 5, null)] });
  t.teardown(() => m.dispose());
  t.match(m.run('bind', NIC), { code: 0, out: `${NIC}: bound to vfio-pci (was no driver)\n` });
  t.same(
    m.writes.map(([p]) => p),
    [`bus/pci/devices/${NIC}/driver_override`, 'bus/pci/drivers_probe'],
    'nothing to unbind first',
  );
  t.match(m.run('unbind', NIC), { code: 0, out: `${NIC}: unbound from vfio-pci, now has no driver\n` });
  t.equal(m.driverOf(NIC), null);
});

t.test('unbind of a device vfio bind did not bind lets the kernel choose', async (t) => {
  const m = cliMachine({ mode: 'group', devices: [edu(), nic(NIC, 5, 'vfio-pci')], native: { [NIC]: 'e1000e' } });
  t.teardown(() => m.dispose());
  const u = m.run('unbind', NIC);
  t.equal(u.code, 0, u.err);
  t.equal(u.out, `${NIC}: unbound from vfio-pci, now bound to e1000e (no previous driver remembered: the kernel chose)\n`);
  t.same(m.writes.at(-1), ['bus/pci/drivers_probe', NIC]);
  const e = m.run('unbind', EDU);
  t.match(e, { code: 0, out: `${EDU}: unbound from vfio-pci, now has no driver (no previous driver remembered: the kernel chose)\n` });
});

t.test('bind refuses a group with devices on host drivers, unless --group', async (t) => {
  const m = cliMachine({
    mode: 'group',
    devices: [
      nic(NIC, 5),
      nic(NIC2, 5, 'igb'),
      pciDevice({ address: '0000:00:07.0', group: 5, vendor: 0x8086, device: 0x1, class: 0x060400, driver: 'pcieport' }),
    ],
  });
  t.teardown(() => m.dispose());
  const r = m.run('bind', NIC);
  t.equal(r.code, 1);
  t.equal(
    r.err,
    `vfio bind: IOMMU group 5 of ${NIC} also holds ${NIC2} (igb) on host drivers: bind them too with --group, or unbind them first\n`,
  );
  t.same(m.writes, [], 'nothing was changed');
  t.equal(m.driverOf(NIC), 'e1000e');

  const g = m.run('bind', NIC, '--group');
  t.equal(g.code, 0, g.err);
  t.equal(g.out, `${NIC}: bound to vfio-pci (was e1000e)\n${NIC2}: bound to vfio-pci (was igb)\n`);
  t.equal(m.driverOf('0000:00:07.0'), 'pcieport', 'a bridge on pcieport keeps its driver (it does not block the group)');
  t.same(state(m.stateDir), { [NIC]: { driver: 'e1000e', driverOverride: null }, [NIC2]: { driver: 'igb', driverOverride: null } });

  const u = m.run('unbind', NIC2, '--group');
  t.equal(u.code, 0, u.err);
  t.equal(u.out, `${NIC}: unbound from vfio-pci, now bound to e1000e\n${NIC2}: unbound from vfio-pci, now bound to igb\n`);
  t.same(state(m.stateDir), {});
});

t.test('bind failures: each a one-line error with exit 1', async (t) => {
  const m = cliMachine({ mode: 'group', devices: [nic(NIC, 5), nic(NIC2, 6)], readOnlySysfs: true });
  t.teardown(() => m.dispose());
  const denied = m.run('bind', NIC);
  t.equal(denied.code, 1);
  t.equal(
    denied.err,
    `vfio bind: writing "vfio-pci" to ${m.kernel.sysfsRoot}/bus/pci/devices/${NIC}/driver_override failed: EACCES (changing drivers needs root: run with sudo)\n`,
  );
  t.same(state(m.stateDir), { [NIC]: { driver: 'e1000e', driverOverride: null } }, 'the previous driver was saved before the first write');
  t.match(m.run('bind', '0000:00:09.0'), { code: 1, err: /^vfio bind: ENODEV \(device 0000:00:09\.0: no such PCI device/ });
  t.match(m.run('bind', 'eth0'), { code: 2, err: /^vfio bind: not a PCI address: "eth0"/ });
  t.match(m.run('bind'), { code: 2, err: 'vfio bind: missing argument: expected <address> (see `vfio bind --help`)\n' });
  t.match(m.run('unbind', NIC, '--driver', 'x'), { code: 2, err: /^vfio unbind: Unknown option '--driver'/ });
});

t.test('bind: vfio-pci not loaded, or it does not take the device', async (t) => {
  const m = cliMachine({ mode: 'group', devices: [nic(NIC, 5)] });
  t.teardown(() => m.dispose());
  // The fake PCI core binds the override only when the driver exists.
  rmSync(join(m.kernel.sysfsRoot, 'bus', 'pci', 'drivers', 'vfio-pci'), { recursive: true });
  t.match(m.run('bind', NIC), { code: 1, err: 'vfio bind: the vfio-pci driver is not loaded: run `sudo modprobe vfio-pci`\n' });
  t.same(m.writes, []);
});

t.test('bind: vfio-pci does not take the device', async (t) => {
  const m = cliMachine({ mode: 'group', devices: [nic(NIC, 5)], native: { [NIC]: 'e1000e' }, refuse: { [NIC]: 'vfio-pci' } });
  t.teardown(() => m.dispose());
  const r = m.run('bind', NIC);
  t.equal(r.code, 1);
  t.equal(r.err, `vfio bind: ${NIC}: vfio-pci did not take the device (it has no driver now; \`dmesg\` says why)\n`);
  t.same(state(m.stateDir), { [NIC]: { driver: 'e1000e', driverOverride: null } }, 'unbind can still restore it');
});

t.test('unbind: the remembered driver is gone', async (t) => {
  const m = cliMachine({ mode: 'group', devices: [nic(NIC, 5)] });
  t.teardown(() => m.dispose());
  t.equal(m.run('bind', NIC).code, 0);
  rmSync(join(m.kernel.sysfsRoot, 'bus', 'pci', 'drivers', 'e1000e'), { recursive: true });
  const u = m.run('unbind', NIC);
  t.equal(u.code, 1);
  t.match(
    u.err,
    new RegExp(
      `^vfio unbind: ${NIC}: unbound from vfio-pci, but its previous driver e1000e is not loaded \\(modprobe e1000e, then .*\\)\\n$`,
    ),
  );
});

t.test('a damaged state file is reported, not trusted', async (t) => {
  const m = cliMachine({ mode: 'group', devices: [nic(NIC, 5, 'vfio-pci')] });
  t.teardown(() => m.dispose());
  mkdirSync(m.stateDir, { recursive: true });
  writeFileSync(join(m.stateDir, 'bind-state.json'), JSON.stringify({ [NIC]: { driver: '../../../etc', driverOverride: null } }));
  const r = m.run('unbind', NIC);
  t.equal(r.code, 1);
  t.equal(r.err, `vfio unbind: ${m.stateDir}/bind-state.json holds a bad entry for ${NIC}: remove it\n`);
  t.same(m.writes, [], 'nothing was written');
  writeFileSync(join(m.stateDir, 'bind-state.json'), '{ not json');
  t.match(m.run('unbind', NIC), { code: 1, err: /is not valid JSON: remove it/ });
});
