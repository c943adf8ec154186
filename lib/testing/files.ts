// Open files and the fd table of the fake process. A FakeFile is the kernel's
// `struct file`: reference counted (fd table entries, mappings, and kernel
// objects such as a group held by its device fds each hold one), released
// when the last reference goes, as fput() does.
import { O_RDONLY, O_WRONLY } from '../libc/sys.js';
import { fail } from './errors.js';
import type { Backing } from './memory.js';
import type { UserMemory } from './uaccess.js';

export type FileKind = 'container' | 'group' | 'device' | 'iommufd' | 'eventfd' | 'memfd' | 'pagemap' | 'socket';

/** poll's answer for files without a poll operation (DEFAULT_POLLMASK). */
export const DEFAULT_POLLMASK = 0x001 | 0x004 | 0x040 | 0x100;

/** What an ioctl handler receives: the argument as user memory, or as the raw integer. */
export interface IoctlArg {
  /** The argument as a user pointer (the caller's buffer, or fake memory at the integer). */
  mem(): UserMemory;
  /** The argument as the integer the kernel sees. */
  readonly value: bigint;
}

/** An mmap request as the file's mmap operation sees it (vma already sized). */
export interface MmapRequest {
  readonly length: number;
  readonly prot: number;
  readonly shared: boolean;
  /** Byte offset in the file (page aligned). */
  readonly offset: bigint;
}

/** What the file maps: which memory, and how the kernel treats it. */
export interface MmapTarget {
  readonly backing: Backing;
  readonly offset: number;
  readonly pfnmap: boolean;
  readonly hugeSize: number;
  readonly accessFault?: () => string | null;
}

export abstract class FakeFile {
  abstract readonly kind: FileKind;
  private refs = 1;
  private released = false;
  private readonly listeners = new Set<() => void>();
  /** FMODE_PREAD/FMODE_PWRITE: pread and pwrite are allowed. */
  readonly positional: boolean = false;

  constructor(
    /** The path it was opened by, or null for anonymous files. */
    readonly path: string | null,
    /** O_RDONLY, O_WRONLY or O_RDWR. */
    readonly accessMode: number,
    public nonblock = false,
  ) {}

  get readable(): boolean {
    return this.accessMode !== O_WRONLY;
  }

  get writable(): boolean {
    return this.accessMode !== O_RDONLY;
  }

  get isReleased(): boolean {
    return this.released;
  }

  get(): this {
    if (this.released) throw new Error(`fake kernel bug: get() on a released ${this.kind} file`);
    this.refs++;
    return this;
  }

  put(): void {
    if (--this.refs === 0) {
      this.released = true;
      this.release();
    }
  }

  /** The file's release operation: runs once, when the last reference goes. */
  protected release(): void {}

  ioctl(_request: number, _arg: IoctlArg): number {
    fail('ENOTTY', `${this.kind} files have no ioctls`);
  }

  read(_buf: Uint8Array): number {
    fail('EINVAL', `${this.kind} files cannot be read`);
  }

  write(_buf: Uint8Array): number {
    fail('EINVAL', `${this.kind} files cannot be written`);
  }

  pread(_buf: Uint8Array, _offset: bigint): number {
    fail('ESPIPE', `${this.kind} files have no positional I/O`);
  }

  pwrite(_buf: Uint8Array, _offset: bigint): number {
    fail('ESPIPE', `${this.kind} files have no positional I/O`);
  }

  ftruncate(_length: bigint): void {
    fail('EINVAL', `${this.kind} files cannot be truncated`);
  }

  mmap(_req: MmapRequest): MmapTarget {
    fail('ENODEV', `${this.kind} files cannot be mapped`);
  }

  /** The poll mask right now. */
  poll(): number {
    return DEFAULT_POLLMASK;
  }

  /** Calls `cb` whenever the poll mask may have changed; returns the unsubscribe. */
  onChange(cb: () => void): () => void {
    this.listeners.add(cb);
    return () => this.listeners.delete(cb);
  }

  protected notify(): void {
    for (const cb of [...this.listeners]) cb();
  }
}

/** The process's file descriptor table: lowest free number first, as POSIX requires. */
export class FdTable {
  private readonly files = new Map<number, FakeFile>();

  constructor(
    private readonly first: number,
    private readonly limit: number,
  ) {}

  /** Throws EMFILE when no descriptor is free (get_unused_fd_flags). */
  private lowestFree(): number {
    for (let fd = this.first; fd < this.limit; fd++) if (!this.files.has(fd)) return fd;
    fail('EMFILE', `all ${this.limit} file descriptors are in use`);
  }

  /** Fails with EMFILE now if `install` would. */
  reserve(): void {
    this.lowestFree();
  }

  /** Installs `file` (taking over its reference) at the lowest free fd. */
  install(file: FakeFile): number {
    let fd: number;
    try {
      fd = this.lowestFree();
    } catch (e) {
      file.put();
      throw e;
    }
    this.files.set(fd, file);
    return fd;
  }

  lookup(fd: number): FakeFile | undefined {
    return this.files.get(fd);
  }

  get(fd: number): FakeFile {
    const f = this.files.get(fd);
    if (f === undefined) fail('EBADF', `fd ${fd} is not open`);
    return f;
  }

  /** Removes `fd` from the table and drops its reference (close). */
  close(fd: number): void {
    const f = this.get(fd);
    this.files.delete(fd);
    f.put();
  }

  get size(): number {
    return this.files.size;
  }

  entries(): IterableIterator<[number, FakeFile]> {
    return this.files.entries();
  }
}
