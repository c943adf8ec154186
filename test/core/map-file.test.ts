// IOMMU_IOAS_MAP_FILE (Linux 6.13+): in cdev mode a shareable (memfd-backed)
// DMA buffer is mapped by file and offset, so that its pin follows the file;
// a kernel without it answers ENOTTY once and buffers are mapped by address
// from then on. Other buffers, and group mode, always map by address.
import t from 'tap';
import { IOMMU_IOAS_MAP, IOMMU_IOAS_MAP_FILE } from '../../lib/uapi/iommufd.js';
import { EDU, enableBusMaster, machine, NO_LEAKS } from './harness.js';

function maps(kernel: ReturnType<typeof machine>['kernel']): { file: number; address: number } {
  const ioctls = kernel.log.filter((r) => r.syscall === 'ioctl');
  return {
    file: ioctls.filter((r) => r.request === IOMMU_IOAS_MAP_FILE).length,
    address: ioctls.filter((r) => r.request === IOMMU_IOAS_MAP).length,
  };
}

t.test('6.13+: shareable buffers map by file, and the device sees the file pages', async (t) => {
  const { kernel, vfio } = machine('cdev', { release: '7.2.0', log: true });
  t.teardown(() => kernel.dispose());
  const dev = vfio.openDevice(EDU);
  t.equal(dev.container.mapsByFile, null, 'not tried yet');
  const plain = dev.container.allocDma(4096);
  t.same(maps(kernel), { file: 0, address: 1 }, 'a private buffer maps by address');
  const shared = dev.container.allocDma(8192, { shareable: true });
  t.equal(dev.container.mapsByFile, true);
  t.same(maps(kernel), { file: 1, address: 1 });
  shared.bytes.fill(0xc3, 4096, 4104);
  enableBusMaster(kernel, EDU);
  t.same([...kernel.device(EDU).dmaRead(shared.iova + 4096n, 8)], Array(8).fill(0xc3), 'DMA reaches the memfd pages');
  kernel.device(EDU).dmaWrite(shared.iova, Uint8Array.of(1, 2, 3));
  t.same([...shared.bytes.subarray(0, 3)], [1, 2, 3], 'and writes land in them');
  shared.free();
  plain.free();
  vfio.close();
  t.same(kernel.leaks(), NO_LEAKS);
});

t.test('before 6.13: one ENOTTY, then by address for good', async (t) => {
  const { kernel, vfio } = machine('cdev', { release: '6.12.0', log: true });
  t.teardown(() => kernel.dispose());
  const dev = vfio.openDevice(EDU);
  const a = dev.container.allocDma(4096, { shareable: true });
  t.equal(dev.container.mapsByFile, false);
  const b = dev.container.allocDma(4096, { shareable: true });
  t.same(maps(kernel), { file: 1, address: 2 }, 'MAP_FILE is tried once');
  enableBusMaster(kernel, EDU);
  b.bytes[0] = 0x77;
  t.equal(kernel.device(EDU).dmaRead(b.iova, 1)[0], 0x77);
  a.free();
  b.free();
  vfio.close();
  t.same(kernel.leaks(), NO_LEAKS);
});

t.test('group mode maps by address', async (t) => {
  const { kernel, vfio } = machine('group', { release: '7.2.0' });
  t.teardown(() => kernel.dispose());
  const dev = vfio.openDevice(EDU);
  dev.container.allocDma(4096, { shareable: true });
  t.equal(dev.container.mapsByFile, false);
  vfio.close();
  t.same(kernel.leaks(), NO_LEAKS);
});

t.test('a failing MAP_FILE (not ENOTTY) is reported and leaves nothing', async (t) => {
  const { kernel, vfio } = machine('cdev', { release: '7.2.0' });
  t.teardown(() => kernel.dispose());
  const dev = vfio.openDevice(EDU);
  kernel.failWhen({ syscall: 'ioctl', request: IOMMU_IOAS_MAP_FILE }, 'ENOMEM');
  t.throws(() => dev.container.allocDma(4096, { shareable: true }), { code: 'ENOMEM', request: 'IOMMU_IOAS_MAP_FILE' });
  t.equal(dev.container.mapsByFile, null, 'an error other than ENOTTY says nothing about support');
  vfio.close();
  t.same(kernel.leaks(), NO_LEAKS);
});
