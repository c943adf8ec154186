// The real kernel: libc reached through koffi. This is the only module in the
// library that imports koffi; everything else calls the `Sys` interface, so a
// test can swap in the fake kernel (lib/testing).
//
// Guarantees:
// - Each binding has a fixed prototype (no variadics): a fixed `void *` ioctl
//   costs ~0.1 µs over C and has `.async`; the variadic form has neither.
// - errno is read with koffi.errno() immediately after the failing call, on
//   the same thread (for `.async`, inside its callback, where it is right).
// - EINTR is retried for calls that had no effect when interrupted (open,
//   read/write family, ioctl, poll with the remaining timeout); never for close.
import koffi from 'koffi';
import { sysError } from '../base/errors.js';
import { EventfdPoller } from './eventfd-poller.js';
import { watchOnEventLoop } from './eventfd-stream.js';
import { AF_UNIX, SCM_MAX_FD, UNIX_PATH_MAX, type Fd, type PollFd, type RecvResult, type Sys } from './sys.js';

const EINTR = 4;
const EAGAIN = 11;
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
  fcntl: libc.func('int fcntl(int fd, int cmd, int arg)'),
  getsockopt: libc.func('int getsockopt(int fd, int level, int name, void *value, void *length)'),
  socket: libc.func('int socket(int domain, int type, int protocol)'),
  bind: libc.func('int bind(int fd, const void *addr, uint32_t addrlen)'),
  listen: libc.func('int listen(int fd, int backlog)'),
  accept4: libc.func('int accept4(int fd, void *addr, void *addrlen, int flags)'),
  connect: libc.func('int connect(int fd, const void *addr, uint32_t addrlen)'),
  sendmsg: libc.func('intptr_t sendmsg(int fd, void *msg, int flags)'),
  recvmsg: libc.func('intptr_t recvmsg(int fd, void *msg, int flags)'),
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

const F_DUPFD_CLOEXEC = 1030;
const F_ADD_SEALS = 1033;
const F_GET_SEALS = 1034;
const SO_PEERCRED = 17;
/** struct ucred: pid, uid, gid (three 32-bit fields). */
const UCRED_SIZE = 12;
const SOL_SOCKET = 1;
const SCM_RIGHTS = 1;

/** struct sockaddr_un for `path`: sun_family, then the NUL-terminated path (110 bytes). */
function sockaddrUn(syscall: string, path: string): Buffer {
  const bytes = Buffer.from(path);
  if (bytes.length === 0 || bytes.length > UNIX_PATH_MAX || bytes.includes(0)) {
    throw sysError(syscall, bytes.length > UNIX_PATH_MAX ? 'ENAMETOOLONG' : 'EINVAL', { path });
  }
  const addr = Buffer.alloc(110);
  addr.writeUInt16LE(AF_UNIX, 0);
  bytes.copy(addr, 2);
  return addr;
}

// struct msghdr, iovec and cmsghdr on x86-64/arm64 (LP64):
//   msghdr { void *name; u32 namelen (+4); iovec *iov; size_t iovlen;
//            void *control; size_t controllen; int flags (+4) }   56 bytes
//   iovec  { void *base; size_t len }                              16 bytes
//   cmsghdr { size_t len; int level; int type; data[] }            16 + data
const MSGHDR = { iov: 16, iovlen: 24, control: 32, controllen: 40, flags: 48, size: 56 };
const CMSG_HDR = 16;
const cmsgSpace = (dataBytes: number): number => CMSG_HDR + Math.ceil(dataBytes / 8) * 8;

/**
 * Runs `body` with `length` bytes of native memory at a stable address
 * (msghdr holds pointers, so its parts cannot be JS buffers that may move).
 */
function withNative<T>(length: number, body: (addr: bigint, bytes: Buffer) => T): T {
  const mem = koffi.alloc('uint8_t', length);
  try {
    const addr = koffi.address(mem);
    // SAFETY: [addr, addr + length) is ours until koffi.free below; the view
    // is only used inside `body`.
    const bytes = Buffer.from(koffi.view(addr, length));
    bytes.fill(0);
    return body(addr, bytes);
  } finally {
    koffi.free(mem);
  }
}

/** Lays out msghdr + iovec + control + data in `bytes` (at `addr`); returns the offsets. */
function layoutMsg(addr: bigint, bytes: Buffer, dataLength: number, controlLength: number): { control: number; data: number } {
  const iov = MSGHDR.size;
  const control = iov + 16;
  const data = control + controlLength;
  bytes.writeBigUInt64LE(addr + BigInt(iov), MSGHDR.iov);
  bytes.writeBigUInt64LE(1n, MSGHDR.iovlen);
  if (controlLength > 0) {
    bytes.writeBigUInt64LE(addr + BigInt(control), MSGHDR.control);
    bytes.writeBigUInt64LE(BigInt(controlLength), MSGHDR.controllen);
  }
  bytes.writeBigUInt64LE(addr + BigInt(data), iov);
  bytes.writeBigUInt64LE(BigInt(dataLength), iov + 8);
  return { control, data };
}

function checkFdCount(syscall: string, n: number): void {
  if (!Number.isSafeInteger(n) || n < 0 || n > SCM_MAX_FD)
    throw sysError(syscall, 'EINVAL', { detail: `${n} fds (at most ${SCM_MAX_FD})` });
}

/**
 * A poll timeout that survives EINTR retries: each call returns what is left
 * of the original `timeoutMs` (-1, "forever", stays -1).
 */
function pollTimeout(timeoutMs: number): () => number {
  if (timeoutMs < 0) return () => -1;
  const deadline = Date.now() + timeoutMs;
  return () => Math.max(0, deadline - Date.now());
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

  // ioctl, pread and pwrite are the hot calls (every DMA map, region query,
  // pread-backed register access): the retry loop is written out, without the
  // closure `retrying` takes.
  ioctl(fd, request, arg) {
    for (;;) {
      const r = c.ioctlPtr(fd, request, arg) as number;
      if (r >= 0) return r;
      const errno = koffi.errno();
      if (errno !== EINTR) throw sysError('ioctl', errno);
    }
  },

  ioctlInt(fd, request, arg) {
    for (;;) {
      const r = c.ioctlInt(fd, request, arg) as number;
      if (r >= 0) return r;
      const errno = koffi.errno();
      if (errno !== EINTR) throw sysError('ioctl', errno);
    }
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

  tryRead(fd, buf) {
    for (;;) {
      const r = Number(c.read(fd, buf, buf.byteLength));
      if (r >= 0) return r;
      const errno = koffi.errno();
      if (errno === EAGAIN) return null;
      if (errno !== EINTR) throw sysError('read', errno);
    }
  },

  write(fd, buf) {
    return retrying('write', undefined, () => c.write(fd, buf, buf.byteLength));
  },

  pread(fd, buf, offset) {
    for (;;) {
      const r = Number(c.pread(fd, buf, buf.byteLength, offset));
      if (r >= 0) return r;
      const errno = koffi.errno();
      if (errno !== EINTR) throw sysError('pread', errno);
    }
  },

  pwrite(fd, buf, offset) {
    for (;;) {
      const r = Number(c.pwrite(fd, buf, buf.byteLength, offset));
      if (r >= 0) return r;
      const errno = koffi.errno();
      if (errno !== EINTR) throw sysError('pwrite', errno);
    }
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
    const remaining = pollTimeout(timeoutMs);
    for (;;) {
      const r = c.poll(buf, fds.length, remaining()) as number;
      if (r >= 0) return decodeRevents(buf, fds.length);
      const errno = koffi.errno();
      if (errno !== EINTR) throw sysError('poll', errno);
    }
  },

  pollAsync(fds, timeoutMs) {
    // The buffer is captured by the closure below, so it stays alive (and
    // where the worker thread writes revents) until the callback has run.
    const buf = encodePollFds(fds);
    const remaining = pollTimeout(timeoutMs);
    return new Promise<number[]>((resolve, reject) => {
      const attempt = (): void => {
        c.poll.async(buf, fds.length, remaining(), (err: unknown, r: number) => {
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

  watchEventfd(fd, watch) {
    // The event loop's own epoll when this Node allows it (one wake-up per
    // signal), else the shared poll thread.
    return watchOnEventLoop(koffiSys, fd, watch) ?? EventfdPoller.of(koffiSys).watcher(fd, watch);
  },

  dup(fd) {
    return retrying('fcntl', undefined, () => c.fcntl(fd, F_DUPFD_CLOEXEC, 0));
  },

  addSeals(fd, seals) {
    retrying('fcntl', undefined, () => c.fcntl(fd, F_ADD_SEALS, seals));
  },

  getSeals(fd) {
    return retrying('fcntl', undefined, () => c.fcntl(fd, F_GET_SEALS, 0));
  },

  socket(domain, type, protocol) {
    return retrying('socket', undefined, () => c.socket(domain, type, protocol));
  },

  bind(fd, path) {
    const addr = sockaddrUn('bind', path);
    if (c.bind(fd, addr, addr.length) < 0) throw sysError('bind', koffi.errno(), { path });
  },

  listen(fd, backlog) {
    if (c.listen(fd, backlog) < 0) throw sysError('listen', koffi.errno());
  },

  accept(fd, flags) {
    return retrying('accept4', undefined, () => c.accept4(fd, null, null, flags));
  },

  connect(fd, path) {
    const addr = sockaddrUn('connect', path);
    // Not retried: after EINTR the connection proceeds on its own.
    if (c.connect(fd, addr, addr.length) < 0) throw sysError('connect', koffi.errno(), { path });
  },

  sendmsg(fd, data, fds, flags) {
    checkFdCount('sendmsg', fds.length);
    const controlLength = fds.length === 0 ? 0 : cmsgSpace(4 * fds.length);
    return withNative(MSGHDR.size + 16 + controlLength + data.byteLength, (addr, bytes) => {
      const at = layoutMsg(addr, bytes, data.byteLength, controlLength);
      if (fds.length > 0) {
        bytes.writeBigUInt64LE(BigInt(CMSG_HDR + 4 * fds.length), at.control);
        bytes.writeInt32LE(SOL_SOCKET, at.control + 8);
        bytes.writeInt32LE(SCM_RIGHTS, at.control + 12);
        fds.forEach((f, i) => bytes.writeInt32LE(f, at.control + CMSG_HDR + 4 * i));
      }
      bytes.set(data, at.data);
      return retrying('sendmsg', undefined, () => c.sendmsg(fd, addr, flags));
    });
  },

  recvmsg(fd, buf, maxFds, flags): RecvResult {
    checkFdCount('recvmsg', maxFds);
    const controlLength = maxFds === 0 ? 0 : cmsgSpace(4 * maxFds);
    return withNative(MSGHDR.size + 16 + controlLength + buf.byteLength, (addr, bytes) => {
      const at = layoutMsg(addr, bytes, buf.byteLength, controlLength);
      // Room for exactly maxFds: the kernel counts fds in msg_controllen, and
      // CMSG_SPACE's padding would fit one more when maxFds is odd.
      if (maxFds > 0) bytes.writeBigUInt64LE(BigInt(CMSG_HDR + 4 * maxFds), MSGHDR.controllen);
      const n = retrying('recvmsg', undefined, () => c.recvmsg(fd, addr, flags));
      const received: Fd[] = [];
      // Walk the control messages the kernel wrote (msg_controllen is what it used).
      const used = Number(bytes.readBigUInt64LE(MSGHDR.controllen));
      let off = 0;
      while (controlLength > 0 && off + CMSG_HDR <= used) {
        const len = Number(bytes.readBigUInt64LE(at.control + off));
        if (len < CMSG_HDR || off + len > used) break;
        if (bytes.readInt32LE(at.control + off + 8) === SOL_SOCKET && bytes.readInt32LE(at.control + off + 12) === SCM_RIGHTS) {
          for (let p = CMSG_HDR; p + 4 <= len; p += 4) received.push(bytes.readInt32LE(at.control + off + p));
        }
        off += cmsgSpace(len - CMSG_HDR);
      }
      buf.set(bytes.subarray(at.data, at.data + n));
      return { bytes: n, fds: received, flags: bytes.readInt32LE(MSGHDR.flags) };
    });
  },

  peerCredentials(fd) {
    const value = Buffer.alloc(UCRED_SIZE);
    const length = Buffer.alloc(4);
    length.writeUInt32LE(UCRED_SIZE, 0);
    if ((c.getsockopt(fd, SOL_SOCKET, SO_PEERCRED, value, length) as number) < 0) throw sysError('getsockopt', koffi.errno());
    return { pid: value.readInt32LE(0), uid: value.readUInt32LE(4), gid: value.readUInt32LE(8) };
  },

  pageSize() {
    return Number(c.sysconf(SC_PAGESIZE));
  },

  getuid() {
    return c.getuid() as number;
  },
};
