// The fake process address space: mappings (VMAs) over real ArrayBuffers, so
// that `sys.view()` hands out Uint8Arrays over the very bytes a fake device or
// the fake IOMMU reads and writes.
//
// Guarantees:
// - A mapping is a range of one Backing (anonymous memory, a memfd's pages, or
//   a device BAR). munmap may split mappings, as Linux does; the pieces share
//   the backing.
// - Every byte of anonymous and memfd memory has a page frame number (PFN),
//   handed out lazily and never contiguous from one 4 KiB page to the next
//   (hugetlb pages are contiguous within the huge page, never from one huge
//   page to the next), so no-IOMMU code that assumes physical contiguity
//   fails here as it would on a real machine.
// - A view handed out through a mapping dies with the mapping: when munmap
//   removes the last mapping of a backing (anonymous, memfd or device BAR
//   memory) the bytes move to a new ArrayBuffer and the old one is detached,
//   so a stale view reads as empty (length 0, elements undefined) instead of
//   silently still "working" (the real process would SIGSEGV). Whatever
//   still holds the memory (a DMA pin, the memfd, the device) reaches it
//   through `backing.buffer`, never through a view kept from before. Not
//   caught: a stale view while another mapping of the same memory lives
//   (one ArrayBuffer cannot be detached for one mapping only), or over the
//   unmapped part of a partly unmapped mapping.
// - When the last mapping, pin and file reference of an anonymous or memfd
//   backing is gone its ArrayBuffer is detached for good. Device (BAR)
//   memory belongs to the device and lives on.
import { fail } from './errors.js';
import type { AddressAccess } from './uaccess.js';

export const PAGE_SIZE = 4096;
export const PAGE_SHIFT = 12n;
/** Lowest and one-past-highest user address (x86-64, 47-bit user space). */
export const USER_START = 0x10000n;
export const USER_END = 0x800000000000n;

export function alignUp(n: bigint, a: bigint): bigint {
  return ((n + a - 1n) / a) * a;
}

/** Who owns a backing: decides whether it can be detached when unreferenced. */
export type BackingKind = 'anon' | 'memfd' | 'device';

export interface PageOwner {
  readonly backing: Backing;
  readonly page: number;
}

/** Hands out physical page frame numbers and remembers which page each names. */
export class PhysicalMemory {
  /**
   * 4 KiB frames start at 16 MiB and step by 2: two pages are never adjacent,
   * and the first 64 Ki pages stay below 256 MiB, reachable by a 28-bit DMA
   * mask (QEMU's edu) as low memory is on a small VM.
   */
  private nextSmall = 0x1000n;
  /** Huge frames start at 64 GiB, aligned to the huge page. */
  private nextHuge = 0x1000000n;
  readonly owners = new Map<bigint, PageOwner>();

  small(owner: PageOwner): bigint {
    const pfn = this.nextSmall;
    this.nextSmall += 2n;
    this.owners.set(pfn, owner);
    return pfn;
  }

  /** A run of `pages` contiguous frames aligned to `pages`. */
  huge(pages: number, backing: Backing, firstPage: number): bigint {
    const n = BigInt(pages);
    const base = alignUp(this.nextHuge, n);
    // A gap after each huge page: two huge pages of one buffer are not consecutive (as on a real machine, mostly).
    this.nextHuge = base + 2n * n;
    for (let i = 0; i < pages; i++) this.owners.set(base + BigInt(i), { backing, page: firstPage + i });
    return base;
  }

  forget(pfn: bigint): void {
    this.owners.delete(pfn);
  }
}

type ResizableCtor = new (length: number, options: { maxByteLength: number }) => ArrayBuffer;
interface Resizable {
  resize(n: number): void;
  readonly maxByteLength: number;
}

/** Memory that mappings, pins and files refer to. */
export class Backing {
  buffer: ArrayBuffer;
  private refs = 0;
  private readonly pfns = new Map<number, bigint>();
  private detached = false;
  /** Runs once when the memory is freed (returns huge pages to the pool). */
  onFree: (() => void) | null = null;

  constructor(
    readonly kind: BackingKind,
    length: number,
    private readonly phys: PhysicalMemory,
    /** Huge page size for hugetlb memory, else 0. */
    readonly hugeSize = 0,
    /** For device memory: the bus address of byte 0 (its frames are contiguous). */
    readonly busAddress: bigint | null = null,
    /** Grows with ftruncate (memfd): up to this many bytes. */
    maxLength = 0,
  ) {
    this.buffer =
      maxLength > 0 ? new (ArrayBuffer as unknown as ResizableCtor)(length, { maxByteLength: maxLength }) : new ArrayBuffer(length);
  }

  get byteLength(): number {
    return this.buffer.byteLength;
  }

  get alive(): boolean {
    return !this.detached;
  }

  resize(n: number): void {
    const r = this.buffer as unknown as Resizable;
    if (n > r.maxByteLength) fail('EFBIG', `memfd cannot grow past ${r.maxByteLength} bytes in the fake`);
    r.resize(n);
  }

  /** The page frame number of page `page` (4 KiB index into this backing). */
  pfn(page: number): bigint {
    if (this.busAddress !== null) return (this.busAddress >> PAGE_SHIFT) + BigInt(page);
    let pfn = this.pfns.get(page);
    if (pfn !== undefined) return pfn;
    if (this.hugeSize > 0) {
      const per = this.hugeSize / PAGE_SIZE;
      const first = Math.floor(page / per) * per;
      const base = this.phys.huge(per, this, first);
      for (let i = 0; i < per; i++) this.pfns.set(first + i, base + BigInt(i));
      pfn = base + BigInt(page - first);
    } else {
      pfn = this.phys.small({ backing: this, page });
      this.pfns.set(page, pfn);
    }
    return pfn;
  }

  hold(): void {
    this.refs++;
  }

  /**
   * The last mapping is gone but the memory lives on (pinned, a file's, a
   * device's): the same bytes in a new ArrayBuffer; every view made before
   * is detached.
   */
  detachViews(): void {
    if (this.detached) return;
    this.buffer = structuredClone(this.buffer, { transfer: [this.buffer] });
  }

  /** Drops a reference; anonymous and memfd memory is freed with the last one. */
  drop(): void {
    if (--this.refs > 0 || this.kind === 'device') return;
    for (const pfn of this.pfns.values()) this.phys.forget(pfn);
    this.pfns.clear();
    this.detached = true;
    this.onFree?.();
    // Detach the ArrayBuffer so that any view still held reads as empty.
    structuredClone(this.buffer, { transfer: [this.buffer] });
  }
}

/** Who keeps a mapping's file open (the VMA holds a file reference, as vm_file). */
export interface MappedFile {
  get(): unknown;
  put(): void;
}

export interface Vma {
  start: bigint;
  /** Exclusive. */
  end: bigint;
  readonly prot: number;
  readonly shared: boolean;
  readonly backing: Backing;
  /** Byte offset in the backing of `start`. */
  offset: number;
  readonly file: MappedFile | null;
  /** Device memory (VM_IO | VM_PFNMAP): no struct pages, not pinned as pages, skipped by mlock. */
  readonly pfnmap: boolean;
  /** Huge page size of a hugetlb mapping, else 0. */
  readonly hugeSize: number;
  /** For device memory: why an access would fault now (memory decoding off), else null. */
  readonly accessFault?: (() => string | null) | undefined;
}

/** A contiguous piece of backing memory, as pinned for DMA. */
export interface Segment {
  readonly backing: Backing;
  readonly offset: number;
  readonly length: number;
  readonly pfnmap: boolean;
}

export class AddressSpace implements AddressAccess {
  /** Sorted by start, non-overlapping. */
  readonly vmas: Vma[] = [];
  /** mlock()ed pages, by page number (address >> 12). */
  readonly locked = new Set<bigint>();
  /** Pages that have been touched (viewed, written, locked, pinned or populated): pagemap's "present". */
  readonly present = new Set<bigint>();
  private nextAddr = 0x7f0000000000n;

  /** The mapping containing `addr`, if any. */
  find(addr: bigint): Vma | undefined {
    let lo = 0;
    let hi = this.vmas.length - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      const v = this.vmas[mid]!;
      if (addr < v.start) hi = mid - 1;
      else if (addr >= v.end) lo = mid + 1;
      else return v;
    }
    return undefined;
  }

  /** Chooses an address for a new mapping of `length` bytes aligned to `align`. */
  pickAddress(length: bigint, align: bigint): bigint {
    const addr = alignUp(this.nextAddr, align);
    if (addr + length > USER_END) fail('ENOMEM', 'fake address space exhausted');
    // A guard page after every mapping: two mappings are never adjacent, so a
    // view can never silently run from one into the next.
    this.nextAddr = addr + length + BigInt(PAGE_SIZE);
    return addr;
  }

  insert(vma: Vma): void {
    vma.backing.hold();
    vma.file?.get();
    let i = 0;
    while (i < this.vmas.length && this.vmas[i]!.start < vma.start) i++;
    this.vmas.splice(i, 0, vma);
  }

  private release(vma: Vma): void {
    vma.backing.drop();
    vma.file?.put();
  }

  /** munmap(2) of [start, end): checks first, then removes, splitting partly covered mappings. */
  unmap(start: bigint, end: bigint): void {
    const hit = this.vmas.filter((v) => v.start < end && v.end > start);
    for (const v of hit) {
      if (v.hugeSize > 0) {
        const h = BigInt(v.hugeSize);
        if ((start > v.start && start % h !== 0n) || (end < v.end && end % h !== 0n)) {
          fail('EINVAL', 'munmap splits a huge page of a hugetlb mapping');
        }
      }
    }
    for (const v of hit) {
      const idx = this.vmas.indexOf(v);
      this.vmas.splice(idx, 1);
      const pieces: Vma[] = [];
      if (v.start < start) pieces.push({ ...v, end: start });
      if (end < v.end) pieces.push({ ...v, start: end, offset: v.offset + Number(end - v.start) });
      for (const p of pieces) this.insert(p);
      this.release(v);
    }
    for (const b of new Set(hit.map((v) => v.backing))) {
      if (!this.vmas.some((v) => v.backing === b)) b.detachViews();
    }
    for (let p = start >> PAGE_SHIFT; p < end >> PAGE_SHIFT; p++) {
      this.locked.delete(p);
      this.present.delete(p);
    }
  }

  /** Unmaps everything (process exit). */
  unmapAll(): void {
    for (const v of this.vmas.splice(0)) this.release(v);
    this.locked.clear();
    this.present.clear();
  }

  /**
   * Resolves [addr, addr+len) to backing pieces, as the kernel walks page
   * tables. `write` requires writable mappings; `pfnmap` whether device memory
   * may be part of it. Throws EFAULT at the first hole.
   */
  segments(addr: bigint, len: number, opts: { write: boolean; read: boolean; pfnmap: boolean }): Segment[] {
    const out: Segment[] = [];
    let at = addr;
    const end = addr + BigInt(len);
    while (at < end) {
      const v = this.find(at);
      if (v === undefined) fail('EFAULT', `address 0x${at.toString(16)} is not mapped`);
      if (opts.read && (v.prot & 1) === 0) fail('EFAULT', `address 0x${at.toString(16)} is not readable`);
      if (opts.write && (v.prot & 2) === 0) fail('EFAULT', `address 0x${at.toString(16)} is not writable`);
      if (v.pfnmap && !opts.pfnmap) fail('EFAULT', `address 0x${at.toString(16)} is device memory (VM_PFNMAP)`);
      const stop = end < v.end ? end : v.end;
      const offset = v.offset + Number(at - v.start);
      const length = Number(stop - at);
      if (offset + length > v.backing.byteLength) fail('EFAULT', `address 0x${at.toString(16)} is past the end of its file (SIGBUS)`);
      out.push({ backing: v.backing, offset, length, pfnmap: v.pfnmap });
      at = stop;
    }
    return out;
  }

  /** Marks the pages of [addr, addr+len) as touched. */
  touch(addr: bigint, len: number): void {
    if (len <= 0) return;
    for (let p = addr >> PAGE_SHIFT; p <= (addr + BigInt(len) - 1n) >> PAGE_SHIFT; p++) this.present.add(p);
  }

  readUser(addr: bigint, len: number): Uint8Array {
    const out = new Uint8Array(len);
    let pos = 0;
    for (const s of this.segments(addr, len, { read: true, write: false, pfnmap: true })) {
      out.set(new Uint8Array(s.backing.buffer, s.offset, s.length), pos);
      pos += s.length;
    }
    this.touch(addr, len);
    return out;
  }

  writeUser(addr: bigint, bytes: Uint8Array): void {
    const segs = this.segments(addr, bytes.byteLength, { read: false, write: true, pfnmap: true });
    let pos = 0;
    for (const s of segs) {
      new Uint8Array(s.backing.buffer, s.offset, s.length).set(bytes.subarray(pos, pos + s.length));
      pos += s.length;
    }
    this.touch(addr, bytes.byteLength);
  }

  /** Pages of [addr, addr+len) rounded out to whole pages, as page numbers. */
  static pages(addr: bigint, len: number): { first: bigint; count: bigint } {
    const first = addr >> PAGE_SHIFT;
    const last = (addr + BigInt(len) + BigInt(PAGE_SIZE) - 1n) >> PAGE_SHIFT;
    return { first, count: last - first };
  }
}
