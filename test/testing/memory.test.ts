// The fake kernel's process-level system calls: fds, memory, eventfd, memfd,
// poll, pagemap, fault injection and leak counting.
import t, { type Test } from 'tap';
import { existsSync } from 'node:fs';
import {
  EFD_NONBLOCK,
  EFD_SEMAPHORE,
  MAP_ANONYMOUS,
  MAP_FIXED,
  MAP_HUGETLB,
  MAP_POPULATE,
  MAP_SHARED,
  MFD_HUGETLB,
  O_RDONLY,
  O_RDWR,
  POLLIN,
  POLLNVAL,
  POLLOUT,
  PROT_NONE,
} from '../../lib/libc/sys.js';
import { VfioError } from '../../lib/base/errors.js';
import { alloc } from '../../lib/uapi/codec.js';
import {
  VFIO_GET_API_VERSION,
  VFIO_GROUP_GET_DEVICE_FD,
  VFIO_GROUP_SET_CONTAINER,
  VFIO_IOMMU_MAP_DMA,
  VFIO_IOMMU_UNMAP_DMA,
  VFIO_SET_IOMMU,
  VFIO_TYPE1v2_IOMMU,
  vfio_iommu_type1_dma_map,
  vfio_iommu_type1_dma_unmap,
} from '../../lib/uapi/vfio.js';
import { EDU_ID, type FakeKernel, edu, type FakeKernelOptions } from '../../lib/testing/index.js';
import { ANON, RW, freshKernel, intArg } from './harness.js';

function u64(n: bigint): Uint8Array {
  const b = new Uint8Array(8);
  new DataView(b.buffer).setBigUint64(0, n, true);
  return b;
}

const fresh = (t: Test, opts: FakeKernelOptions = {}): FakeKernel => freshKernel(t, { mode: 'group', devices: [edu()], ...opts });

t.test('fds: lowest free number first, 0 when firstFd allows it, EBADF after close', async (t) => {
  const k = fresh(t, { firstFd: 0 });
  const s = k.sys;
  const a = s.eventfd(0, 0);
  const b = s.eventfd(0, 0);
  t.equal(a, 0, 'fd 0 is handed out');
  t.equal(b, 1);
  s.close(a);
  t.equal(s.eventfd(0, 0), 0, 'the freed 0 is reused before 2');
  t.throws(() => s.close(7), { code: 'EBADF', syscall: 'close' });
  t.throws(() => s.read(7, new Uint8Array(8)), { code: 'EBADF' });
  s.close(0);
  s.close(1);
  t.same(k.leaks(), { fds: 0, mappings: 0, pinned: 0 });
});

t.test('fds: default firstFd 3, EMFILE at the limit', async (t) => {
  const k = fresh(t, { fdLimit: 5 });
  t.equal(k.sys.eventfd(0, 0), 3);
  t.equal(k.sys.eventfd(0, 0), 4);
  t.throws(() => k.sys.eventfd(0, 0), { code: 'EMFILE' });
});

t.test('open: only the nodes the fake serves; errors carry the path', async (t) => {
  const k = fresh(t);
  const s = k.sys;
  t.ok(existsSync(`${k.devRoot}/vfio/vfio`), 'nodes exist on disk for existsSync');
  const fd = s.open(`${k.devRoot}/vfio/vfio`, O_RDWR);
  t.equal(s.ioctlInt(fd, VFIO_GET_API_VERSION, 0), 0);
  s.close(fd);
  t.throws(() => s.open(`${k.devRoot}/nonexistent`, O_RDWR), { code: 'ENOENT', syscall: 'open', path: `${k.devRoot}/nonexistent` });
  t.throws(() => s.open(`${k.sysfsRoot}/bus/pci/devices/0000:00:03.0/vendor`, O_RDONLY), { code: 'ENOENT' }, 'real files are not served');
  t.throws(() => s.open(`${k.devRoot}/iommu`, O_RDWR), { code: 'ENOENT' }, 'group mode has no /dev/iommu');
});

t.test('mmap: argument checks with the kernel errnos', async (t) => {
  const k = fresh(t);
  const s = k.sys;
  t.throws(() => s.mmap(0, RW, ANON, -1, 0n), { code: 'EINVAL' }, 'zero length');
  t.throws(() => s.mmap(4096, RW, ANON, -1, 100n), { code: 'EINVAL' }, 'unaligned offset');
  t.throws(() => s.mmap(4096, RW, MAP_ANONYMOUS, -1, 0n), { code: 'EINVAL' }, 'neither shared nor private');
  t.throws(() => s.mmap(4096, RW, ANON | MAP_FIXED, -1, 0n), { code: 'EPERM' }, 'MAP_FIXED at NULL');
  t.throws(() => s.mmap(4096, RW, MAP_SHARED, 99, 0n), { code: 'EBADF' });
  const efd = s.eventfd(0, 0);
  t.throws(() => s.mmap(4096, RW, MAP_SHARED, efd, 0n), { code: 'ENODEV' }, 'eventfds cannot be mapped');
  t.throws(() => s.mmap(2 << 20, RW, ANON | MAP_HUGETLB, -1, 0n), { code: 'ENOMEM' }, 'no free huge pages');
  s.close(efd);
  t.same(k.leaks(), { fds: 0, mappings: 0, pinned: 0 });
});

t.test('mmap/view/munmap: views share memory; partial munmap splits; stale views go empty', async (t) => {
  const k = fresh(t);
  const s = k.sys;
  const a = s.mmap(3 * 4096, RW, ANON, -1, 0n);
  t.equal(a % 4096n, 0n);
  const v1 = s.view(a, 3 * 4096);
  const v2 = s.view(a + 4096n, 16);
  v1[4096] = 0xab;
  t.equal(v2[0], 0xab, 'two views over the same bytes');
  t.throws(() => s.view(a + 3n * 4096n, 1), { code: 'EFAULT', syscall: 'view' }, 'past the mapping');
  t.throws(() => s.view(0x1000n, 4), { code: 'EFAULT' }, 'unmapped address');
  t.throws(() => s.munmap(a + 1n, 4096), { code: 'EINVAL' }, 'unaligned munmap');
  s.munmap(a + 4096n, 4096);
  t.equal(k.leaks().mappings, 2, 'the middle page went, two pieces remain');
  t.throws(() => s.view(a + 4096n, 1), { code: 'EFAULT' });
  t.equal(s.view(a, 1)[0], 0, 'the first piece is still mapped');
  s.munmap(a, 3 * 4096);
  t.equal(v1.length, 0, 'a stale view reads as empty once the memory is freed');
  s.munmap(a, 4096); // unmapping nothing is fine
  t.same(k.leaks(), { fds: 0, mappings: 0, pinned: 0 });
});

t.test('mlock/munlock: pinned accounting, ENOMEM on holes and over RLIMIT_MEMLOCK', async (t) => {
  const k = fresh(t, { uid: 1000, memlockLimit: 8192 });
  const s = k.sys;
  const a = s.mmap(4 * 4096, RW, ANON, -1, 0n);
  s.mlock(a, 8192);
  t.equal(k.leaks().pinned, 2);
  t.throws(() => s.mlock(a + 8192n, 4096), { code: 'ENOMEM' }, 'over the limit');
  t.throws(() => s.mlock(a + 4n * 4096n, 4096), { code: 'ENOMEM' }, 'unmapped range');
  s.munlock(a, 4096);
  t.equal(k.leaks().pinned, 1);
  s.munmap(a, 4 * 4096);
  t.same(k.leaks(), { fds: 0, mappings: 0, pinned: 0 }, 'munmap drops the lock');
});

t.test('memfd: ftruncate, shared mappings, huge pages', async (t) => {
  const k = fresh(t, { hugepages: 2 });
  const s = k.sys;
  const fd = s.memfdCreate('buf', 0);
  s.ftruncate(fd, 8192n);
  const a = s.mmap(8192, RW, MAP_SHARED, fd, 0n);
  const b = s.mmap(4096, RW, MAP_SHARED, fd, 4096n);
  s.view(a, 8192)[4096] = 7;
  t.equal(s.view(b, 1)[0], 7, 'two mappings of one memfd share pages');
  const rd = new Uint8Array(1);
  t.equal(s.pread(fd, rd, 4096n), 1);
  t.equal(rd[0], 7, 'pread sees what the mapping wrote');
  s.munmap(a, 8192);
  s.munmap(b, 4096);
  s.close(fd);
  const h = s.memfdCreate('huge', MFD_HUGETLB);
  t.throws(() => s.ftruncate(h, 4096n), { code: 'EINVAL' }, 'hugetlbfs is sized in huge pages');
  s.ftruncate(h, 2n << 20n);
  const hm = s.mmap(2 << 20, RW, MAP_SHARED, h, 0n);
  t.equal(hm % (2n << 20n), 0n, 'huge mappings are huge-page aligned');
  t.equal(k.hugepagesFree, 1);
  s.munmap(hm, 2 << 20);
  s.close(h);
  t.equal(k.hugepagesFree, 2, 'huge pages come back with the file');
  const e = s.eventfd(0, 0);
  t.throws(() => s.ftruncate(e, 8n), { code: 'EINVAL' });
  s.close(e);
  const anon = s.mmap(4096, RW, ANON | MAP_HUGETLB, -1, 0n);
  t.equal(k.hugepagesFree, 1, 'anonymous MAP_HUGETLB takes a huge page');
  s.munmap(anon, 2 << 20);
  t.equal(k.hugepagesFree, 2);
  t.same(k.leaks(), { fds: 0, mappings: 0, pinned: 0 });
});

t.test('eventfd: 8-byte counter, semaphore mode, EAGAIN when nonblocking', async (t) => {
  const k = fresh(t);
  const s = k.sys;
  const fd = s.eventfd(2, EFD_NONBLOCK);
  const buf = new Uint8Array(8);
  t.throws(() => s.read(fd, new Uint8Array(4)), { code: 'EINVAL' }, 'short buffer');
  t.equal(s.read(fd, buf), 8);
  t.equal(new DataView(buf.buffer).getBigUint64(0, true), 2n);
  t.throws(() => s.read(fd, buf), { code: 'EAGAIN' });
  t.equal(s.write(fd, u64(5n)), 8);
  t.throws(() => s.write(fd, u64(0xffffffffffffffffn)), { code: 'EINVAL' });
  t.throws(() => s.write(fd, u64(0xfffffffffffffffen)), { code: 'EAGAIN' }, 'overflow');
  t.throws(() => s.pread(fd, buf, 0n), { code: 'ESPIPE' });
  s.close(fd);
  const sem = s.eventfd(3, EFD_SEMAPHORE | EFD_NONBLOCK);
  s.read(sem, buf);
  t.equal(new DataView(buf.buffer).getBigUint64(0, true), 1n, 'semaphore reads take 1');
  s.close(sem);
  t.throws(() => s.eventfd(0, 0x40), { code: 'EINVAL' }, 'unknown flags');
});

t.test('poll: revents, POLLNVAL for closed fds, timeout returns zeros', async (t) => {
  const k = fresh(t);
  const s = k.sys;
  const a = s.eventfd(0, 0);
  const b = s.eventfd(1, 0);
  t.same(
    s.poll(
      [
        { fd: a, events: POLLIN },
        { fd: b, events: POLLIN },
        { fd: 50, events: POLLIN },
        { fd: -1, events: POLLIN },
      ],
      0,
    ),
    [0, POLLIN, POLLNVAL, 0],
  );
  t.same(s.poll([{ fd: a, events: POLLOUT }], 0), [POLLOUT]);
  const started = Date.now();
  t.same(s.poll([{ fd: a, events: POLLIN }], 30), [0]);
  t.ok(Date.now() - started >= 25, 'the timeout is waited for');
  t.throws(() => s.poll([{ fd: a, events: POLLIN }], -1), { code: 'EDEADLK' }, 'an endless wait nothing can end');
  s.close(a);
  s.close(b);
});

t.test('pollAsync: resolves when an eventfd is signalled, on timeout, never spins', async (t) => {
  const k = fresh(t);
  const s = k.sys;
  const a = s.eventfd(0, 0);
  const stop = s.eventfd(0, 0);
  const p = s.pollAsync(
    [
      { fd: a, events: POLLIN },
      { fd: stop, events: POLLIN },
    ],
    -1,
  );
  t.equal(k.pendingPolls, 1);
  await new Promise((r) => setTimeout(r, 10));
  s.write(stop, u64(1n));
  t.same(await p, [0, POLLIN]);
  t.equal(k.pendingPolls, 0);
  t.same(await s.pollAsync([{ fd: a, events: POLLIN }], 20), [0], 'timeout');
  s.close(a);
  s.close(stop);
  t.same(k.leaks(), { fds: 0, mappings: 0, pinned: 0 });
});

t.test('pagemap: present bit and PFN, PFN hidden from non-root', async (t) => {
  const k = fresh(t);
  const s = k.sys;
  const a = s.mmap(2 * 4096, RW, ANON | MAP_POPULATE, -1, 0n);
  const pm = s.open(`${k.procRoot}/self/pagemap`, O_RDONLY);
  const e = new Uint8Array(16);
  t.equal(s.pread(pm, e, (a >> 12n) * 8n), 16);
  const dv = new DataView(e.buffer);
  const p0 = dv.getBigUint64(0, true);
  const p1 = dv.getBigUint64(8, true);
  t.equal(p0 >> 63n, 1n, 'present');
  const pfn0 = p0 & ((1n << 55n) - 1n);
  const pfn1 = p1 & ((1n << 55n) - 1n);
  t.ok(pfn0 > 0n && pfn1 > 0n);
  t.not(pfn1, pfn0 + 1n, 'two pages are not physically contiguous');
  t.throws(() => s.pread(pm, new Uint8Array(4), 0n), { code: 'EINVAL' }, 'entries are 8 bytes');
  const b = s.mmap(4096, RW, ANON, -1, 0n);
  s.pread(pm, e.subarray(0, 8), (b >> 12n) * 8n);
  t.equal(dv.getBigUint64(0, true), 0n, 'an untouched page is not present');
  k.setUid(1000);
  s.pread(pm, e.subarray(0, 8), (a >> 12n) * 8n);
  t.equal(dv.getBigUint64(0, true), 1n << 63n, 'present, PFN zeroed without CAP_SYS_ADMIN');
  s.close(pm);
  s.munmap(a, 8192);
  s.munmap(b, 4096);
});

t.test('fault injection: failNth counts every kernel call, failWhen matches, close still frees', async (t) => {
  const k = fresh(t, { log: true });
  const s = k.sys;
  const before = k.syscalls;
  k.failNth(2, 'ENOMEM');
  const a = s.eventfd(0, 0);
  const err = t.throws(() => s.eventfd(0, 0), { code: 'ENOMEM', syscall: 'eventfd' });
  t.ok(err instanceof VfioError, 'injected failures are VfioErrors');
  t.equal(k.syscalls, before + 2);
  t.equal(k.log.at(-1)?.injected, true);
  const rule = k.failWhen({ syscall: 'close' }, 'EIO', { times: 1 });
  t.throws(() => s.close(a), { code: 'EIO' });
  t.equal(rule.hits, 1);
  t.equal(k.leaks().fds, 0, 'close frees the fd even when it reports an error');
  const r2 = k.failWhen({ syscall: 'ioctl', request: VFIO_GET_API_VERSION }, 'EACCES');
  const c = s.open(`${k.devRoot}/vfio/vfio`, O_RDWR);
  t.throws(() => s.ioctlInt(c, VFIO_GET_API_VERSION, 0), { code: 'EACCES' });
  r2.remove();
  t.equal(s.ioctlInt(c, VFIO_GET_API_VERSION, 0), 0);
  k.failWhen((call) => call.method === 'pollAsync', 'EINTR', { times: 1 });
  await t.rejects(s.pollAsync([{ fd: c, events: POLLIN }], 0), { code: 'EINTR' });
  s.close(c);
  t.same(k.leaks(), { fds: 0, mappings: 0, pinned: 0 });
  t.throws(() => k.failNth(0, 'EIO'), RangeError);
  t.throws(() => k.failNth(1, 'ENOTANERRNO'), TypeError);
});

t.test('PROT_NONE mappings cannot be viewed', async (t) => {
  const k = fresh(t);
  const a = k.sys.mmap(4096, PROT_NONE, ANON, -1, 0n);
  t.throws(() => k.sys.view(a, 1), { code: 'EFAULT' });
  k.sys.munmap(a, 4096);
});

t.test('munmap takes the views made through the mapping with it, while the memory lives on', async (t) => {
  const k = fresh(t);
  const s = k.sys;
  const c = s.open(`${k.devRoot}/vfio/vfio`, O_RDWR);
  const g = s.open(`${k.devRoot}/vfio/3`, O_RDWR);
  s.ioctl(g, VFIO_GROUP_SET_CONTAINER, intArg(c));
  s.ioctlInt(c, VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU);
  const d = s.ioctl(g, VFIO_GROUP_GET_DEVICE_FD, Buffer.from('0000:00:03.0\0'));

  // Device memory: the device keeps its BAR; the process's view of it goes.
  let bar = s.mmap(4096, RW, MAP_SHARED, d, 0n);
  const regs = new Uint32Array(s.view(bar, 4096).buffer, s.view(bar, 4096).byteOffset, 1024);
  t.equal(regs[0], EDU_ID);
  s.munmap(bar, 4096);
  t.equal(regs.length, 0, 'a BAR view is empty after munmap (the process would SIGSEGV)');
  t.equal(regs[0], undefined, 'and reads undefined');
  bar = s.mmap(4096, RW, MAP_SHARED, d, 0n);
  t.equal(s.view(bar, 4)[0], 0xed, 'a new mapping shows the registers again');
  s.munmap(bar, 4096);

  // memfd memory: the file keeps its pages; views of two mappings go with the last one.
  const fd = s.memfdCreate('buf', 0);
  s.ftruncate(fd, 4096n);
  const m1 = s.mmap(4096, RW, MAP_SHARED, fd, 0n);
  const m2 = s.mmap(4096, RW, MAP_SHARED, fd, 0n);
  const v1 = s.view(m1, 4096);
  const v2 = s.view(m2, 4096);
  v1[0] = 9;
  s.munmap(m1, 4096);
  t.equal(v2[0], 9, 'another mapping of the same pages keeps its views (and, a limit of the fake, so does the stale one)');
  s.munmap(m2, 4096);
  t.equal(v2.length, 0, "the last munmap empties every view of the file's pages");
  const m3 = s.mmap(4096, RW, MAP_SHARED, fd, 0n);
  t.equal(s.view(m3, 1)[0], 9, 'the file kept its bytes');
  s.munmap(m3, 4096);
  s.close(fd);

  // Anonymous memory pinned for DMA: the pages stay the device's until the DMA mapping goes.
  const a = s.mmap(4096, RW, ANON, -1, 0n);
  const va = s.view(a, 4096);
  va[7] = 0x77;
  s.ioctl(c, VFIO_IOMMU_MAP_DMA, alloc(vfio_iommu_type1_dma_map, { argsz: 32, flags: 3, vaddr: a, iova: 0x100000n, size: 4096n }));
  s.munmap(a, 4096);
  t.equal(va.length, 0, 'the view of pinned memory is gone with its mapping');
  const cmd = new Uint8Array(2);
  s.pread(d, cmd, (7n << 40n) + 4n);
  cmd[0]! |= 0x4;
  s.pwrite(d, cmd, (7n << 40n) + 4n);
  t.equal(k.device('0000:00:03.0').dmaRead(0x100007n, 1)[0], 0x77, 'the device still reaches the pinned pages');
  s.ioctl(
    c,
    VFIO_IOMMU_UNMAP_DMA,
    alloc(vfio_iommu_type1_dma_unmap, { argsz: vfio_iommu_type1_dma_unmap.size, iova: 0x100000n, size: 4096n }),
  );
  [d, g, c].forEach((x) => s.close(x));
  t.same(k.leaks(), { fds: 0, mappings: 0, pinned: 0 });
});
