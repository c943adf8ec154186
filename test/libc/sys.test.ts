// The libc layer on real fds: what the kernel answers, seen through koffiSys.
import t from 'tap';
import { koffiSys as sys } from '../../lib/libc/koffi-sys.js';
import { VfioError } from '../../lib/base/errors.js';
import {
  EFD_CLOEXEC,
  EFD_NONBLOCK,
  MAP_SHARED,
  MFD_CLOEXEC,
  O_CLOEXEC,
  O_RDWR,
  POLLIN,
  POLLNVAL,
  PROT_READ,
  PROT_WRITE,
} from '../../lib/libc/sys.js';

/** What a raw mmap returns on failure; koffiSys must never hand it out. */
const MAP_FAILED = 0xffffffffffffffffn;

t.test('open: ENOENT names the path', async (t) => {
  t.throws(() => sys.open('/nonexistent/vfio', O_RDWR | O_CLOEXEC), {
    name: 'VfioError',
    code: 'ENOENT',
    errno: 2,
    syscall: 'open',
    path: '/nonexistent/vfio',
  });
  const err = (() => {
    try {
      sys.open('/nonexistent/x', O_RDWR);
    } catch (e) {
      return e;
    }
  })();
  t.ok(err instanceof VfioError);
  t.match((err as Error).message, /^open \/nonexistent\/x: ENOENT$/);
});

t.test('ioctl on /dev/null is ENOTTY in both forms', async (t) => {
  const fd = sys.open('/dev/null', O_RDWR | O_CLOEXEC);
  t.teardown(() => sys.close(fd));
  t.throws(() => sys.ioctl(fd, 0x3b64, new Uint8Array(16)), { code: 'ENOTTY', errno: 25, syscall: 'ioctl' });
  t.throws(() => sys.ioctlInt(fd, 0x3b65, 3), { code: 'ENOTTY', syscall: 'ioctl' });
});

t.test('close of a closed fd is EBADF', async (t) => {
  const fd = sys.open('/dev/null', O_RDWR | O_CLOEXEC);
  sys.close(fd);
  t.throws(() => sys.close(fd), { code: 'EBADF', syscall: 'close' });
});

t.test('memfd mmap: writes through a view are seen by pread, and back', async (t) => {
  const page = sys.pageSize();
  t.ok(page >= 4096 && (page & (page - 1)) === 0, 'page size is a power of two');
  const fd = sys.memfdCreate('vfio-test', MFD_CLOEXEC);
  t.teardown(() => sys.close(fd));
  sys.ftruncate(fd, BigInt(2 * page));
  const addr = sys.mmap(2 * page, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0n);
  t.ok(addr !== MAP_FAILED && addr % BigInt(page) === 0n, 'page-aligned address');
  const bytes = sys.view(addr, 2 * page);
  const words = new Uint32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 4);
  words[page / 4] = 0xdeadbeef;
  const back = new Uint8Array(4);
  t.equal(sys.pread(fd, back, BigInt(page)), 4);
  t.same([...back], [0xef, 0xbe, 0xad, 0xde]);
  // A Uint8Array at a nonzero byteOffset is passed at that offset.
  const outer = new Uint8Array(16).fill(0x5a);
  const inner = outer.subarray(4, 8);
  t.equal(sys.pwrite(fd, inner, 8n), 4);
  t.same([...bytes.subarray(8, 12)], [0x5a, 0x5a, 0x5a, 0x5a]);
  sys.mlock(addr, page);
  sys.munlock(addr, page);
  sys.munmap(addr, 2 * page);
});

t.test('mmap failure is a VfioError, not MAP_FAILED', async (t) => {
  t.throws(() => sys.mmap(4096, PROT_READ, MAP_SHARED, 999_999, 0n), { code: 'EBADF', syscall: 'mmap' });
  t.throws(() => sys.mmap(-1, PROT_READ, MAP_SHARED, -1, 0n), { code: 'EINVAL' });
});

t.test('eventfd: write adds, read returns and clears, nonblocking read is EAGAIN', async (t) => {
  const fd = sys.eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  t.teardown(() => sys.close(fd));
  const one = Buffer.alloc(8);
  one.writeBigUInt64LE(3n);
  t.equal(sys.write(fd, one), 8);
  t.equal(sys.write(fd, one), 8);
  const out = Buffer.alloc(8);
  t.equal(sys.read(fd, out), 8);
  t.equal(out.readBigUInt64LE(), 6n);
  t.throws(() => sys.read(fd, out), { code: 'EAGAIN', syscall: 'read' });
});

t.test('tryRead: null when nothing is there, the count when signalled, other errors throw', async (t) => {
  const fd = sys.eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  t.teardown(() => sys.close(fd));
  const buf = Buffer.alloc(8);
  t.equal(sys.tryRead(fd, buf), null, 'EAGAIN is null, not an error');
  buf.writeBigUInt64LE(6n);
  sys.write(fd, buf);
  buf.fill(0);
  t.equal(sys.tryRead(fd, buf), 8);
  t.equal(buf.readBigUInt64LE(0), 6n);
  t.equal(sys.tryRead(fd, buf), null, 'cleared by the read');
  t.throws(() => sys.tryRead(fd, Buffer.alloc(4)), { code: 'EINVAL', syscall: 'read' }, 'an eventfd needs 8 bytes');
  t.throws(() => sys.tryRead(999_999, buf), { code: 'EBADF', syscall: 'read' });
});

t.test('poll: timeout gives zeros, a signalled eventfd gives POLLIN', async (t) => {
  const a = sys.eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  const b = sys.eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  t.teardown(() => {
    sys.close(a);
    sys.close(b);
  });
  const t0 = Date.now();
  t.same(
    sys.poll(
      [
        { fd: a, events: POLLIN },
        { fd: b, events: POLLIN },
      ],
      20,
    ),
    [0, 0],
  );
  t.ok(Date.now() - t0 >= 15, 'waited about the timeout');
  const one = Buffer.alloc(8);
  one.writeBigUInt64LE(1n);
  sys.write(b, one);
  t.same(
    sys.poll(
      [
        { fd: a, events: POLLIN },
        { fd: b, events: POLLIN },
      ],
      0,
    ),
    [0, POLLIN],
  );
});

t.test('pollAsync: the event loop keeps running while it waits', async (t) => {
  const fd = sys.eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  t.teardown(() => sys.close(fd));
  const waiting = sys.pollAsync([{ fd, events: POLLIN }], 5000);
  let ticked = false;
  await new Promise<void>((resolve) =>
    setTimeout(() => {
      ticked = true;
      resolve();
    }, 10),
  );
  const one = Buffer.alloc(8);
  one.writeBigUInt64LE(1n);
  sys.write(fd, one);
  t.same(await waiting, [POLLIN]);
  t.ok(ticked, 'a timer ran while poll was blocked');
  t.same(await sys.pollAsync([{ fd, events: 0 }], 10), [0], 'timeout resolves with zeros');
});

t.test('pollAsync on a bad fd reports POLLNVAL, not a hang', async (t) => {
  t.same(await sys.pollAsync([{ fd: 999_999, events: POLLIN }], 1000), [POLLNVAL]);
});

t.test('getuid is a number', async (t) => {
  t.equal(sys.getuid(), process.getuid?.());
});
