// The fake kernel's `Sys` (lib/libc/sys.ts): every call is counted, may be
// failed on purpose (fault injection), runs the device models, and turns a
// refusal into the same VfioError the real koffi Sys throws (syscall, errno,
// code; path for open), with nothing that would let the library tell them apart.
import { sysError, VfioError } from '../base/errors.js';
import {
  AF_UNIX,
  MSG_CMSG_CLOEXEC,
  MSG_DONTWAIT,
  MSG_NOSIGNAL,
  SOCK_CLOEXEC,
  SOCK_NONBLOCK,
  SOCK_SEQPACKET,
  type PeerCredentials,
  type RecvResult,
  EFD_CLOEXEC,
  EFD_NONBLOCK,
  EFD_SEMAPHORE,
  MAP_ANONYMOUS,
  MAP_FIXED,
  MAP_HUGETLB,
  MAP_HUGE_SHIFT,
  MAP_POPULATE,
  MFD_CLOEXEC,
  MFD_ALLOW_SEALING,
  MFD_HUGETLB,
  O_NONBLOCK,
  POLLERR,
  POLLHUP,
  POLLNVAL,
  PROT_READ,
  PROT_WRITE,
  type EventfdWatch,
  type EventfdWatcher,
  type Fd,
  type PollFd,
  type Sys,
} from '../libc/sys.js';
import { EventfdPoller } from '../libc/eventfd-poller.js';
import { EventFdFile } from './eventfd.js';
import { errnoNumber, fail, KernelError } from './errors.js';
import type { FakeFile, IoctlArg, MmapTarget } from './files.js';
import type { FakeKernel } from './kernel.js';
import { MemfdFile } from './memfd.js';
import { UnixSocketFile } from './socket.js';
import { AddressSpace, Backing, PAGE_SIZE, USER_END } from './memory.js';
import { ArgMemory, PointerMemory } from './uaccess.js';

/** The Sys methods that enter the kernel: the ones counted and fault-injectable. */
export type SysMethod =
  | 'open'
  | 'close'
  | 'ioctl'
  | 'ioctlInt'
  | 'mmap'
  | 'munmap'
  | 'mlock'
  | 'munlock'
  | 'read'
  | 'tryRead'
  | 'write'
  | 'pread'
  | 'pwrite'
  | 'ftruncate'
  | 'eventfd'
  | 'memfdCreate'
  | 'poll'
  | 'pollAsync'
  | 'dup'
  | 'addSeals'
  | 'getSeals'
  | 'socket'
  | 'bind'
  | 'listen'
  | 'accept'
  | 'connect'
  | 'sendmsg'
  | 'recvmsg'
  | 'peerCredentials';

const KERNEL_NAME: Record<SysMethod, string> = {
  open: 'open',
  close: 'close',
  ioctl: 'ioctl',
  ioctlInt: 'ioctl',
  mmap: 'mmap',
  munmap: 'munmap',
  mlock: 'mlock',
  munlock: 'munlock',
  read: 'read',
  tryRead: 'read',
  write: 'write',
  pread: 'pread',
  pwrite: 'pwrite',
  ftruncate: 'ftruncate',
  eventfd: 'eventfd',
  memfdCreate: 'memfd_create',
  poll: 'poll',
  pollAsync: 'poll',
  dup: 'fcntl',
  addSeals: 'fcntl',
  getSeals: 'fcntl',
  socket: 'socket',
  bind: 'bind',
  listen: 'listen',
  accept: 'accept4',
  connect: 'connect',
  sendmsg: 'sendmsg',
  recvmsg: 'recvmsg',
  peerCredentials: 'getsockopt',
};

/** One counted call, as the log records it and fault rules see it. */
export interface SyscallRecord {
  /** 1-based position among all counted calls. */
  readonly n: number;
  readonly method: SysMethod;
  /** The kernel's name for it ('ioctl' for ioctl and ioctlInt, 'memfd_create', ...). */
  readonly syscall: string;
  readonly fd?: number;
  /** open's path, or the path the fd was opened by. */
  readonly path?: string;
  /** The file kind behind `fd` ('device', 'group', 'container', 'iommufd', 'eventfd', ...). */
  readonly kind?: string;
  readonly request?: number;
  /** The uapi name of `request` for that kind of file. */
  readonly requestName?: string;
  /** The errno name when the call failed (injected or not). */
  error?: string;
  injected?: boolean;
}

/** A stand-in for "the address of the caller's buffer" when an integer-argument request is given a buffer. */
const BUFFER_POINTER_VALUE = 0x7ffd00001000n;
const HUGE_2M = 2 * 1024 * 1024;
/** What a blocking poll sleeps on (Atomics.wait with a timeout): nothing ever notifies it. */
const SLEEP = new Int32Array(new SharedArrayBuffer(4));

export class FakeSys implements Sys {
  constructor(private readonly k: FakeKernel) {}

  private fileInfo(fd: number): { kind?: string; path?: string } {
    const f = this.k.fds.lookup(fd);
    if (f === undefined) return {};
    return f.path === null ? { kind: f.kind } : { kind: f.kind, path: f.path };
  }

  /** Counts, injects, runs the models, and translates KernelError into VfioError. */
  private enter<T>(method: SysMethod, details: Partial<SyscallRecord>, body: () => T, onInjected?: () => void): T {
    const rec = this.k.record(method, KERNEL_NAME[method], details);
    const path = method === 'open' ? details.path : undefined;
    const injected = this.k.injectedFault(rec);
    this.k.tickDevices();
    if (injected !== null) {
      rec.error = injected;
      rec.injected = true;
      onInjected?.();
      throw sysError(rec.syscall, errnoNumber(injected), path === undefined ? {} : { path });
    }
    try {
      return body();
    } catch (e) {
      throw this.translate(e, rec, path);
    }
  }

  private translate(e: unknown, rec: SyscallRecord, path: string | undefined): unknown {
    if (!(e instanceof KernelError)) return e;
    rec.error = e.code;
    this.k.dmesg(`${rec.syscall}${rec.requestName ? ` ${rec.requestName}` : ''}${rec.path ? ` ${rec.path}` : ''}: ${e.code}: ${e.why}`);
    if (e.code === 'EDEADLK') {
      // Not a kernel answer: the real call would hang forever. Say so with a readable code.
      return new VfioError({ syscall: rec.syscall, errno: errnoNumber('EDEADLK'), code: 'EDEADLK' });
    }
    return sysError(rec.syscall, errnoNumber(e.code), path === undefined ? {} : { path });
  }

  open(path: string, flags: number, _mode = 0): Fd {
    const resolved = this.k.resolvePath(path);
    return this.enter('open', { path: resolved }, () => {
      this.k.fds.reserve();
      const file = this.k.openNode(resolved, flags & 3, (flags & O_NONBLOCK) !== 0);
      return this.k.fds.install(file);
    });
  }

  close(fd: Fd): void {
    // close(2) frees the descriptor even when it reports an error (EINTR, EIO).
    this.enter(
      'close',
      { fd, ...this.fileInfo(fd) },
      () => this.k.fds.close(fd),
      () => {
        if (this.k.fds.lookup(fd) !== undefined) this.k.fds.close(fd);
      },
    );
  }

  private ioctlCall(method: 'ioctl' | 'ioctlInt', fd: Fd, request: number, arg: IoctlArg): number {
    const info = this.fileInfo(fd);
    const requestName = this.k.requestName(info.kind, request);
    return this.enter(method, { fd, request, ...info, ...(requestName === undefined ? {} : { requestName }) }, () =>
      this.k.fds.get(fd).ioctl(request, arg),
    );
  }

  ioctl(fd: Fd, request: number, arg: Uint8Array): number {
    const mem = new ArgMemory(arg);
    return this.ioctlCall('ioctl', fd, request, { mem: () => mem, value: BUFFER_POINTER_VALUE });
  }

  ioctlInt(fd: Fd, request: number, arg: number | bigint): number {
    const value = BigInt.asUintN(64, BigInt(arg));
    return this.ioctlCall('ioctlInt', fd, request, { mem: () => new PointerMemory(this.k.space, value), value });
  }

  mmap(length: number, prot: number, flags: number, fd: Fd, offset: bigint): bigint {
    const anon = (flags & MAP_ANONYMOUS) !== 0;
    return this.enter('mmap', anon ? {} : { fd, ...this.fileInfo(fd) }, () => {
      if (!Number.isSafeInteger(length) || length <= 0) fail('EINVAL', 'length is zero or not a byte count');
      if (offset < 0n || offset % BigInt(PAGE_SIZE) !== 0n) fail('EINVAL', 'offset is not page aligned');
      const type = flags & 3;
      if (type === 0) fail('EINVAL', 'neither MAP_SHARED nor MAP_PRIVATE');
      const shared = type !== 2;
      if (flags & MAP_FIXED) fail('EPERM', 'MAP_FIXED at address 0 is below mmap_min_addr');
      let target: MmapTarget;
      let file: FakeFile | null = null;
      let len = Math.ceil(length / PAGE_SIZE) * PAGE_SIZE;
      if (anon) {
        let hugeSize = 0;
        if (flags & MAP_HUGETLB) {
          const code = (flags >> MAP_HUGE_SHIFT) & 0x3f;
          if (code !== 0 && code !== 21 && code !== 30) fail('EINVAL', `no huge page size 2^${code}`);
          if (code === 30) fail('ENOMEM', 'the fake has no 1 GiB huge pages');
          hugeSize = HUGE_2M;
          len = Math.ceil(length / HUGE_2M) * HUGE_2M;
          const need = len / HUGE_2M;
          if (this.k.hugepagesFree < need) fail('ENOMEM', `${need} huge pages needed, ${this.k.hugepagesFree} free`);
        }
        const backing = new Backing('anon', len, this.k.phys, hugeSize);
        if (hugeSize > 0) {
          const need = len / HUGE_2M;
          this.k.hugepagesFree -= need;
          backing.onFree = () => {
            this.k.hugepagesFree += need;
          };
        }
        target = { backing, offset: 0, pfnmap: false, hugeSize };
      } else {
        file = this.k.fds.get(fd);
        if (flags & MAP_HUGETLB && !(file instanceof MemfdFile && file.hugeSize > 0))
          fail('EINVAL', 'MAP_HUGETLB on a file that is not hugetlbfs');
        if (!file.readable) fail('EACCES', 'the file is not open for reading');
        if (shared && prot & PROT_WRITE && !file.writable) fail('EACCES', 'a shared writable mapping of a file not open for writing');
        if (file instanceof MemfdFile && file.hugeSize > 0) len = Math.ceil(length / file.hugeSize) * file.hugeSize;
        if (offset + BigInt(len) > 1n << 63n) fail('EOVERFLOW', 'offset + length overflows');
        target = file.mmap({ length: len, prot, shared, offset });
      }
      const bytes = BigInt(len);
      const align = target.hugeSize > 0 ? BigInt(target.hugeSize) : len >= HUGE_2M ? BigInt(HUGE_2M) : BigInt(PAGE_SIZE);
      const addr = this.k.space.pickAddress(bytes, align);
      this.k.space.insert({
        start: addr,
        end: addr + bytes,
        prot,
        shared,
        backing: target.backing,
        offset: target.offset,
        file,
        pfnmap: target.pfnmap,
        hugeSize: target.hugeSize,
        accessFault: target.accessFault,
      });
      if (flags & MAP_POPULATE) this.k.space.touch(addr, len);
      return addr;
    });
  }

  munmap(addr: bigint, length: number): void {
    this.enter('munmap', {}, () => {
      if (addr % BigInt(PAGE_SIZE) !== 0n) fail('EINVAL', 'address is not page aligned');
      if (!Number.isSafeInteger(length) || length <= 0) fail('EINVAL', 'length is zero');
      const end = addr + BigInt(Math.ceil(length / PAGE_SIZE) * PAGE_SIZE);
      if (end > USER_END) fail('EINVAL', 'range past the end of user space');
      this.k.space.unmap(addr, end);
    });
  }

  /** The whole pages of [addr, addr+length), which must all be mapped (else ENOMEM). */
  private lockRange(addr: bigint, length: number): bigint[] {
    if (!Number.isSafeInteger(length) || length < 0) fail('EINVAL', 'bad length');
    const { first, count } = AddressSpace.pages(addr, length);
    const pages: bigint[] = [];
    for (let p = first; p < first + count; p++) {
      const v = this.k.space.find(p << 12n);
      if (v === undefined) fail('ENOMEM', `address 0x${(p << 12n).toString(16)} is not mapped`);
      if (!v.pfnmap) pages.push(p); // mlock ignores VM_IO | VM_PFNMAP mappings
    }
    return pages;
  }

  mlock(addr: bigint, length: number): void {
    this.enter('mlock', {}, () => {
      const pages = this.lockRange(addr, length).filter((p) => !this.k.space.locked.has(p));
      if (this.k.uid() !== 0 && this.k.config.memlockLimit === 0) fail('EPERM', 'RLIMIT_MEMLOCK is 0');
      this.k.chargeLocked(pages.length);
      for (const p of pages) {
        this.k.space.locked.add(p);
        this.k.space.present.add(p);
      }
    });
  }

  munlock(addr: bigint, length: number): void {
    this.enter('munlock', {}, () => {
      for (const p of this.lockRange(addr, length)) this.k.space.locked.delete(p);
    });
  }

  view(addr: bigint, length: number): Uint8Array {
    // Not a system call (pointer arithmetic in the real Sys): not counted, never injected.
    try {
      if (!Number.isSafeInteger(length) || length < 0) fail('EINVAL', `bad length ${length}`);
      if (length === 0) return new Uint8Array(0);
      const v = this.k.space.find(addr);
      if (v === undefined) fail('EFAULT', `view of unmapped address 0x${addr.toString(16)} (the real process would SIGSEGV)`);
      if (addr + BigInt(length) > v.end) fail('EFAULT', `view [0x${addr.toString(16)}, +${length}) runs past its mapping`);
      if ((v.prot & PROT_READ) === 0) fail('EFAULT', 'view of a PROT_NONE mapping (SIGSEGV)');
      const off = v.offset + Number(addr - v.start);
      if (!v.backing.alive || off + length > v.backing.byteLength) fail('EFAULT', 'view past the end of the mapped file (SIGBUS)');
      const why = v.accessFault?.() ?? null;
      if (why !== null) fail('EFAULT', why);
      this.k.space.touch(addr, length);
      return new Uint8Array(v.backing.buffer, off, length);
    } catch (e) {
      if (e instanceof KernelError) {
        this.k.dmesg(`view: ${e.code}: ${e.why}`);
        throw new VfioError({ syscall: 'view', errno: errnoNumber(e.code), code: e.code });
      }
      throw e;
    }
  }

  read(fd: Fd, buf: Uint8Array): number {
    return this.enter('read', { fd, ...this.fileInfo(fd) }, () => {
      const f = this.k.fds.get(fd);
      if (!f.readable) fail('EBADF', 'fd is not open for reading');
      return f.read(buf);
    });
  }

  tryRead(fd: Fd, buf: Uint8Array): number | null {
    try {
      return this.enter('tryRead', { fd, ...this.fileInfo(fd) }, () => {
        const f = this.k.fds.get(fd);
        if (!f.readable) fail('EBADF', 'fd is not open for reading');
        return f.read(buf);
      });
    } catch (e) {
      if (e instanceof VfioError && e.code === 'EAGAIN') return null;
      throw e;
    }
  }

  write(fd: Fd, buf: Uint8Array): number {
    return this.enter('write', { fd, ...this.fileInfo(fd) }, () => {
      const f = this.k.fds.get(fd);
      if (!f.writable) fail('EBADF', 'fd is not open for writing');
      return f.write(buf);
    });
  }

  pread(fd: Fd, buf: Uint8Array, offset: bigint): number {
    return this.enter('pread', { fd, ...this.fileInfo(fd) }, () => {
      const f = this.k.fds.get(fd);
      if (!f.readable) fail('EBADF', 'fd is not open for reading');
      if (!f.positional) fail('ESPIPE', 'the file has no positional I/O');
      if (offset < 0n) fail('EINVAL', 'negative offset');
      return f.pread(buf, offset);
    });
  }

  pwrite(fd: Fd, buf: Uint8Array, offset: bigint): number {
    return this.enter('pwrite', { fd, ...this.fileInfo(fd) }, () => {
      const f = this.k.fds.get(fd);
      if (!f.writable) fail('EBADF', 'fd is not open for writing');
      if (!f.positional) fail('ESPIPE', 'the file has no positional I/O');
      if (offset < 0n) fail('EINVAL', 'negative offset');
      return f.pwrite(buf, offset);
    });
  }

  ftruncate(fd: Fd, length: bigint): void {
    this.enter('ftruncate', { fd, ...this.fileInfo(fd) }, () => this.k.fds.get(fd).ftruncate(length));
  }

  eventfd(initval: number, flags: number): Fd {
    return this.enter('eventfd', {}, () => {
      if (flags & ~(EFD_SEMAPHORE | EFD_CLOEXEC | EFD_NONBLOCK)) fail('EINVAL', 'unknown eventfd flags');
      if (!Number.isInteger(initval) || initval < 0 || initval > 0xffffffff) fail('EINVAL', 'initval is not a u32');
      this.k.fds.reserve();
      return this.k.fds.install(new EventFdFile(initval, (flags & EFD_SEMAPHORE) !== 0, (flags & EFD_NONBLOCK) !== 0));
    });
  }

  memfdCreate(name: string, flags: number): Fd {
    return this.enter('memfdCreate', {}, () => {
      const sizeBits = (flags >> MAP_HUGE_SHIFT) & 0x3f;
      if (flags & ~(MFD_CLOEXEC | MFD_ALLOW_SEALING | MFD_HUGETLB | (0x3f << MAP_HUGE_SHIFT))) fail('EINVAL', 'unknown memfd flags');
      if (sizeBits !== 0 && !(flags & MFD_HUGETLB)) fail('EINVAL', 'a huge page size without MFD_HUGETLB');
      if (sizeBits !== 0 && sizeBits !== 21) fail('EINVAL', `no huge page size 2^${sizeBits} in the fake`);
      if (Buffer.byteLength(name) > 249) fail('EINVAL', 'name longer than 249 bytes');
      this.k.fds.reserve();
      return this.k.fds.install(new MemfdFile(this.k, name, flags & MFD_HUGETLB ? HUGE_2M : 0, (flags & MFD_ALLOW_SEALING) !== 0));
    });
  }

  /** revents for `fds` right now (files resolved by the caller). */
  private revents(fds: readonly PollFd[], files: (FakeFile | undefined | null)[]): number[] {
    return fds.map((p, i) => {
      const f = files[i];
      if (f === null) return 0; // negative fd: ignored
      if (f === undefined || f.isReleased) return POLLNVAL;
      return f.poll() & (p.events | POLLERR | POLLHUP);
    });
  }

  poll(fds: readonly PollFd[], timeoutMs: number): number[] {
    return this.enter('poll', {}, () => {
      const files = fds.map((p) => (p.fd < 0 ? null : this.k.fds.lookup(p.fd)));
      // Blocks as poll(2) does, until an fd is ready or the timeout has passed.
      // The process is blocked (so are the event loop and the devices' own
      // timers): only a device can make an fd ready meanwhile, and only at a
      // time its model asked for. So: sleep until the earliest such time (or
      // the timeout), let the devices act, look at the fds again.
      const end = timeoutMs < 0 ? Infinity : performance.now() + timeoutMs;
      for (;;) {
        const ready = this.revents(fds, files);
        if (ready.some((r) => r !== 0) || performance.now() >= end) return ready;
        const wake = this.k.nextDeviceDeadline();
        if (wake === null && end === Infinity) {
          fail(
            'EDEADLK',
            'poll(-1) with nothing ready and no device work pending: ' +
              'no other thread can make an fd ready, the real call would never return',
          );
        }
        const ms = Math.min(wake ?? Infinity, end) - performance.now();
        // Sleep for real: the device's work (or the caller's timeout) takes this long.
        if (ms > 0) Atomics.wait(SLEEP, 0, 0, ms);
        this.k.tickDevices();
      }
    });
  }

  pollAsync(fds: readonly PollFd[], timeoutMs: number): Promise<number[]> {
    try {
      return this.enter('pollAsync', {}, () => this.k.waitPoll(fds, timeoutMs, (files) => this.revents(fds, files)));
    } catch (e) {
      return Promise.reject(e);
    }
  }

  /**
   * The library's portable watch (a poll thread over pollAsync): the fake has
   * no event loop of its own to hand an fd to, and its pollAsync already
   * wakes on the fake eventfds' signals.
   */
  watchEventfd(fd: Fd, watch: EventfdWatch): EventfdWatcher {
    return EventfdPoller.of(this).watcher(fd, watch);
  }

  dup(fd: Fd): Fd {
    return this.enter('dup', { fd, ...this.fileInfo(fd) }, () => {
      const f = this.k.fds.get(fd);
      this.k.fds.reserve();
      return this.k.fds.install(f.get());
    });
  }

  private memfdOf(fd: Fd): MemfdFile {
    const f = this.k.fds.get(fd);
    if (!(f instanceof MemfdFile)) fail('EINVAL', `fd ${fd} is a ${f.kind} file: only memfds take seals`);
    return f;
  }

  addSeals(fd: Fd, seals: number): void {
    this.enter('addSeals', { fd, ...this.fileInfo(fd) }, () => this.memfdOf(fd).addSeals(seals));
  }

  getSeals(fd: Fd): number {
    return this.enter('getSeals', { fd, ...this.fileInfo(fd) }, () => this.memfdOf(fd).seals);
  }

  private socketOf(fd: Fd): UnixSocketFile {
    const f = this.k.fds.get(fd);
    if (!(f instanceof UnixSocketFile)) fail('ENOTSOCK', `fd ${fd} is a ${f.kind} file, not a socket`);
    return f;
  }

  socket(domain: number, type: number, protocol: number): Fd {
    return this.enter('socket', {}, () => {
      if (domain !== AF_UNIX) fail('EAFNOSUPPORT', 'the fake models AF_UNIX sockets only');
      const base = type & ~(SOCK_NONBLOCK | SOCK_CLOEXEC);
      if (base !== SOCK_SEQPACKET) fail('ESOCKTNOSUPPORT', 'the fake models SOCK_SEQPACKET only');
      if (protocol !== 0) fail('EPROTONOSUPPORT', 'AF_UNIX takes protocol 0');
      this.k.fds.reserve();
      return this.k.fds.install(new UnixSocketFile((type & SOCK_NONBLOCK) !== 0));
    });
  }

  bind(fd: Fd, path: string): void {
    const resolved = this.k.resolvePath(path);
    this.enter('bind', { fd, path: resolved, kind: 'socket' }, () =>
      this.k.unixNamespace.bind(this.socketOf(fd), resolved, this.k.credentials()),
    );
  }

  listen(fd: Fd, backlog: number): void {
    this.enter('listen', { fd, ...this.fileInfo(fd) }, () => this.socketOf(fd).listen(backlog));
  }

  accept(fd: Fd, flags: number): Fd {
    return this.enter('accept', { fd, ...this.fileInfo(fd) }, () => {
      if (flags & ~(SOCK_NONBLOCK | SOCK_CLOEXEC)) fail('EINVAL', 'unknown accept4 flags');
      const listener = this.socketOf(fd);
      this.k.fds.reserve();
      const conn = listener.accept();
      conn.nonblock = (flags & SOCK_NONBLOCK) !== 0;
      return this.k.fds.install(conn);
    });
  }

  connect(fd: Fd, path: string): void {
    const resolved = this.k.resolvePath(path);
    this.enter('connect', { fd, path: resolved, kind: 'socket' }, () =>
      this.k.unixNamespace.connect(this.socketOf(fd), resolved, this.k.credentials()),
    );
  }

  sendmsg(fd: Fd, data: Uint8Array, fds: readonly Fd[], flags: number): number {
    return this.enter('sendmsg', { fd, ...this.fileInfo(fd) }, () => {
      if (flags & ~(MSG_NOSIGNAL | MSG_DONTWAIT)) fail('EOPNOTSUPP', 'sendmsg flags the fake does not model');
      const sock = this.socketOf(fd);
      const files = fds.map((f) => this.k.fds.get(f));
      return sock.send(data, files);
    });
  }

  recvmsg(fd: Fd, buf: Uint8Array, maxFds: number, flags: number): RecvResult {
    return this.enter('recvmsg', { fd, ...this.fileInfo(fd) }, () => {
      if (flags & ~(MSG_CMSG_CLOEXEC | MSG_DONTWAIT)) fail('EOPNOTSUPP', 'recvmsg flags the fake does not model');
      if (!Number.isSafeInteger(maxFds) || maxFds < 0) fail('EINVAL', 'bad fd room');
      return this.socketOf(fd).receive(buf, maxFds, this.k.fds, (flags & MSG_DONTWAIT) !== 0);
    });
  }

  peerCredentials(fd: Fd): PeerCredentials {
    return this.enter('peerCredentials', { fd, ...this.fileInfo(fd) }, () => this.socketOf(fd).peerCredentials());
  }

  pageSize(): number {
    return this.k.config.pageSize;
  }

  getuid(): number {
    return this.k.uid();
  }
}
