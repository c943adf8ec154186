// The system-call surface the whole library stands on. Everything that talks
// to the kernel goes through one `Sys` object, so that tests can hand the
// library a fake kernel (lib/testing) and the real one (./koffi-sys.ts) stays the
// only module that imports koffi.
//
// Guarantees (every implementation, real or fake):
// - A failing call throws a VfioError with `syscall`, `errno`, `code` (and
//   `path` for path-taking calls). Nothing returns -1.
// - Memory is named by BigInt addresses. The only way to touch it from JS is
//   `view()`, which returns a Uint8Array over the very same bytes (no copy).
//   A view is valid until the mapping under it is unmapped; the library must
//   never touch a view after `munmap` (the real kernel answers with SIGSEGV,
//   which no try/catch can catch), so every view is wrapped in a guard
//   (see lib/device/region.ts / lib/core/dma.ts) that checks liveness first.

/** open(2) flags used by the library (Linux x86-64/arm64 values). */
export const O_RDONLY = 0o0;
export const O_WRONLY = 0o1;
export const O_RDWR = 0o2;
export const O_CLOEXEC = 0o2000000;
export const O_NONBLOCK = 0o4000;

export const PROT_NONE = 0;
export const PROT_READ = 1;
export const PROT_WRITE = 2;
export const MAP_SHARED = 0x01;
export const MAP_PRIVATE = 0x02;
export const MAP_FIXED = 0x10;
export const MAP_ANONYMOUS = 0x20;
export const MAP_POPULATE = 0x8000;
export const MAP_HUGETLB = 0x40000;
export const MAP_HUGE_SHIFT = 26;

export const EFD_CLOEXEC = 0o2000000;
export const EFD_NONBLOCK = 0o4000;
export const EFD_SEMAPHORE = 1;

export const MFD_CLOEXEC = 1;
export const MFD_ALLOW_SEALING = 2;
export const MFD_HUGETLB = 4;

// File seals (fcntl F_ADD_SEALS / F_GET_SEALS, memfds only): once set, no fd
// for the file, in any process, can do what the seal forbids.
export const F_SEAL_SEAL = 0x1;
export const F_SEAL_SHRINK = 0x2;
export const F_SEAL_GROW = 0x4;
export const F_SEAL_WRITE = 0x8;

export const POLLIN = 0x001;
export const POLLOUT = 0x004;
export const POLLERR = 0x008;
export const POLLHUP = 0x010;
export const POLLNVAL = 0x020;

// Sockets: only what lib/share needs to hand fds to another process (AF_UNIX,
// SOCK_SEQPACKET: one sendmsg is one recvmsg, boundaries kept, SCM_RIGHTS).
export const AF_UNIX = 1;
export const SOCK_SEQPACKET = 5;
export const SOCK_NONBLOCK = 0o4000;
export const SOCK_CLOEXEC = 0o2000000;
export const MSG_CTRUNC = 0x8;
export const MSG_TRUNC = 0x20;
export const MSG_DONTWAIT = 0x40;
export const MSG_NOSIGNAL = 0x4000;
export const MSG_CMSG_CLOEXEC = 0x40000000;
/** Most fds one SCM_RIGHTS message may carry (the kernel's SCM_MAX_FD). */
export const SCM_MAX_FD = 253;
/** Longest AF_UNIX path in bytes (sun_path is 108 bytes with its NUL). */
export const UNIX_PATH_MAX = 107;

/** A file descriptor. 0 is a valid fd: "no fd" is always -1 or null, never 0. */
export type Fd = number;

/** A socket peer's credentials (struct ucred). */
export interface PeerCredentials {
  readonly pid: number;
  readonly uid: number;
  readonly gid: number;
}

export interface PollFd {
  fd: Fd;
  events: number;
}

/** What recvmsg(2) received: the data length, the fds of SCM_RIGHTS, and msg_flags. */
export interface RecvResult {
  /** Bytes copied into the caller's buffer; 0 means the peer closed (end of file). */
  readonly bytes: number;
  /** Received descriptors, now open in this process (the caller owns them). */
  readonly fds: readonly Fd[];
  /** msg_flags: MSG_TRUNC (data cut), MSG_CTRUNC (fds dropped for lack of room). */
  readonly flags: number;
}

/** What an eventfd watch delivers (Sys.watchEventfd). */
export interface EventfdWatch {
  /** The eventfd's counter (>= 1), read and cleared after a wake. */
  onCount(count: number): void;
  /** The watch ended: its fd became invalid, or waiting itself failed. No call follows. */
  onError(err: unknown): void;
}

/** Made by Sys.watchEventfd. Every method may be called in any state, any number of times. */
export interface EventfdWatcher {
  /** Delivers counts from now on; while started, the process stays alive. */
  start(): void;
  /** No callback runs after this returns, until start(). */
  stop(): void;
  /** Stops for good and releases what the watcher holds. */
  close(): void;
}

export interface Sys {
  /** open(2). `mode` defaults to 0. */
  open(path: string, flags: number, mode?: number): Fd;
  /** close(2). Never retried on EINTR (Linux has already closed the fd). */
  close(fd: Fd): void;

  /**
   * ioctl(2), pointer form: `arg`'s bytes are what the kernel reads and writes.
   * The caller keeps `arg` alive for the call (it is synchronous). Returns the
   * (non-negative) return value.
   */
  ioctl(fd: Fd, request: number, arg: Uint8Array): number;
  /** ioctl(2), integer form (e.g. VFIO_CHECK_EXTENSION, VFIO_SET_IOMMU). */
  ioctlInt(fd: Fd, request: number, arg: number | bigint): number;

  /** mmap(2); returns the address. `fd` is -1 for anonymous memory. */
  mmap(length: number, prot: number, flags: number, fd: Fd, offset: bigint): bigint;
  munmap(addr: bigint, length: number): void;
  mlock(addr: bigint, length: number): void;
  munlock(addr: bigint, length: number): void;
  /**
   * A Uint8Array over `length` bytes at `addr` (no copy). Valid only while the
   * mapping under it is alive: the caller owns that guarantee.
   */
  view(addr: bigint, length: number): Uint8Array;

  read(fd: Fd, buf: Uint8Array): number;
  /**
   * read(2) of a non-blocking fd that answers null instead of throwing when
   * nothing is there (EAGAIN): for an eventfd, "not signalled" is the common
   * answer, not an error, and building an error costs far more than the read
   * (tens of µs under emulation). Other failures throw as `read` does.
   */
  tryRead(fd: Fd, buf: Uint8Array): number | null;
  write(fd: Fd, buf: Uint8Array): number;
  pread(fd: Fd, buf: Uint8Array, offset: bigint): number;
  pwrite(fd: Fd, buf: Uint8Array, offset: bigint): number;
  ftruncate(fd: Fd, length: bigint): void;

  eventfd(initval: number, flags: number): Fd;
  memfdCreate(name: string, flags: number): Fd;

  /** poll(2): returns each fd's revents, in order. A timeout returns all zeros. */
  poll(fds: readonly PollFd[], timeoutMs: number): number[];
  /**
   * poll(2) on a worker thread (it does not block the event loop). Holds one of
   * libuv's pool threads while it waits: callers multiplex every fd into one
   * call and add a stop eventfd to end it.
   */
  pollAsync(fds: readonly PollFd[], timeoutMs: number): Promise<number[]>;

  /**
   * A watcher of an eventfd's counter, delivered on the event loop: while
   * started, `watch.onCount(n)` after each signal, with the counter read and
   * cleared (n >= 1, signals since the last delivery summed). Made stopped;
   * while stopped nothing reads the eventfd (counts stay in it) and nothing
   * keeps the process alive. If the fd fails, `watch.onError(err)` runs once
   * and the watcher is closed. The caller keeps `fd` open until it has closed
   * the watcher; one watcher per fd.
   */
  watchEventfd(fd: Fd, watch: EventfdWatch): EventfdWatcher;

  /** fcntl(fd, F_DUPFD_CLOEXEC, 0): a new fd (lowest free) for the same open file. */
  dup(fd: Fd): Fd;
  /**
   * fcntl(fd, F_ADD_SEALS, seals): adds F_SEAL_* seals to a memfd made with
   * MFD_ALLOW_SEALING (EPERM once F_SEAL_SEAL is set; EINVAL not sealable).
   */
  addSeals(fd: Fd, seals: number): void;
  /** fcntl(fd, F_GET_SEALS): the file's F_SEAL_* seals (EINVAL not sealable). */
  getSeals(fd: Fd): number;

  /** socket(2). */
  socket(domain: number, type: number, protocol: number): Fd;
  /** bind(2) of an AF_UNIX socket to the filesystem path `path` (ENAMETOOLONG past UNIX_PATH_MAX bytes). */
  bind(fd: Fd, path: string): void;
  /** listen(2). */
  listen(fd: Fd, backlog: number): void;
  /** accept4(2) without the peer address; `flags`: SOCK_NONBLOCK, SOCK_CLOEXEC. */
  accept(fd: Fd, flags: number): Fd;
  /** connect(2) of an AF_UNIX socket to the filesystem path `path`. Not retried on EINTR. */
  connect(fd: Fd, path: string): void;
  /**
   * sendmsg(2): `data` as one message, with `fds` (at most SCM_MAX_FD) as
   * SCM_RIGHTS when not empty. The receiver gets its own descriptors for the
   * same open files; the sender's stay open. Returns the bytes sent.
   */
  sendmsg(fd: Fd, data: Uint8Array, fds: readonly Fd[], flags: number): number;
  /** recvmsg(2) into `buf`, with room for `maxFds` SCM_RIGHTS descriptors. */
  recvmsg(fd: Fd, buf: Uint8Array, maxFds: number, flags: number): RecvResult;
  /**
   * getsockopt(fd, SOL_SOCKET, SO_PEERCRED) of a connected AF_UNIX socket:
   * who the peer was when it connected, as the kernel recorded it (not what
   * the peer says of itself).
   */
  peerCredentials(fd: Fd): PeerCredentials;

  /** sysconf(_SC_PAGESIZE). */
  pageSize(): number;
  getuid(): number;
}
