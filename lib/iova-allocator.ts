// IOVA (I/O virtual address) allocation for one container: which device-side
// addresses are free for the next DMA mapping.
//
// The free space is a set of disjoint intervals kept in an AVL tree ordered by
// start, each node also holding the largest free length in its subtree. That
// lets `allocate` find the lowest free interval that can take a request
// without looking at the intervals that are too small, and lets `release`
// merge a freed range with its neighbours (the free list stays coalesced).
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
// - Failures are VfioErrors: ENOSPC no room, EINVAL bad argument or outside
//   the IOVA ranges, EEXIST overlapping an allocation.
import { usageError } from './libc/errors.js';

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

function update(n: Node): Node {
  n.height = 1 + Math.max(height(n.left), height(n.right));
  let m = n.end - n.start;
  const l = maxLen(n.left);
  const r = maxLen(n.right);
  if (l > m) m = l;
  if (r > m) m = r;
  n.maxLen = m;
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

function isPowerOfTwo(x: bigint): boolean {
  return x > 0n && (x & (x - 1n)) === 0n;
}

export interface AllocateOptions {
  /** Power of two, at least the granule. Default: the granule. */
  readonly align?: bigint;
  /** Exclusive upper bound for the end of the allocation (2n ** 28n for a 28-bit device). */
  readonly limit?: bigint;
}

export class IovaAllocator {
  private root: Node | null = null;
  private allowed: IovaRange[] = [];
  /** Minimum page size of the IOMMU: every address and size is a multiple of it. */
  readonly granule: bigint;
  /** Lowest address `allocate` hands out. */
  readonly floor: bigint;

  /**
   * @param ranges the IOMMU's usable IOVA ranges (inclusive), any order.
   * @param granule the IOMMU's minimum page size (a power of two).
   */
  constructor(ranges: readonly IovaRange[], granule: bigint, floor: bigint = granule) {
    if (!isPowerOfTwo(granule)) throw usageError('EINVAL', `IOVA granule ${granule} is not a power of two`);
    this.granule = granule;
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
        if (a.iova > cursor) this.root = insertNode(this.root, cursor, a.iova);
        if (a.iova + a.size > cursor) cursor = a.iova + a.size;
      }
      if (end > cursor) this.root = insertNode(this.root, cursor, end);
    }
  }

  private checkSize(size: bigint, what: string): void {
    if (size <= 0n || size % this.granule !== 0n) {
      throw usageError('EINVAL', `${what} size ${size} is not a positive multiple of the IOMMU page size ${this.granule}`);
    }
  }

  /**
   * Takes the lowest free block of `size` bytes that satisfies `opts`.
   * @throws VfioError EINVAL bad size or alignment; ENOSPC no such block.
   */
  allocate(size: bigint, opts: AllocateOptions = {}): bigint {
    this.checkSize(size, 'allocation');
    const align = opts.align ?? this.granule;
    if (!isPowerOfTwo(align) || align < this.granule) {
      throw usageError('EINVAL', `alignment ${align} is not a power of two >= the IOMMU page size ${this.granule}`);
    }
    const limit = opts.limit ?? U64_END;
    const floor = this.floor;
    // A block fits a free node when, starting at the node's first aligned
    // address at or above the floor, it ends inside the node and the limit.
    const fit = (n: Node): bigint | null => {
      const at = alignUp(n.start > floor ? n.start : floor, align);
      const end = at + size;
      return end <= n.end && end <= limit ? at : null;
    };
    // In-order walk restricted to subtrees that hold a long enough interval;
    // `stop` ends the walk once nodes start past the last possible address.
    let stop = false;
    const search = (n: Node | null): bigint | null => {
      if (n === null || n.maxLen < size || stop) return null;
      const left = search(n.left);
      if (left !== null || stop) return left;
      if (n.start + size > limit) {
        stop = true;
        return null;
      }
      if (n.end - n.start >= size) {
        const at = fit(n);
        if (at !== null) return at;
      }
      return search(n.right);
    };
    const at = search(this.root);
    if (at === null) {
      const bound = opts.limit === undefined ? '' : ` below the DMA limit 0x${limit.toString(16)}`;
      throw usageError('ENOSPC', `no free IOVA block of ${size} bytes${bound} (alignment 0x${align.toString(16)})`);
    }
    this.take(at, size);
    return at;
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
    if (n !== null && iova + size <= n.end) {
      this.take(iova, size);
      return;
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
    for (const r of this.rangesOverlapping(iova, end)) {
      const s = iova > r.start ? iova : r.start;
      const e = end < r.last + 1n ? end : r.last + 1n;
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
    const after = floorNode(this.root, end - 1n);
    if (after !== null && after !== before && after.start < end) {
      throw usageError('EINVAL', `IOVA 0x${after.start.toString(16)} is already free`);
    }
    let s = start;
    let e = end;
    if (before !== null && before.end === start) {
      s = before.start;
      this.root = removeNode(this.root, before.start);
    }
    const next = floorNode(this.root, end);
    if (next !== null && next.start === end) {
      e = next.end;
      this.root = removeNode(this.root, next.start);
    }
    this.root = insertNode(this.root, s, e);
  }

  /** Removes [at, at + size) from the free node that contains it. */
  private take(at: bigint, size: bigint): void {
    const n = floorNode(this.root, at)!;
    const { start, end } = n;
    this.root = removeNode(this.root, start);
    if (at > start) this.root = insertNode(this.root, start, at);
    if (at + size < end) this.root = insertNode(this.root, at + size, end);
  }

  private rangesOverlapping(start: bigint, end: bigint): IovaRange[] {
    // Binary search for the first range whose last >= start.
    let lo = 0;
    let hi = this.allowed.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (this.allowed[mid]!.last < start) lo = mid + 1;
      else hi = mid;
    }
    const out: IovaRange[] = [];
    for (let i = lo; i < this.allowed.length && this.allowed[i]!.start < end; i++) out.push(this.allowed[i]!);
    return out;
  }

  private insideRanges(iova: bigint, size: bigint): boolean {
    const [r] = this.rangesOverlapping(iova, iova + size);
    return r !== undefined && r.start <= iova && iova + size - 1n <= r.last;
  }
}
