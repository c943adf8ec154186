// An IOMMU with many usable IOVA ranges: each reserved region (the fake's
// `iommu.reserved` option) cuts one more hole. IOMMU_IOAS_IOVA_RANGES writes
// the ranges through a user pointer into an array the caller sizes; when it
// is too small the kernel answers EMSGSIZE with num_iovas set to the count
// (iommufd_ioas_iova_ranges), and the library asks again with that much room.
// Its first array is one page: 4096 / 16 = 256 ranges. Whatever the count,
// the container's allocator must hand out IOVAs only inside the ranges.
import t, { type Test } from 'tap';
import { iommu_iova_range } from '../../lib/uapi/iommufd.js';
import type { IovaRange } from '../../lib/core/iova-allocator.js';
import type { DmaBuffer } from '../../lib/core/dma.js';
import type { FakeKernelOptions, FakeMode } from '../../lib/testing/index.js';
import { EDU, NO_LEAKS, enableBusMaster, machine, vfioErrorOf } from './harness.js';

const PAGE = 4096n;
/** Ranges the library's first IOMMU_IOAS_IOVA_RANGES has room for. */
const FIRST_ROOM = Number(PAGE) / iommu_iova_range.size;
const APERTURE_LAST = (1n << 48n) - 1n;
const MSI = { start: 0xfee00000n, end: 0xfeefffffn };
/** Where the holes start, and their period: each hole is one page, each range between two holes 15 pages. */
const HOLES_FROM = 0x100000n;
const PERIOD = 0x10000n;

/** `n` one-page holes and the MSI window: n + 1 reserved regions, so n + 2 ranges. */
function holes(n: number): { start: bigint; end: bigint }[] {
  const out = [];
  for (let i = 0n; i < BigInt(n); i++) out.push({ start: HOLES_FROM + i * PERIOD, end: HOLES_FROM + i * PERIOD + PAGE - 1n });
  return [...out, MSI];
}

/** The usable ranges the kernel must report: the aperture minus the reserved regions. */
function expectedRanges(reserved: readonly { start: bigint; end: bigint }[]): IovaRange[] {
  const out: IovaRange[] = [];
  let at = 0n;
  for (const r of [...reserved].sort((a, b) => (a.start < b.start ? -1 : 1))) {
    if (r.start > at) out.push({ start: at, last: r.start - 1n });
    at = r.end + 1n;
  }
  out.push({ start: at, last: APERTURE_LAST });
  return out;
}

function manyRanges(
  mode: FakeMode,
  holeCount: number,
  extra: Omit<FakeKernelOptions, 'mode'> = {},
): ReturnType<typeof machine> & { reserved: { start: bigint; end: bigint }[] } {
  const reserved = holes(holeCount);
  return { ...machine(mode, { iommu: { reserved }, ...extra }), reserved };
}

t.test('cdev: EMSGSIZE with the count, then a query with room for all of them', async (t) => {
  // 254 holes + MSI: 256 ranges fill the first array exactly; one hole more does not fit.
  for (const holeCount of [FIRST_ROOM - 2, FIRST_ROOM - 1, 1000]) {
    const { kernel, vfio, reserved } = manyRanges('cdev', holeCount, { log: true });
    const dev = vfio.openDevice(EDU);
    const from = kernel.log.length;
    const info = dev.container.iommuInfo();
    const want = expectedRanges(reserved);
    t.equal(want.length, holeCount + 2);
    t.same(info.ranges, want, `${want.length} ranges: every one reported, in order`);
    const queries = kernel.log.slice(from).filter((r) => r.requestName === 'IOMMU_IOAS_IOVA_RANGES');
    if (want.length <= FIRST_ROOM) {
      t.same(
        queries.map((q) => q.error ?? 'ok'),
        ['ok'],
        `${want.length} ranges fit the first query`,
      );
    } else {
      t.same(
        queries.map((q) => q.error ?? 'ok'),
        ['EMSGSIZE', 'ok'],
        `${want.length} ranges: EMSGSIZE, then the retry`,
      );
    }
    // The retry's own array is unmapped at once; only the result page stays.
    const before = kernel.leaks();
    t.same(dev.container.iommuInfo().ranges, want, 'asked again: the same answer');
    t.same(kernel.leaks(), before, 'a second query leaves nothing more behind');
    dev.release();
    vfio.close();
    t.same(kernel.leaks(), NO_LEAKS);
    kernel.dispose();
  }
});

/** Asserts each buffer's [iova, iova + size) lies inside one range and no two overlap. */
function checkPlacement(t: Test, bufs: readonly DmaBuffer[], ranges: readonly IovaRange[], what: string): void {
  const spans = bufs.map((b) => ({ start: b.iova, last: b.iova + BigInt(b.size) - 1n })).sort((a, b) => (a.start < b.start ? -1 : 1));
  const outside = spans.filter((s) => !ranges.some((r) => s.start >= r.start && s.last <= r.last));
  t.same(
    outside.map((s) => `0x${s.start.toString(16)}-0x${s.last.toString(16)}`),
    [],
    `${what}: all ${spans.length} buffers inside a range`,
  );
  const overlapping = spans.filter((s, i) => i > 0 && s.start <= spans[i - 1]!.last);
  t.equal(overlapping.length, 0, `${what}: no two buffers overlap`);
}

for (const mode of ['cdev', 'group'] as const) {
  t.test(`${mode}: the allocator hands out no IOVA in a hole, whatever the size, alignment and limit`, async (t) => {
    const holeCount = 300;
    const { kernel, vfio, reserved } = manyRanges(mode, holeCount);
    t.teardown(() => kernel.dispose());
    const dev = vfio.openDevice(EDU);
    const c = dev.container;
    const ranges = expectedRanges(reserved);
    t.same(c.iommuInfo().ranges, ranges, `${ranges.length} ranges read`);
    /** The end of the last hole: above it one range runs to the MSI window. */
    const holedTop = HOLES_FROM + BigInt(holeCount - 1) * PERIOD + PAGE;
    const bufs: DmaBuffer[] = [];
    // Below the first hole: 255 usable pages (IOVA 0 is never handed out).
    // 3-page buffers then fill five to a 15-page range; 15-page ones fit a
    // range exactly; 16-page ones fit none between holes.
    for (let i = 0; i < 200; i++) bufs.push(c.allocDma(3 * 4096));
    checkPlacement(t, bufs, ranges, '3-page buffers');
    t.ok(
      bufs.some((b) => b.iova > HOLES_FROM),
      'they spilled past the first hole',
    );
    const exact = [];
    for (let i = 0; i < 20; i++) exact.push(c.allocDma(15 * 4096));
    checkPlacement(t, exact, ranges, '15-page buffers (one range each)');
    t.ok(
      exact.every((b) => (b.iova - HOLES_FROM) % PERIOD === PAGE),
      'each fills a range between two holes, from its first page',
    );
    const big = c.allocDma(16 * 4096);
    t.ok(big.iova >= holedTop, `a 16-page buffer fits only above the holes (0x${big.iova.toString(16)})`);
    // 64 KiB alignment: every aligned address between the holes is a hole.
    const aligned = c.allocDma(4096, { align: PERIOD });
    t.ok(
      aligned.iova % PERIOD === 0n && (aligned.iova < HOLES_FROM || aligned.iova >= holedTop),
      'an aligned buffer never lands on a hole',
    );
    // A limit that ends inside the holed span: what is left there, or ENOSPC.
    const limited: DmaBuffer[] = [];
    const limit = HOLES_FROM + 100n * PERIOD;
    for (;;) {
      const err = vfioErrorOf(() => limited.push(c.allocDma(2 * 4096, { dmaLimit: limit })));
      if (err === 'did not throw') continue;
      t.match(err, { code: 'ENOSPC' }, 'ENOSPC once the ranges below the limit are full');
      break;
    }
    t.ok(limited.length > 0 && limited.every((b) => b.iova + BigInt(b.size) <= limit), `${limited.length} buffers below the limit`);
    const all = [...bufs, ...exact, big, aligned, ...limited];
    checkPlacement(t, all, ranges, 'every buffer');
    // A chosen IOVA in a hole is refused before the kernel is asked.
    const probe = exact[0]!;
    probe.unmap();
    const hole = HOLES_FROM + 7n * PERIOD;
    const syscallsBefore = kernel.syscalls;
    t.match(
      vfioErrorOf(() => probe.map({ iova: hole })),
      { code: 'EINVAL', message: /outside the IOMMU's IOVA ranges/ },
      'in a hole: EINVAL',
    );
    t.match(
      vfioErrorOf(() => probe.map({ iova: hole - PAGE })),
      { code: 'EINVAL' },
      'running into a hole: EINVAL',
    );
    t.equal(kernel.syscalls, syscallsBefore, 'no system call for either');
    probe.map();
    t.ok(
      ranges.some((r) => probe.iova >= r.start && probe.iova + BigInt(probe.size) - 1n <= r.last),
      'mapped again inside a range',
    );
    // The device reaches every buffer at its IOVA.
    enableBusMaster(kernel, EDU);
    const d = kernel.device(EDU);
    for (const b of all) {
      b.bytes[b.size - 1] = 0x5a;
      if (d.dmaRead(b.iova + BigInt(b.size - 1), 1)[0] !== 0x5a) t.fail(`buffer at 0x${b.iova.toString(16)} is not mapped there`);
    }
    for (const b of all) b.free();
    dev.release();
    vfio.close();
    t.same(kernel.leaks(), NO_LEAKS);
  });
}

t.test('cdev: every system call of a first allocation that needs the retry can fail cleanly', async (t) => {
  let failures = 0;
  for (let n = 1; n < 200; n++) {
    const { kernel, vfio } = manyRanges('cdev', 1000);
    const dev = vfio.openDevice(EDU);
    const before = kernel.leaks();
    const start = kernel.syscalls;
    // An injected munmap failure leaves its mapping, as the real call would.
    kernel.failNth(n, 'ENOMEM', { except: ['munmap'] });
    const err = vfioErrorOf(() => dev.container.allocDma(4096));
    kernel.clearFaults();
    if (err === 'did not throw') {
      const made = kernel.syscalls - start;
      vfio.close();
      t.same(kernel.leaks(), NO_LEAKS, `call #${n} (an excepted munmap, or past the end): a clean run`);
      kernel.dispose();
      if (n <= made) continue;
      // mmap + mlock of the buffer, mmap of the result page, the first
      // query, mmap of the retry's array, the second query, the map ioctl.
      t.equal(failures, 7, `the ${made} calls: all ${failures} that can fail were handled`);
      break;
    }
    failures++;
    t.match(err, { code: 'ENOMEM' }, `call #${n}: the injected error`);
    t.same(kernel.leaks(), before, `call #${n}: nothing left behind`);
    vfio.close();
    t.same(kernel.leaks(), NO_LEAKS, `call #${n}: closing frees everything`);
    kernel.dispose();
  }
});
