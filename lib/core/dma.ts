// DMA buffers the library owns: memory a device may read and write, with the
// device-side address (IOVA) it has in its container.
//
// Memory: an anonymous MAP_SHARED mapping, populated and mlock'd, whole pages.
// MAP_SHARED because a private mapping would turn copy-on-write in a forked
// child and the parent's pages could be replaced under a pinned mapping.
// mlock'd so the pages are never swapped out: with an IOMMU the kernel pins
// them again when they are mapped (and, for Type1, counts them against
// RLIMIT_MEMLOCK a second time); in no-IOMMU mode nothing else holds them.
// Even locked, a 4 KiB page may be migrated by memory compaction
// (vm.compact_unevictable_allowed), which no-IOMMU mode cannot see: that mode
// is unsafe by design, as the kernel's name for it says.
//
// Guarantees:
// - `bytes` checks liveness on every access: after `free()` (or the
//   container's close) it throws ECLOSED instead of handing out a view of
//   unmapped memory. The Uint8Array it returns is only valid until then: a
//   caller must not keep it past the buffer's life (the real kernel would
//   answer a stale access with SIGSEGV, which nothing can catch).
// - `iova` is only readable while the buffer is mapped.
// - Freeing unmaps it from its container first, then unmaps the memory
//   (munmap also drops the mlock). A step that fails leaves the buffer in a
//   state where `free()` — or the container's close — finishes the job.
// - The GC never frees a buffer: it lives until free() or its container's
//   close, whichever comes first.
//
// Shareable buffers (`allocDma(size, { shareable: true })`) are the same,
// except that the memory is a memfd mapped MAP_SHARED: another process or
// thread that receives the memfd (lib/share) maps the very same pages. The
// buffer keeps the memfd open until it is freed. The memfd is sealed at its
// size (F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) before anyone else can
// hold it: a holder that could truncate it would make the next touch of
// every mapping of it, ours included, a SIGBUS (which kills the process).
import { closedError, usageError, VfioError } from '../base/errors.js';
import { validateInteger, validateOptions } from '../base/validate.js';
import {
  MAP_ANONYMOUS,
  MAP_HUGETLB,
  MAP_HUGE_SHIFT,
  MAP_POPULATE,
  MAP_SHARED,
  F_SEAL_GROW,
  F_SEAL_SEAL,
  F_SEAL_SHRINK,
  MFD_ALLOW_SEALING,
  MFD_CLOEXEC,
  MFD_HUGETLB,
  O_CLOEXEC,
  O_RDONLY,
  PROT_READ,
  PROT_WRITE,
  type Fd,
  type Sys,
} from '../libc/sys.js';
import { openFile } from '../uapi/ioctl.js';
import { withUnwind, teardown } from '../base/cleanup.js';
import { pagemapFile, type Roots } from '../host/paths.js';

/** How a buffer gets its device address. */
export interface DmaMapOptions {
  /**
   * Map at exactly this IOVA instead of allocating one.
   * ENOTSUP in identity (no-IOMMU) mode, where the IOVA is the physical address.
   */
  readonly iova?: bigint;
  /**
   * Exclusive bound for the device's DMA addresses: the whole buffer lies
   * below it (2n ** 28n for a device that decodes 28 address bits).
   */
  readonly dmaLimit?: bigint;
  /** IOVA alignment, a power of two (default: the IOMMU page size). */
  readonly align?: bigint;
}

/** How Container.allocDma makes a buffer: the mapping options, and whether other processes may map it. */
export interface DmaAllocOptions extends DmaMapOptions {
  /**
   * Back the buffer with a memfd so that it can be shared with another
   * process or thread (lib/share). Costs one open fd per buffer.
   */
  readonly shareable?: boolean;
  /**
   * Back the buffer with 2 MiB huge pages when the system has them free
   * (vm.nr_hugepages): fewer IOMMU entries, and physically contiguous 2 MiB
   * blocks in no-IOMMU mode. The size is rounded up to 2 MiB. When no huge
   * page is free the buffer falls back to normal pages; `buf.hugepages` says
   * which it got.
   */
  readonly hugepages?: boolean;
}

/** The huge page size the library asks for: 2 MiB, which x86-64 always has. */
export const HUGE_PAGE_SIZE = 2 * 1024 * 1024;
/** log2(HUGE_PAGE_SIZE) in the MAP_HUGE_* / MFD_HUGE_* size field. */
const HUGE_2MB = 21 << MAP_HUGE_SHIFT;

/** Locked memory for a buffer: where, how long, its memfd (-1 if none), huge or not. */
export interface LockedMemory {
  readonly vaddr: bigint;
  readonly size: number;
  readonly memfd: Fd;
  readonly hugepages: boolean;
}

/** What a buffer asks of the container that owns it. */
export interface DmaOwner {
  /** Gives the buffer a device address; returns it. */
  mapBuffer(buf: DmaBuffer, opts: DmaMapOptions): bigint;
  /** Removes the buffer's device address (no-op when it has none). */
  unmapBuffer(buf: DmaBuffer): void;
  /** The buffer's memory is gone: stop tracking it. */
  forgetBuffer(buf: DmaBuffer): void;
  /** The error to throw when the owner is closed. */
  readonly label: string;
}

type State = 'live' | 'freeing' | 'freed';

/** map() without options: one shared (frozen) object rather than a new `{}` per call. */
const NO_OPTIONS: DmaMapOptions = Object.freeze({});

export class DmaBuffer implements Disposable {
  /** Length in bytes (a whole number of pages). */
  readonly size: number;
  /** Process virtual address of the first byte. */
  readonly vaddr: bigint;
  /** @internal `size` as a bigint, made once: the owner's IOVA arithmetic needs it on every map. */
  readonly sizeBig: bigint;
  private state: State = 'live';
  /** Set by the owner while the buffer has a device address. */
  private iovaSlot: bigint | null = null;
  /** The owner's record of that mapping (see setIova), or null. */
  private recordSlot: object | null = null;
  /** The memfd behind a shareable buffer (-1 otherwise, and once freed). */
  private memfdSlot: Fd;
  /**
   * Identity (no-IOMMU) mode: the bus address of each page (of `pageBytes`),
   * since consecutive virtual pages need not be consecutive physical ones.
   * Null when the device sees the buffer as one block at `iova` (IOMMU modes).
   */
  private pagesSlot: readonly bigint[] | null = null;
  private pageBytes = 0;
  /** Whether the pages are consecutive in bus addresses (set with them). */
  private contiguousSlot = true;
  /** The view `bytes` returns, made once; dropped by free() before the munmap. */
  private viewSlot: Uint8Array | null = null;

  /** @internal Containers create buffers (Container.allocDma). */
  constructor(
    private readonly sys: Sys,
    private readonly owner: DmaOwner,
    vaddr: bigint,
    size: number,
    memfd: Fd = -1,
    /** True when the buffer is backed by 2 MiB huge pages. */
    readonly hugepages = false,
  ) {
    this.vaddr = vaddr;
    this.size = size;
    this.sizeBig = BigInt(size);
    this.memfdSlot = memfd;
  }

  /** True for a buffer allocated `shareable` (memfd-backed): lib/share can hand it to another process. */
  get shareable(): boolean {
    return this.memfdSlot !== -1;
  }

  /**
   * @internal The memfd of a shareable buffer, for lib/share to pass on.
   * @throws VfioError ECLOSED after free(); EINVAL not shareable.
   */
  get memfd(): Fd {
    this.checkLive();
    if (this.memfdSlot === -1) throw usageError('EINVAL', 'the DMA buffer is not shareable (allocate it with { shareable: true })');
    return this.memfdSlot;
  }

  /** False once free() started (or the container closed). */
  get live(): boolean {
    return this.state === 'live';
  }

  /** True while the buffer has a device address. */
  get mapped(): boolean {
    return this.iovaSlot !== null;
  }

  /**
   * The buffer's bytes (no copy). Valid until free(): do not keep it longer.
   * @throws VfioError ECLOSED after free() or the container's close.
   */
  get bytes(): Uint8Array {
    this.checkLive();
    // SAFETY: state 'live' means [vaddr, vaddr + size) is still mapped: free()
    // leaves 'live' (and drops this view) before it munmaps, so the view is
    // never handed out after that. One view for the buffer's life: a driver
    // may read `buf.bytes` in its hot loop without making garbage.
    return (this.viewSlot ??= this.sys.view(this.vaddr, this.size));
  }

  /**
   * The device-side address of byte 0, from which the whole buffer is
   * reachable as one block. In no-IOMMU mode a buffer of several pages is
   * usually not physically contiguous: then use `iovaAt(offset)` per page.
   * @throws VfioError ECLOSED after free(); EINVAL when not mapped, or (no-IOMMU
   *   mode) when the buffer is not physically contiguous: the message says
   *   what to use instead.
   */
  get iova(): bigint {
    this.checkLive();
    if (this.iovaSlot === null) throw usageError('EINVAL', 'the DMA buffer is not mapped (call map())');
    if (!this.contiguousSlot) {
      throw usageError(
        'EINVAL',
        `the ${this.size / this.pageBytes}-page DMA buffer is not physically contiguous (no-IOMMU mode: the device sees each page ` +
          'at its own physical address): hand the device per-page addresses with iovaAt(offset) (PRP or scatter-gather lists), ' +
          `or allocate with { hugepages: true } for physically contiguous blocks of ${HUGE_PAGE_SIZE / 1048576} MiB`,
      );
    }
    return this.iovaSlot;
  }

  /**
   * True when the device reaches the whole buffer as one block from `iova`:
   * always with an IOMMU; in no-IOMMU mode only when its pages happen to be
   * physically consecutive (one page, or one huge page, always is).
   * @throws VfioError ECLOSED after free(); EINVAL when not mapped.
   */
  get contiguous(): boolean {
    this.checkLive();
    if (this.iovaSlot === null) throw usageError('EINVAL', 'the DMA buffer is not mapped (call map())');
    return this.contiguousSlot;
  }

  /**
   * The device address of byte `offset` of the buffer: `iova + offset` with
   * an IOMMU; in no-IOMMU mode the physical address of that byte, page by
   * page, so that a buffer need not be physically contiguous (describe it to
   * the device one page at a time, or per `contiguousFrom` run).
   * @throws VfioError EINVAL offset outside the buffer or not mapped; ECLOSED after free().
   */
  iovaAt(offset: number): bigint {
    this.checkLive();
    if (this.iovaSlot === null) throw usageError('EINVAL', 'the DMA buffer is not mapped (call map())');
    validateInteger(offset, 'offset');
    if (offset >= this.size) throw usageError('EINVAL', `offset ${offset} is outside the ${this.size}-byte DMA buffer`);
    const pages = this.pagesSlot;
    if (pages === null) return this.iovaSlot + BigInt(offset);
    return pages[Math.floor(offset / this.pageBytes)]! + BigInt(offset % this.pageBytes);
  }

  /**
   * How many bytes from `offset` on the device reaches as one block from
   * `iovaAt(offset)`: up to the end with an IOMMU; in no-IOMMU mode up to the
   * end of the run of physically consecutive pages (at least to the end of
   * the page; a whole huge page for a huge-page buffer).
   * @throws VfioError EINVAL offset outside the buffer or not mapped; ECLOSED after free().
   */
  contiguousFrom(offset: number): number {
    const start = this.iovaAt(offset);
    const pages = this.pagesSlot;
    if (pages === null) return this.size - offset;
    const ps = this.pageBytes;
    let i = Math.floor(offset / ps) + 1;
    const first = Math.floor(offset / ps);
    while (i < pages.length && pages[i] === pages[first]! + BigInt((i - first) * ps)) i++;
    return Number(pages[first]! + BigInt((i - first) * ps) - start);
  }

  /**
   * Gives the buffer a device address in its container (allocDma already did;
   * use this after unmap()).
   * @throws VfioError EEXIST already mapped; ENOSPC no IOVA room under the
   *   limit; EINVAL bad options or IOVA outside the IOMMU's ranges; ENOTSUP an
   *   explicit IOVA in identity mode; ECLOSED freed or container closed; any
   *   errno of VFIO_IOMMU_MAP_DMA / IOMMU_IOAS_MAP.
   */
  map(opts: DmaMapOptions = NO_OPTIONS): bigint {
    this.checkLive();
    if (this.iovaSlot !== null) throw usageError('EEXIST', `the DMA buffer is already mapped at 0x${this.iovaSlot.toString(16)}`);
    return this.owner.mapBuffer(this, validateOptions(opts));
  }

  /**
   * Removes the device address. A no-op when not mapped.
   * @throws VfioError EIO the kernel unmapped a different size than was
   *   mapped (the mapping is forgotten; its IOVA is not reused); any errno of
   *   the unmap ioctl (the buffer stays mapped); ECLOSED after free().
   */
  unmap(): void {
    this.checkLive();
    this.owner.unmapBuffer(this);
  }

  /**
   * Unmaps the buffer from its container and releases its memory. Safe to
   * call again after a failure, and a no-op once done.
   * @throws VfioError the first error of the unmap or munmap; a second call
   *   retries what is left.
   */
  free(): void {
    if (this.state === 'freed') return;
    this.state = 'freeing';
    this.viewSlot = null;
    teardown([
      () => this.owner.unmapBuffer(this),
      () => {
        // munmap also removes the mlock (mlock(2)): no munlock needed.
        this.sys.munmap(this.vaddr, this.size);
        this.state = 'freed';
        this.owner.forgetBuffer(this);
      },
      () => {
        // Closed after the munmap: an fd closed first might be reused while
        // the buffer still claims it.
        const fd = this.memfdSlot;
        if (fd === -1 || this.state !== 'freed') return;
        this.memfdSlot = -1;
        this.sys.close(fd);
      },
    ]);
  }

  [Symbol.dispose](): void {
    this.free();
  }

  /**
   * @internal The owner records the device address, and optionally its own
   * record of the mapping: kept here so that the owner finds it on unmap
   * without a lookup by buffer (map + unmap is a driver's hot path).
   */
  setIova(iova: bigint | null, record: object | null = null, pages: PageAddresses | null = null): void {
    this.iovaSlot = iova;
    this.recordSlot = record;
    this.pagesSlot = pages?.addresses ?? null;
    this.pageBytes = pages?.pageSize ?? 0;
    this.contiguousSlot = pages === null || pages.contiguous;
  }

  /** @internal What the owner recorded with the IOVA (setIova), or null. */
  get mappingRecord(): object | null {
    return this.recordSlot;
  }

  private checkLive(): void {
    if (this.state !== 'live') throw closedError(`DMA buffer at 0x${this.vaddr.toString(16)} (${this.owner.label})`);
  }
}

function checkSize(size: number): void {
  validateInteger(size, 'DMA buffer size', 1);
}

/** True for the answer the kernel gives when no huge page is free (or none is configured). */
function noHugePages(err: unknown): boolean {
  return err instanceof VfioError && err.code === 'ENOMEM';
}

/**
 * Locked memory for a DMA buffer, `size` bytes rounded up to whole pages:
 * anonymous, or (`shared`) a memfd mapped MAP_SHARED, so that another
 * process that receives the memfd maps the same pages (named `name` in
 * /proc/PID/maps). With `hugepages`, 2 MiB pages when some are free, else
 * normal ones. The caller owns the memfd.
 * @throws VfioError EINVAL bad size; ENOMEM/EAGAIN/EPERM from mmap or mlock
 *   (RLIMIT_MEMLOCK); EMFILE; any errno of memfd_create/ftruncate. Nothing
 *   stays open or mapped after a failure.
 */
export function allocLockedMemory(
  sys: Sys,
  size: number,
  pageSize: number,
  opts: { readonly shared?: string | undefined; readonly hugepages?: boolean | undefined } = {},
): LockedMemory {
  checkSize(size);
  if (opts.hugepages === true) {
    try {
      return lockedMemory(sys, Math.ceil(size / HUGE_PAGE_SIZE) * HUGE_PAGE_SIZE, opts.shared, true);
    } catch (err) {
      if (!noHugePages(err)) throw err;
    }
  }
  return lockedMemory(sys, Math.ceil(size / pageSize) * pageSize, opts.shared, false);
}

function lockedMemory(sys: Sys, length: number, shared: string | undefined, huge: boolean): LockedMemory {
  return withUnwind((u) => {
    let memfd = -1;
    let vaddr: bigint;
    if (shared === undefined) {
      const flags = MAP_SHARED | MAP_ANONYMOUS | MAP_POPULATE | (huge ? MAP_HUGETLB | HUGE_2MB : 0);
      vaddr = sys.mmap(length, PROT_READ | PROT_WRITE, flags, -1, 0n);
    } else {
      const fd = sys.memfdCreate(shared, MFD_CLOEXEC | MFD_ALLOW_SEALING | (huge ? MFD_HUGETLB | HUGE_2MB : 0));
      memfd = fd;
      u.defer(() => sys.close(fd));
      sys.ftruncate(fd, BigInt(length));
      sys.addSeals(fd, SHARED_MEMFD_SEALS);
      vaddr = sys.mmap(length, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, 0n);
    }
    const addr = vaddr;
    u.defer(() => sys.munmap(addr, length));
    sys.mlock(addr, length);
    return { vaddr: addr, size: length, memfd, hugepages: huge };
  });
}

/**
 * The seals of a shareable buffer's memfd: its size is fixed for good, so no
 * holder (the lender, a borrower, anyone it passes the fd to) can shrink it
 * under another's mapping. Borrowers refuse a memfd without them.
 */
export const SHARED_MEMFD_SEALS = F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL;

/** The bus address of each page of a buffer, as identity (no-IOMMU) mode gives them. */
export interface PageAddresses {
  readonly addresses: readonly bigint[];
  readonly pageSize: number;
  /** Each page follows the previous one in bus addresses. */
  readonly contiguous: boolean;
}

const PAGEMAP_ENTRY = 8;
const PAGEMAP_PRESENT = 1n << 63n;
const PAGEMAP_PFN_MASK = (1n << 55n) - 1n;

/**
 * The physical address of each page of [vaddr, vaddr + size), read from
 * /proc/self/pagemap: what a device sees in no-IOMMU mode. Pages need not be
 * consecutive (a huge page's 4 KiB pages are).
 * @throws VfioError EPERM the PFNs read as 0 (reading them needs
 *   CAP_SYS_ADMIN); EIO a page is not present or a short read; any errno of
 *   open/pread/close.
 */
export function physicalPages(sys: Sys, roots: Roots, vaddr: bigint, size: number, pageSize: number): PageAddresses {
  const page = BigInt(pageSize);
  const pages = Math.ceil(size / pageSize);
  const path = pagemapFile(roots);
  const entries = new Uint8Array(pages * PAGEMAP_ENTRY);
  const fd = openFile(sys, path, O_RDONLY | O_CLOEXEC);
  const n = withUnwind((u) => {
    u.defer(() => sys.close(fd));
    return sys.pread(fd, entries, (vaddr / page) * BigInt(PAGEMAP_ENTRY));
  });
  sys.close(fd);
  if (n !== entries.length) throw usageError('EIO', `short read of ${path} (${n} of ${entries.length} bytes)`, { path });
  const dv = new DataView(entries.buffer);
  const addresses: bigint[] = [];
  let contiguous = true;
  for (let i = 0; i < pages; i++) {
    const entry = dv.getBigUint64(i * PAGEMAP_ENTRY, true);
    if ((entry & PAGEMAP_PRESENT) === 0n) throw usageError('EIO', `page ${i} of the DMA buffer is not present in ${path}`, { path });
    const pfn = entry & PAGEMAP_PFN_MASK;
    if (pfn === 0n) {
      throw usageError('EPERM', `${path} hides physical addresses: no-IOMMU DMA needs root (CAP_SYS_ADMIN)`, { path });
    }
    const addr = pfn * page;
    if (i > 0 && addr !== addresses[i - 1]! + page) contiguous = false;
    addresses.push(addr);
  }
  return { addresses, pageSize, contiguous };
}
