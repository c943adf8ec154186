// The cdev interface of the fake kernel: /dev/vfio/devices/vfioN bound to
// /dev/iommu, IOAS mappings, attach/detach (device_cdev.c, iommufd/*.c).
import t, { type Test } from 'tap';
import { O_RDWR } from '../../lib/libc/sys.js';
import { alloc, get, read } from '../../lib/uapi/codec.js';
import * as I from '../../lib/uapi/iommufd.js';
import * as V from '../../lib/uapi/vfio.js';
import type { FakeKernel, FakeKernelOptions } from '../../lib/testing/index.js';
import { ANON, E, RW, freshKernel } from './harness.js';

const U64_MAX = (1n << 64n) - 1n;
const MAP_RW = I.IOMMU_IOAS_MAP_READABLE | I.IOMMU_IOAS_MAP_WRITEABLE;

const fresh = (t: Test, opts: FakeKernelOptions = {}): FakeKernel => freshKernel(t, { mode: 'cdev', ...opts });

function bind(k: FakeKernel, dev: number, iommufd: number): number {
  const b = alloc(V.vfio_device_bind_iommufd, { argsz: V.vfio_device_bind_iommufd.size, iommufd });
  k.sys.ioctl(dev, V.VFIO_DEVICE_BIND_IOMMUFD, b);
  return get(V.vfio_device_bind_iommufd, b, 'out_devid');
}

function ioasAlloc(k: FakeKernel, fd: number): number {
  const a = alloc(I.iommu_ioas_alloc, { size: I.iommu_ioas_alloc.size });
  k.sys.ioctl(fd, I.IOMMU_IOAS_ALLOC, a);
  return get(I.iommu_ioas_alloc, a, 'out_ioas_id');
}

function attach(k: FakeKernel, dev: number, pt: number): number {
  const a = alloc(V.vfio_device_attach_iommufd_pt, { argsz: V.vfio_device_attach_iommufd_pt.size, pt_id: pt });
  k.sys.ioctl(dev, V.VFIO_DEVICE_ATTACH_IOMMUFD_PT, a);
  return get(V.vfio_device_attach_iommufd_pt, a, 'pt_id');
}

function detach(k: FakeKernel, dev: number): void {
  k.sys.ioctl(
    dev,
    V.VFIO_DEVICE_DETACH_IOMMUFD_PT,
    alloc(V.vfio_device_detach_iommufd_pt, { argsz: V.vfio_device_detach_iommufd_pt.size }),
  );
}

function map(k: FakeKernel, fd: number, ioas: number, userVa: bigint, length: bigint, iova?: bigint, flags = MAP_RW): bigint {
  const m = alloc(I.iommu_ioas_map, {
    size: I.iommu_ioas_map.size,
    flags: flags | (iova === undefined ? 0 : I.IOMMU_IOAS_MAP_FIXED_IOVA),
    ioas_id: ioas,
    user_va: userVa,
    length,
    iova: iova ?? 0n,
  });
  k.sys.ioctl(fd, I.IOMMU_IOAS_MAP, m);
  return get(I.iommu_ioas_map, m, 'iova');
}

function unmap(k: FakeKernel, fd: number, ioas: number, iova: bigint, length: bigint): bigint {
  const u = alloc(I.iommu_ioas_unmap, { size: I.iommu_ioas_unmap.size, ioas_id: ioas, iova, length });
  k.sys.ioctl(fd, I.IOMMU_IOAS_UNMAP, u);
  return get(I.iommu_ioas_unmap, u, 'length');
}

function ranges(k: FakeKernel, fd: number, ioas: number, room = 8): { start: bigint; last: bigint }[] & { alignment?: bigint } {
  const arr = k.sys.mmap(4096, RW, ANON, -1, 0n);
  try {
    const r = alloc(I.iommu_ioas_iova_ranges, { size: I.iommu_ioas_iova_ranges.size, ioas_id: ioas, num_iovas: room, allowed_iovas: arr });
    k.sys.ioctl(fd, I.IOMMU_IOAS_IOVA_RANGES, r);
    const n = get(I.iommu_ioas_iova_ranges, r, 'num_iovas');
    const bytes = k.sys.view(arr, n * I.iommu_iova_range.size);
    const out = Array.from({ length: n }, (_, i) => read(I.iommu_iova_range, bytes, i * I.iommu_iova_range.size)) as {
      start: bigint;
      last: bigint;
    }[] & { alignment?: bigint };
    out.alignment = get(I.iommu_ioas_iova_ranges, r, 'out_iova_alignment');
    return out;
  } finally {
    k.sys.munmap(arr, 4096);
  }
}

function destroy(k: FakeKernel, fd: number, id: number): void {
  k.sys.ioctl(fd, I.IOMMU_DESTROY, alloc(I.iommu_destroy, { size: I.iommu_destroy.size, id }));
}

t.test('a cdev fd does nothing but BIND until bound', async (t) => {
  const k = fresh(t);
  const s = k.sys;
  const dev = s.open(`${k.devRoot}/vfio/devices/vfio0`, O_RDWR);
  t.throws(() => s.ioctl(dev, V.VFIO_DEVICE_GET_INFO, alloc(V.vfio_device_info, { argsz: V.vfio_device_info.size })), { code: 'EINVAL' });
  t.throws(() => s.pread(dev, new Uint8Array(4), 7n << 40n), { code: 'EINVAL' });
  t.throws(() => s.mmap(4096, RW, 1, dev, 0n), { code: 'EINVAL' });
  t.equal(k.device('0000:00:03.0').openCount, 0);
  s.close(dev);
  t.same(k.leaks(), { fds: 0, mappings: 0, pinned: 0 });
});

t.test('BIND_IOMMUFD: argument checks, single bind, exclusion with the group path', async (t) => {
  const k = fresh(t);
  const s = k.sys;
  const iommu = s.open(`${k.devRoot}/iommu`, O_RDWR);
  const dev = s.open(`${k.devRoot}/vfio/devices/vfio0`, O_RDWR);
  const B = V.vfio_device_bind_iommufd;
  t.throws(() => s.ioctl(dev, V.VFIO_DEVICE_BIND_IOMMUFD, alloc(B, { argsz: 8, iommufd: iommu })), { code: 'EINVAL' }, 'argsz');
  t.throws(
    () => s.ioctl(dev, V.VFIO_DEVICE_BIND_IOMMUFD, alloc(B, { argsz: B.size, flags: 1, iommufd: iommu })),
    { code: 'EINVAL' },
    'flags',
  );
  t.throws(() => s.ioctl(dev, V.VFIO_DEVICE_BIND_IOMMUFD, alloc(B, { argsz: B.size, iommufd: -1 })), { code: 'EINVAL' }, 'negative fd');
  t.throws(() => s.ioctl(dev, V.VFIO_DEVICE_BIND_IOMMUFD, alloc(B, { argsz: B.size, iommufd: 77 })), { code: 'EBADF' });
  const efd = s.eventfd(0, 0);
  t.throws(() => s.ioctl(dev, V.VFIO_DEVICE_BIND_IOMMUFD, alloc(B, { argsz: B.size, iommufd: efd })), E('EBADFD'));
  const g = s.open(`${k.devRoot}/vfio/3`, O_RDWR);
  t.throws(() => bind(k, dev, iommu), { code: 'EBUSY' }, 'the group node is open');
  s.close(g);
  t.equal(bind(k, dev, iommu), 1, 'devid: the first object id');
  t.equal(k.device('0000:00:03.0').openCount, 1);
  t.throws(() => bind(k, dev, iommu), { code: 'EINVAL' }, 'a second bind');
  const dev2 = s.open(`${k.devRoot}/vfio/devices/vfio0`, O_RDWR);
  t.throws(() => bind(k, dev2, iommu), { code: 'EINVAL' }, 'the cdev path opens a device once');
  t.throws(() => s.open(`${k.devRoot}/vfio/3`, O_RDWR), { code: 'EBUSY' }, 'the group cannot open while a device is bound');
  for (const fd of [dev2, dev, efd, iommu]) s.close(fd);
  t.equal(k.device('0000:00:03.0').openCount, 0);
  const g2 = s.open(`${k.devRoot}/vfio/3`, O_RDWR);
  s.close(g2);
  t.same(k.leaks(), { fds: 0, mappings: 0, pinned: 0 });
});

t.test('iommufd size rules: too small EINVAL, longer with nonzero tail E2BIG, unknown request ENOTTY', async (t) => {
  const k = fresh(t);
  const s = k.sys;
  const fd = s.open(`${k.devRoot}/iommu`, O_RDWR);
  const A = I.iommu_ioas_alloc;
  t.throws(() => s.ioctl(fd, I.IOMMU_IOAS_ALLOC, alloc(A, { size: 8 })), { code: 'EINVAL' });
  const big = alloc(A, { size: A.size + 8 }, 8);
  big[A.size + 3] = 1;
  t.throws(() => s.ioctl(fd, I.IOMMU_IOAS_ALLOC, big), { code: 'E2BIG' });
  big[A.size + 3] = 0;
  s.ioctl(fd, I.IOMMU_IOAS_ALLOC, big);
  t.equal(get(A, big, 'out_ioas_id'), 1, 'a longer struct with a zero tail is accepted');
  t.throws(() => s.ioctl(fd, I.IOMMU_IOAS_ALLOC, alloc(A, { size: A.size + 8 })), { code: 'EFAULT' }, 'size claims more than the buffer');
  t.throws(() => s.ioctl(fd, I.IOMMU_IOAS_ALLOC, alloc(A, { size: A.size, flags: 1 })), E('EOPNOTSUPP'));
  t.throws(() => s.ioctl(fd, I.IOMMU_HWPT_ALLOC, alloc(I.iommu_hwpt_alloc, { size: I.iommu_hwpt_alloc.size })), { code: 'ENOTTY' });
  t.equal(s.ioctlInt(fd, V.VFIO_GET_API_VERSION, 0), 0, 'the VFIO compatibility ioctls live on /dev/iommu too');
  s.close(fd);
});

t.test('object ids: lowest free from 1, shared by devices, IOASes and HWPTs', async (t) => {
  const k = fresh(t);
  const s = k.sys;
  const fd = s.open(`${k.devRoot}/iommu`, O_RDWR);
  const a = ioasAlloc(k, fd);
  const b = ioasAlloc(k, fd);
  t.same([a, b], [1, 2]);
  destroy(k, fd, a);
  t.equal(ioasAlloc(k, fd), 1, 'a freed id is reused');
  t.throws(() => destroy(k, fd, 99), { code: 'ENOENT' });
  s.close(fd);
});

t.test('IOAS before attach: no domain, any alignment, the whole 64-bit range, nothing pinned', async (t) => {
  const k = fresh(t);
  const s = k.sys;
  const fd = s.open(`${k.devRoot}/iommu`, O_RDWR);
  const ioas = ioasAlloc(k, fd);
  const r = ranges(k, fd, ioas);
  t.same([...r], [{ start: 0n, last: U64_MAX }]);
  t.equal(r.alignment, 1n);
  const buf = s.mmap(4 * 4096, RW, ANON, -1, 0n);
  t.equal(map(k, fd, ioas, buf + 16n, 100n, 0x5010n), 0x5010n, 'byte-granular mapping is allowed without a domain');
  t.equal(k.leaks().pinned, 0, 'nothing is pinned without a domain');
  t.throws(() => map(k, fd, ioas, 0x1234000n, 4096n, 0x9000n, 0), { code: 'EINVAL' }, 'neither READABLE nor WRITEABLE');
  t.throws(() => map(k, fd, ioas, buf, 4096n, 0x9000n, MAP_RW | 0x100), E('EOPNOTSUPP'));
  t.throws(() => map(k, fd, ioas, buf, 4096n, 0x5000n), { code: 'EEXIST' }, 'overlap');
  t.throws(() => map(k, fd, 99, buf, 4096n), { code: 'ENOENT' }, 'no such IOAS');
  t.throws(() => map(k, fd, ioas, buf, 0n, 0x20000n), { code: 'EINVAL' }, 'zero length');
  const auto = map(k, fd, ioas, buf, 8192n);
  t.equal(auto, 0x2000n, 'without FIXED_IOVA the kernel picks (first fit from PAGE_SIZE, aligned like the pointer)');
  t.throws(() => unmap(k, fd, ioas, 0x100000n, 4096n), { code: 'ENOENT' }, 'nothing there: ENOENT, unlike type1');
  t.throws(() => unmap(k, fd, ioas, 0x2000n, 4096n), { code: 'ENOENT' }, 'cutting a mapping');
  t.equal(unmap(k, fd, ioas, 0x2000n, 8192n), 8192n);
  t.equal(unmap(k, fd, ioas, 0n, U64_MAX), 100n, 'unmap all');
  t.equal(unmap(k, fd, ioas, 0n, U64_MAX), 0n, 'unmap all of nothing succeeds');
  s.munmap(buf, 4 * 4096);
  s.close(fd);
  t.same(k.leaks(), { fds: 0, mappings: 0, pinned: 0 });
});

t.test('attach: an automatic HWPT, aperture and reserved regions, pinning, EMSGSIZE', async (t) => {
  const k = fresh(t);
  const s = k.sys;
  const fd = s.open(`${k.devRoot}/iommu`, O_RDWR);
  const dev = s.open(`${k.devRoot}/vfio/devices/vfio0`, O_RDWR);
  const devid = bind(k, dev, fd);
  const ioas = ioasAlloc(k, fd);
  const buf = s.mmap(4 * 4096, RW, ANON, -1, 0n);
  map(k, fd, ioas, buf, 8192n, 0x10000n);
  t.throws(() => attach(k, dev, 99), { code: 'ENOENT' });
  t.throws(() => attach(k, dev, devid), { code: 'EINVAL' }, 'a device id is not a page table');
  const hwpt = attach(k, dev, ioas);
  t.not(hwpt, ioas, 'pt_id comes back as the automatic HWPT id');
  t.equal(hwpt, 3);
  t.equal(k.leaks().pinned, 2, 'attaching pins what was mapped');
  const r = ranges(k, fd, ioas);
  t.same(
    [...r],
    [
      { start: 0n, last: 0xfedfffffn },
      { start: 0xfef00000n, last: (1n << 48n) - 1n },
    ],
  );
  t.equal(r.alignment, 4096n);
  const small = alloc(I.iommu_ioas_iova_ranges, {
    size: I.iommu_ioas_iova_ranges.size,
    ioas_id: ioas,
    num_iovas: 1,
    allowed_iovas: buf + 8192n,
  });
  t.throws(() => s.ioctl(fd, I.IOMMU_IOAS_IOVA_RANGES, small), { code: 'EMSGSIZE' });
  t.equal(get(I.iommu_ioas_iova_ranges, small, 'num_iovas'), 2, 'num_iovas tells how many there are');
  const bad = alloc(I.iommu_ioas_iova_ranges, { size: I.iommu_ioas_iova_ranges.size, ioas_id: ioas, num_iovas: 2, allowed_iovas: 0x10n });
  t.throws(() => s.ioctl(fd, I.IOMMU_IOAS_IOVA_RANGES, bad), { code: 'EFAULT' }, 'allowed_iovas is a user pointer');
  t.throws(() => map(k, fd, ioas, buf + 16n, 4096n, 0x30000n), { code: 'EINVAL' }, 'a domain requires page alignment');
  t.throws(() => map(k, fd, ioas, buf, 4096n, 0xfee00000n), { code: 'EINVAL' }, 'the MSI window is reserved');
  t.throws(() => map(k, fd, ioas, 0x7e0000000000n, 4096n, 0x40000n), { code: 'EFAULT' }, 'with a domain the pages are pinned at once');
  map(k, fd, ioas, buf + 8192n, 8192n, 0x40000n);
  t.equal(k.leaks().pinned, 4);
  t.throws(() => destroy(k, fd, ioas), { code: 'EBUSY' }, 'an attached IOAS');
  t.throws(() => destroy(k, fd, hwpt), { code: 'EBUSY' }, 'a HWPT with a device');
  t.throws(() => destroy(k, fd, devid), { code: 'EBUSY' }, 'a bound device');
  detach(k, dev);
  detach(k, dev); // detaching what is not attached is fine
  t.equal(k.leaks().pinned, 0, 'the last detach destroys the domain and unpins');
  t.same([...ranges(k, fd, ioas)], [{ start: 0n, last: U64_MAX }]);
  t.throws(() => destroy(k, fd, hwpt), { code: 'ENOENT' }, 'the automatic HWPT is gone');
  destroy(k, fd, ioas);
  s.close(dev);
  s.close(fd);
  s.munmap(buf, 4 * 4096);
  t.same(k.leaks(), { fds: 0, mappings: 0, pinned: 0 });
});

t.test('attach refuses mappings the domain cannot honour (EADDRINUSE), leaving nothing behind', async (t) => {
  const k = fresh(t);
  const s = k.sys;
  const fd = s.open(`${k.devRoot}/iommu`, O_RDWR);
  const dev = s.open(`${k.devRoot}/vfio/devices/vfio0`, O_RDWR);
  bind(k, dev, fd);
  const ioas = ioasAlloc(k, fd);
  const buf = s.mmap(4096, RW, ANON, -1, 0n);
  map(k, fd, ioas, buf, 100n, 0x5000n);
  t.throws(() => attach(k, dev, ioas), { code: 'EADDRINUSE' }, 'a mapping not aligned to the IOMMU page');
  unmap(k, fd, ioas, 0n, U64_MAX);
  map(k, fd, ioas, buf, 4096n, 0xfee01000n);
  t.throws(() => attach(k, dev, ioas), { code: 'EADDRINUSE' }, 'a mapping in the MSI window');
  unmap(k, fd, ioas, 0n, U64_MAX);
  t.equal(ioasAlloc(k, fd), 3, 'the failed attaches freed their HWPT ids');
  s.close(dev);
  s.close(fd);
  s.munmap(buf, 4096);
  t.same(k.leaks(), { fds: 0, mappings: 0, pinned: 0 });
});

t.test('device DMA through the IOAS, blocked until attached', async (t) => {
  const k = fresh(t);
  const s = k.sys;
  const fd = s.open(`${k.devRoot}/iommu`, O_RDWR);
  const dev = s.open(`${k.devRoot}/vfio/devices/vfio0`, O_RDWR);
  bind(k, dev, fd);
  s.pwrite(dev, Uint8Array.of(0x06), (7n << 40n) + 4n); // memory + bus master
  const d = k.device('0000:00:03.0');
  t.throws(() => d.dmaRead(0x1000n, 4), { code: 'EFAULT' }, 'bound but not attached: DMA is blocked');
  const ioas = ioasAlloc(k, fd);
  attach(k, dev, ioas);
  const buf = s.mmap(4096, RW, ANON, -1, 0n);
  const iova = map(k, fd, ioas, buf, 4096n, undefined, I.IOMMU_IOAS_MAP_READABLE);
  s.view(buf, 4).set([1, 2, 3, 4]);
  t.same([...d.dmaRead(iova, 4)], [1, 2, 3, 4]);
  t.throws(() => d.dmaWrite(iova, Uint8Array.of(0)), { code: 'EFAULT' }, 'the device may only read it');
  s.close(fd);
  t.same([...d.dmaRead(iova, 4)], [1, 2, 3, 4], 'the bound device keeps the iommufd context alive');
  s.close(dev);
  s.munmap(buf, 4096);
  t.same(k.leaks(), { fds: 0, mappings: 0, pinned: 0 });
});

t.test('IOMMU_OPTION: RLIMIT_MODE and HUGE_PAGES', async (t) => {
  const k = fresh(t);
  const s = k.sys;
  const fd = s.open(`${k.devRoot}/iommu`, O_RDWR);
  const O = I.iommu_option;
  const get1 = alloc(O, { size: O.size, option_id: I.IOMMU_OPTION_RLIMIT_MODE, op: I.IOMMU_OPTION_OP_GET });
  s.ioctl(fd, I.IOMMU_OPTION, get1);
  t.equal(get(O, get1, 'val64'), 0n);
  s.ioctl(fd, I.IOMMU_OPTION, alloc(O, { size: O.size, option_id: I.IOMMU_OPTION_RLIMIT_MODE, op: I.IOMMU_OPTION_OP_SET, val64: 1n }));
  const ioas = ioasAlloc(k, fd);
  t.throws(
    () =>
      s.ioctl(fd, I.IOMMU_OPTION, alloc(O, { size: O.size, option_id: I.IOMMU_OPTION_RLIMIT_MODE, op: I.IOMMU_OPTION_OP_SET, val64: 0n })),
    { code: 'EBUSY' },
  );
  const hp = alloc(O, { size: O.size, option_id: I.IOMMU_OPTION_HUGE_PAGES, op: I.IOMMU_OPTION_OP_GET, object_id: ioas });
  s.ioctl(fd, I.IOMMU_OPTION, hp);
  t.equal(get(O, hp, 'val64'), 1n);
  t.throws(() => s.ioctl(fd, I.IOMMU_OPTION, alloc(O, { size: O.size, option_id: 77 })), E('EOPNOTSUPP'));
  s.close(fd);
});
