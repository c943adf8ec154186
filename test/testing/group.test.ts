// The legacy interface of the fake kernel: /dev/vfio/vfio containers,
// /dev/vfio/N groups, the Type1 and no-IOMMU drivers, device fds from groups.
import t, { type Test } from 'tap';
import { MAP_POPULATE, O_RDONLY, O_RDWR } from '../../lib/libc/sys.js';
import { alloc, capabilities, get, read } from '../../lib/uapi/codec.js';
import * as V from '../../lib/uapi/vfio.js';
import { type FakeKernel, edu, pciDevice, type FakeKernelOptions } from '../../lib/testing/index.js';
import { ANON, E, RW, freshKernel, intArg } from './harness.js';

const fresh = (t: Test, opts: FakeKernelOptions = {}): FakeKernel => freshKernel(t, { mode: 'group', ...opts });

function name(addr: string): Uint8Array {
  return Buffer.from(`${addr}\0`);
}

function status(k: FakeKernel, group: number): number {
  const st = alloc(V.vfio_group_status, { argsz: V.vfio_group_status.size });
  k.sys.ioctl(group, V.VFIO_GROUP_GET_STATUS, st);
  return get(V.vfio_group_status, st, 'flags');
}

/** container + group 3 in it + Type1v2 set. */
function setUp(k: FakeKernel, groupNode = '3'): { c: number; g: number } {
  const c = k.sys.open(`${k.devRoot}/vfio/vfio`, O_RDWR);
  const g = k.sys.open(`${k.devRoot}/vfio/${groupNode}`, O_RDWR);
  k.sys.ioctl(g, V.VFIO_GROUP_SET_CONTAINER, intArg(c));
  return { c, g };
}

function mapDma(
  k: FakeKernel,
  c: number,
  vaddr: bigint,
  iova: bigint,
  size: bigint,
  flags = V.VFIO_DMA_MAP_FLAG_READ | V.VFIO_DMA_MAP_FLAG_WRITE,
): void {
  k.sys.ioctl(
    c,
    V.VFIO_IOMMU_MAP_DMA,
    alloc(V.vfio_iommu_type1_dma_map, { argsz: V.vfio_iommu_type1_dma_map.size, flags, vaddr, iova, size }),
  );
}

function unmapDma(k: FakeKernel, c: number, iova: bigint, size: bigint, flags = 0): bigint {
  const u = alloc(V.vfio_iommu_type1_dma_unmap, { argsz: V.vfio_iommu_type1_dma_unmap.size, flags, iova, size });
  k.sys.ioctl(c, V.VFIO_IOMMU_UNMAP_DMA, u);
  return get(V.vfio_iommu_type1_dma_unmap, u, 'size');
}

t.test('container: API version, extensions, SET_IOMMU ordering (container.c)', async (t) => {
  const k = fresh(t);
  const s = k.sys;
  const c = s.open(`${k.devRoot}/vfio/vfio`, O_RDWR);
  t.equal(s.ioctlInt(c, V.VFIO_GET_API_VERSION, 0), V.VFIO_API_VERSION);
  t.equal(s.ioctlInt(c, V.VFIO_CHECK_EXTENSION, V.VFIO_TYPE1v2_IOMMU), 1);
  t.equal(s.ioctlInt(c, V.VFIO_CHECK_EXTENSION, V.VFIO_TYPE1_IOMMU), 1);
  t.equal(s.ioctlInt(c, V.VFIO_CHECK_EXTENSION, V.VFIO_NOIOMMU_IOMMU), 0, 'no-IOMMU only when enable_unsafe_noiommu_mode is Y');
  t.equal(s.ioctlInt(c, V.VFIO_CHECK_EXTENSION, 12345), 0);
  // SET_IOMMU needs a group first: the container is unprivileged until then.
  t.throws(() => s.ioctlInt(c, V.VFIO_SET_IOMMU, V.VFIO_TYPE1v2_IOMMU), { code: 'EINVAL', syscall: 'ioctl' });
  // Without an IOMMU driver every other request is EINVAL, not ENOTTY.
  t.throws(() => mapDma(k, c, 0n, 0n, 4096n), { code: 'EINVAL' });
  t.throws(() => s.ioctlInt(c, 0x3bff, 0), { code: 'EINVAL' });
  const g = s.open(`${k.devRoot}/vfio/3`, O_RDWR);
  s.ioctl(g, V.VFIO_GROUP_SET_CONTAINER, intArg(c));
  t.throws(() => s.ioctlInt(c, V.VFIO_SET_IOMMU, V.VFIO_SPAPR_TCE_IOMMU), { code: 'ENODEV' }, 'no driver for that type');
  t.throws(() => s.ioctlInt(c, V.VFIO_SET_IOMMU, V.VFIO_NOIOMMU_IOMMU), { code: 'ENODEV' }, 'no-IOMMU disabled');
  t.equal(s.ioctlInt(c, V.VFIO_SET_IOMMU, V.VFIO_TYPE1v2_IOMMU), 0);
  t.throws(() => s.ioctlInt(c, V.VFIO_SET_IOMMU, V.VFIO_TYPE1v2_IOMMU), { code: 'EINVAL' }, 'only once');
  t.equal(s.ioctlInt(c, V.VFIO_CHECK_EXTENSION, V.VFIO_DMA_CC_IOMMU), 1, 'asked of the driver now set');
  t.throws(() => s.ioctlInt(c, 0x3bff, 0), { code: 'ENOTTY' }, 'type1 answers ENOTTY to what it does not know');
  s.close(g);
  t.throws(() => mapDma(k, c, 0n, 0n, 4096n), { code: 'EINVAL' }, 'the last group leaving unsets the IOMMU');
  s.close(c);
  t.same(k.leaks(), { fds: 0, mappings: 0, pinned: 0 });
});

t.test('group: status, single open, SET/UNSET_CONTAINER, GET_DEVICE_FD errors (group.c)', async (t) => {
  const k = fresh(t, { devices: [edu(), edu({ address: '0000:00:04.0', group: 3 })] });
  const s = k.sys;
  const g = s.open(`${k.devRoot}/vfio/3`, O_RDWR);
  t.throws(() => s.open(`${k.devRoot}/vfio/3`, O_RDWR), { code: 'EBUSY' }, 'a group opens once');
  const small = alloc(V.vfio_group_status, { argsz: 4 });
  t.throws(() => s.ioctl(g, V.VFIO_GROUP_GET_STATUS, small), { code: 'EINVAL' });
  t.throws(() => s.ioctl(g, V.VFIO_GROUP_GET_STATUS, new Uint8Array(4)), { code: 'EFAULT' }, 'buffer shorter than minsz');
  t.equal(status(k, g), V.VFIO_GROUP_FLAGS_VIABLE);
  t.throws(() => s.ioctl(g, V.VFIO_GROUP_GET_DEVICE_FD, name('0000:00:03.0')), { code: 'EINVAL' }, 'no container');
  t.throws(() => s.ioctlInt(g, V.VFIO_GROUP_UNSET_CONTAINER, 0), { code: 'EINVAL' }, 'nothing to unset');
  t.throws(() => s.ioctl(g, V.VFIO_GROUP_SET_CONTAINER, intArg(99)), { code: 'EBADF' });
  const efd = s.eventfd(0, 0);
  t.throws(() => s.ioctl(g, V.VFIO_GROUP_SET_CONTAINER, intArg(efd)), E('EBADFD'));
  const c = s.open(`${k.devRoot}/vfio/vfio`, O_RDWR);
  s.ioctl(g, V.VFIO_GROUP_SET_CONTAINER, intArg(c));
  t.throws(() => s.ioctl(g, V.VFIO_GROUP_SET_CONTAINER, intArg(c)), { code: 'EINVAL' }, 'already in a container (the kernel says EINVAL)');
  t.equal(status(k, g), V.VFIO_GROUP_FLAGS_VIABLE | V.VFIO_GROUP_FLAGS_CONTAINER_SET);
  t.throws(() => s.ioctl(g, V.VFIO_GROUP_GET_DEVICE_FD, name('0000:00:03.0')), { code: 'EINVAL' }, 'no IOMMU set yet');
  s.ioctlInt(c, V.VFIO_SET_IOMMU, V.VFIO_TYPE1v2_IOMMU);
  t.throws(() => s.ioctl(g, V.VFIO_GROUP_GET_DEVICE_FD, name('0000:00:09.0')), { code: 'ENODEV' });
  t.throws(() => s.ioctl(g, V.VFIO_GROUP_GET_DEVICE_FD, Buffer.from('0000:00:03.0')), { code: 'EFAULT' }, 'no NUL inside the buffer');
  const d1 = s.ioctl(g, V.VFIO_GROUP_GET_DEVICE_FD, name('0000:00:03.0'));
  const d2 = s.ioctl(g, V.VFIO_GROUP_GET_DEVICE_FD, name('0000:00:04.0'));
  const d1b = s.ioctl(g, V.VFIO_GROUP_GET_DEVICE_FD, name('0000:00:03.0'));
  t.ok(d1b > d2, 'the group path may open a device twice');
  t.equal(k.device('0000:00:03.0').openCount, 2);
  t.throws(() => s.ioctlInt(g, V.VFIO_GROUP_UNSET_CONTAINER, 0), { code: 'EBUSY' }, 'devices are open');
  t.throws(() => s.ioctlInt(g, 0x3bff, 0), { code: 'ENOTTY' });
  for (const d of [d1, d2, d1b]) s.close(d);
  t.equal(k.device('0000:00:03.0').openCount, 0);
  t.equal(s.ioctlInt(g, V.VFIO_GROUP_UNSET_CONTAINER, 0), 0);
  t.equal(status(k, g), V.VFIO_GROUP_FLAGS_VIABLE);
  for (const fd of [g, c, efd]) s.close(fd);
  t.same(k.leaks(), { fds: 0, mappings: 0, pinned: 0 });
});

t.test('group: not viable with a device on a kernel driver, EPERM on SET_CONTAINER', async (t) => {
  const nic = pciDevice({ address: '0000:00:05.0', group: 3, vendor: 0x8086, device: 0x10d3, class: 0x020000, driver: 'e1000e' });
  const k = fresh(t, { devices: [edu(), nic] });
  const s = k.sys;
  const g = s.open(`${k.devRoot}/vfio/3`, O_RDWR);
  t.equal(status(k, g), 0, 'not viable');
  const c = s.open(`${k.devRoot}/vfio/vfio`, O_RDWR);
  t.throws(() => s.ioctl(g, V.VFIO_GROUP_SET_CONTAINER, intArg(c)), { code: 'EPERM' });
  t.throws(() => s.ioctl(g, V.VFIO_GROUP_GET_DEVICE_FD, name('0000:00:05.0')), { code: 'ENODEV' }, 'not a VFIO device');
  s.close(g);
  s.close(c);
});

t.test('type1: MAP_DMA / UNMAP_DMA semantics and pinning (vfio_iommu_type1.c)', async (t) => {
  const k = fresh(t);
  const s = k.sys;
  const { c, g } = setUp(k);
  s.ioctlInt(c, V.VFIO_SET_IOMMU, V.VFIO_TYPE1v2_IOMMU);
  const buf = s.mmap(4 * 4096, RW, ANON, -1, 0n);
  t.throws(() => mapDma(k, c, buf + 1n, 0x100000n, 4096n), { code: 'EINVAL' }, 'unaligned vaddr');
  t.throws(() => mapDma(k, c, buf, 0x100001n, 4096n), { code: 'EINVAL' }, 'unaligned iova');
  t.throws(() => mapDma(k, c, buf, 0x100000n, 100n), { code: 'EINVAL' }, 'unaligned size');
  t.throws(() => mapDma(k, c, buf, 0x100000n, 0n), { code: 'EINVAL' }, 'zero size');
  t.throws(() => mapDma(k, c, buf, 0x100000n, 4096n, 0), { code: 'EINVAL' }, 'neither READ nor WRITE');
  t.throws(() => mapDma(k, c, buf, 0x100000n, 4096n, 0x80), { code: 'EINVAL' }, 'unknown flag');
  t.throws(() => mapDma(k, c, 0x7e0000000000n, 0x100000n, 4096n), { code: 'EFAULT' }, 'vaddr not mapped');
  t.throws(() => mapDma(k, c, buf, 0xfee00000n, 4096n), { code: 'EINVAL' }, 'the MSI window is not a valid IOVA range');
  t.throws(() => mapDma(k, c, buf, 1n << 48n, 4096n), { code: 'EINVAL' }, 'beyond the aperture');
  t.throws(
    () => s.ioctl(c, V.VFIO_IOMMU_MAP_DMA, alloc(V.vfio_iommu_type1_dma_map, { argsz: 8, flags: 3, vaddr: buf, iova: 0n, size: 4096n })),
    { code: 'EINVAL' },
    'argsz below minsz',
  );
  mapDma(k, c, buf, 0x100000n, 2n * 4096n);
  t.equal(k.leaks().pinned, 2, 'mapped pages are pinned');
  t.throws(() => mapDma(k, c, buf + 8192n, 0x101000n, 4096n), { code: 'EEXIST' }, 'overlapping IOVA');
  mapDma(k, c, buf + 8192n, 0x102000n, 2n * 4096n);
  t.throws(() => unmapDma(k, c, 0x101000n, 4096n), { code: 'EINVAL' }, 'v2: may not bisect a mapping');
  t.equal(unmapDma(k, c, 0x200000n, 4096n), 0n, 'nothing there: success, size 0');
  t.equal(unmapDma(k, c, 0x100000n, 4n * 4096n), 4n * 4096n, 'the size unmapped is reported');
  t.equal(k.leaks().pinned, 0);
  mapDma(k, c, buf, 0x100000n, 4096n);
  t.throws(() => unmapDma(k, c, 0x1000n, 4096n, V.VFIO_DMA_UNMAP_FLAG_ALL), { code: 'EINVAL' }, 'ALL needs iova 0 size 0');
  t.equal(unmapDma(k, c, 0n, 0n, V.VFIO_DMA_UNMAP_FLAG_ALL), 4096n);
  s.munmap(buf, 4 * 4096);
  s.close(g);
  s.close(c);
  t.same(k.leaks(), { fds: 0, mappings: 0, pinned: 0 });
});

t.test('type1 (v1): unmapping from inside a mapping unmaps nothing', async (t) => {
  const k = fresh(t);
  const { c, g } = setUp(k);
  k.sys.ioctlInt(c, V.VFIO_SET_IOMMU, V.VFIO_TYPE1_IOMMU);
  const buf = k.sys.mmap(2 * 4096, RW, ANON, -1, 0n);
  mapDma(k, c, buf, 0x10000n, 8192n);
  t.equal(unmapDma(k, c, 0x11000n, 4096n), 0n);
  t.equal(unmapDma(k, c, 0x10000n, 4096n), 8192n, 'covering the first IOVA unmaps it all');
  k.sys.munmap(buf, 8192);
  k.sys.close(g);
  k.sys.close(c);
});

t.test('type1: IOMMU_GET_INFO argsz handling and capability chain', async (t) => {
  const k = fresh(t, { dmaEntryLimit: 10 });
  const s = k.sys;
  const { c, g } = setUp(k);
  s.ioctlInt(c, V.VFIO_SET_IOMMU, V.VFIO_TYPE1v2_IOMMU);
  const L = V.vfio_iommu_type1_info;
  t.throws(() => s.ioctl(c, V.VFIO_IOMMU_GET_INFO, alloc(L, { argsz: 8 })), { code: 'EINVAL' });
  const short = alloc(L, { argsz: L.size });
  s.ioctl(c, V.VFIO_IOMMU_GET_INFO, short);
  const need = get(L, short, 'argsz');
  t.ok(need > L.size, 'argsz grows to fit the capabilities');
  t.equal(get(L, short, 'flags'), V.VFIO_IOMMU_INFO_PGSIZES | V.VFIO_IOMMU_INFO_CAPS);
  t.equal(get(L, short, 'cap_offset'), 0, 'no chain when it does not fit');
  t.equal(get(L, short, 'iova_pgsizes'), 0x40201000n);
  const full = alloc(L, { argsz: need }, need - L.size);
  s.ioctl(c, V.VFIO_IOMMU_GET_INFO, full);
  const caps = [...capabilities(full, get(L, full, 'cap_offset'))];
  t.same(
    caps.map((x) => x.id),
    [V.VFIO_IOMMU_TYPE1_INFO_CAP_MIGRATION, V.VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL, V.VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE],
  );
  t.ok(
    caps.every((x) => x.offset % 8 === 0),
    'capabilities are 8-byte aligned',
  );
  const avail = caps[1]!;
  t.equal(get(V.vfio_iommu_type1_info_dma_avail, full, 'avail', avail.offset), 10);
  const R = V.vfio_iommu_type1_info_cap_iova_range;
  const ranges = caps[2]!;
  const n = get(R, full, 'nr_iovas', ranges.offset);
  const list = Array.from({ length: n }, (_, i) => read(V.vfio_iova_range, full, ranges.offset + R.size + i * V.vfio_iova_range.size));
  t.same(list, [
    { start: 0n, end: 0xfedfffffn },
    { start: 0xfef00000n, end: (1n << 48n) - 1n },
  ]);
  const buf = s.mmap(4096, RW, ANON, -1, 0n);
  mapDma(k, c, buf, 0x1000n, 4096n);
  s.ioctl(c, V.VFIO_IOMMU_GET_INFO, full);
  t.equal(get(V.vfio_iommu_type1_info_dma_avail, full, 'avail', avail.offset), 9, 'each mapping takes one entry');
  s.munmap(buf, 4096);
  s.close(g);
  t.equal(k.leaks().pinned, 0, 'the last group leaving releases every mapping');
  s.close(c);
});

t.test('type1: ENOSPC at dma_entry_limit, ENOMEM over RLIMIT_MEMLOCK for non-root', async (t) => {
  const k = fresh(t, { dmaEntryLimit: 1, uid: 1000, memlockLimit: 4096 });
  const s = k.sys;
  const { c, g } = setUp(k);
  s.ioctlInt(c, V.VFIO_SET_IOMMU, V.VFIO_TYPE1v2_IOMMU);
  const buf = s.mmap(3 * 4096, RW, ANON, -1, 0n);
  t.throws(() => mapDma(k, c, buf, 0x1000n, 8192n), { code: 'ENOMEM' });
  mapDma(k, c, buf, 0x1000n, 4096n);
  t.throws(() => mapDma(k, c, buf, 0x10000n, 4096n), { code: 'ENOSPC' });
  s.munmap(buf, 3 * 4096);
  t.equal(k.leaks().pinned, 1, 'munmap does not unpin: the IOMMU mapping keeps the page');
  s.close(g);
  s.close(c);
  t.same(k.leaks(), { fds: 0, mappings: 0, pinned: 0 });
});

t.test('device DMA goes through the container mappings', async (t) => {
  const k = fresh(t);
  const s = k.sys;
  const { c, g } = setUp(k);
  s.ioctlInt(c, V.VFIO_SET_IOMMU, V.VFIO_TYPE1v2_IOMMU);
  const d = s.ioctl(g, V.VFIO_GROUP_GET_DEVICE_FD, name('0000:00:03.0'));
  const buf = s.mmap(2 * 4096, RW, ANON | MAP_POPULATE, -1, 0n);
  mapDma(k, c, buf, 0x40000n, 4096n, V.VFIO_DMA_MAP_FLAG_READ | V.VFIO_DMA_MAP_FLAG_WRITE);
  mapDma(k, c, buf + 4096n, 0x41000n, 4096n, V.VFIO_DMA_MAP_FLAG_READ);
  const dev = k.device('0000:00:03.0');
  t.throws(() => dev.dmaWrite(0x40000n, Uint8Array.of(1)), { code: 'EIO' }, 'bus mastering is off after open');
  const cmd = new Uint8Array(2);
  s.pread(d, cmd, (7n << 40n) + 4n);
  cmd[0]! |= 0x4;
  s.pwrite(d, cmd, (7n << 40n) + 4n);
  dev.dmaWrite(0x40010n, Uint8Array.of(1, 2, 3));
  t.same([...s.view(buf + 0x10n, 3)], [1, 2, 3], 'the device wrote the process memory');
  t.throws(() => dev.dmaWrite(0x41000n, Uint8Array.of(1)), { code: 'EFAULT' }, 'a read-only mapping');
  t.throws(() => dev.dmaRead(0x90000n, 4), { code: 'EFAULT' }, 'an unmapped IOVA');
  s.close(d);
  s.munmap(buf, 8192);
  s.close(g);
  s.close(c);
  t.same(k.leaks(), { fds: 0, mappings: 0, pinned: 0 });
});

t.test('release order: files may be closed in any order, the last reference cleans up', async (t) => {
  const k = fresh(t);
  const s = k.sys;
  const { c, g } = setUp(k);
  s.ioctlInt(c, V.VFIO_SET_IOMMU, V.VFIO_TYPE1v2_IOMMU);
  const d = s.ioctl(g, V.VFIO_GROUP_GET_DEVICE_FD, name('0000:00:03.0'));
  const buf = s.mmap(4096, RW, ANON, -1, 0n);
  mapDma(k, c, buf, 0x1000n, 4096n);
  s.close(c);
  s.close(g);
  t.equal(k.leaks().pinned, 1, 'the device fd keeps the group, the group keeps the container and its mappings');
  t.throws(() => s.open(`${k.devRoot}/vfio/3`, O_RDWR), { code: 'EBUSY' }, 'the group is still held by the device fd');
  s.close(d);
  t.equal(k.leaks().pinned, 0);
  const g2 = s.open(`${k.devRoot}/vfio/3`, O_RDONLY);
  s.close(g2);
  s.munmap(buf, 4096);
  t.same(k.leaks(), { fds: 0, mappings: 0, pinned: 0 });
});

t.test('noiommu mode: noiommu-N groups, the no-IOMMU driver, physical addresses', async (t) => {
  const k = fresh(t, { mode: 'noiommu' });
  const s = k.sys;
  const c = s.open(`${k.devRoot}/vfio/vfio`, O_RDWR);
  t.equal(s.ioctlInt(c, V.VFIO_CHECK_EXTENSION, V.VFIO_NOIOMMU_IOMMU), 1);
  t.throws(() => s.open(`${k.devRoot}/vfio/3`, O_RDWR), { code: 'ENOENT' });
  const g = s.open(`${k.devRoot}/vfio/noiommu-3`, O_RDWR);
  s.ioctl(g, V.VFIO_GROUP_SET_CONTAINER, intArg(c));
  t.equal(s.ioctlInt(c, V.VFIO_CHECK_EXTENSION, V.VFIO_TYPE1v2_IOMMU), 0, 'with a no-IOMMU group in, only no-IOMMU drivers answer');
  t.throws(() => s.ioctlInt(c, V.VFIO_SET_IOMMU, V.VFIO_TYPE1v2_IOMMU), { code: 'ENODEV' });
  s.ioctlInt(c, V.VFIO_SET_IOMMU, V.VFIO_NOIOMMU_IOMMU);
  t.throws(() => mapDma(k, c, 0n, 0n, 4096n), { code: 'ENOTTY' }, 'no DMA mapping without an IOMMU');
  const d = s.ioctl(g, V.VFIO_GROUP_GET_DEVICE_FD, name('0000:00:03.0'));
  const cmd = Uint8Array.of(0x06, 0x00);
  s.pwrite(d, cmd, (7n << 40n) + 4n);
  const buf = s.mmap(4096, RW, ANON, -1, 0n);
  s.mlock(buf, 4096);
  const pm = s.open(`${k.procRoot}/self/pagemap`, O_RDONLY);
  const e = new Uint8Array(8);
  s.pread(pm, e, (buf >> 12n) * 8n);
  const pa = (new DataView(e.buffer).getBigUint64(0, true) & ((1n << 55n) - 1n)) << 12n;
  k.device('0000:00:03.0').dmaWrite(pa + 8n, Uint8Array.of(9));
  t.equal(s.view(buf + 8n, 1)[0], 9, 'DMA to the physical address reaches the page');
  for (const fd of [pm, d, g, c]) s.close(fd);
  s.munmap(buf, 4096);
  t.same(k.leaks(), { fds: 0, mappings: 0, pinned: 0 });
});

t.test('noiommu mode needs root (CAP_SYS_RAWIO)', async (t) => {
  const k = fresh(t, { mode: 'noiommu', uid: 1000 });
  t.throws(() => k.sys.open(`${k.devRoot}/vfio/noiommu-3`, O_RDWR), { code: 'EPERM' });
});
