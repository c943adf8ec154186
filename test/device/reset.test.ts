// Function reset and PCI hot reset on the fake kernel, in both argument forms.
import t from 'tap';
import { edu, pciDevice } from '../../lib/testing/index.js';
import { rig } from './fixture.js';
import { VFIO_DEVICE_PCI_HOT_RESET, VFIO_DEVICE_RESET } from '../../lib/uapi/vfio.js';

const A = '0000:00:03.0';
const B = '0000:00:04.0';

/** Two devices on one bus (one hot-reset scope), each in its own IOMMU group. */
function pair() {
  return [
    edu({ hotResetGroup: 'bus1' }),
    pciDevice({ address: B, vendor: 0x1af4, device: 0x1000, class: 0x020000, hotResetGroup: 'bus1', bars: [{ index: 0, size: 4096 }] }),
  ];
}

t.test('function reset', async (t) => {
  // A device with a function-level reset whose state is its BAR memory (edu's
  // registers survive a reset, as on QEMU: it has no reset handler).
  const r = rig({
    devices: [pciDevice({ address: A, vendor: 0x8086, device: 0x10d3, class: 0x020000, pcie: true, bars: [{ index: 0, size: 0x80000 }] })],
    log: true,
  });
  t.teardown(() => r.dispose());
  const { io } = r.open();
  const bar = io.mapBar(0);
  bar.write32(0x40000, 0xdead);
  const before = r.kernel.device(A).resets;
  io.reset();
  t.equal(r.kernel.device(A).resets, before + 1);
  t.equal(bar.read32(0x40000), 0, 'the device state was reset; the mapping still works');
});

t.test('function reset on a device without one: ENOTSUP, no ioctl', async (t) => {
  const r = rig({ devices: [edu({ reset: false })], log: true });
  t.teardown(() => r.dispose());
  const { io } = r.open();
  t.throws(() => io.reset(), { code: 'ENOTSUP', device: A });
  t.equal(r.kernel.log.filter((c) => c.request === VFIO_DEVICE_RESET).length, 0);
});

t.test('hot reset info: no slot or bus reset is ENODEV', async (t) => {
  const r = rig();
  t.teardown(() => r.dispose());
  const { io } = r.open();
  t.throws(() => io.hotResetInfo(), { code: 'ENODEV', request: 'VFIO_DEVICE_GET_PCI_HOT_RESET_INFO' });
  t.throws(() => io.hotReset(), { code: 'ENODEV' });
});

t.test('group mode: info lists groups; reset passes the affected groups', async (t) => {
  const r = rig({ mode: 'group', devices: pair(), log: true });
  t.teardown(() => r.dispose());
  const a = r.open(A);
  const info = a.io.hotResetInfo();
  t.equal(info.byDevid, false);
  t.same(
    info.devices.map((d) => [d.address, d.groupId, d.slot, d.function]),
    [
      [A, 3, 3, 0],
      [B, 4, 4, 0],
    ],
  );
  // Only group 3 is open: group 4's device would be reset without proof of ownership.
  t.throws(() => a.io.hotReset(), { code: 'EPERM', message: /0000:00:04\.0 in IOMMU group 4/ });
  t.equal(r.kernel.log.filter((c) => c.request === VFIO_DEVICE_PCI_HOT_RESET).length, 0, 'refused before the ioctl');
  r.open(B);
  const resets = [r.kernel.device(A).resets, r.kernel.device(B).resets];
  a.io.hotReset();
  t.same([r.kernel.device(A).resets, r.kernel.device(B).resets], [resets[0]! + 1, resets[1]! + 1]);
});

t.test('cdev mode: info lists devids; reset passes the empty group-fd array', async (t) => {
  const r = rig({ mode: 'cdev', devices: pair() });
  t.teardown(() => r.dispose());
  const a = r.open(A);
  const lone = a.io.hotResetInfo();
  t.equal(lone.byDevid, true);
  t.equal(lone.allOwned, false);
  t.match(lone.devices, [
    { address: A, owned: true, groupId: null },
    { address: B, owned: false, devid: null },
  ]);
  t.ok((lone.devices[0]!.devid ?? 0) > 0, 'our own device has a devid');
  t.throws(() => a.io.hotReset(), { code: 'EPERM', message: /0000:00:04\.0 not bound to this iommufd/ });
  r.open(B);
  const both = a.io.hotResetInfo();
  t.equal(both.allOwned, true);
  t.ok(both.devices.every((d) => d.owned === true && (d.devid ?? 0) > 0));
  const resets = [r.kernel.device(A).resets, r.kernel.device(B).resets];
  a.io.hotReset();
  t.same([r.kernel.device(A).resets, r.kernel.device(B).resets], [resets[0]! + 1, resets[1]! + 1]);
});

t.test('reset calls after close are ECLOSED', async (t) => {
  const r = rig({ devices: pair() });
  t.teardown(() => r.dispose());
  const a = r.open(A);
  a.close();
  t.throws(() => a.io.reset(), { code: 'ECLOSED' });
  t.throws(() => a.io.hotResetInfo(), { code: 'ECLOSED' });
  t.throws(() => a.io.hotReset(), { code: 'ECLOSED' });
});
