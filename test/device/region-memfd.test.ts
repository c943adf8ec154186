// The Region accessor on real memory: a memfd stands in for a device fd
// (mmap and pread/pwrite behave the same on both), through the real libc
// layer. This checks what the fake kernel cannot: that the typed arrays sit
// on a real mapping, that width/bounds/alignment checks happen before any
// access, and that after close nothing reaches the unmapped pages (a stray
// access would kill this process with SIGSEGV, not fail a test).
import t from 'tap';
import { koffiSys as sys } from '../../lib/libc/koffi-sys.js';
import { MFD_CLOEXEC } from '../../lib/libc/sys.js';
import { VfioError } from '../../lib/base/errors.js';
import type { DeviceHandle } from '../../lib/device/handle.js';
import { openRegion } from '../../lib/device/region.js';
import type { RegionInfo } from '../../lib/device/region-info.js';
import type { Region } from '../../lib/device/region.js';
import { VFIO_REGION_INFO_FLAG_MMAP, VFIO_REGION_INFO_FLAG_READ, VFIO_REGION_INFO_FLAG_WRITE } from '../../lib/uapi/vfio.js';

const PAGE = sys.pageSize();

function memfdDevice(t: { teardown(fn: () => void): void }, bytes: number): DeviceHandle & { close(): void } {
  const fd = sys.memfdCreate('device-io-test', MFD_CLOEXEC);
  sys.ftruncate(fd, BigInt(bytes));
  let closed = false;
  const h = {
    sys,
    fd,
    address: '0000:00:00.0',
    mode: 'cdev' as const,
    get closed() {
      return closed;
    },
    assertOpen() {
      if (closed) throw new VfioError({ code: 'ECLOSED', detail: 'device is closed' });
    },
    info() {
      return { flags: 0, numRegions: 1, numIrqs: 0 };
    },
    groupFd() {
      return null;
    },
    close() {
      if (!closed) {
        closed = true;
        sys.close(fd);
      }
    },
  };
  t.teardown(() => h.close());
  return h;
}

function info(size: number, extra: Partial<RegionInfo> = {}): RegionInfo {
  return {
    index: 0,
    name: 'bar0',
    size,
    fdOffset: 0n,
    flags: VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE | VFIO_REGION_INFO_FLAG_MMAP,
    readable: true,
    writable: true,
    mappable: true,
    sparseAreas: null,
    type: null,
    msixMappable: false,
    capabilities: [],
    ...extra,
  };
}

t.test('mmap path: widths, little-endian, bounds and alignment', async (t) => {
  const h = memfdDevice(t, 2 * PAGE);
  const r = openRegion(h, info(2 * PAGE));
  t.teardown(() => r.close());
  t.same(r.mappedAreas, [{ offset: 0, size: 2 * PAGE }]);
  r.write32(0x10, 0xdeadbeef);
  t.equal(r.read8(0x10), 0xef);
  t.equal(r.read16(0x12), 0xdead);
  t.equal(r.read32(0x10), 0xdeadbeef);
  r.write64(0x18, 0x0123456789abcdefn);
  t.equal(r.read64(0x18), 0x0123456789abcdefn);
  t.equal(r.read32(0x1c), 0x01234567);
  // The write went to the file: pread sees it.
  const back = Buffer.alloc(4);
  sys.pread(h.fd, back, 0x10n);
  t.equal(back.readUInt32LE(0), 0xdeadbeef);

  t.throws(() => r.read32(2 * PAGE), { code: 'EINVAL' }, 'one past the end');
  t.throws(() => r.read32(2 * PAGE - 2), { code: 'EINVAL' }, 'straddles the end');
  t.throws(() => r.read32(-4), { code: 'EINVAL' });
  t.throws(() => r.read32(0.5), { code: 'EINVAL' });
  t.throws(() => r.read16(1), { code: 'EINVAL', message: /2-byte aligned/ });
  t.throws(() => r.read64(4), { code: 'EINVAL', message: /8-byte aligned/ });
  t.throws(() => r.write8(0, 256), { code: 'EINVAL', message: /value must be an integer from 0 to 255, got 256/ });
  t.throws(() => r.write32(0, -1), { code: 'EINVAL' });
  t.throws(() => r.write64(0, 1n << 64n), { code: 'EINVAL' });
  t.equal(r.read32(0x10), 0xdeadbeef, 'rejected writes wrote nothing');
});

t.test('bulk copies: unaligned head and tail, round trip', async (t) => {
  const h = memfdDevice(t, PAGE);
  const r = openRegion(h, info(PAGE));
  t.teardown(() => r.close());
  const src = Uint8Array.from({ length: 37 }, (_, i) => i + 1);
  r.copyIn(3, src);
  t.same([...r.copyOut(3, 37)], [...src]);
  t.equal(r.read8(2), 0, 'byte before untouched');
  t.equal(r.read8(40), 0, 'byte after untouched');
  const into = new Uint8Array(8);
  r.copyOut(4, into);
  t.same([...into], [2, 3, 4, 5, 6, 7, 8, 9]);
  t.throws(() => r.copyIn(PAGE - 4, new Uint8Array(8)), { code: 'EINVAL' });
  t.throws(() => r.copyOut(0, PAGE + 1), { code: 'EINVAL' });
});

t.test('sub-range and pread/pwrite path behave the same', async (t) => {
  const h = memfdDevice(t, 4 * PAGE);
  const mapped = openRegion(h, info(4 * PAGE), { offset: PAGE + 8, size: 64 });
  const rw = openRegion(h, info(4 * PAGE), { offset: PAGE + 8, size: 64, noMmap: true });
  t.teardown(() => {
    mapped.close();
    rw.close();
  });
  t.same(rw.mappedAreas, []);
  t.equal(mapped.size, 64);
  mapped.write32(0, 0x11223344);
  t.equal(rw.read32(0), 0x11223344);
  rw.write64(8, 0xfeedfacecafebeefn);
  t.equal(mapped.read64(8), 0xfeedfacecafebeefn);
  rw.write16(16, 0xabcd);
  t.equal(mapped.read16(16), 0xabcd);
  rw.copyIn(20, Uint8Array.of(9, 8, 7, 6, 5));
  t.same([...mapped.copyOut(20, 5)], [9, 8, 7, 6, 5]);
  t.throws(() => rw.read32(64), { code: 'EINVAL' });
  t.throws(() => openRegion(h, info(4 * PAGE), { offset: 4 }), { code: 'EINVAL' }, 'range start must be 8-aligned');
  t.throws(() => openRegion(h, info(4 * PAGE), { offset: 0, size: 4 * PAGE + 1 }), { code: 'EINVAL' });
});

t.test('excluded and sparse areas are reached through pread/pwrite', async (t) => {
  const h = memfdDevice(t, 4 * PAGE);
  const sparse = openRegion(
    h,
    info(4 * PAGE, {
      sparseAreas: [
        { offset: 0, size: PAGE },
        { offset: 3 * PAGE, size: PAGE },
      ],
    }),
  );
  t.teardown(() => sparse.close());
  t.same(sparse.mappedAreas, [
    { offset: 0, size: PAGE },
    { offset: 3 * PAGE, size: PAGE },
  ]);
  const excl = openRegion(h, info(4 * PAGE), { exclude: [{ offset: PAGE + 0x100, size: 0x40 }] });
  t.teardown(() => excl.close());
  t.same(
    excl.mappedAreas,
    [
      { offset: 0, size: PAGE },
      { offset: 2 * PAGE, size: 2 * PAGE },
    ],
    'the whole page holding the table stays unmapped',
  );
  excl.write32(PAGE + 0x100, 0xcafe);
  t.equal(sparse.read32(PAGE + 0x100), 0xcafe);
  // A copy that crosses mapped and unmapped pieces.
  const src = Uint8Array.from({ length: 24 }, (_, i) => 0xa0 + i);
  excl.copyIn(2 * PAGE - 12, src);
  t.same([...sparse.copyOut(2 * PAGE - 12, 24)], [...src]);
  t.throws(() => excl.views(PAGE, 8), { code: 'ENOTSUP' });
});

t.test('not mappable at all: every access is pread/pwrite', async (t) => {
  const h = memfdDevice(t, PAGE);
  const r = openRegion(h, info(PAGE, { mappable: false, writable: false, flags: VFIO_REGION_INFO_FLAG_READ }), {});
  t.teardown(() => r.close());
  t.same(r.mappedAreas, []);
  t.equal(r.read32(0), 0);
  t.throws(() => r.write32(0, 1), { code: 'EACCES' }, 'read-only region');
  t.throws(() => openRegion(h, info(0)), { code: 'ENOENT' });
});

t.test('views: typed arrays over the mapping', async (t) => {
  const h = memfdDevice(t, PAGE);
  const r = openRegion(h, info(PAGE));
  t.teardown(() => r.close());
  const sum = r.withViews(
    (v) => {
      for (let i = 0; i < 8; i++) v.u32[i] = i * 3;
      let s = 0;
      for (let i = 0; i < 8; i++) s += v.u32[i] as number;
      return s;
    },
    0x40,
    32,
  );
  t.equal(sum, 84);
  t.equal(r.read32(0x40 + 7 * 4), 21);
  t.throws(() => r.views(4, 8), { code: 'EINVAL' });
  t.throws(() => r.views(0, PAGE + 8), { code: 'EINVAL' });
});

t.test('after close every accessor is ECLOSED and nothing touches the pages', async (t) => {
  const h = memfdDevice(t, PAGE);
  const r = openRegion(h, info(PAGE));
  let unmapped = 0;
  const closing = openRegion(h, info(PAGE), {}, () => unmapped++);
  r.write32(0, 7);
  closing.close();
  closing.close();
  t.equal(unmapped, 1, 'onClose runs once');
  t.ok(closing.closed);
  for (const call of [
    () => closing.read8(0),
    () => closing.read16(0),
    () => closing.read32(0),
    () => closing.read64(0),
    () => closing.write8(0, 1),
    () => closing.write16(0, 1),
    () => closing.write32(0, 1),
    () => closing.write64(0, 1n),
    () => closing.copyIn(0, new Uint8Array(4)),
    () => closing.copyOut(0, 4),
    () => closing.views(),
    () => closing.withViews(() => 0),
  ]) {
    t.throws(call, { name: 'VfioError', code: 'ECLOSED' });
  }
  t.equal(r.read32(0), 7, 'another mapping of the same file is unaffected');
  r.close();
  // The pread/pwrite path checks the device too.
  const rw = openRegion(h, info(PAGE), { noMmap: true });
  h.close();
  t.throws(() => rw.read32(0), { code: 'ECLOSED' });
  t.throws(() => openRegion(h, info(PAGE)), { code: 'ECLOSED' });
});

// --- the accessors' fast path (views over the range's leading mapping) ---------

const WIDTHS = [
  { bytes: 1, read: (r: Region, o: number) => r.read8(o), write: (r: Region, o: number, v: number) => r.write8(o, v), max: 0xff },
  { bytes: 2, read: (r: Region, o: number) => r.read16(o), write: (r: Region, o: number, v: number) => r.write16(o, v), max: 0xffff },
  { bytes: 4, read: (r: Region, o: number) => r.read32(o), write: (r: Region, o: number, v: number) => r.write32(o, v), max: 0xffffffff },
  {
    bytes: 8,
    read: (r: Region, o: number) => Number(r.read64(o)),
    write: (r: Region, o: number, v: number) => r.write64(o, BigInt(v)),
    max: Number.MAX_SAFE_INTEGER,
  },
] as const;

/** The file's bytes at `offset` (what a store really reached), through pread. */
function fileBytes(h: DeviceHandle, offset: number, n: number): number[] {
  const b = Buffer.alloc(n);
  sys.pread(h.fd, b, BigInt(offset));
  return [...b];
}

t.test('fast path, every width: first and last offsets, exactly the bytes of the access', async (t) => {
  const h = memfdDevice(t, PAGE);
  const r = openRegion(h, info(PAGE));
  t.teardown(() => r.close());
  for (const w of WIDTHS) {
    for (const o of [0, w.bytes, PAGE - w.bytes]) {
      const before = fileBytes(h, 0, PAGE);
      w.write(r, o, w.max);
      t.equal(w.read(r, o), w.max, `${w.bytes * 8}-bit at ${o}`);
      const after = fileBytes(h, 0, PAGE);
      const changed = after.flatMap((b, i) => (b !== before[i] ? [i] : []));
      t.ok(
        changed.every((i) => i >= o && i < o + w.bytes) && changed.length > 0,
        `${w.bytes * 8}-bit store at ${o} touched only its bytes`,
      );
      w.write(r, o, 0);
    }
  }
  r.write64(8, 0xffffffffffffffffn);
  t.equal(r.read64(8), 0xffffffffffffffffn, 'the largest 64-bit value');
  r.write64(8, 7); // a number: the general path
  t.equal(r.read64(8), 7n);
});

t.test('fast path, every width: offsets #at would refuse are EINVAL, and touch nothing', async (t) => {
  const h = memfdDevice(t, 2 * PAGE);
  const r = openRegion(h, info(2 * PAGE));
  t.teardown(() => r.close());
  r.write32(4, 0x11223344);
  const snapshot = fileBytes(h, 0, 2 * PAGE);
  let valueOfCalls = 0;
  const sneaky = { valueOf: () => (valueOfCalls++, 4) };
  for (const w of WIDTHS) {
    const bad: unknown[] = [
      2 * PAGE,
      2 * PAGE - w.bytes + (w.bytes > 1 ? w.bytes / 2 : 1),
      -w.bytes,
      -0.5,
      0.5,
      NaN,
      Infinity,
      -Infinity,
      2 ** 32 + w.bytes,
      2 ** 31,
      2 ** 53,
      '4',
      4n,
      null,
      undefined,
      sneaky,
    ];
    if (w.bytes > 1) bad.push(1, w.bytes + 1, PAGE - 1);
    for (const o of bad) {
      t.throws(() => w.read(r, o as number), { name: 'VfioError', code: 'EINVAL' }, `read${w.bytes * 8}(${String(o)})`);
      t.throws(() => w.write(r, o as number, 1), { name: 'VfioError', code: 'EINVAL' }, `write${w.bytes * 8}(${String(o)})`);
    }
  }
  t.equal(valueOfCalls, 0, 'the checks never convert an offset');
  t.same(fileBytes(h, 0, 2 * PAGE), snapshot, 'nothing was written');
  t.equal(r.read32(4), 0x11223344, 'in-range accesses still work after refused ones');
  t.equal(r.read32(-0), 0, '-0 is offset 0');
});

t.test('fast path, every width: values that do not fit are EINVAL, never truncated', async (t) => {
  const h = memfdDevice(t, PAGE);
  const r = openRegion(h, info(PAGE));
  t.teardown(() => r.close());
  let valueOfCalls = 0;
  const sneaky = { valueOf: () => (valueOfCalls++, 1) };
  const cases: [string, () => void][] = [];
  for (const [name, write, max] of [
    ['write8', r.write8.bind(r), 0xff],
    ['write16', r.write16.bind(r), 0xffff],
    ['write32', r.write32.bind(r), 0xffffffff],
  ] as const) {
    for (const v of [max + 1, -1, 0.5, NaN, Infinity, 2 ** 32, '1', 1n, null, sneaky])
      cases.push([`${name}(${String(v)})`, () => write(0, v as number)]);
  }
  for (const v of [-1n, 1n << 64n, -1, 0.5, 2 ** 53, '1', null, sneaky])
    cases.push([`write64(${String(v)})`, () => r.write64(0, v as bigint)]);
  for (const [name, call] of cases) t.throws(call, { name: 'VfioError', code: 'EINVAL' }, name);
  t.equal(valueOfCalls, 0, 'the checks never convert a value');
  t.same(fileBytes(h, 0, 8), [0, 0, 0, 0, 0, 0, 0, 0], 'nothing was written');
});

t.test('fast path and permissions: a read-only or write-only region', async (t) => {
  const h = memfdDevice(t, PAGE);
  sys.pwrite(h.fd, Buffer.from([1, 2, 3, 4, 5, 6, 7, 8]), 0n);
  const ro = openRegion(h, info(PAGE, { writable: false, flags: VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_MMAP }));
  t.teardown(() => ro.close());
  t.same(ro.mappedAreas, [{ offset: 0, size: PAGE }]);
  t.equal(ro.read8(1), 2);
  t.equal(ro.read16(2), 0x0403);
  t.equal(ro.read32(4), 0x08070605);
  t.equal(ro.read64(0), 0x0807060504030201n);
  for (const w of WIDTHS)
    t.throws(() => w.write(ro, 0, 0), { code: 'EACCES', message: /not writable/ }, `write${w.bytes * 8} on a read-only mapping`);
  t.same(fileBytes(h, 0, 8), [1, 2, 3, 4, 5, 6, 7, 8], 'the refused stores wrote nothing');
  const wo = openRegion(h, info(PAGE, { readable: false, flags: VFIO_REGION_INFO_FLAG_WRITE | VFIO_REGION_INFO_FLAG_MMAP }));
  t.teardown(() => wo.close());
  for (const w of WIDTHS)
    t.throws(() => w.read(wo, 0), { code: 'EACCES', message: /not readable/ }, `read${w.bytes * 8} on a write-only mapping`);
  wo.write32(8, 0xa5a5a5a5);
  wo.write8(12, 0x5a);
  t.same(fileBytes(h, 8, 5), [0xa5, 0xa5, 0xa5, 0xa5, 0x5a]);
});

t.test('fast path over the leading mapping only: the rest of the range takes the general path', async (t) => {
  const h = memfdDevice(t, 4 * PAGE);
  // Range [PAGE + 8, 4 * PAGE): the leading mapping starts 8 bytes into its page (bias 8),
  // the excluded page is pread/pwrite, the last page a second mapping.
  const r = openRegion(h, info(4 * PAGE), { offset: PAGE + 8, exclude: [{ offset: 2 * PAGE, size: 0x40 }] });
  t.teardown(() => r.close());
  t.same(r.mappedAreas, [
    { offset: 0, size: PAGE - 8 },
    { offset: 2 * PAGE - 8, size: PAGE },
  ]);
  for (const w of WIDTHS) {
    for (const o of [0, PAGE - 8 - w.bytes, PAGE - 8, 2 * PAGE - 8 - w.bytes, 2 * PAGE - 8, 3 * PAGE - 8 - w.bytes]) {
      w.write(r, o, w.max);
      const le = Array.from({ length: w.bytes }, (_, k) => Number((BigInt(w.max) >> BigInt(8 * k)) & 0xffn));
      t.same(fileBytes(h, PAGE + 8 + o, w.bytes), le, `${w.bytes * 8}-bit at range offset ${o} is file offset ${PAGE + 8 + o}`);
      t.equal(w.read(r, o), w.max);
      w.write(r, o, 0);
    }
    t.throws(() => w.read(r, 3 * PAGE - 8), { code: 'EINVAL' }, 'one past the end');
  }
  // A range ending inside its page: the mapping goes on to the page's end, the range does not.
  const small = openRegion(h, info(4 * PAGE), { offset: 8, size: 20 });
  t.teardown(() => small.close());
  for (const w of WIDTHS) {
    const last = Math.floor((20 - w.bytes) / w.bytes) * w.bytes;
    w.write(small, last, 1);
    t.equal(w.read(small, last), 1, `${w.bytes * 8}-bit at ${last}, the last that fits`);
    t.throws(() => w.read(small, last + w.bytes), { code: 'EINVAL', message: /outside/ });
    t.throws(() => w.write(small, last + w.bytes, 1), { code: 'EINVAL', message: /outside/ });
  }
  t.same(fileBytes(h, 28, 8), [0, 0, 0, 0, 0, 0, 0, 0], 'nothing past the range was written');
});

t.test('close guard holds in optimized code: a hot loop after close is ECLOSED, not SIGSEGV', async (t) => {
  const h = memfdDevice(t, PAGE);
  const r = openRegion(h, info(PAGE));
  // Loops the JIT optimizes (with the accessors inlined) before the close.
  const readAll = (region: Region, n: number): number => {
    let sum = 0;
    for (let i = 0; i < n; i++) sum = (sum + region.read8(i & 7) + region.read16(8) + region.read32(12) + Number(region.read64(16))) >>> 0;
    return sum;
  };
  const writeAll = (region: Region, n: number): void => {
    for (let i = 0; i < n; i++) {
      region.write8(i & 7, i & 0xff);
      region.write16(8, i & 0xffff);
      region.write32(12, i >>> 0);
      region.write64(16, BigInt(i));
    }
  };
  for (let k = 0; k < 20; k++) {
    writeAll(r, 20000);
    readAll(r, 20000);
  }
  r.close();
  t.throws(() => readAll(r, 1), { code: 'ECLOSED' });
  t.throws(() => writeAll(r, 1), { code: 'ECLOSED' });
  for (const w of WIDTHS) {
    t.throws(() => w.read(r, 0), { code: 'ECLOSED' });
    t.throws(() => w.write(r, 0, 0), { code: 'ECLOSED' });
  }
  t.throws(() => r.write8(0, 256), { code: 'EINVAL' }, 'a bad value is still EINVAL first, as on the general path');
});
