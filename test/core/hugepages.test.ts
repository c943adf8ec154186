// DMA buffers on 2 MiB huge pages: when the system has them, and the fallback
// to normal pages when it has none.
import t from 'tap';
import { HUGE_PAGE_SIZE } from '../../lib/core/dma.js';
import { EDU, MODES, NO_LEAKS, machine } from './harness.js';

const MB2 = BigInt(HUGE_PAGE_SIZE);

for (const mode of MODES) {
  t.test(`${mode}: huge pages when free, normal pages when not`, async (t) => {
    const { kernel, vfio } = machine(mode, { hugepages: 2, memlockLimit: 64 << 20 });
    t.teardown(() => kernel.dispose());
    const dev = vfio.openDevice(EDU);
    const c = dev.container;
    const huge = c.allocDma(4096, { hugepages: true });
    t.equal(huge.hugepages, true, 'backed by a huge page');
    t.equal(huge.size, HUGE_PAGE_SIZE, 'size rounded up to 2 MiB');
    t.equal(huge.vaddr % MB2, 0n, 'the mapping starts on a huge page');
    if (mode !== 'noiommu') t.equal(huge.iova % MB2, 0n, '2 MiB-aligned IOVA by default');
    const shared = c.allocDma(HUGE_PAGE_SIZE, { hugepages: true, shareable: true });
    t.equal(shared.hugepages, true, 'a shareable buffer gets huge pages too (hugetlb memfd)');
    t.equal(shared.shareable, true);
    // Both huge pages are in use: the next buffer falls back.
    const normal = c.allocDma(4096, { hugepages: true });
    t.equal(normal.hugepages, false, 'none free: normal pages');
    t.equal(normal.size, 4096);
    const plain = c.allocDma(4096);
    t.equal(plain.hugepages, false, 'not asked: normal pages');
    for (const b of [huge, shared, normal, plain]) b.free();
    const again = c.allocDma(4096, { hugepages: true });
    t.equal(again.hugepages, true, 'freed huge pages are free again');
    again.free();
    vfio.close();
    t.same(kernel.leaks(), NO_LEAKS);
  });
}

t.test('an error other than "no huge page free" is not hidden by the fallback', async (t) => {
  const { kernel, vfio } = machine('cdev', { hugepages: 2 });
  t.teardown(() => kernel.dispose());
  const c = vfio.openDevice(EDU).container;
  kernel.failWhen({ syscall: 'mlock' }, 'EAGAIN', { times: 1 });
  t.throws(() => c.allocDma(4096, { hugepages: true }), { code: 'EAGAIN' });
  vfio.close();
  t.same(kernel.leaks(), NO_LEAKS);
});
