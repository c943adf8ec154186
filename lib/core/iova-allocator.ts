// IOVA (I/O virtual address) allocation for one container: which device-side
// addresses are free for the next DMA mapping.
//
// The free space is a set of disjoint intervals kept in an AVL tree ordered by
// start, each node also holding the largest free length in its subtree. That
// lets `allocate` find the lowest free interval that can take a request
// without looking at the intervals that are too small, and lets `release`
// merge a freed range with its neighbours (the free list stays coalesced,
// except at `floor`: no free interval crosses it, so that the lowest
// allocation — the first buffer's, at the floor — takes the start of an
// interval and its release gives it back, both in place).
//
// Guarantees:
// - Only addresses inside the IOMMU's IOVA ranges are ever handed out, each
//   aligned to the requested alignment (at least the granule, the IOMMU's
//   minimum page size), and never below `floor` (by default one granule, so
//   IOVA 0 — which a device register would read as "no address" — is never
//   returned).
// - `limit` bounds the end of an allocation (iova + size <= limit): the
//   per-call DMA address limit of a device that cannot address 64 bits (QEMU's
//   edu decodes 28).
// - Cost: O(log n) per reserve/release, and per allocate when the alignment
//   is the granule (the default). A larger alignment adds O(log n) for each
//   free interval that is long enough but cannot hold an aligned block.
//   Map + unmap is the hot path of a driver, and every bigint operation
//   makes a new bigint: a free interval that only shrinks or grows at one
//   end is changed in place (its position in the tree stays right), with its
//   ancestors' `maxLen` refreshed, instead of being removed and inserted.
// - Failures are VfioErrors: ENOSPC no room, EINVAL bad argument or outside
//   the IOVA ranges, EEXIST overlapping an allocation.
import { usageError } from '../base/errors.js';

/** An inclusive IOVA range, as the kernel reports it. */
export interface IovaRange {
  readonly start: bigint;
  /** Last usable address (inclusive). */
  readonly last: bigint;
}

interface Node {
  start: bigint;
  /** Exclusive end. */
  end: bigint;
  /** Largest `end - start` in this subtree. */
  maxLen: bigint;
  height: number;
  left: Node | null;
  right: Node | null;
}

const U64_END = 1n << 64n;

function height(n: Node | null): number {
  return n === null ? 0 : n.height;
}

function maxLen(n: Node | null): bigint {
  return n === null ? -1n : n.maxLen;
}

/** Sets `maxLen` from the node's own length and its children's. */
function refreshMaxLen(n: Node): void {
  let m = n.end - n.start;
  const l = maxLen(n.left);
  const r = maxLen(n.right);
  if (l > m) m = l;
  if (r > m) m = r;
  n.maxLen = m;
}

function update(n: Node): Node {
  n.height = 1 + Math.max(height(n.left), height(n.right));
  refreshMaxLen(n);
  return n;
}

function rotateRight(n: Node): Node {
  const l = n.left!;
  n.left = l.right;
  l.right = update(n);
  return update(l);
}

function rotateLeft(n: Node): Node {
  const r = n.right!;
  n.right = r.left;
  r.left = update(n);
  return update(r);
}

function balance(n: Node): Node {
  update(n);
  const bf = height(n.left) - height(n.right);
  if (bf > 1) {
    if (height(n.left!.left) < height(n.left!.right)) n.left = rotateLeft(n.left!);
    return rotateRight(n);
  }
  if (bf < -1) {
    if (height(n.right!.right) < height(n.right!.left)) n.right = rotateRight(n.right!);
    return rotateLeft(n);
  }
  return n;
}

function insertNode(n: Node | null, start: bigint, end: bigint): Node {
  if (n === null) return { start, end, maxLen: end - start, height: 1, left: null, right: null };
  if (start < n.start) n.left = insertNode(n.left, start, end);
  else n.right = insertNode(n.right, start, end);
  return balance(n);
}

function removeMin(n: Node): { rest: Node | null; min: Node } {
  if (n.left === null) return { rest: n.right, min: n };
  const { rest, min } = removeMin(n.left);
  n.left = rest;
  return { rest: balance(n), min };
}

function removeNode(n: Node | null, start: bigint): Node | null {
  if (n === null) return null;
  if (start < n.start) n.left = removeNode(n.left, start);
  else if (start > n.start) n.right = removeNode(n.right, start);
  else {
    if (n.left === null) return n.right;
    if (n.right === null) return n.left;
    const { rest, min } = removeMin(n.right);
    min.right = rest;
    min.left = n.left;
    return balance(min);
  }
  return balance(n);
}

/**
 * Recomputes `maxLen` on the path from `n` down to the node starting at
 * `start`, after that node's length changed in place (the tree's shape and
 * heights did not change).
 */
function refreshPath(n: Node | null, start: bigint): void {
  if (n === null) return;
  if (start < n.start) refreshPath(n.left, start);
  else if (start > n.start) refreshPath(n.right, start);
  refreshMaxLen(n);
}

/** The node with the greatest start < x (strictly). */
function lowerNode(n: Node | null, x: bigint): Node | null {
  let best: Node | null = null;
  while (n !== null) {
    if (n.start < x) {
      best = n;
      n = n.right;
    } else n = n.left;
  }
  return best;
}

/** The node with the greatest start <= x. */
function floorNode(n: Node | null, x: bigint): Node | null {
  let best: Node | null = null;
  while (n !== null) {
    if (n.start <= x) {
      best = n;
      n = n.right;
    } else n = n.left;
  }
  return best;
}

function alignUp(x: bigint, align: bigint): bigint {
  return ((x + align - 1n) / align) * align;
}

/** `search` found no block and no later node can hold one (they start past the limit). */
const PAST_LIMIT = -1n;

function isPowerOfTwo(x: bigint): boolean {
  return x > 0n && (x & (x - 1n)) === 0n;
}

export interface AllocateOptions {
  /** Power of two, at least the granule. Default: the granule. */
  readonly align?: bigint;
  /** Exclusive upper bound for the end of the allocation (2n ** 28n for a 28-bit device). */
  readonly limit?: bigint;
}

/** allocate() without options: one shared object rather than a new `{}` per call. */
const NO_OPTIONS: AllocateOptions = Object.freeze({});

export class IovaAllocator {
  private root: Node | null = null;
  private allowed: IovaRange[] = [];
  /** Minimum page size of the IOMMU: every address and size is a multiple of it. */
  readonly granule: bigint;
  /** Lowest address `allocate` hands out. */
  readonly floor: bigint;
  /** granule - 1: the low bits a multiple of the granule has clear. */
  private readonly granuleMask: bigint;

  /**
   * @param ranges the IOMMU's usable IOVA ranges (inclusive), any order.
   * @param granule the IOMMU's minimum page size (a power of two).
   */
  constructor(ranges: readonly IovaRange[], granule: bigint, floor: bigint = granule) {
    if (!isPowerOfTwo(granule)) throw usageError('EINVAL', `IOVA granule ${granule} is not a power of two`);
    this.granule = granule;
    this.granuleMask = granule - 1n;
    this.floor = floor;
    this.setRanges(ranges, []);
  }

  /** The usable IOVA ranges, sorted. */
  get ranges(): readonly IovaRange[] {
    return this.allowed;
  }

  /**
   * Replaces the usable ranges (they change when devices join or leave the
   * IOMMU) and rebuilds the free space as the new ranges minus `allocated`.
   * Allocated blocks outside the new ranges are simply not free.
   */
  setRanges(ranges: readonly IovaRange[], allocated: Iterable<{ readonly iova: bigint; readonly size: bigint }>): void {
    const g = this.granule;
    const clean: IovaRange[] = [];
    // Shrink each range to whole granules: an allocation must never straddle
    // a partial page at either edge.
    for (const r of [...ranges].sort((a, b) => (a.start < b.start ? -1 : a.start > b.start ? 1 : 0))) {
      const start = alignUp(r.start, g);
      const end = ((r.last + 1n) / g) * g;
      if (end > start) clean.push({ start, last: end - 1n });
    }
    this.allowed = clean;
    this.root = null;
    const used = [...allocated].sort((a, b) => (a.iova < b.iova ? -1 : a.iova > b.iova ? 1 : 0));
    let u = 0;
    for (const r of clean) {
      let cursor = r.start;
      const end = r.last + 1n;
      while (u < used.length && used[u]!.iova + used[u]!.size <= cursor) u++;
      for (let i = u; i < used.length && used[i]!.iova < end; i++) {
        const a = used[i]!;
        if (a.iova > cursor) this.addFree(cursor, a.iova);
        if (a.iova + a.size > cursor) cursor = a.iova + a.size;
      }
      if (end > cursor) this.addFree(cursor, end);
    }
  }

  /** Inserts free interval [start, end), in two at the floor if it crosses it. */
  private addFree(start: bigint, end: bigint): void {
    if (start < this.floor && this.floor < end) {
      this.root = insertNode(this.root, start, this.floor);
      this.root = insertNode(this.root, this.floor, end);
    } else {
      this.root = insertNode(this.root, start, end);
    }
  }

  private checkSize(size: bigint, what: string): void {
    // The granule is a power of two: a mask instead of a division.
    if (size <= 0n || (size & this.granuleMask) !== 0n) {
      throw usageError('EINVAL', `${what} size ${size} is not a positive multiple of the IOMMU page size ${this.granule}`);
    }
  }

  /**
   * Takes the lowest free block of `size` bytes that satisfies `opts`.
   * @throws VfioError EINVAL bad size or alignment; ENOSPC no such block.
   */
  allocate(size: bigint, opts: AllocateOptions = NO_OPTIONS): bigint {
    this.checkSize(size, 'allocation');
    const align = opts.align ?? this.granule;
    // The granule was checked by the constructor.
    if (align !== this.granule && (!isPowerOfTwo(align) || align < this.granule)) {
      throw usageError('EINVAL', `alignment ${align} is not a power of two >= the IOMMU page size ${this.granule}`);
    }
    const limit = opts.limit ?? U64_END;
    const at = this.search(this.root, size, align === this.granule ? this.granuleMask : align - 1n, limit);
    if (at < 0n) {
      const bound = opts.limit === undefined ? '' : ` below the DMA limit 0x${limit.toString(16)}`;
      throw usageError('ENOSPC', `no free IOVA block of ${size} bytes${bound} (alignment 0x${align.toString(16)})`);
    }
    this.take(at, at + size);
    return at;
  }

  /**
   * In-order walk of the subtrees that hold a long enough interval: the
   * lowest address where a block of `size` bytes, aligned (`alignMask` =
   * alignment - 1) and at or above the floor, ends inside a free node and
   * at or below `limit`. A negative answer: -1n (PAST_LIMIT) once nodes
   * start past the last possible address (the walk stops), -2n when this
   * subtree has no room.
   */
  private search(n: Node | null, size: bigint, alignMask: bigint, limit: bigint): bigint {
    if (n === null || n.maxLen < size) return -2n;
    const left = this.search(n.left, size, alignMask, limit);
    if (left !== -2n) return left;
    // (Without a limit, U64_END, skip the early stop: a block that would end
    // past 2^64 cannot fit its node anyway, so it changes no answer.)
    if (limit !== U64_END && n.start + size > limit) return PAST_LIMIT;
    // (A node shorter than `size` fails the `end` test: no need to measure it first.)
    const from = n.start > this.floor ? n.start : this.floor;
    // Already aligned (always so for the granule): no arithmetic.
    const at = (from & alignMask) === 0n ? from : (from + alignMask) & ~alignMask;
    const end = at + size;
    if (end <= n.end && end <= limit) return at;
    return this.search(n.right, size, alignMask, limit);
  }

  /**
   * Takes exactly [iova, iova + size): for a mapping at a chosen IOVA.
   * @throws VfioError EINVAL unaligned or outside the IOVA ranges; EEXIST
   *   overlapping an allocation.
   */
  reserve(iova: bigint, size: bigint): void {
    this.checkSize(size, 'mapping');
    if (iova < 0n || iova % this.granule !== 0n) {
      throw usageError('EINVAL', `IOVA 0x${iova.toString(16)} is not aligned to the IOMMU page size ${this.granule}`);
    }
    const n = floorNode(this.root, iova);
    const end = iova + size;
    if (n !== null && end <= n.end) {
      this.take(iova, end);
      return;
    }
    // Free space across the floor is two intervals that meet there.
    if (n !== null && n.end === this.floor && iova < this.floor && end > this.floor) {
      const upper = floorNode(this.root, this.floor);
      if (upper !== null && upper.start === this.floor && end <= upper.end) {
        this.take(iova, this.floor);
        this.take(this.floor, end);
        return;
      }
    }
    if (!this.insideRanges(iova, size)) {
      throw usageError('EINVAL', `IOVA [0x${iova.toString(16)}, 0x${(iova + size).toString(16)}) is outside the IOMMU's IOVA ranges`);
    }
    throw usageError('EEXIST', `IOVA [0x${iova.toString(16)}, 0x${(iova + size).toString(16)}) overlaps an existing mapping`);
  }

  /**
   * Gives [iova, iova + size) back (the parts inside the IOVA ranges) and
   * merges it with free neighbours.
   */
  release(iova: bigint, size: bigint): void {
    const end = iova + size;
    const ranges = this.allowed;
    for (let i = this.firstRangeEndingAtOrAfter(iova); i < ranges.length && ranges[i]!.start < end; i++) {
      const r = ranges[i]!;
      const s = iova > r.start ? iova : r.start;
      // Inside the range (the common case): no bigint made for its end.
      const e = end <= r.last ? end : r.last + 1n;
      this.free(s, e);
    }
  }

  /** Free bytes in total (for tests and diagnostics). */
  freeBytes(): bigint {
    let total = 0n;
    const walk = (n: Node | null): void => {
      if (n === null) return;
      walk(n.left);
      total += n.end - n.start;
      walk(n.right);
    };
    walk(this.root);
    return total;
  }

  private free(start: bigint, end: bigint): void {
    const before = floorNode(this.root, start);
    if (before !== null && before.end > start) {
      throw usageError('EINVAL', `IOVA 0x${start.toString(16)} is already free`);
    }
    const after = lowerNode(this.root, end);
    if (after !== null && after !== before && after.start < end) {
      throw usageError('EINVAL', `IOVA 0x${after.start.toString(16)} is already free`);
    }
    // No free interval crosses the floor (see the head comment).
    if (start < this.floor && this.floor < end) {
      this.giveBack(start, this.floor);
      this.giveBack(this.floor, end);
    } else {
      this.giveBack(start, end);
    }
  }

  /** Adds [start, end) (checked to be in use) to the free space, merged with free neighbours except across the floor. */
  private giveBack(start: bigint, end: bigint): void {
    const before = floorNode(this.root, start);
    const merge = before !== null && before.end === start && start !== this.floor ? before : null;
    const next = floorNode(this.root, end);
    const follow = next !== null && next.start === end && end !== this.floor ? next : null;
    if (merge !== null && follow !== null) {
      // Bridges two free nodes: one takes the other's place.
      const last = follow.end;
      this.root = removeNode(this.root, follow.start);
      merge.end = last;
      refreshPath(this.root, merge.start);
    } else if (merge !== null) {
      // Grows the node before it to the right: its place in the tree holds.
      merge.end = end;
      refreshPath(this.root, merge.start);
    } else if (follow !== null) {
      // Grows the node after it to the left, down to `start`, still past
      // the node before: its place in the tree holds.
      follow.start = start;
      refreshPath(this.root, start);
    } else {
      this.root = insertNode(this.root, start, end);
    }
  }

  /** Removes [at, after) from the free node that contains it. */
  private take(at: bigint, after: bigint): void {
    const n = floorNode(this.root, at)!;
    const { start, end } = n;
    if (at === start) {
      if (after === end) {
        this.root = removeNode(this.root, start);
        return;
      }
      // Shrinks from the left (allocate's usual case): its place holds.
      n.start = after;
      refreshPath(this.root, after);
      return;
    }
    // Shrinks from the right; the part past the block, if any, is new.
    n.end = at;
    refreshPath(this.root, start);
    if (after < end) this.root = insertNode(this.root, after, end);
  }

  /** Index of the first usable range whose last address is >= `start` (binary search). */
  private firstRangeEndingAtOrAfter(start: bigint): number {
    let lo = 0;
    let hi = this.allowed.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (this.allowed[mid]!.last < start) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }

  private insideRanges(iova: bigint, size: bigint): boolean {
    const r = this.allowed[this.firstRangeEndingAtOrAfter(iova)];
    return r !== undefined && r.start <= iova && iova + size - 1n <= r.last;
  }
}
