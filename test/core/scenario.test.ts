// The same user program in every mode: open a device, read its info, map and
// unmap DMA (or get a physical address), release, close. Plus two devices in
// one group and two devices in two containers.
import t from 'tap';
import { edu, FakeKernel } from '../../lib/testing/index.js';
import { createVfio } from '../../lib/core/context.js';
import { EDU, EDU2, MODES, NO_LEAKS, enableBusMaster, machine } from './harness.js';

for (const mode of MODES) {
  t.test(`${mode}: open, info, DMA, release, close`, async (t) => {
    const { kernel, vfio } = machine(mode);
    t.teardown(() => kernel.dispose());

    t.equal(vfio.getMode(EDU), mode, 'getMode sees the machine');
    const info = vfio.getDeviceInfo(EDU);
    t.ok(info.pci, 'a PCI device');
    t.ok(info.numRegions >= 9, 'PCI regions');
    t.ok(info.numIrqs >= 5, 'PCI IRQ indexes');
    t.same(kernel.leaks(), NO_LEAKS, 'getDeviceInfo leaves nothing set up');

    const before = kernel.syscalls;
    const dev = vfio.openDevice('00:03.0');
    t.equal(dev.address, EDU, 'short address accepted and canonicalised');
    t.equal(dev.container.mode, mode);
    t.equal(dev.container.dmaMode, mode === 'noiommu' ? 'identity' : 'iommu');
    const opened = kernel.syscalls - before;
    t.same(dev.getInfo(), info, 'the same info from the open device');
    t.equal(kernel.syscalls - before, opened + 1, 'getInfo is one ioctl; opening fetched no info');

    enableBusMaster(kernel, EDU);
    const buf = dev.container.allocDma(4096, { dmaLimit: 1n << 28n });
    t.ok(buf.iova + BigInt(buf.size) <= 1n << 28n, 'the buffer lies below the DMA limit');
    buf.bytes.fill(0xab);
    t.same([...kernel.device(EDU).dmaRead(buf.iova, 4)], [0xab, 0xab, 0xab, 0xab], 'the device reads the buffer at its IOVA');
    kernel.device(EDU).dmaWrite(buf.iovaAt(8), Uint8Array.of(1, 2, 3));
    t.same([...buf.bytes.subarray(8, 11)], [1, 2, 3], 'the device writes the buffer at its IOVA');

    if (mode === 'noiommu') {
      t.throws(() => dev.container.iommuInfo(), { code: 'ENOTSUP' }, 'no IOVA ranges without an IOMMU');
      t.throws(() => dev.container.allocDma(4096, { iova: 0x100000n }), { code: 'ENOTSUP' }, 'no chosen IOVA without an IOMMU');
    } else {
      const iommu = dev.container.iommuInfo();
      t.ok(iommu.ranges.length >= 1, 'IOVA ranges');
      t.equal(iommu.granule, 4096n, 'IOMMU page size');
      const iova = buf.iova;
      buf.unmap();
      t.notOk(buf.mapped);
      t.throws(() => kernel.device(EDU).dmaRead(iova, 4), 'after unmap the device faults');
      const at = buf.map({ iova: 0x200000n });
      t.equal(at, 0x200000n, 'mapped again at a chosen IOVA');
      t.same([...kernel.device(EDU).dmaRead(0x200000n, 2)], [0xab, 0xab]);
    }
    buf.free();
    t.throws(() => buf.bytes, { code: 'ECLOSED' }, 'bytes are guarded after free');
    dev.release();
    t.throws(() => dev.fd, { code: 'ECLOSED' });
    vfio.close();
    t.same(kernel.leaks(), NO_LEAKS, 'nothing leaked');
    t.throws(() => vfio.openDevice(EDU), { code: 'ECLOSED' });
  });

  t.test(`${mode}: two devices in one group share the group and its container`, async (t) => {
    if (mode === 'noiommu') {
      t.pass('no-IOMMU groups hold one device each (as in Linux)');
      return;
    }
    const kernel = new FakeKernel({ mode, devices: [edu(), edu({ address: EDU2, group: 3 })] });
    t.teardown(() => kernel.dispose());
    const vfio = createVfio({ sys: kernel.sys, sysfs: kernel.sysfsRoot, dev: kernel.devRoot, proc: kernel.procRoot, env: {} });
    const a = vfio.openDevice(EDU);
    const b = vfio.openDevice(EDU2);
    t.equal(a.container, b.container, 'one container');
    const state = a.container.kernelState;
    if (state.mode === 'group') {
      t.equal(state.groups.length, 1, 'one group fd');
      t.same([...state.groups[0]!.devices].sort(), [EDU, EDU2]);
    }
    enableBusMaster(kernel, EDU2);
    const buf = a.container.allocDma(8192);
    buf.bytes[0] = 7;
    t.equal(kernel.device(EDU2).dmaRead(buf.iova, 1)[0], 7, 'both devices see the mapping');
    a.release();
    t.equal(kernel.device(EDU2).dmaRead(buf.iova, 1)[0], 7, 'the group stays while one device is open');
    const during = b.container.kernelState;
    if (during.mode === 'group') t.equal(during.groups.length, 1);
    b.release();
    const after = b.container.kernelState;
    if (after.mode === 'group') {
      t.equal(after.groups.length, 0, 'the group left with its last device');
      t.notOk(after.iommuSet, 'and the IOMMU with it');
    }
    t.ok(buf.mapped, 'the buffer keeps its IOVA: mappings belong to the container');
    const iova = buf.iova;
    const c = vfio.openDevice(EDU);
    enableBusMaster(kernel, EDU);
    t.equal(kernel.device(EDU).dmaRead(iova, 1)[0], 7, 'mapped again when a group joins');
    buf.free();
    c.release();
    vfio.close();
    t.same(kernel.leaks(), NO_LEAKS);
  });

  t.test(`${mode}: two devices in two containers`, async (t) => {
    const { kernel, vfio } = machine(mode);
    t.teardown(() => kernel.dispose());
    const other = vfio.createContainer({ mode });
    other.assignDevice(EDU2);
    const opens = kernel.device(EDU2).openCount;
    const b = vfio.openDevice(EDU2);
    t.equal(kernel.device(EDU2).openCount, opens, 'openDevice reuses the assigned setup');
    t.equal(b.container, other, 'lands in the container it was assigned to');
    const a = vfio.openDevice(EDU);
    t.not(a.container, other, 'the other device goes to the default container');
    t.equal(a.container, vfio.defaultContainer);
    const ba = a.container.allocDma(4096);
    const bb = other.allocDma(4096);
    enableBusMaster(kernel, EDU);
    enableBusMaster(kernel, EDU2);
    ba.bytes[0] = 1;
    bb.bytes[0] = 2;
    t.equal(kernel.device(EDU).dmaRead(ba.iova, 1)[0], 1);
    t.equal(kernel.device(EDU2).dmaRead(bb.iova, 1)[0], 2);
    if (mode !== 'noiommu') {
      // Each device only reaches its own container's mappings.
      if (ba.iova !== bb.iova) t.throws(() => kernel.device(EDU).dmaRead(bb.iova, 1), 'isolated');
      else t.equal(kernel.device(EDU).dmaRead(bb.iova, 1)[0], 1, 'same IOVA, different memory');
    }
    other.close();
    t.ok(b.closed, 'closing the container closed its device');
    t.throws(() => bb.bytes, { code: 'ECLOSED' }, 'and its buffers');
    t.throws(() => other.allocDma(4096), { code: 'ECLOSED' });
    t.throws(() => b.getInfo(), { code: 'ECLOSED' });
    vfio.close();
    t.same(kernel.leaks(), NO_LEAKS);
  });
}
