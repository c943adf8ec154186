// A region (or a sub-range of one) opened for access: mmap'd where the kernel
// allows it, pread/pwrite on the device fd everywhere else, behind one
// accessor API.
//
// Guarantees:
// - Width-exact: readN/writeN is one N-bit load/store (an element of the
//   typed array of that width on a mapping; an N/8-byte pread/pwrite, which
//   vfio-pci performs as one access of that width). Never a DataView on
//   device memory: DataView accesses are byte-wise. Bulk copies loop over
//   32-bit elements (8/16-bit only for an unaligned head or tail), never
//   TypedArray.set/fill/slice or Buffer.copy, which use wide vector copies
//   that devices may reject or split.
// - Checked: every offset is bounds-checked against the range and must be
//   naturally aligned for its width (EINVAL otherwise), before any access.
//   Fast path: on a range's leading mapping the accessors do exactly these
//   checks with a few integer operations and the typed array's own bounds
//   (MappedRegion); everything else takes the general path.
// - Safe after close: `close()` sets the guard first (empties the fast
//   views, marks the region closed), then unmaps. Every accessor checks the
//   guard before touching memory, so an access after close is VfioError
//   ECLOSED, never a load from unmapped memory (SIGSEGV, which nothing can
//   catch). The device's own close closes its regions.
//   The raw typed arrays of `views()` cannot carry that guard: see there.
// - Never maps what must not be mapped: only areas the kernel marks mappable
//   (the whole region, or its sparse areas), minus `exclude` (the MSI-X table
//   when the kernel does not say it is mappable), rounded inward to pages.
// - Leaks nothing: a failing mmap unmaps the mappings made before it.
import { endianness } from 'node:os';
import { usageError, VfioError } from '../base/errors.js';
import { teardown, withUnwind } from '../base/cleanup.js';
import { validateBigInt, validateBytes, validateInteger, validateOptions, validateSpan, type Where } from '../base/validate.js';
import { MAP_SHARED, PROT_READ, PROT_WRITE } from '../libc/sys.js';
import { resourceClosed, type DeviceHandle } from './handle.js';
import { hexdump, type AccessWidth } from './hexdump.js';
import type { RegionArea, RegionInfo } from './region-info.js';

// Typed arrays use the host's byte order and PCI is little-endian; every
// platform Node and VFIO share (x86-64, arm64, riscv64, ppc64le) is LE.
if (endianness() !== 'LE') throw new Error('vfio: device memory access needs a little-endian host');

/** Typed arrays over mapped device memory, for hot loops. */
export interface MmioViews {
  /** Offset in the region range that element 0 of every view stands for. */
  readonly offset: number;
  readonly u8: Uint8Array;
  readonly u16: Uint16Array;
  readonly u32: Uint32Array;
  readonly u64: BigUint64Array;
}

export interface OpenRegionOptions {
  /** Start of the range inside the region (default 0); a multiple of 8. */
  readonly offset?: number;
  /** Length of the range (default: to the end of the region). */
  readonly size?: number;
  /**
   * Region areas that must not be mmap'd (they are reached by pread/pwrite
   * instead), e.g. an MSI-X table the kernel does not let user space map.
   */
  readonly exclude?: readonly RegionArea[];
  /** Never mmap; every access goes through pread/pwrite. */
  readonly noMmap?: boolean;
}

/** Largest single mapping: typed arrays (and koffi views) stay well under their limits. */
const MAX_MAP_CHUNK = 2 ** 30;

interface MappedSegment {
  readonly kind: 'mmap';
  /** [start, end) in range offsets. */
  readonly start: number;
  readonly end: number;
  readonly addr: bigint;
  readonly length: number;
  /** Byte index in the views of range offset 0 (may be negative). */
  readonly bias: number;
  u8: Uint8Array;
  u16: Uint16Array;
  u32: Uint32Array;
  u64: BigUint64Array;
}

interface RwSegment {
  readonly kind: 'rw';
  readonly start: number;
  readonly end: number;
}

type Segment = MappedSegment | RwSegment;

/** Module-private key of Region's factory: only openRegion builds Regions. */
const CREATE = Symbol('create');

/** The views of nothing: every index is out of bounds (a closed mapping's views, an unmapped fast path). */
const EMPTY: Views = { u8: new Uint8Array(0), u16: new Uint16Array(0), u32: new Uint32Array(0), u64: new BigUint64Array(0) };

interface Views {
  readonly u8: Uint8Array;
  readonly u16: Uint16Array;
  readonly u32: Uint32Array;
  readonly u64: BigUint64Array;
}

/** Typed arrays of every width over `bytes` bytes of `buf` from byte `at` (a multiple of 8); a partial last element is left out. */
function viewsOver(buf: ArrayBufferLike, at: number, bytes: number): Views {
  return {
    u8: new Uint8Array(buf, at, bytes),
    u16: new Uint16Array(buf, at, Math.floor(bytes / 2)),
    u32: new Uint32Array(buf, at, Math.floor(bytes / 4)),
    u64: new BigUint64Array(buf, at, Math.floor(bytes / 8)),
  };
}

/**
 * The element index that range offset `offset` has in a fast view of
 * 2^shift-byte elements, when `offset` is a non-negative integer (below 2^32)
 * and a multiple of the width; otherwise NO_SLOT. Whether the access fits in
 * the range is left to the view's bounds (`in`: see MappedRegion's views).
 * The typeof test first: arithmetic on anything but a number could throw
 * (a bigint) or run caller code (valueOf).
 */
const slot = (offset: number, shift: number): number =>
  typeof offset === 'number' && offset >>> 0 === offset && (offset & ((1 << shift) - 1)) === 0 ? offset >>> shift : NO_SLOT;
// (A const, not a function declaration: a module's function binding may be
// reassigned, so optimized code would reload and check it on every access.)

/** An index out of bounds of every view: no mapping is longer than MAX_MAP_CHUNK bytes. */
const NO_SLOT = MAX_MAP_CHUNK;

function alignDown(v: number, a: number): number {
  return Math.floor(v / a) * a;
}
function alignUp(v: number, a: number): number {
  return Math.ceil(v / a) * a;
}

/** `areas` minus `holes`, both sorted lists of region areas. */
function subtract(areas: readonly RegionArea[], holes: readonly RegionArea[]): RegionArea[] {
  let out = areas.map((a) => ({ start: a.offset, end: a.offset + a.size }));
  for (const h of holes) {
    const hs = h.offset;
    const he = h.offset + h.size;
    out = out.flatMap((a) => {
      if (he <= a.start || hs >= a.end) return [a];
      const parts = [];
      if (hs > a.start) parts.push({ start: a.start, end: hs });
      if (he < a.end) parts.push({ start: he, end: a.end });
      return parts;
    });
  }
  return out.map((a) => ({ offset: a.start, size: a.end - a.start }));
}

/**
 * The page-granular pieces of [lo, hi) that may be mmap'd, in region offsets:
 * each mappable area shrunk inward to page boundaries (a page shared with a
 * non-mappable area is not mapped), except that an area reaching the end of
 * the region may round its end up (the kernel maps whole pages of a BAR).
 */
function mappablePieces(info: RegionInfo, opts: OpenRegionOptions, lo: number, hi: number, page: number): { start: number; end: number }[] {
  if (!info.mappable || opts.noMmap) return [];
  const base = info.sparseAreas ?? [{ offset: 0, size: info.size }];
  const holes = (opts.exclude ?? []).map((x) => ({
    offset: alignDown(x.offset, page),
    size: alignUp(x.offset + x.size, page) - alignDown(x.offset, page),
  }));
  const pieces: { start: number; end: number }[] = [];
  for (const a of subtract(base, holes)) {
    const allowedStart = alignUp(a.offset, page);
    const end = a.offset + a.size;
    const allowedEnd = end === info.size ? alignUp(end, page) : alignDown(end, page);
    const start = Math.max(allowedStart, lo);
    const stop = Math.min(allowedEnd, hi);
    if (start >= stop) continue;
    for (let s = start; s < stop; s += MAX_MAP_CHUNK) pieces.push({ start: s, end: Math.min(stop, s + MAX_MAP_CHUNK) });
  }
  return pieces;
}

/** Bulk-copy widths: 4 for the aligned middle, 2/1 for an unaligned head or tail. */
function stepWidth(at: number, remaining: number): 1 | 2 | 4 {
  if (at % 4 === 0 && remaining >= 4) return 4;
  if (at % 2 === 0 && remaining >= 2) return 2;
  return 1;
}

export class Region implements Disposable {
  readonly info: RegionInfo;
  /** Start of this range inside the region. */
  readonly offset: number;
  /** Bytes in this range; valid offsets are 0 .. size-1. */
  readonly size: number;
  readonly #h: DeviceHandle;
  readonly #segments: Segment[];
  /** The one mapping covering the whole range, when there is one (#at's shortcut). */
  #whole: MappedSegment | null;
  #closed = false;
  /** Mappings close() has still to unmap: all of them once closed, then those whose munmap failed. */
  #unmapping: { addr: bigint; length: number }[] = [];
  readonly #onClose: ((r: Region) => void) | undefined;
  /** 8-byte bounce buffer for pread/pwrite accesses (host memory). */
  readonly #scratch = Buffer.alloc(8);
  /** The device, for argument errors (made once: #at runs on every general-path access). */
  readonly #where: Where;

  /** Only for MappedRegion: openRegion builds every Region. */
  protected constructor(
    h: DeviceHandle,
    info: RegionInfo,
    offset: number,
    size: number,
    segments: Segment[],
    onClose: ((r: Region) => void) | undefined,
  ) {
    this.#h = h;
    this.#where = { device: h.address };
    this.info = info;
    this.offset = offset;
    this.size = size;
    this.#segments = segments;
    const only = segments.length === 1 ? segments[0] : undefined;
    this.#whole = only !== undefined && only.kind === 'mmap' ? only : null;
    this.#onClose = onClose;
  }

  /**
   * Built only by openRegion (the key is module-private), which has
   * validated everything: a MappedRegion when the range starts with a
   * mapping (its bias, range offset 0's byte in the views, is a multiple of
   * 8: openRegion takes 8-aligned offsets and mappings start on pages).
   */
  static [CREATE](
    h: DeviceHandle,
    info: RegionInfo,
    offset: number,
    size: number,
    segments: Segment[],
    onClose?: (r: Region) => void,
  ): Region {
    const lead = segments[0];
    return lead !== undefined && lead.kind === 'mmap' && lead.start === 0 && lead.bias % 8 === 0
      ? new MappedRegion(h, info, offset, size, segments, onClose, lead)
      : new Region(h, info, offset, size, segments, onClose);
  }

  get closed(): boolean {
    return this.#closed;
  }

  /** The parts of this range that are mmap'd (range offsets); the rest uses pread/pwrite. */
  get mappedAreas(): readonly RegionArea[] {
    return this.#segments.filter((s) => s.kind === 'mmap').map((s) => ({ offset: s.start, size: s.end - s.start }));
  }

  // --- width-exact accessors ----------------------------------------------

  // The general path: every check (#at), then one access of the width
  // through the offset's segment. MappedRegion puts its fast path in front.

  read8(offset: number): number {
    return this.#read(offset, 1);
  }
  read16(offset: number): number {
    return this.#read(offset, 2);
  }
  read32(offset: number): number {
    return this.#read(offset, 4);
  }
  read64(offset: number): bigint {
    const s = this.#at(offset, 8, false);
    if (s.kind === 'mmap') return s.u64[(s.bias + offset) / 8] as bigint;
    this.#rw(offset, 8, false);
    return this.#scratch.readBigUInt64LE(0);
  }

  write8(offset: number, value: number): void {
    this.#write(offset, 1, value);
  }
  write16(offset: number, value: number): void {
    this.#write(offset, 2, value);
  }
  write32(offset: number, value: number): void {
    this.#write(offset, 4, value);
  }
  write64(offset: number, value: bigint | number): void {
    const v = this.#value64(value);
    const s = this.#at(offset, 8, true);
    if (s.kind === 'mmap') {
      s.u64[(s.bias + offset) / 8] = v;
    } else {
      this.#scratch.writeBigUInt64LE(v, 0);
      this.#rw(offset, 8, true);
    }
  }

  // --- width chosen at run time -------------------------------------------

  /**
   * One access of `width` bits at `offset`, the width chosen at run time (a
   * command line, a register table): exactly what read8/16/32/64 does, the
   * value as a bigint.
   * @throws VfioError EINVAL `width` is not 8, 16, 32 or 64, or the offset is
   *   outside the range or not aligned to the width; EACCES the region is not
   *   readable; ECLOSED; pread's errors.
   */
  read(offset: number, width: AccessWidth): bigint {
    switch (width) {
      case 8:
        return BigInt(this.read8(offset));
      case 16:
        return BigInt(this.read16(offset));
      case 32:
        return BigInt(this.read32(offset));
      case 64:
        return this.read64(offset);
      default:
        throw this.#badWidth(width);
    }
  }

  /**
   * One store of `width` bits at `offset`, the width chosen at run time:
   * exactly what write8/16/32/64 does.
   * @throws VfioError EINVAL `width` is not 8, 16, 32 or 64, `value` does not
   *   fit it, or the offset is outside the range or not aligned to the width;
   *   EACCES the region is not writable; ECLOSED; pwrite's errors.
   */
  write(offset: number, width: AccessWidth, value: bigint | number): void {
    if (width === 64) return this.write64(offset, value);
    if (width !== 8 && width !== 16 && width !== 32) throw this.#badWidth(width);
    // A bigint that fits the width is that number; one that does not is
    // refused in the validators' words, as the fixed-width stores refuse.
    if (typeof value === 'bigint') validateBigInt(value, 'value', 0n, (1n << BigInt(width)) - 1n, this.#where);
    const v = typeof value === 'bigint' ? Number(value) : value;
    if (width === 8) this.write8(offset, v);
    else if (width === 16) this.write16(offset, v);
    else this.write32(offset, v);
  }

  /**
   * A hex + ASCII dump of `length` bytes from `offset`, read in `width`-bit
   * accesses (see hexdump.ts): for looking at device memory, which may answer
   * only accesses of its registers' width.
   * @throws VfioError as read(); EINVAL `offset` or `length` is not a
   *   multiple of the width.
   */
  hexdump(offset: number, length: number, width: AccessWidth = 32): string {
    if (width !== 8 && width !== 16 && width !== 32 && width !== 64) throw this.#badWidth(width);
    if (!Number.isSafeInteger(length) || length < 0 || length % (width / 8) !== 0 || offset % (width / 8) !== 0) {
      throw usageError('EINVAL', `offset ${offset} and length ${length} must be multiples of ${width / 8} (the ${width}-bit width)`, {
        device: this.#h.address,
      });
    }
    return hexdump((at) => this.read(at, width), offset, length, width);
  }

  #badWidth(width: unknown): VfioError {
    return usageError('EINVAL', `access width ${String(width)} is not 8, 16, 32 or 64 bits`, { device: this.#h.address });
  }

  // --- bulk copies -----------------------------------------------------------

  /**
   * Copies `src` into the device at `offset`: 32-bit stores for the aligned
   * middle, 16/8-bit stores for an unaligned head or tail.
   */
  copyIn(offset: number, src: Uint8Array): void {
    validateBytes(src, 'src', this.#where);
    this.#span(offset, src.byteLength, true);
    const host = new DataView(src.buffer, src.byteOffset, src.byteLength);
    this.#bulk(offset, src.byteLength, (s, at, i, n) => {
      if (s.kind === 'rw') return this.#rwBulk(at, src.subarray(i, i + n), true);
      for (let k = 0; k < n; ) {
        const w = stepWidth(at + k, n - k);
        const b = s.bias + at + k;
        if (w === 4) s.u32[b / 4] = host.getUint32(i + k, true);
        else if (w === 2) s.u16[b / 2] = host.getUint16(i + k, true);
        else s.u8[b] = host.getUint8(i + k);
        k += w;
      }
    });
  }

  /**
   * Copies `length` bytes from the device at `offset` into a new buffer, or
   * into `into` (its whole length) when given. Same access widths as copyIn.
   */
  copyOut(offset: number, length: number): Uint8Array;
  copyOut(offset: number, into: Uint8Array): Uint8Array;
  copyOut(offset: number, lengthOrInto: number | Uint8Array): Uint8Array {
    if (typeof lengthOrInto !== 'number') validateBytes(lengthOrInto, 'into', this.#where);
    // Bounds before allocating: copyOut(0, 2 ** 31) must not make 2 GiB first.
    this.#span(offset, typeof lengthOrInto === 'number' ? lengthOrInto : lengthOrInto.byteLength, false);
    const dst = typeof lengthOrInto === 'number' ? new Uint8Array(lengthOrInto) : lengthOrInto;
    const host = new DataView(dst.buffer, dst.byteOffset, dst.byteLength);
    this.#bulk(offset, dst.byteLength, (s, at, i, n) => {
      if (s.kind === 'rw') return this.#rwBulk(at, dst.subarray(i, i + n), false);
      for (let k = 0; k < n; ) {
        const w = stepWidth(at + k, n - k);
        const b = s.bias + at + k;
        if (w === 4) host.setUint32(i + k, s.u32[b / 4] as number, true);
        else if (w === 2) host.setUint16(i + k, s.u16[b / 2] as number, true);
        else host.setUint8(i + k, s.u8[b] as number);
        k += w;
      }
    });
    return dst;
  }

  // --- raw views ---------------------------------------------------------------

  /**
   * Typed arrays straight over the mapping of [offset, offset+length), for hot
   * loops: `u32[i]` is one 32-bit access at range offset `offset + 4*i`.
   * The range must be mmap'd in one piece (ENOTSUP otherwise: use the
   * accessors), the region readable and writable (EACCES), and `offset` a
   * multiple of 8 (EINVAL).
   *
   * THE CALLER OWNS THEIR LIFETIME: the views carry no guard. After this
   * region or its device is closed they point at unmapped memory and an
   * access kills the process with SIGSEGV. Use them only inside
   * `withViews(fn)` (synchronous, liveness checked on entry), or check
   * `region.closed` before every batch and never keep them across an `await`.
   * Never call `.set()`, `.fill()`, `.slice()`, `.copyWithin()` on them: those
   * use wide copies; loop over elements instead (or use copyIn/copyOut).
   */
  views(offset = 0, length = this.size - offset): MmioViews {
    this.#span(offset, length, null);
    // Typed arrays cannot be made read-only, and a store into a PROT_READ
    // mapping is SIGSEGV: views exist only for read-write regions.
    if (!this.info.readable || !this.info.writable) this.#denied(!this.info.writable);
    if (offset % 8 !== 0)
      throw usageError('EINVAL', `views offset 0x${offset.toString(16)} is not 8-byte aligned`, { device: this.#h.address });
    const s = this.#segments.find((x) => x.start <= offset && offset < x.end);
    if (s === undefined || s.kind !== 'mmap' || offset + length > s.end) {
      throw usageError(
        'ENOTSUP',
        `[0x${offset.toString(16)}, 0x${(offset + length).toString(16)}) of ${this.info.name} ` +
          "is not mmap'd in one piece: use the accessors",
        { device: this.#h.address },
      );
    }
    return { offset, ...viewsOver(s.u8.buffer, s.u8.byteOffset + s.bias + offset, length) };
  }

  /**
   * Runs `fn` with `views(offset, length)` after checking that the region is
   * open. `fn` must be synchronous and must not keep the views: nothing can
   * unmap them while it runs (JavaScript is single-threaded) unless `fn`
   * itself closes the region or the device.
   */
  withViews<T>(fn: (v: MmioViews) => T, offset?: number, length?: number): T {
    return fn(this.views(offset, length));
  }

  // --- lifetime ----------------------------------------------------------------

  /**
   * Unmaps the range. Afterwards every accessor throws ECLOSED. Idempotent
   * once it has succeeded; after a failed munmap the mapping is still there
   * (Linux leaves it), so calling close() again retries the mappings that
   * are left, and the region counts as gone (onClose) only when none is.
   * @throws VfioError the first munmap failure, after every mapping was attempted.
   */
  close(): void {
    if (this.#closed && this.#unmapping.length === 0) return;
    // Guard first: from here on no accessor reaches the memory (MappedRegion
    // has emptied its fast views before calling this).
    if (!this.#closed) {
      this.#closed = true;
      this.#whole = null;
      for (const s of this.#segments) {
        if (s.kind !== 'mmap') continue;
        this.#unmapping.push({ addr: s.addr, length: s.length });
        Object.assign(s, EMPTY);
      }
    }
    const h = this.#h;
    const pending = this.#unmapping;
    this.#unmapping = [];
    teardown([
      ...pending.map((m) => () => {
        try {
          h.sys.munmap(m.addr, m.length);
        } catch (err) {
          this.#unmapping.push(m);
          throw err instanceof VfioError ? err.annotate({ device: h.address, detail: `unmapping ${this.info.name}` }) : err;
        }
      }),
      () => {
        if (this.#unmapping.length === 0) this.#onClose?.(this);
      },
    ]);
  }

  [Symbol.dispose](): void {
    this.close();
  }

  // --- internals ---------------------------------------------------------------

  /** The general path of the 8/16/32-bit accessors. */
  #read(offset: number, width: 1 | 2 | 4): number {
    const s = this.#at(offset, width, false);
    if (s.kind === 'rw') return this.#pread(offset, width);
    const b = s.bias + offset;
    return (width === 1 ? s.u8[b] : width === 2 ? s.u16[b / 2] : s.u32[b / 4]) as number;
  }

  #write(offset: number, width: 1 | 2 | 4, value: number): void {
    const v = this.#value(value, width === 1 ? 8 : width === 2 ? 16 : 32);
    const s = this.#at(offset, width, true);
    if (s.kind === 'rw') return this.#pwrite(offset, width, v);
    const b = s.bias + offset;
    if (width === 1) s.u8[b] = v;
    else if (width === 2) s.u16[b / 2] = v;
    else s.u32[b / 4] = v;
  }

  /** Liveness, permission, bounds and alignment for one access; returns its segment. */
  #at(offset: number, width: number, write: boolean): Segment {
    if (this.#closed) throw resourceClosed(this.#h, `${this.info.name} mapping`);
    // A store to a PROT_READ mapping would be SIGSEGV: refuse it here.
    if (write ? !this.info.writable : !this.info.readable) this.#denied(write);
    validateInteger(offset, 'offset', 0, Number.MAX_SAFE_INTEGER, this.#where);
    if (offset + width > this.size) {
      throw usageError('EINVAL', `offset ${offset} + ${width} is outside the ${this.size}-byte range of ${this.info.name}`, this.#where);
    }
    if (offset % width !== 0) {
      throw usageError('EINVAL', `offset 0x${offset.toString(16)} is not ${width}-byte aligned`, { device: this.#h.address });
    }
    const w = this.#whole;
    if (w !== null) return w;
    // Segments are few (one per mappable area plus the gaps) and sorted.
    for (const s of this.#segments) if (offset < s.end) return s;
    /* c8 ignore next */
    throw new Error('unreachable: segments cover the range');
  }

  #denied(write: boolean): never {
    throw usageError('EACCES', `${this.info.name} is not ${write ? 'writable' : 'readable'}`, { device: this.#h.address });
  }

  /** Liveness, permission and bounds for a bulk access of `length` bytes. */
  #span(offset: number, length: number, write: boolean | null): void {
    if (this.#closed) throw resourceClosed(this.#h, `${this.info.name} mapping`);
    if (write !== null && (write ? !this.info.writable : !this.info.readable)) this.#denied(write);
    validateSpan(offset, length, this.size, `range of ${this.info.name}`, this.#where);
  }

  /** Splits [offset, offset+length) at segment boundaries: fn(segment, rangeOffset, srcIndex, bytes). */
  #bulk(offset: number, length: number, fn: (s: Segment, at: number, i: number, n: number) => void): void {
    let at = offset;
    const end = offset + length;
    for (const s of this.#segments) {
      if (at >= end) break;
      if (s.end <= at) continue;
      const n = Math.min(s.end, end) - at;
      fn(s, at, at - offset, n);
      at += n;
    }
  }

  #value(v: number, bits: 8 | 16 | 32): number {
    validateInteger(v, 'value', 0, 2 ** bits - 1, this.#where);
    return v;
  }

  #value64(v: bigint | number): bigint {
    if (typeof v === 'number') {
      validateInteger(v, 'value', 0, Number.MAX_SAFE_INTEGER, this.#where);
      return BigInt(v);
    }
    validateBigInt(v, 'value', 0n, (1n << 64n) - 1n, this.#where);
    return v;
  }

  #pread(offset: number, width: 1 | 2 | 4): number {
    this.#rw(offset, width, false);
    return width === 1 ? this.#scratch.readUInt8(0) : width === 2 ? this.#scratch.readUInt16LE(0) : this.#scratch.readUInt32LE(0);
  }

  #pwrite(offset: number, width: 1 | 2 | 4, v: number): void {
    if (width === 1) this.#scratch.writeUInt8(v, 0);
    else if (width === 2) this.#scratch.writeUInt16LE(v, 0);
    else this.#scratch.writeUInt32LE(v, 0);
    this.#rw(offset, width, true);
  }

  /** One access of exactly `width` bytes through the scratch buffer. */
  #rw(offset: number, width: number, write: boolean): void {
    this.#rwBulk(offset, this.#scratch.subarray(0, width), write);
  }

  /**
   * pread/pwrite of `buf` at range `offset`. vfio-pci splits a long transfer
   * into naturally aligned accesses of up to 4 (or 8) bytes itself.
   */
  #rwBulk(offset: number, buf: Uint8Array, write: boolean): void {
    const info = this.info;
    const h = this.#h;
    h.assertOpen();
    const where = info.fdOffset + BigInt(this.offset + offset);
    let done = 0;
    while (done < buf.byteLength) {
      const part = buf.subarray(done);
      let n: number;
      try {
        n = write ? h.sys.pwrite(h.fd, part, where + BigInt(done)) : h.sys.pread(h.fd, part, where + BigInt(done));
      } catch (err) {
        throw err instanceof VfioError
          ? err.annotate({ device: h.address, detail: `${info.name} + 0x${(this.offset + offset + done).toString(16)}` })
          : err;
      }
      if (n <= 0) {
        throw new VfioError({
          code: 'EIO',
          syscall: write ? 'pwrite' : 'pread',
          device: h.address,
          detail: `${info.name} + 0x${(this.offset + offset + done).toString(16)}: no progress`,
        });
      }
      done += n;
    }
  }
}

/**
 * A Region whose range starts with a mapping: each accessor first tries its
 * fast path over that leading mapping, then falls back to Region's general
 * path (the rest of the range, and every error).
 *
 * A class of its own so that the fast accessors' JIT feedback is theirs:
 * ranges with no mapping at all (config space, I/O BARs) run Region's
 * accessors, and the general path never shares a call site with the hot
 * one. Once an accessor here has fallen back (an error, or an offset past
 * the leading mapping), the JIT compiles that call into loops around it,
 * which costs them some speed, never correctness.
 */
class MappedRegion extends Region {
  /**
   * The fast views: for reading (#rN) and writing (#wN) with N-bit elements,
   * element 0 at range offset 0, over the leading mapping [0, end). An N-bit
   * access at range offset o takes the fast path exactly when
   * `slot(o) in view`: o is a non-negative integer multiple of N/8 (else
   * slot() gives NO_SLOT) and [o, o + N/8) lies inside the leading mapping
   * (the views hold floor(end / (N/8)) elements). They are EMPTY (no index is
   * in them) where the region may not be read / written, and after close,
   * which empties them first thing (the guard). So that one test stands for
   * all of #at's checks (liveness, permission, bounds, alignment) and its
   * segment lookup. The fast path runs no caller code (slot() and the value
   * tests look at numbers and bigints only), so nothing can close the region
   * between loading a view and accessing it.
   */
  #r8: Uint8Array = EMPTY.u8;
  #r16: Uint16Array = EMPTY.u16;
  #r32: Uint32Array = EMPTY.u32;
  #r64: BigUint64Array = EMPTY.u64;
  #w8: Uint8Array = EMPTY.u8;
  #w16: Uint16Array = EMPTY.u16;
  #w32: Uint32Array = EMPTY.u32;
  #w64: BigUint64Array = EMPTY.u64;

  constructor(
    h: DeviceHandle,
    info: RegionInfo,
    offset: number,
    size: number,
    segments: Segment[],
    onClose: ((r: Region) => void) | undefined,
    lead: MappedSegment,
  ) {
    super(h, info, offset, size, segments, onClose);
    // SAFETY: inside lead's mapping, which lives until close() has emptied these views.
    const v = viewsOver(lead.u8.buffer, lead.u8.byteOffset + lead.bias, lead.end);
    this.#setFast(info.readable ? v : EMPTY, info.writable ? v : EMPTY);
  }

  // Each: the element index (NO_SLOT for a value that does not fit), the one
  // test `i in view`, one access of the view; else Region's general path.
  // `in` reads no memory, and the JIT compiles it, for an index that was
  // always in bounds, into the bounds check the access needs anyway
  // (deoptimizing otherwise): then no branch leaves a hot loop around the
  // accessor, and the JIT optimizes that loop as a whole (an `if` around the
  // value test or a length compare would keep it from doing so).

  override read8(offset: number): number {
    const i = slot(offset, 0);
    const u = this.#r8;
    return i in u ? u[i]! : super.read8(offset);
  }
  override read16(offset: number): number {
    const i = slot(offset, 1);
    const u = this.#r16;
    return i in u ? u[i]! : super.read16(offset);
  }
  override read32(offset: number): number {
    const i = slot(offset, 2);
    const u = this.#r32;
    return i in u ? u[i]! : super.read32(offset);
  }
  override read64(offset: number): bigint {
    const i = slot(offset, 3);
    const u = this.#r64;
    return i in u ? u[i]! : super.read64(offset);
  }

  // The value tests are #value's and #value64's (the general path repeats
  // them); typeof first, as in slot().
  override write8(offset: number, value: number): void {
    const i = typeof value === 'number' && (value & 0xff) === value ? slot(offset, 0) : NO_SLOT;
    const u = this.#w8;
    if (i in u) u[i] = value;
    else super.write8(offset, value);
  }
  override write16(offset: number, value: number): void {
    const i = typeof value === 'number' && (value & 0xffff) === value ? slot(offset, 1) : NO_SLOT;
    const u = this.#w16;
    if (i in u) u[i] = value;
    else super.write16(offset, value);
  }
  override write32(offset: number, value: number): void {
    const i = typeof value === 'number' && value >>> 0 === value ? slot(offset, 2) : NO_SLOT;
    const u = this.#w32;
    if (i in u) u[i] = value;
    else super.write32(offset, value);
  }
  override write64(offset: number, value: bigint | number): void {
    const i = typeof value === 'bigint' && BigInt.asUintN(64, value) === value ? slot(offset, 3) : NO_SLOT;
    const u = this.#w64;
    if (i in u) u[i] = value as bigint;
    else super.write64(offset, value);
  }

  override close(): void {
    // The guard, first: from here on no fast path reaches the memory.
    this.#setFast(EMPTY, EMPTY);
    super.close();
  }

  #setFast(r: Views, w: Views): void {
    this.#r8 = r.u8;
    this.#r16 = r.u16;
    this.#r32 = r.u32;
    this.#r64 = r.u64;
    this.#w8 = w.u8;
    this.#w16 = w.u16;
    this.#w32 = w.u32;
    this.#w64 = w.u64;
  }
}

/**
 * Opens [offset, offset+size) of region `info`: mmaps every page-granular
 * piece the kernel allows (see OpenRegionOptions.exclude), the rest is reached
 * with pread/pwrite.
 *
 * Errors: ENOENT the region has size 0; EINVAL a range outside the region or
 * an offset that is not a multiple of 8; EACCES a region that is neither
 * readable nor writable; ECLOSED the device is closed; mmap's own errors
 * (ENOMEM, EINVAL, ...) annotated with the device.
 */
export function openRegion(h: DeviceHandle, info: RegionInfo, opts: OpenRegionOptions = {}, onClose?: (r: Region) => void): Region {
  h.assertOpen();
  if (info.size === 0) throw usageError('ENOENT', `${info.name} is not implemented by the device (size 0)`, { device: h.address });
  const where = { device: h.address };
  const { offset: lo = 0, size: wanted } = validateOptions(opts, 'options', where);
  validateInteger(lo, 'offset', 0, Number.MAX_SAFE_INTEGER, where);
  if (lo >= info.size || lo % 8 !== 0) {
    throw usageError('EINVAL', `range offset ${lo} must be a multiple of 8 inside the ${info.size}-byte ${info.name}`, {
      device: h.address,
    });
  }
  const size = wanted ?? info.size - lo;
  validateInteger(size, 'size', 1, Number.MAX_SAFE_INTEGER, where);
  if (lo + size > info.size) {
    throw usageError('EINVAL', `range [${lo}, ${lo}+${size}) is outside the ${info.size}-byte ${info.name}`, { device: h.address });
  }
  if (!info.readable && !info.writable) throw usageError('EACCES', `${info.name} is neither readable nor writable`, { device: h.address });
  const hi = lo + size;
  const page = h.sys.pageSize();
  const prot = (info.readable ? PROT_READ : 0) | (info.writable ? PROT_WRITE : 0);
  const segments: Segment[] = [];
  let at = lo;
  withUnwind((u) => {
    for (const p of mappablePieces(info, opts, lo, hi, page)) {
      const start = Math.max(p.start, lo);
      const end = Math.min(p.end, hi);
      if (start > at) segments.push({ kind: 'rw', start: at - lo, end: start - lo });
      const mapStart = alignDown(start, page);
      const length = alignUp(end, page) - mapStart;
      let addr: bigint;
      try {
        addr = h.sys.mmap(length, prot, MAP_SHARED, h.fd, info.fdOffset + BigInt(mapStart));
      } catch (err) {
        throw err instanceof VfioError
          ? err.annotate({ device: h.address, detail: `mapping ${info.name} [0x${mapStart.toString(16)}, +0x${length.toString(16)})` })
          : err;
      }
      u.defer(() => h.sys.munmap(addr, length));
      // SAFETY: the mapping stays alive until Region.close() unmaps it, and
      // close() sets the guard every accessor checks before doing so.
      const u8 = h.sys.view(addr, length);
      const seg: MappedSegment = {
        kind: 'mmap',
        start: start - lo,
        end: end - lo,
        addr,
        length,
        bias: lo - mapStart,
        ...viewsOver(u8.buffer, u8.byteOffset, length),
      };
      segments.push(seg);
      at = end;
    }
    if (at < hi) segments.push({ kind: 'rw', start: at - lo, end: hi - lo });
  });
  return Region[CREATE](h, info, lo, size, segments, onClose);
}
