// Config space on the fake kernel: width-exact access through the config
// region, the command register helpers, and the capability walks.
import t from 'tap';
import { edu, pciDevice } from '../../lib/testing/index.js';
import { rig } from './fixture.js';
import {
  CAP_ID,
  CFG_CAPABILITY_LIST,
  CFG_COMMAND,
  COMMAND_BUS_MASTER,
  COMMAND_INTX_DISABLE,
  EXT_CAP_ID,
} from '../../lib/device/pci-regs.js';

t.test('identification and width-exact reads', async (t) => {
  const r = rig({ mode: 'group' });
  t.teardown(() => r.dispose());
  const { io } = r.open();
  t.equal(io.config.size, 256);
  t.same(io.config.ids(), {
    vendorId: 0x1234,
    deviceId: 0x11e8,
    subsystemVendorId: 0x1af4,
    subsystemId: 0x1100,
    classCode: 0x00ff00,
    revision: 0x10,
    headerType: 0,
    interruptPin: 1,
  });
  t.equal(io.config.read32(0), 0x11e81234);
  t.equal(io.config.read16(2), 0x11e8);
  t.equal(io.config.read8(1), 0x12);
  t.throws(() => io.config.read32(2), { code: 'EINVAL', message: /aligned/ });
  t.throws(() => io.config.read32(256), { code: 'EINVAL', message: /outside/ });
  t.throws(() => io.config.read8(-1), { code: 'EINVAL' });
  t.throws(() => io.config.write16(0x04, 0x10000), { code: 'EINVAL' });
  t.equal(r.kernel.leaks().mappings, 0, 'config space is never mapped');
});

t.test('command register helpers: read-modify-write, visible to the device', async (t) => {
  const r = rig();
  t.teardown(() => r.dispose());
  const { io } = r.open();
  const live = r.kernel.device('0000:00:03.0').config;
  const cmd = (): number => live[CFG_COMMAND]! | (live[CFG_COMMAND + 1]! << 8);
  io.config.setBusMaster(true);
  t.equal(cmd() & COMMAND_BUS_MASTER, COMMAND_BUS_MASTER);
  t.match(io.config.command(), { busMaster: true, memorySpace: true });
  io.config.setIntxDisable(true);
  t.equal(cmd() & COMMAND_INTX_DISABLE, COMMAND_INTX_DISABLE);
  t.equal(cmd() & COMMAND_BUS_MASTER, COMMAND_BUS_MASTER, 'other bits kept');
  io.config.setBusMaster(false);
  t.match(io.config.command(), { busMaster: false, intxDisable: true, memorySpace: true });
  io.config.setIntxDisable(false);
  t.equal(io.config.command().intxDisable, false);
});

t.test('BAR kinds from the BAR registers', async (t) => {
  const dev = pciDevice({
    address: '0000:00:04.0',
    vendor: 1,
    device: 2,
    class: 0,
    bars: [
      { index: 0, size: 256, type: 'io' },
      { index: 2, size: 1 << 16, type: 'mem64', prefetchable: true },
      { index: 4, size: 4096 },
    ],
  });
  const r = rig({ devices: [dev] });
  t.teardown(() => r.dispose());
  const { io } = r.open('0000:00:04.0');
  t.same(io.config.bar(0), { bar: 0, space: 'io', is64: false, prefetchable: false });
  t.same(io.config.bar(2), { bar: 2, space: 'memory', is64: true, prefetchable: true });
  t.same(io.config.bar(4), { bar: 4, space: 'memory', is64: false, prefetchable: false });
  t.throws(() => io.config.bar(6), { code: 'EINVAL' });
});

t.test('standard and extended capabilities', async (t) => {
  const dev = pciDevice({
    address: '0000:00:04.0',
    vendor: 1,
    device: 2,
    class: 0x020000,
    pcie: true,
    bars: [{ index: 0, size: 1 << 14 }],
    irqs: { msi: 4, msix: 16, msixTableOffset: 0x2000, msixPbaOffset: 0x3000 },
    config: (cfg) => {
      cfg.addExtendedCapability(EXT_CAP_ID.aer, 2, 0x48);
      cfg.addExtendedCapability(EXT_CAP_ID.serialNumber, 1, 12);
    },
  });
  const r = rig({ devices: [dev] });
  t.teardown(() => r.dispose());
  const { io } = r.open('0000:00:04.0');
  t.equal(io.config.size, 4096);
  const caps = io.config.capabilities();
  t.same(
    caps.map((c) => c.name),
    ['pcie', 'msi', 'msix'],
  );
  t.equal(io.config.findCapability('msix')?.offset, caps[2]!.offset);
  t.equal(io.config.findCapability(CAP_ID.pm), null);
  t.same(
    io.config.extendedCapabilities().map((c) => [c.name, c.version, c.offset]),
    [
      ['aer', 2, 0x100],
      ['serialNumber', 1, 0x148],
    ],
  );
  t.equal(io.config.findExtendedCapability('serialNumber')?.offset, 0x148);
  t.equal(io.config.findExtendedCapability(EXT_CAP_ID.sriov), null);
  t.match(io.config.msix(), {
    vectors: 16,
    enabled: false,
    tableBar: 0,
    tableOffset: 0x2000,
    tableSize: 256,
    pbaBar: 0,
    pbaOffset: 0x3000,
  });
});

t.test('capability walks survive loops and garbage', async (t) => {
  const dev = pciDevice({
    address: '0000:00:04.0',
    vendor: 1,
    device: 2,
    class: 0,
    pcie: true,
    irqs: { msi: 1 },
    config: (cfg) => {
      cfg.addExtendedCapability(EXT_CAP_ID.aer, 2, 0x48);
    },
  });
  const r = rig({ devices: [dev] });
  t.teardown(() => r.dispose());
  const { io } = r.open('0000:00:04.0');
  const live = r.kernel.device('0000:00:04.0').config;
  const first = live[CFG_CAPABILITY_LIST]!;
  const second = live[first + 1]!;
  t.ok(second >= 0x40, 'two standard capabilities');
  live[second + 1] = first; // the second points back at the first
  t.same(
    io.config.capabilities().map((c) => c.offset),
    [first, second],
    'a loop ends the walk',
  );
  live[second + 1] = second; // points at itself
  t.same(
    io.config.capabilities().map((c) => c.offset),
    [first, second],
  );
  live[second + 1] = 0x10; // into the header
  t.same(
    io.config.capabilities().map((c) => c.offset),
    [first, second],
  );
  // Extended: the header's next pointer loops back to 0x100.
  live[0x102] = (live[0x102]! & 0x0f) | ((0x100 << 4) & 0xf0);
  live[0x103] = (0x100 << 4) >> 8;
  t.same(
    io.config.extendedCapabilities().map((c) => c.offset),
    [0x100],
  );
  live[second + 1] = first | 3; // the low two bits of a pointer are reserved: masked off (and so a loop)
  t.same(
    io.config.capabilities().map((c) => c.offset),
    [first, second],
  );
  live[second + 1] = 0;
  live[second] = 0xff; // an all-ones id: the function is not answering
  t.same(
    io.config.capabilities().map((c) => c.offset),
    [first],
  );
  // No capability list bit: nothing, even with a pointer in 0x34.
  live[0x06] = live[0x06]! & ~0x10;
  t.same(io.config.capabilities(), []);
});

t.test('the standard walk reads each capability header once', async (t) => {
  const dev = pciDevice({
    address: '0000:00:04.0',
    vendor: 1,
    device: 2,
    class: 0,
    pcie: true,
    bars: [{ index: 0, size: 1 << 14 }],
    irqs: { msi: 4, msix: 16, msixTableOffset: 0x2000, msixPbaOffset: 0x3000 },
  });
  const r = rig({ devices: [dev] });
  t.teardown(() => r.dispose());
  const { io } = r.open('0000:00:04.0');
  io.config.read8(0); // the config region is open
  const before = r.kernel.syscalls;
  const caps = io.config.capabilities();
  t.same(
    caps.map((c) => c.name),
    ['pcie', 'msi', 'msix'],
  );
  t.equal(r.kernel.syscalls - before, 2 + caps.length, 'status, the list pointer, then one read of id and next per capability');
});

t.test('a conventional device has no extended capabilities', async (t) => {
  const r = rig({ devices: [edu()] });
  t.teardown(() => r.dispose());
  const { io } = r.open();
  t.same(io.config.extendedCapabilities(), []);
  t.same(
    io.config.capabilities().map((c) => c.name),
    ['msi'],
  );
  t.equal(io.config.msix(), null);
});

t.test('after close config space is ECLOSED', async (t) => {
  const r = rig();
  t.teardown(() => r.dispose());
  const dev = r.open();
  const cfg = dev.io.config;
  t.equal(cfg.read16(0), 0x1234);
  dev.close();
  t.ok(cfg.closed);
  t.throws(() => cfg.read16(0), { code: 'ECLOSED' });
  t.throws(() => cfg.setBusMaster(true), { code: 'ECLOSED' });
  t.throws(() => cfg.capabilities(), { code: 'ECLOSED' });
});

t.test('a config space never touched before the device closed', async (t) => {
  const r = rig();
  t.teardown(() => r.dispose());
  const dev = r.open();
  const cfg = dev.io.config; // constructed, no I/O yet
  dev.handle.close();
  t.throws(() => cfg.read8(0), { code: 'ECLOSED' });
});
