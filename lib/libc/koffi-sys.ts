// The real kernel: libc reached through koffi. This is the only module in the
// library that imports koffi; everything else calls the `Sys` interface, so a
// test can swap in the fake kernel (test/fake).
//
// Guarantees:
// - Each binding has a fixed prototype (no variadics): a fixed `void *` ioctl
//   costs ~0.1 µs over C and has `.async`; the variadic form has neither.
// - errno is read with koffi.errno() immediately after the failing call, on
//   the same thread (for `.async`, inside its callback, where it is right).
// - EINTR is retried for calls that had no effect when interrupted (open,
//   read/write family, ioctl, poll with the remaining timeout); never for close.
import koffi from 'koffi';
import { sysError } from './errors.js';
import type { PollFd, Sys } from './sys.js';

const EINTR = 4;
const SC_PAGESIZE = 30;
/** mmap's MAP_FAILED is (void *)-1, which koffi hands back as this BigInt (not null). */
const MAP_FAILED = 0xffffffffffffffffn;

const libc = koffi.load('libc.so.6');

// SAFETY: every prototype below matches glibc's x86-64/arm64 ABI. `open` is
// variadic in C; declaring its third argument fixed is ABI-compatible for an
// int mode. Buffers passed as `void *` are pinned by koffi for the duration of
// the synchronous call; the async poll keeps its buffer referenced until its
// callback runs.
const c = {
  open: libc.func('int open(const char *path, int flags, int mode)'),
  close: libc.func('int close(int fd)'),
  ioctlPtr: libc.func('int ioctl(int fd, unsigned long request, void *arg)'),
  ioctlInt: libc.func('int ioctl(int fd, unsigned long request, unsigned long arg)'),
  mmap: libc.func('void *mmap(void *addr, size_t length, int prot, int flags, int fd, int64_t offset)'),
  munmap: libc.func('int munmap(void *addr, size_t length)'),
  mlock: libc.func('int mlock(void *addr, size_t length)'),
  munlock: libc.func('int munlock(void *addr, size_t length)'),
  read: libc.func('intptr_t read(int fd, void *buf, size_t count)'),
  write: libc.func('intptr_t write(int fd, void *buf, size_t count)'),
  pread: libc.func('intptr_t pread(int fd, void *buf, size_t count, int64_t offset)'),
  pwrite: libc.func('intptr_t pwrite(int fd, void *buf, size_t count, int64_t offset)'),
  ftruncate: libc.func('int ftruncate(int fd, int64_t length)'),
  eventfd: libc.func('int eventfd(unsigned int initval, int flags)'),
  memfdCreate: libc.func('int memfd_create(const char *name, unsigned int flags)'),
  poll: libc.func('int poll(void *fds, unsigned long nfds, int timeout)'),
  sysconf: libc.func('long sysconf(int name)'),
  getuid: libc.func('unsigned int getuid()'),
};

/** Runs `call` until it does not fail with EINTR; throws a VfioError on failure. */
function retrying(syscall: string, path: string | undefined, call: () => number | bigint): number {
  for (;;) {
    const r = Number(call());
    if (r >= 0) return r;
    const errno = koffi.errno();
    if (errno !== EINTR) throw sysError(syscall, errno, path === undefined ? {} : { path });
  }
}

/** struct pollfd { int fd; short events; short revents; }: 8 bytes, little-endian. */
function encodePollFds(fds: readonly PollFd[]): Buffer {
  const buf = Buffer.alloc(8 * fds.length);
  fds.forEach((p, i) => {
    buf.writeInt32LE(p.fd, 8 * i);
    buf.writeInt16LE(p.events, 8 * i + 4);
  });
  return buf;
}

function decodeRevents(buf: Buffer, n: number): number[] {
  const out: number[] = [];
  for (let i = 0; i < n; i++) out.push(buf.readUInt16LE(8 * i + 6));
  return out;
}

function checkLength(syscall: string, length: number): void {
  if (!Number.isSafeInteger(length) || length < 0) throw sysError(syscall, 'EINVAL', { detail: `bad length ${length}` });
}

export const koffiSys: Sys = {
  open(path, flags, mode = 0) {
    return retrying('open', path, () => c.open(path, flags, mode));
  },

  close(fd) {
    if (c.close(fd) < 0) throw sysError('close', koffi.errno());
  },

  ioctl(fd, request, arg) {
    return retrying('ioctl', undefined, () => c.ioctlPtr(fd, request, arg));
  },

  ioctlInt(fd, request, arg) {
    return retrying('ioctl', undefined, () => c.ioctlInt(fd, request, arg));
  },

  mmap(length, prot, flags, fd, offset) {
    checkLength('mmap', length);
    const addr = c.mmap(null, length, prot, flags, fd, offset) as bigint;
    if (addr === MAP_FAILED) throw sysError('mmap', koffi.errno());
    return addr;
  },

  munmap(addr, length) {
    if (c.munmap(addr, length) < 0) throw sysError('munmap', koffi.errno());
  },

  mlock(addr, length) {
    if (c.mlock(addr, length) < 0) throw sysError('mlock', koffi.errno());
  },

  munlock(addr, length) {
    if (c.munlock(addr, length) < 0) throw sysError('munlock', koffi.errno());
  },

  view(addr, length) {
    checkLength('view', length);
    // SAFETY: the caller guarantees [addr, addr+length) is a live mapping and
    // drops the view (behind its guard) before unmapping it. koffi.view does
    // not copy: reads and writes go straight to that memory.
    return length === 0 ? new Uint8Array(0) : new Uint8Array(koffi.view(addr, length));
  },

  read(fd, buf) {
    return retrying('read', undefined, () => c.read(fd, buf, buf.byteLength));
  },

  write(fd, buf) {
    return retrying('write', undefined, () => c.write(fd, buf, buf.byteLength));
  },

  pread(fd, buf, offset) {
    return retrying('pread', undefined, () => c.pread(fd, buf, buf.byteLength, offset));
  },

  pwrite(fd, buf, offset) {
    return retrying('pwrite', undefined, () => c.pwrite(fd, buf, buf.byteLength, offset));
  },

  ftruncate(fd, length) {
    retrying('ftruncate', undefined, () => c.ftruncate(fd, length));
  },

  eventfd(initval, flags) {
    return retrying('eventfd', undefined, () => c.eventfd(initval, flags));
  },

  memfdCreate(name, flags) {
    return retrying('memfd_create', undefined, () => c.memfdCreate(name, flags));
  },

  poll(fds, timeoutMs) {
    const buf = encodePollFds(fds);
    const deadline = timeoutMs < 0 ? Infinity : Date.now() + timeoutMs;
    for (;;) {
      const remaining = timeoutMs < 0 ? -1 : Math.max(0, deadline - Date.now());
      const r = c.poll(buf, fds.length, remaining) as number;
      if (r >= 0) return decodeRevents(buf, fds.length);
      const errno = koffi.errno();
      if (errno !== EINTR) throw sysError('poll', errno);
    }
  },

  pollAsync(fds, timeoutMs) {
    // The buffer is captured by the closure below, so it stays alive (and
    // where the worker thread writes revents) until the callback has run.
    const buf = encodePollFds(fds);
    const deadline = timeoutMs < 0 ? Infinity : Date.now() + timeoutMs;
    return new Promise<number[]>((resolve, reject) => {
      const attempt = (): void => {
        const remaining = timeoutMs < 0 ? -1 : Math.max(0, deadline - Date.now());
        c.poll.async(buf, fds.length, remaining, (err: unknown, r: number) => {
          if (err) return reject(err);
          if (r >= 0) return resolve(decodeRevents(buf, fds.length));
          // errno after .async is only right inside this callback.
          const errno = koffi.errno();
          if (errno === EINTR) return attempt();
          reject(sysError('poll', errno));
        });
      };
      attempt();
    });
  },

  pageSize() {
    return Number(c.sysconf(SC_PAGESIZE));
  },

  getuid() {
    return c.getuid() as number;
  },
};
