// The Region accessor on real memory: a memfd stands in for a device fd
// (mmap and pread/pwrite behave the same on both), through the real libc
// layer. This checks what the fake kernel cannot: that the typed arrays sit
// on a real mapping, that width/bounds/alignment checks happen before any
// access, and that after close nothing reaches the unmapped pages (a stray
// access would kill this process with SIGSEGV, not fail a test).
import t from 'tap';
import { koffiSys as sys } from '../lib/libc/koffi-sys.js';
import { MFD_CLOEXEC } from '../lib/libc/sys.js';
import { VfioError } from '../lib/libc/errors.js';
import type { DeviceHandle } from '../lib/device-io/handle.js';
import { openRegion } from '../lib/device-io/region.js';
import type { RegionInfo } from '../lib/device-io/region-info.js';
import { VFIO_REGION_INFO_FLAG_MMAP, VFIO_REGION_INFO_FLAG_READ, VFIO_REGION_INFO_FLAG_WRITE } from '../lib/uapi/vfio.js';

const PAGE = sys.pageSize();

function memfdDevice(t: { teardown(fn: () => void): void }, bytes: number): DeviceHandle & { close(): void } {
  const fd = sys.memfdCreate('device-io-test', MFD_CLOEXEC);
  sys.ftruncate(fd, BigInt(bytes));
  let closed = false;
  const h = {
    sys, fd, address: '0000:00:00.0', mode: 'cdev' as const,
    get closed() { return closed; },
    assertOpen() { if (closed) throw new VfioError({ code: 'ECLOSED', detail: 'device is closed' }); },
    info() { return { flags: 0, numRegions: 1, numIrqs: 0 }; },
    groupFd() { return null; },
    close() { if (!closed) { closed = true; sys.close(fd); } },
  };
  t.teardown(() => h.close());
  return h;
}

function info(size: number, extra: Partial<RegionInfo> = {}): RegionInfo {
  return {
    index: 0, name: 'bar0', size, fdOffset: 0n,
    flags: VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE | VFIO_REGION_INFO_FLAG_MMAP,
    readable: true, writable: true, mappable: true, sparseAreas: null, type: null, msixMappable: false, capabilities: [],
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
  t.throws(() => r.write8(0, 256), { code: 'EINVAL', message: /does not fit 8 bits/ });
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
  t.teardown(() => { mapped.close(); rw.close(); });
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
  const sparse = openRegion(h, info(4 * PAGE, { sparseAreas: [{ offset: 0, size: PAGE }, { offset: 3 * PAGE, size: PAGE }] }));
  t.teardown(() => sparse.close());
  t.same(sparse.mappedAreas, [{ offset: 0, size: PAGE }, { offset: 3 * PAGE, size: PAGE }]);
  const excl = openRegion(h, info(4 * PAGE), { exclude: [{ offset: PAGE + 0x100, size: 0x40 }] });
  t.teardown(() => excl.close());
  t.same(excl.mappedAreas, [{ offset: 0, size: PAGE }, { offset: 2 * PAGE, size: 2 * PAGE }], 'the whole page holding the table stays unmapped');
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
  const sum = r.withViews((v) => {
    for (let i = 0; i < 8; i++) v.u32[i] = i * 3;
    let s = 0;
    for (let i = 0; i < 8; i++) s += v.u32[i] as number;
    return s;
  }, 0x40, 32);
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
    () => closing.read8(0), () => closing.read16(0), () => closing.read32(0), () => closing.read64(0),
    () => closing.write8(0, 1), () => closing.write16(0, 1), () => closing.write32(0, 1), () => closing.write64(0, 1n),
    () => closing.copyIn(0, new Uint8Array(4)), () => closing.copyOut(0, 4), () => closing.views(), () => closing.withViews(() => 0),
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
