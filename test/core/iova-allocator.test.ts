// The IOVA allocator: ranges, alignment, limits, coalescing, and its cost.
import t from 'tap';
import { IovaAllocator } from '../../lib/core/iova-allocator.js';

const K4 = 4096n;
const code = (c: string) => ({ name: 'VfioError', code: c });

t.test('allocates lowest first, never IOVA 0, inside the ranges', async (t) => {
  const a = new IovaAllocator([{ start: 0n, last: 0xffffn }], K4);
  t.equal(a.allocate(K4), 0x1000n, 'page 0 is never handed out');
  t.equal(a.allocate(2n * K4), 0x2000n);
  t.equal(a.allocate(K4), 0x4000n);
  t.equal(a.freeBytes(), 0x10000n - 4n * K4, 'page 0 stays free: only allocate skips it');
});

t.test('honours several ranges and skips the holes between them', async (t) => {
  // Like x86: a reserved MSI window splits the space.
  const a = new IovaAllocator(
    [
      { start: 0xfef00000n, last: 0xffffffffn },
      { start: 0n, last: 0x2fffn },
    ],
    K4,
  );
  t.same(
    a.ranges.map((r) => r.start),
    [0n, 0xfef00000n],
    'ranges are sorted',
  );
  t.equal(a.allocate(2n * K4), 0x1000n);
  t.equal(a.allocate(2n * K4), 0xfef00000n, 'a block that does not fit the low range goes to the next');
  t.throws(() => a.reserve(0x3000n, K4), code('EINVAL'), 'an IOVA in the hole is outside the ranges');
});

t.test('partial pages at range edges are not usable', async (t) => {
  const a = new IovaAllocator([{ start: 0x1800n, last: 0x47ffn }], K4);
  t.same(a.ranges, [{ start: 0x2000n, last: 0x3fffn }]);
});

t.test('alignment and the DMA limit', async (t) => {
  const a = new IovaAllocator([{ start: 0n, last: (1n << 48n) - 1n }], K4);
  t.equal(a.allocate(K4), 0x1000n);
  t.equal(a.allocate(K4, { align: 0x10000n }), 0x10000n, 'aligned block skips the unaligned start');
  t.equal(a.allocate(K4), 0x2000n, 'the skipped space stays free');
  const limit = 1n << 28n; // edu decodes 28 bits
  const big = a.allocate(0x800000n, { limit });
  t.ok(big + 0x800000n <= limit, 'the whole block lies below the limit');
  t.throws(() => a.allocate(limit, { limit }), code('ENOSPC'), 'no room below the limit');
  t.throws(() => a.allocate(K4, { align: 3n * K4 }), code('EINVAL'), 'alignment must be a power of two');
  t.throws(() => a.allocate(K4, { align: 1024n }), code('EINVAL'), 'alignment below the page size');
  t.throws(() => a.allocate(100n), code('EINVAL'), 'size must be a page multiple');
  t.throws(() => a.allocate(0n), code('EINVAL'));
});

t.test('an exact fit at the limit and at an aligned boundary', async (t) => {
  const a = new IovaAllocator([{ start: 0n, last: (1n << 28n) - 1n }], K4, 0n);
  t.equal(a.allocate(1n << 28n, { align: 1n << 28n, limit: 1n << 28n }), 0n, 'the whole range, aligned');
  t.throws(() => a.allocate(K4), code('ENOSPC'));
});

t.test('reserve: chosen IOVAs, overlaps are EEXIST', async (t) => {
  const a = new IovaAllocator([{ start: 0n, last: 0xfffffn }], K4);
  a.reserve(0x10000n, 4n * K4);
  t.throws(() => a.reserve(0x12000n, 4n * K4), code('EEXIST'));
  t.throws(() => a.reserve(0x0f000n, 2n * K4), code('EEXIST'));
  t.throws(() => a.reserve(0x10800n, K4), code('EINVAL'), 'unaligned');
  t.throws(() => a.reserve(0x100000n, K4), code('EINVAL'), 'past the end');
  a.reserve(0n, K4);
  t.pass('an explicit IOVA 0 is allowed: only allocate avoids it');
});

t.test('release coalesces with both neighbours', async (t) => {
  const a = new IovaAllocator([{ start: 0n, last: 0xffffn }], K4);
  const x = a.allocate(K4);
  const y = a.allocate(K4);
  const z = a.allocate(K4);
  a.release(x, K4);
  a.release(z, K4);
  a.release(y, K4);
  t.equal(a.freeBytes(), 0x10000n);
  t.equal(a.allocate(0xf000n), 0x1000n, 'one merged block');
  t.throws(() => a.release(0n, K4), code('EINVAL'), 'releasing free space is caught');
  a.release(0x3000n, K4);
  t.throws(() => a.release(0x2000n, 2n * K4), code('EINVAL'), 'a release overlapping free space is caught');
});

t.test('setRanges rebuilds the free space around allocations', async (t) => {
  const a = new IovaAllocator([{ start: 0n, last: 0xfffffn }], K4);
  const x = a.allocate(K4);
  const y = a.allocate(4n * K4);
  a.setRanges(
    [{ start: 0n, last: 0x7ffffn }],
    [
      { iova: x, size: K4 },
      { iova: y, size: 4n * K4 },
    ],
  );
  t.equal(a.freeBytes(), 0x80000n - 5n * K4);
  t.throws(() => a.reserve(x, K4), code('EEXIST'));
  t.equal(a.allocate(K4), 0x6000n);
});

t.test('many blocks: random allocate/release keeps the books exact', async (t) => {
  const total = 1n << 32n;
  const a = new IovaAllocator([{ start: 0n, last: total - 1n }], K4, 0n);
  let seed = 12345;
  const rand = (n: number) => {
    seed = (seed * 1103515245 + 12345) & 0x7fffffff;
    return seed % n;
  };
  const live: { iova: bigint; size: bigint }[] = [];
  let used = 0n;
  for (let i = 0; i < 5000; i++) {
    if (live.length > 0 && rand(3) === 0) {
      const [b] = live.splice(rand(live.length), 1);
      a.release(b!.iova, b!.size);
      used -= b!.size;
    } else {
      const size = BigInt(1 + rand(16)) * K4;
      const align = 1n << BigInt(12 + rand(5));
      const iova = a.allocate(size, { align });
      if (iova % align !== 0n) t.fail(`misaligned ${iova}`);
      live.push({ iova, size });
      used += size;
    }
  }
  t.equal(a.freeBytes(), total - used, 'free + used = total');
  live.sort((x, y) => (x.iova < y.iova ? -1 : 1));
  for (let i = 1; i < live.length; i++) {
    if (live[i - 1]!.iova + live[i - 1]!.size > live[i]!.iova) t.fail('overlapping allocations');
  }
  t.pass('no overlaps');
});

t.test('cost grows logarithmically', async (t) => {
  // Fragment the space into n free holes, then time allocations that must
  // find the single large hole at the end.
  const time = (n: number): number => {
    const a = new IovaAllocator([{ start: 0n, last: (1n << 40n) - 1n }], K4, 0n);
    for (let i = 0; i < n; i++) a.allocate(2n * K4);
    for (let i = 0; i < n; i++) a.release(BigInt(i) * 2n * K4, K4); // n one-page holes
    const start = process.hrtime.bigint();
    for (let i = 0; i < 2000; i++) a.release(a.allocate(4n * K4), 4n * K4);
    return Number(process.hrtime.bigint() - start);
  };
  time(1000); // warm up
  const small = time(1000);
  const large = time(64000);
  t.ok(large < small * 8, `64x more holes costs ${(large / small).toFixed(2)}x (linear would be ~64x)`);
});

t.test('the books match a page-by-page model: allocate, reserve and release around the floor', async (t) => {
  // 64 pages in two ranges with a hole, the default floor (page 1): the
  // allocator changes free intervals in place and keeps them split at the
  // floor; every answer must still be what a plain page map gives.
  const PAGES = 64;
  const hole = [40, 41];
  const a = new IovaAllocator(
    [
      { start: 0n, last: 40n * K4 - 1n },
      { start: 42n * K4, last: BigInt(PAGES) * K4 - 1n },
    ],
    K4,
  );
  const used = Array.from({ length: PAGES }, (_, p) => hole.includes(p));
  const modelAllocate = (pages: number, alignPages: number, limitPages: number): number | null => {
    for (let p = 1; p + pages <= Math.min(PAGES, limitPages); p += 1) {
      if (p % alignPages !== 0) continue;
      if (used.slice(p, p + pages).every((u) => !u)) return p;
    }
    return null;
  };
  let seed = 4242;
  const rand = (n: number) => {
    seed = (seed * 1103515245 + 12345) & 0x7fffffff;
    return seed % n;
  };
  const live: { page: number; pages: number }[] = [];
  for (let i = 0; i < 4000; i++) {
    const op = rand(4);
    if (op === 0 && live.length > 0) {
      const [b] = live.splice(rand(live.length), 1);
      a.release(BigInt(b!.page) * K4, BigInt(b!.pages) * K4);
      for (let p = b!.page; p < b!.page + b!.pages; p++) used[p] = false;
    } else if (op === 1) {
      // A chosen IOVA, page 0 included (only allocate avoids it).
      const page = rand(PAGES);
      const pages = 1 + rand(3);
      const free = page + pages <= PAGES && used.slice(page, page + pages).every((u) => !u);
      const inRanges = page + pages <= PAGES && !hole.some((h) => h >= page && h < page + pages);
      if (free) {
        a.reserve(BigInt(page) * K4, BigInt(pages) * K4);
        for (let p = page; p < page + pages; p++) used[p] = true;
        live.push({ page, pages });
      } else {
        t.throws(() => a.reserve(BigInt(page) * K4, BigInt(pages) * K4), code(inRanges ? 'EEXIST' : 'EINVAL'));
      }
    } else {
      const pages = 1 + rand(4);
      const alignPages = 1 << rand(3);
      const limitPages = rand(2) === 0 ? PAGES : 8 + rand(PAGES - 8);
      const want = modelAllocate(pages, alignPages, limitPages);
      const opts = { align: BigInt(alignPages) * K4, limit: BigInt(limitPages) * K4 };
      if (want === null) {
        t.throws(() => a.allocate(BigInt(pages) * K4, opts), code('ENOSPC'));
        continue;
      }
      const got = a.allocate(BigInt(pages) * K4, opts);
      if (got !== BigInt(want) * K4) {
        t.fail(`step ${i}: allocate(${pages} pages) gave page ${got / K4}, the model says ${want}`);
        return;
      }
      for (let p = want; p < want + pages; p++) used[p] = true;
      live.push({ page: want, pages });
    }
    const free = BigInt(used.filter((u) => !u).length) * K4;
    if (a.freeBytes() !== free) {
      t.fail(`step ${i}: ${a.freeBytes()} bytes free, the model says ${free}`);
      return;
    }
  }
  t.pass('4000 random steps agree with the model');
  // Releasing a block that is partly free is refused whole: nothing changes.
  a.setRanges([{ start: 0n, last: 8n * K4 - 1n }], []);
  a.reserve(0n, 2n * K4);
  t.equal(a.freeBytes(), 6n * K4, 'a reservation across the floor takes both sides of it');
  a.release(0n, K4);
  t.throws(() => a.release(0n, 2n * K4), code('EINVAL'), 'page 0 is already free');
  t.equal(a.freeBytes(), 7n * K4, 'the failed release freed nothing');
  a.release(K4, K4);
  t.equal(a.allocate(7n * K4), K4, 'everything above the floor is one block again');
});
