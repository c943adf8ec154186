// Group mode on a vfio_iommu_type1 that offers only Type1 (v1): the fake's
// `type1: 'v1'` option. The library prefers Type1v2 and falls back to Type1;
// these tests drive that fallback and v1's unmap rules (vfio_dma_do_unmap):
// a request covering a mapping's first IOVA unmaps the whole mapping, however
// small the request (the size reported is what went), and a request starting
// inside a mapping unmaps nothing there (size 0) — where v2 refuses both with
// EINVAL. The library must notice either answer when its books and the
// kernel's mappings differ.
import t from 'tap';
import * as codec from '../lib/uapi/codec.js';
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
} from '../lib/uapi/vfio.js';
import { MAP_ANONYMOUS, MAP_PRIVATE, O_RDWR, PROT_READ, PROT_WRITE } from '../lib/libc/sys.js';
import type { FakeKernel } from './fake/index.js';
import { EDU, EDU2, NO_LEAKS, enableBusMaster, machine, vfioErrorOf } from './core-harness.js';

const PAGE = 4096;

/** VFIO_IOMMU_MAP_DMA behind the library's back (read + write). */
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

/** VFIO_IOMMU_UNMAP_DMA behind the library's back: the size the kernel reports. */
function rawUnmap(kernel: FakeKernel, containerFd: number, iova: bigint, size: bigint): bigint {
  const arg = codec.alloc(vfio_iommu_type1_dma_unmap, { argsz: vfio_iommu_type1_dma_unmap.size, iova, size });
  kernel.sys.ioctl(containerFd, VFIO_IOMMU_UNMAP_DMA, arg);
  return codec.get(vfio_iommu_type1_dma_unmap, arg, 'size');
}

function containerFdOf(state: { readonly mode: string } & Partial<{ containerFd: number }>): number {
  if (state.containerFd === undefined) throw new Error(`not a group-mode container (${state.mode})`);
  return state.containerFd;
}

t.test('the fake: type1 "v1" offers VFIO_TYPE1_IOMMU only; SET_IOMMU of v2 is ENODEV', async (t) => {
  for (const type1 of [true, 'v1'] as const) {
    const { kernel, vfio } = machine('group', { type1 });
    const s = kernel.sys;
    const c = s.open(`${kernel.devRoot}/vfio/vfio`, O_RDWR);
    t.equal(s.ioctlInt(c, VFIO_CHECK_EXTENSION, VFIO_TYPE1_IOMMU), 1, `${type1}: Type1 offered`);
    t.equal(s.ioctlInt(c, VFIO_CHECK_EXTENSION, VFIO_TYPE1v2_IOMMU), type1 === 'v1' ? 0 : 1, `${type1}: Type1v2 offered only by the default driver`);
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

t.test('selects Type1 (v1) when v2 is not offered, and says so', async (t) => {
  for (const type1 of [true, 'v1'] as const) {
    const { kernel, vfio } = machine('group', { type1 });
    const dev = vfio.openDevice(EDU);
    const state = dev.container.kernelState;
    const want = type1 === 'v1' ? VFIO_TYPE1_IOMMU : VFIO_TYPE1v2_IOMMU;
    t.match(state, { mode: 'group', iommuType: want, iommuSet: true }, `${type1}: kernelState.iommuType ${want}`);
    // The kernel's own answer: only v1 lets an unmap start inside a mapping.
    const buf = dev.container.allocDma(2 * PAGE);
    const fd = containerFdOf(state);
    if (type1 === 'v1') t.equal(rawUnmap(kernel, fd, buf.iova + BigInt(PAGE), BigInt(PAGE)), 0n, 'v1 is what the kernel runs');
    else t.throws(() => rawUnmap(kernel, fd, buf.iova + BigInt(PAGE), BigInt(PAGE)), { code: 'EINVAL' }, 'v2 is what the kernel runs');
    const info = dev.container.iommuInfo();
    t.equal(info.granule, BigInt(PAGE), `${type1}: GET_INFO answers for either type`);
    t.ok(
      info.ranges.every((r) => r.last < 0xfee00000n || r.start > 0xfeefffffn),
      `${type1}: the MSI window is not an IOVA range`,
    );
    dev.release();
    vfio.close();
    t.same(kernel.leaks(), NO_LEAKS);
    kernel.dispose();
  }
});

t.test('v1: maps and unmaps DMA exactly, mappings side by side, across a group leaving and joining', async (t) => {
  const { kernel, vfio } = machine('group', { type1: 'v1' });
  t.teardown(() => kernel.dispose());
  let dev = vfio.openDevice(EDU);
  const c = dev.container;
  enableBusMaster(kernel, EDU);
  // Three buffers at adjacent IOVAs: unmapping the middle one must leave the
  // others (v1 unmaps whole mappings from the first IOVA asked).
  const a = c.allocDma(PAGE);
  const b = c.allocDma(2 * PAGE);
  const z = c.allocDma(PAGE);
  const bufs = [a, b, z];
  t.equal(b.iova, a.iova + BigInt(PAGE), 'adjacent IOVAs');
  t.equal(z.iova, b.iova + BigInt(2 * PAGE), 'adjacent IOVAs');
  bufs.forEach((buf, i) => buf.bytes.fill(0x10 + i));
  const pinnedBefore = kernel.pinnedPages;
  b.unmap();
  t.notOk(b.mapped);
  t.equal(kernel.pinnedPages, pinnedBefore - 2, 'exactly its two pages were unpinned');
  const d = kernel.device(EDU);
  t.equal(d.dmaRead(a.iova + BigInt(PAGE - 1), 1)[0], 0x10, 'the mapping below is intact');
  t.equal(d.dmaRead(z.iova, 1)[0], 0x12, 'the mapping above is intact');
  t.throws(() => d.dmaRead(a.iova + BigInt(PAGE), 1), { code: 'EFAULT' }, 'the unmapped range faults');
  const again = b.map();
  t.equal(again, a.iova + BigInt(PAGE), 'its IOVA range is handed out again');
  d.dmaWrite(again + 5n, Uint8Array.of(0xab));
  t.equal(b.bytes[5], 0xab, 'device DMA reaches the buffer');

  // The group leaves (the kernel drops the IOMMU) and joins again: the
  // library unmaps every buffer (exact sizes under v1) and maps them again.
  dev.release();
  t.equal(kernel.pinnedPages, 0, 'every mapping went with the group');
  dev = vfio.openDevice(EDU2);
  t.equal(dev.container, c, 'the same default container');
  t.equal(c.kernelState.mode === 'group' && c.kernelState.iommuType, VFIO_TYPE1_IOMMU, 'v1 set again');
  enableBusMaster(kernel, EDU2);
  const d2 = kernel.device(EDU2);
  for (const [i, buf] of bufs.entries()) {
    t.equal(d2.dmaRead(buf.iova, 1)[0], 0x10 + i, `buffer ${i} mapped again at its IOVA`);
  }
  c.unmapAll();
  t.equal(kernel.pinnedPages, 0, 'unmapAll unmapped each exactly');
  for (const buf of bufs) buf.free();
  dev.release();
  vfio.close();
  t.same(kernel.leaks(), NO_LEAKS);
});

t.test('v1: the unmap-size check catches an over-unmap (a bigger mapping at the IOVA)', async (t) => {
  const { kernel, vfio } = machine('group', { type1: 'v1' });
  t.teardown(() => kernel.dispose());
  const dev = vfio.openDevice(EDU);
  const c = dev.container;
  const buf = c.allocDma(PAGE);
  const iova = buf.iova;
  const fd = containerFdOf(c.kernelState);
  // Behind the library's back, its mapping is replaced by a bigger one at the
  // same IOVA (another user of the container fd).
  t.equal(rawUnmap(kernel, fd, iova, BigInt(PAGE)), BigInt(PAGE));
  const other = kernel.sys.mmap(2 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0n);
  rawMap(kernel, fd, other, iova, BigInt(2 * PAGE));
  const err = vfioErrorOf(() => buf.unmap());
  t.match(
    err,
    { code: 'EIO', syscall: 'ioctl', message: new RegExp(`asked to unmap 4096 bytes at IOVA 0x${iova.toString(16)}, the kernel unmapped 8192`) },
    'v1 unmapped the whole 8 KiB mapping: EIO names both sizes',
  );
  t.notOk(buf.mapped, 'the mapping is forgotten');
  enableBusMaster(kernel, EDU);
  t.throws(() => kernel.device(EDU).dmaRead(iova + BigInt(PAGE), 1), { code: 'EFAULT' }, 'the kernel really unmapped past the request');
  const next = c.allocDma(PAGE);
  t.not(next.iova, iova, 'the IOVA of the mismatched mapping is not handed out again');
  next.free();
  buf.free();
  kernel.sys.munmap(other, 2 * PAGE);
  dev.release();
  vfio.close();
  t.same(kernel.leaks(), NO_LEAKS);
});

t.test('v1: the unmap-size check catches an under-unmap (the request starts inside a mapping: size 0)', async (t) => {
  const { kernel, vfio } = machine('group', { type1: 'v1' });
  t.teardown(() => kernel.dispose());
  const dev = vfio.openDevice(EDU);
  const c = dev.container;
  const iova = 0x20000n;
  const buf = c.allocDma(PAGE, { iova });
  const fd = containerFdOf(c.kernelState);
  // Replaced by a mapping that starts a page lower and covers the buffer's IOVA.
  t.equal(rawUnmap(kernel, fd, iova, BigInt(PAGE)), BigInt(PAGE));
  const other = kernel.sys.mmap(2 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0n);
  rawMap(kernel, fd, other, iova - BigInt(PAGE), BigInt(2 * PAGE));
  const err = vfioErrorOf(() => buf.unmap());
  t.match(err, { code: 'EIO', message: /asked to unmap 4096 bytes at IOVA 0x20000, the kernel unmapped 0/ }, 'v1 answered success with size 0: EIO');
  t.notOk(buf.mapped, 'the mapping is forgotten');
  enableBusMaster(kernel, EDU);
  t.equal(kernel.device(EDU).dmaRead(iova, 1).length, 1, 'the other mapping is still there (v1 left it)');
  t.equal(rawUnmap(kernel, fd, iova - BigInt(PAGE), BigInt(2 * PAGE)), BigInt(2 * PAGE), 'its owner unmaps it whole');
  buf.free();
  kernel.sys.munmap(other, 2 * PAGE);
  dev.release();
  vfio.close();
  t.same(kernel.leaks(), NO_LEAKS);
});
