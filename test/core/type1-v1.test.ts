// Group mode on a vfio_iommu_type1 that offers only Type1 (v1): the fake's
// `type1: 'v1'` option. The library uses Type1v2 only (lib/core/container/group.ts
// says why); on such a kernel it refuses group mode with a clear ENXIO and
// leaves nothing open. The fake's v1 rules (vfio_dma_do_unmap) are checked
// with raw ioctls: a request covering a mapping's first IOVA unmaps the whole
// mapping, however small the request (the size reported is what went), and a
// request starting inside a mapping unmaps nothing there (size 0) — where v2
// refuses both with EINVAL.
import t from 'tap';
import * as codec from '../../lib/uapi/codec.js';
import {
  vfio_iommu_type1_dma_map,
  vfio_iommu_type1_dma_unmap,
  VFIO_CHECK_EXTENSION,
  VFIO_DMA_MAP_FLAG_READ,
  VFIO_DMA_MAP_FLAG_WRITE,
  VFIO_GROUP_SET_CONTAINER,
  VFIO_IOMMU_MAP_DMA,
  VFIO_IOMMU_UNMAP_DMA,
  VFIO_SET_IOMMU,
  VFIO_TYPE1_IOMMU,
  VFIO_TYPE1v2_IOMMU,
} from '../../lib/uapi/vfio.js';
import { MAP_ANONYMOUS, MAP_PRIVATE, O_RDWR, PROT_READ, PROT_WRITE } from '../../lib/libc/sys.js';
import type { FakeKernel } from '../../lib/testing/index.js';
import { EDU, NO_LEAKS, machine, vfioErrorOf } from './harness.js';

const PAGE = 4096;

/** VFIO_IOMMU_MAP_DMA with raw ioctls (read + write). */
function rawMap(kernel: FakeKernel, containerFd: number, vaddr: bigint, iova: bigint, size: bigint): void {
  const arg = codec.alloc(vfio_iommu_type1_dma_map, {
    argsz: vfio_iommu_type1_dma_map.size,
    flags: VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE,
    vaddr,
    iova,
    size,
  });
  kernel.sys.ioctl(containerFd, VFIO_IOMMU_MAP_DMA, arg);
}

/** VFIO_IOMMU_UNMAP_DMA with raw ioctls: the size the kernel reports. */
function rawUnmap(kernel: FakeKernel, containerFd: number, iova: bigint, size: bigint): bigint {
  const arg = codec.alloc(vfio_iommu_type1_dma_unmap, { argsz: vfio_iommu_type1_dma_unmap.size, iova, size });
  kernel.sys.ioctl(containerFd, VFIO_IOMMU_UNMAP_DMA, arg);
  return codec.get(vfio_iommu_type1_dma_unmap, arg, 'size');
}

/** A container with group 3 in it and the IOMMU `type` set, with raw ioctls. */
function rawContainer(kernel: FakeKernel, type: number): { c: number; g: number } {
  const s = kernel.sys;
  const c = s.open(`${kernel.devRoot}/vfio/vfio`, O_RDWR);
  const g = s.open(`${kernel.devRoot}/vfio/3`, O_RDWR);
  const fdArg = new Uint8Array(4);
  new DataView(fdArg.buffer).setInt32(0, c, true);
  s.ioctl(g, VFIO_GROUP_SET_CONTAINER, fdArg);
  s.ioctlInt(c, VFIO_SET_IOMMU, type);
  return { c, g };
}

t.test('the fake: type1 "v1" offers VFIO_TYPE1_IOMMU only; SET_IOMMU of v2 is ENODEV', async (t) => {
  for (const type1 of [true, 'v1'] as const) {
    const { kernel, vfio } = machine('group', { type1 });
    const s = kernel.sys;
    const c = s.open(`${kernel.devRoot}/vfio/vfio`, O_RDWR);
    t.equal(s.ioctlInt(c, VFIO_CHECK_EXTENSION, VFIO_TYPE1_IOMMU), 1, `${type1}: Type1 offered`);
    t.equal(
      s.ioctlInt(c, VFIO_CHECK_EXTENSION, VFIO_TYPE1v2_IOMMU),
      type1 === 'v1' ? 0 : 1,
      `${type1}: Type1v2 offered only by the default driver`,
    );
    const g = s.open(`${kernel.devRoot}/vfio/3`, O_RDWR);
    const fdArg = new Uint8Array(4);
    new DataView(fdArg.buffer).setInt32(0, c, true);
    s.ioctl(g, VFIO_GROUP_SET_CONTAINER, fdArg);
    if (type1 === 'v1') t.throws(() => s.ioctlInt(c, VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU), { code: 'ENODEV' }, 'no driver for v2');
    s.ioctlInt(c, VFIO_SET_IOMMU, VFIO_TYPE1_IOMMU);
    s.close(g);
    s.close(c);
    vfio.close();
    t.same(kernel.leaks(), NO_LEAKS);
    kernel.dispose();
  }
});

t.test('the library refuses a kernel that offers only Type1 (v1): ENXIO naming Type1v2, nothing left open', async (t) => {
  const { kernel, vfio } = machine('group', { type1: 'v1' });
  t.teardown(() => kernel.dispose());
  t.match(
    vfioErrorOf(() => vfio.createContainer({ mode: 'group' })),
    { code: 'ENXIO', message: /no Type1v2 IOMMU/ },
    'createContainer',
  );
  t.match(
    vfioErrorOf(() => vfio.openDevice(EDU)),
    { code: 'ENXIO', message: /no Type1v2 IOMMU/ },
    'openDevice in the default container',
  );
  vfio.close();
  t.same(kernel.leaks(), NO_LEAKS);
});

t.test(
  "the fake, v1: an unmap covering a mapping's first IOVA unmaps it whole and says so; one starting inside unmaps nothing (0)",
  async (t) => {
    const { kernel } = machine('group', { type1: 'v1' });
    t.teardown(() => kernel.dispose());
    const { c, g } = rawContainer(kernel, VFIO_TYPE1_IOMMU);
    const mem = kernel.sys.mmap(2 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0n);
    rawMap(kernel, c, mem, 0x20000n, BigInt(2 * PAGE));
    t.equal(rawUnmap(kernel, c, 0x21000n, BigInt(PAGE)), 0n, 'starting inside the mapping: nothing, size 0');
    t.equal(rawUnmap(kernel, c, 0x20000n, BigInt(PAGE)), BigInt(2 * PAGE), 'covering its first IOVA: the whole 8 KiB, reported');
    t.equal(rawUnmap(kernel, c, 0x20000n, BigInt(2 * PAGE)), 0n, 'nothing left there');
    // The same requests on v2 are EINVAL (a partial unmap).
    const v2 = machine('group');
    t.teardown(() => v2.kernel.dispose());
    const r2 = rawContainer(v2.kernel, VFIO_TYPE1v2_IOMMU);
    const mem2 = v2.kernel.sys.mmap(2 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0n);
    rawMap(v2.kernel, r2.c, mem2, 0x20000n, BigInt(2 * PAGE));
    t.throws(() => rawUnmap(v2.kernel, r2.c, 0x21000n, BigInt(PAGE)), { code: 'EINVAL' }, 'v2: starting inside is EINVAL');
    t.throws(() => rawUnmap(v2.kernel, r2.c, 0x20000n, BigInt(PAGE)), { code: 'EINVAL' }, 'v2: splitting is EINVAL');
    t.equal(rawUnmap(v2.kernel, r2.c, 0x20000n, BigInt(2 * PAGE)), BigInt(2 * PAGE), 'v2: the exact range');
    for (const [k, r, m] of [
      [kernel, { c, g }, mem],
      [v2.kernel, r2, mem2],
    ] as const) {
      k.sys.munmap(m, 2 * PAGE);
      k.sys.close(r.g);
      k.sys.close(r.c);
      t.same(k.leaks(), NO_LEAKS);
    }
  },
);
