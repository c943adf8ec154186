// Region info and BAR mapping on the fake kernel, in cdev and group mode.
import t from 'tap';
import { edu, EDU_ID, pciDevice } from '../../lib/testing/index.js';
import { rig } from './fixture.js';
import { until } from '../testing/harness.js';
import { COMMAND_IO_SPACE, COMMAND_MEMORY_SPACE, CFG_COMMAND } from '../../lib/device/pci-regs.js';
import { VFIO_REGION_INFO_CAP_MSIX_MAPPABLE, VFIO_REGION_INFO_CAP_TYPE, VFIO_REGION_TYPE_PCI_VENDOR_TYPE } from '../../lib/uapi/vfio.js';

const PAGE = 4096;

for (const mode of ['cdev', 'group'] as const) {
  t.test(`${mode}: region info for every index`, async (t) => {
    const r = rig({ mode, devices: [edu({ rom: { size: 2048 } })] });
    t.teardown(() => r.dispose());
    const { io } = r.open();
    const bar0 = io.regionInfo(0);
    t.match(bar0, { index: 0, name: 'bar0', size: 1 << 20, readable: true, writable: true, mappable: true, sparseAreas: null, type: null });
    t.equal(bar0.fdOffset, 0n);
    for (const i of [1, 2, 3, 4, 5]) t.match(io.regionInfo(i), { name: `bar${i}`, size: 0, flags: 0 });
    t.match(io.regionInfo(6), { name: 'rom', size: 2048, readable: true, writable: false, mappable: false });
    const cfg = io.regionInfo(7);
    t.match(cfg, { name: 'config', size: 256, readable: true, writable: true, mappable: false });
    t.equal(cfg.fdOffset, 7n << 40n);
    t.throws(() => io.regionInfo(8), { code: 'ENOENT', request: 'VFIO_DEVICE_GET_REGION_INFO', device: '0000:00:03.0' }, 'no VGA');
    t.throws(() => io.regionInfo(9), { code: 'EINVAL', message: /regions 0\.\.8/ });
    t.throws(() => io.regionInfo(-1), { code: 'EINVAL' });
    t.same(
      io.regions().map((x) => x.name),
      ['bar0', 'bar1', 'bar2', 'bar3', 'bar4', 'bar5', 'rom', 'config'],
    );
  });
}

t.test('capability chain: sparse areas, region type, MSI-X mappable', async (t) => {
  const dev = pciDevice({
    address: '0000:00:04.0',
    vendor: 0x8086,
    device: 0x1234,
    class: 0x020000,
    bars: [
      {
        index: 0,
        size: 4 * PAGE,
        sparse: [
          { offset: 0, size: PAGE },
          { offset: 2 * PAGE, size: 2 * PAGE },
        ],
      },
      { index: 2, size: 4 * PAGE, type: 'mem64' },
    ],
    irqs: { msix: 8, msixBar: 2 },
    regions: [{ type: (VFIO_REGION_TYPE_PCI_VENDOR_TYPE | 0x8086) >>> 0, subtype: 3, size: PAGE, mmap: true }],
  });
  const r = rig({ devices: [dev] });
  t.teardown(() => r.dispose());
  const { io } = r.open('0000:00:04.0');
  t.same(io.regionInfo(0).sparseAreas, [
    { offset: 0, size: PAGE },
    { offset: 2 * PAGE, size: 2 * PAGE },
  ]);
  const bar2 = io.regionInfo(2);
  t.equal(bar2.msixMappable, true);
  t.same(
    bar2.capabilities.map((c) => c.id),
    [VFIO_REGION_INFO_CAP_MSIX_MAPPABLE],
  );
  t.match(io.regionInfo(3), { size: 0 }, 'upper half of a 64-bit BAR');
  const special = io.regionInfo(9);
  t.match(special, { name: 'region9', size: PAGE, mappable: true, type: { subtype: 3, vendorId: 0x8086 } });
  t.same(
    special.capabilities.map((c) => c.id),
    [VFIO_REGION_INFO_CAP_TYPE],
  );
  // A device-specific region maps like any other.
  const reg = io.mapRegion(9);
  reg.write32(8, 0x5a5a5a5a);
  t.equal(reg.read32(8), 0x5a5a5a5a);
  t.same(reg.mappedAreas, [{ offset: 0, size: PAGE }]);
});

for (const mode of ['cdev', 'group'] as const) {
  t.test(`${mode}: mapBar on edu: the mapping is the device's memory`, async (t) => {
    const r = rig({ mode });
    t.teardown(() => r.dispose());
    const { io } = r.open();
    const bar = io.mapBar(0);
    t.equal(bar.size, 1 << 20);
    t.same(bar.mappedAreas, [{ offset: 0, size: 1 << 20 }]);
    t.equal(bar.read32(0), EDU_ID);
    // The store reaches the device: edu's liveness register answers its
    // inverse (at once on QEMU; the fake's model sees a store through the
    // mapping at its next tick).
    bar.write32(0x04, 0xfeedf00d);
    await until('the liveness answer', () => bar.read32(0x04) === ~0xfeedf00d >>> 0);
    t.pass('the device saw the store');
    bar.write64(0x80, 0x1234_5678_9abc_def0n);
    t.equal(bar.read64(0x80), 0x1234_5678_9abc_def0n, 'a 64-bit DMA register');
    t.same(r.kernel.leaks().mappings, 1);
    bar.close();
    t.same(r.kernel.leaks().mappings, 0);
  });
}

t.test('mapBar: errors for BARs that are not there', async (t) => {
  const r = rig();
  t.teardown(() => r.dispose());
  const { io } = r.open();
  t.throws(() => io.mapBar(1), { code: 'ENOENT', message: /BAR 1 is not implemented/ });
  t.throws(() => io.mapBar(6), { code: 'EINVAL', message: /0\.\.5/ });
  t.throws(() => io.mapBar(0.5), { code: 'EINVAL' });
  t.throws(() => io.mapBar(0, { offset: 1 << 20 }), { code: 'EINVAL' });
  t.throws(() => io.mapBar(0, { offset: 4, size: 8 }), { code: 'EINVAL', message: /multiple of 8/ });
  t.throws(() => io.mapBar(0, { offset: 0, size: (1 << 20) + 8 }), { code: 'EINVAL' });
  t.same(r.kernel.leaks().mappings, 0);
});

/** A device whose BAR 0 is plain memory: stores read back at every width (unlike edu's registers). */
function memoryDevice() {
  return pciDevice({ address: '0000:00:05.0', vendor: 0x1af4, device: 0x1005, class: 0x058000, bars: [{ index: 0, size: 1 << 20 }] });
}

t.test('widths, bounds and alignment on a mapped BAR', async (t) => {
  const r = rig({ devices: [memoryDevice()] });
  t.teardown(() => r.dispose());
  const { io } = r.open('0000:00:05.0');
  const bar = io.mapBar(0, { offset: 0x40000, size: 0x1000 });
  t.equal(bar.offset, 0x40000);
  bar.write8(0, 0x11);
  bar.write8(1, 0x22);
  bar.write16(2, 0x4433);
  t.equal(bar.read32(0), 0x44332211);
  t.throws(() => bar.read32(0x1000), { code: 'EINVAL', message: /outside/ });
  t.throws(() => bar.read64(0xffc), { code: 'EINVAL' });
  t.throws(() => bar.write16(3, 0), { code: 'EINVAL', message: /aligned/ });
  t.throws(() => bar.read32(6), { code: 'EINVAL', message: /aligned/ });
  t.throws(() => bar.read64(0xc), { code: 'EINVAL', message: /aligned/ });
  t.throws(() => bar.write16(0, 0x10000), { code: 'EINVAL' });
  const src = Uint8Array.from({ length: 30 }, (_, i) => 255 - i);
  bar.copyIn(1, src);
  t.same([...bar.copyOut(1, 30)], [...src]);
  t.throws(() => bar.copyIn(0xff0, new Uint8Array(17)), { code: 'EINVAL' });
});

t.test('read/write with the width chosen at run time: the fixed-width accessors, their errors; hexdump at that width', async (t) => {
  const r = rig({ devices: [memoryDevice()], log: true });
  t.teardown(() => r.dispose());
  const { io } = r.open('0000:00:05.0');
  for (const noMmap of [false, true]) {
    const bar = io.mapBar(0, { offset: 0x40000, size: 0x1000, noMmap });
    const how = noMmap ? 'pread/pwrite' : 'mapped';
    bar.write(0, 8, 0x11);
    bar.write(1, 8, 0x22n);
    bar.write(2, 16, 0x4433);
    t.equal(bar.read32(0), 0x44332211, `${how}: 8- and 16-bit stores`);
    bar.write(4, 32, 0xddccbbaan);
    bar.write(8, 64, 0x0123456789abcdefn);
    t.equal(bar.read(0, 8), 0x11n);
    t.equal(bar.read(2, 16), 0x4433n);
    t.equal(bar.read(4, 32), 0xddccbbaan);
    t.equal(bar.read(8, 64), 0x0123456789abcdefn, `${how}: every width reads back`);
    bar.write(8, 64, 7);
    t.equal(bar.read64(8), 7n, 'a number is taken at 64 bits too');
    // The errors of the fixed-width accessors, word for word.
    t.throws(() => bar.read(6, 32), { code: 'EINVAL', message: /aligned/ });
    t.throws(() => bar.read(0x1000, 8), { code: 'EINVAL', message: /outside/ });
    t.throws(() => bar.write(3, 16, 0), { code: 'EINVAL', message: /aligned/ });
    t.throws(() => bar.write(0, 16, 0x10000), { code: 'EINVAL', message: /value must be an integer from 0 to 65535, got 65536/ });
    t.throws(() => bar.write(0, 8, 0x100n), { code: 'EINVAL', message: /value must be a bigint from 0 to 255, got 256n/ });
    t.throws(() => bar.write(0, 32, -1n), { code: 'EINVAL', message: /value must be a bigint from 0 to 4294967295, got -1n/ });
    t.throws(() => bar.write(0, 64, 1n << 64n), {
      code: 'EINVAL',
      message: /value must be a bigint from 0 to 18446744073709551615, got 18446744073709551616n/,
    });
    t.throws(() => bar.read(0, 24 as 32), { code: 'EINVAL', message: /width 24 is not 8, 16, 32 or 64/ });
    t.throws(() => bar.write(0, 12 as 8, 0), { code: 'EINVAL', message: /width 12/ });
    t.equal(bar.read32(0), 0x44332211, `${how}: a refused store stored nothing`);
    t.equal(bar.hexdump(0, 16, 32), '00000000  11 22 33 44 aa bb cc dd 07 00 00 00 00 00 00 00  |.\"3D............|\n', `${how}: hexdump`);
    t.throws(() => bar.hexdump(2, 16, 32), { code: 'EINVAL', message: /multiples of 4/ });
    t.throws(() => bar.hexdump(0, 6, 32), { code: 'EINVAL', message: /multiples of 4/ });
    bar.close();
    t.throws(() => bar.read(0, 32), { code: 'ECLOSED' });
    t.throws(() => bar.write(0, 8, 0), { code: 'ECLOSED' });
  }
  // hexdump reads whole words at its width, never bytewise.
  const bar = io.mapBar(0, { offset: 0x40000, size: 0x1000, noMmap: true });
  const reads = (): number => r.kernel.log.filter((c) => c.syscall === 'pread64' || c.method === 'pread').length;
  const before = reads();
  bar.hexdump(0, 32, 64);
  t.equal(reads() - before, 4, 'four 64-bit reads for 32 bytes');
});

t.test('memory decoding: mapBar turns it on before mapping', async (t) => {
  const r = rig();
  t.teardown(() => r.dispose());
  const { io } = r.open();
  io.config.setMemorySpace(false);
  t.equal(io.config.command().memorySpace, false);
  const bar = io.mapBar(0);
  t.equal(io.config.command().memorySpace, true);
  t.equal(io.config.read16(CFG_COMMAND) & COMMAND_MEMORY_SPACE, COMMAND_MEMORY_SPACE);
  t.equal(bar.read32(0), EDU_ID);
});

t.test('sparse BAR: only the sparse areas are mapped, the rest is pread/pwrite', async (t) => {
  const dev = pciDevice({
    address: '0000:00:05.0',
    vendor: 0x1af4,
    device: 0x1000,
    class: 0x020000,
    bars: [
      {
        index: 0,
        size: 4 * PAGE,
        sparse: [
          { offset: PAGE, size: PAGE },
          { offset: 3 * PAGE, size: PAGE },
        ],
      },
    ],
  });
  const r = rig({ devices: [dev], mode: 'group' });
  t.teardown(() => r.dispose());
  const { io } = r.open('0000:00:05.0');
  const bar = io.mapBar(0);
  t.same(bar.mappedAreas, [
    { offset: PAGE, size: PAGE },
    { offset: 3 * PAGE, size: PAGE },
  ]);
  t.equal(r.kernel.leaks().mappings, 2);
  const data = Uint8Array.from({ length: 64 }, (_, i) => i ^ 0x5a);
  bar.copyIn(PAGE - 32, data); // half through pwrite, half through the mapping
  t.same([...bar.copyOut(PAGE - 32, 64)], [...data]);
  const backing = r.kernel.device('0000:00:05.0').bar(0);
  t.same([...backing.subarray(PAGE - 32, PAGE + 32)], [...data], 'both halves reached the device');
  bar.write32(2 * PAGE + 8, 0xabcdef01);
  t.equal(bar.read32(2 * PAGE + 8), 0xabcdef01);
  t.throws(() => bar.views(2 * PAGE, 8), { code: 'ENOTSUP' });
  // A sub-range inside one sparse area maps just that.
  const sub = io.mapBar(0, { offset: 3 * PAGE + 64, size: 128 });
  t.same(sub.mappedAreas, [{ offset: 0, size: 128 }]);
});

t.test('I/O BAR and read-only BAR: pread/pwrite with the right decoding', async (t) => {
  const dev = pciDevice({
    address: '0000:00:06.0',
    vendor: 0x1af4,
    device: 0x1001,
    class: 0x010000,
    bars: [
      { index: 0, size: 64, type: 'io' },
      { index: 1, size: PAGE, write: false },
    ],
  });
  const r = rig({ devices: [dev] });
  t.teardown(() => r.dispose());
  const { io } = r.open('0000:00:06.0');
  io.config.setIoSpace(false);
  const iobar = io.mapBar(0);
  t.equal(io.config.read16(CFG_COMMAND) & COMMAND_IO_SPACE, COMMAND_IO_SPACE, 'I/O decoding on');
  t.same(iobar.mappedAreas, []);
  iobar.write16(2, 0xbeef);
  t.equal(iobar.read16(2), 0xbeef);
  t.equal(iobar.read8(3), 0xbe);
  t.equal(r.kernel.leaks().mappings, 0);
  const ro = io.mapBar(1);
  t.equal(ro.read32(0), 0);
  t.throws(() => ro.write32(0, 1), { code: 'EACCES' });
});

t.test('the MSI-X table is never mapped when the kernel does not allow it', async (t) => {
  // Older kernels (and the fake with a hand-made region info) give no
  // MSIX_MAPPABLE capability: mapBar must leave the table's page unmapped.
  const dev = pciDevice({
    address: '0000:00:07.0',
    vendor: 0x1af4,
    device: 0x1002,
    class: 0x020000,
    bars: [{ index: 0, size: 4 * PAGE }],
    irqs: { msix: 4, msixBar: 0, msixTableOffset: 2 * PAGE, msixPbaOffset: 3 * PAGE },
  });
  const r = rig({ devices: [dev] });
  t.teardown(() => r.dispose());
  const { io } = r.open('0000:00:07.0');
  t.equal(io.regionInfo(0).msixMappable, true, 'the fake, like Linux >= 4.16, says the table is mappable');
  t.same(io.mapBar(0).mappedAreas, [{ offset: 0, size: 4 * PAGE }]);
  // The table placement is read from config space: what mapBar would exclude.
  t.match(io.config.msix(), { vectors: 4, tableBar: 0, tableOffset: 2 * PAGE, tableSize: 64, pbaBar: 0, pbaOffset: 3 * PAGE });
});

t.test('close: every accessor of every mapping throws ECLOSED, nothing leaks', async (t) => {
  const r = rig();
  t.teardown(() => r.dispose());
  const dev = r.open();
  const before = r.kernel.leaks();
  const bar = dev.io.mapBar(0);
  const sub = dev.io.mapBar(0, { offset: PAGE, size: PAGE });
  const rw = dev.io.mapBar(0, { noMmap: true });
  t.equal(r.kernel.leaks().mappings, before.mappings + 2);
  dev.io.close();
  t.equal(r.kernel.leaks().mappings, 0);
  for (const region of [bar, sub, rw]) {
    t.ok(region.closed);
    t.throws(() => region.read32(0), { code: 'ECLOSED' });
    t.throws(() => region.write64(0, 1n), { code: 'ECLOSED' });
    t.throws(() => region.copyOut(0, 4), { code: 'ECLOSED' });
    t.throws(() => region.views(), { code: 'ECLOSED' });
  }
  t.throws(() => dev.io.mapBar(0), { code: 'ECLOSED' });
  t.throws(() => dev.io.regionInfo(0), { code: 'ECLOSED' });
  t.throws(() => dev.io.config, { code: 'ECLOSED' });
  dev.close();
  t.same(r.kernel.leaks().fds, before.fds - 1, 'only the device fd went; the iommufd/container stay with the rig');
});

t.test('a region closed on its own leaves the others working', async (t) => {
  const r = rig();
  t.teardown(() => r.dispose());
  const { io } = r.open();
  const a = io.mapBar(0);
  const b = io.mapBar(0);
  a.close();
  t.throws(() => a.read32(0), { code: 'ECLOSED' });
  t.equal(b.read32(0), EDU_ID);
});

t.test('a failing mmap leaves no mapping behind', async (t) => {
  const dev = pciDevice({
    address: '0000:00:05.0',
    vendor: 0x1af4,
    device: 0x1000,
    class: 0x020000,
    bars: [
      {
        index: 0,
        size: 4 * PAGE,
        sparse: [
          { offset: 0, size: PAGE },
          { offset: 2 * PAGE, size: PAGE },
        ],
      },
    ],
  });
  const r = rig({ devices: [dev] });
  t.teardown(() => r.dispose());
  const { io } = r.open('0000:00:05.0');
  io.config.command(); // open the config region first
  let calls = 0;
  const rule = r.kernel.failWhen((c) => c.method === 'mmap' && ++calls === 2, 'ENOMEM');
  t.throws(() => io.mapBar(0), { code: 'ENOMEM', syscall: 'mmap', device: '0000:00:05.0' });
  rule.remove();
  t.equal(r.kernel.leaks().mappings, 0);
});

t.test('every syscall of mapBar failing in turn: a typed error, no leak', async (t) => {
  for (let n = 1; n < 40; n++) {
    const r = rig();
    const dev = r.open();
    r.kernel.failNth(n, 'EIO');
    let region;
    try {
      region = dev.io.mapBar(0);
    } catch (err) {
      t.match(err, { name: 'VfioError', code: 'EIO' }, `call ${n} failed cleanly`);
      t.equal(r.kernel.leaks().mappings, 0, `no mapping after failing call ${n}`);
      await r.dispose();
      continue;
    }
    r.kernel.clearFaults();
    region.close();
    await r.dispose();
    t.ok(n > 3, `mapBar's ${n - 1} calls were each failed once`);
    break;
  }
});

t.test('views: typed arrays over the BAR for hot loops', async (t) => {
  const r = rig();
  t.teardown(() => r.dispose());
  const { io } = r.open();
  const bar = io.mapBar(0);
  const id = bar.withViews((v) => v.u32[0]);
  t.equal(id, EDU_ID);
  // Plain memory for a loop of stores (edu has registers, not memory, there).
  const mem = rig({ devices: [memoryDevice()] });
  t.teardown(() => mem.dispose());
  const plain = mem.open('0000:00:05.0').io.mapBar(0);
  const { u32 } = plain.views(0x40000, 64);
  for (let i = 0; i < 16; i++) u32[i] = i * 0x01010101;
  t.equal(plain.read32(0x40000 + 15 * 4), 15 * 0x01010101);
  t.equal(plain.views(0x40000, 64).u64.length, 8);
});

t.test('every width on a BAR that starts mapped: the leading mapping, the pread/pwrite gap, the next mapping', async (t) => {
  const dev = pciDevice({
    address: '0000:00:08.0',
    vendor: 0x1af4,
    device: 0x1003,
    class: 0x020000,
    bars: [
      {
        index: 0,
        size: 4 * PAGE,
        sparse: [
          { offset: 0, size: PAGE },
          { offset: 2 * PAGE, size: PAGE },
        ],
      },
    ],
  });
  const r = rig({ devices: [dev] });
  t.teardown(() => r.dispose());
  const { io } = r.open('0000:00:08.0');
  const bar = io.mapBar(0);
  t.same(bar.mappedAreas, [
    { offset: 0, size: PAGE },
    { offset: 2 * PAGE, size: PAGE },
  ]);
  const backing = r.kernel.device('0000:00:08.0').bar(0);
  const at = (o: number, n: number): number[] => [...backing.subarray(o, o + n)];
  for (const o of [0, PAGE - 8, PAGE, 2 * PAGE - 8, 2 * PAGE, 4 * PAGE - 8]) {
    bar.write8(o, 0x81);
    bar.write16(o + 2, 0x8382);
    bar.write32(o + 4, 0x87868584);
    t.same(at(o, 8), [0x81, 0, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87], `8/16/32-bit stores at ${o} reached the device`);
    t.equal(bar.read8(o), 0x81);
    t.equal(bar.read16(o + 2), 0x8382);
    t.equal(bar.read32(o + 4), 0x87868584);
    t.equal(bar.read64(o), 0x8786858483820081n);
    bar.write64(o, 0x0102030405060708n);
    t.same(at(o, 8), [8, 7, 6, 5, 4, 3, 2, 1], `64-bit store at ${o} reached the device`);
  }
  t.throws(() => bar.read64(4 * PAGE), { code: 'EINVAL', message: /outside/ });
  t.throws(() => bar.write16(PAGE - 1, 0), { code: 'EINVAL', message: /aligned/ });
  bar.close();
  for (const call of [() => bar.read8(0), () => bar.read64(0), () => bar.write16(0, 0), () => bar.write64(2 * PAGE, 0n)])
    t.throws(call, { code: 'ECLOSED' });
});

t.test('argument errors are EINVAL worded for the argument; copyOut checks bounds before allocating', async (t) => {
  const r = rig();
  t.teardown(() => r.dispose());
  const { io, handle } = r.open();
  const bar = io.mapBar(0);
  const before = r.kernel.leaks();
  t.throws(() => bar.read32('4' as unknown as number), {
    name: 'VfioError',
    code: 'EINVAL',
    message: /offset must be a non-negative integer, got the string "4"/,
  });
  t.throws(() => bar.read32(1 << 20), { code: 'EINVAL', message: /outside the 1048576-byte range/ });
  t.throws(() => bar.write32(0, '1' as unknown as number), { code: 'EINVAL', message: /value must be an integer from 0 to 4294967295/ });
  t.throws(() => bar.write64(0, -1n), { code: 'EINVAL', message: /value must be a bigint/ });
  t.throws(() => bar.write64(0, 'x' as unknown as bigint), { code: 'EINVAL' });
  t.throws(() => bar.copyIn(0, null as unknown as Uint8Array), {
    name: 'VfioError',
    code: 'EINVAL',
    message: /src must be a Uint8Array, got null/,
  });
  t.throws(() => bar.copyIn(0, 'abc' as unknown as Uint8Array), { code: 'EINVAL' });
  t.throws(() => bar.copyOut(0, 2 ** 40), { name: 'VfioError', code: 'EINVAL', message: /outside the 1048576-byte range/ });
  t.throws(() => bar.copyOut(0, null as unknown as number), { code: 'EINVAL', message: /into must be a Uint8Array/ });
  // 2 GiB would be allocated (or fail with a RangeError) before the bounds check.
  const heap = process.memoryUsage().arrayBuffers;
  t.throws(() => bar.copyOut(0, 2 ** 31), { code: 'EINVAL' });
  t.ok(process.memoryUsage().arrayBuffers - heap < 2 ** 30, 'nothing near 2 GiB was allocated');
  t.throws(() => io.mapRegion(7, null as unknown as {}), { code: 'EINVAL', message: /options must be an object/ });
  t.throws(() => io.mapRegion(7, { offset: '8' as unknown as number }), { code: 'EINVAL', message: /offset must be/ });
  t.throws(() => io.mapRegion(7, { size: 0 }), { code: 'EINVAL', message: /size must be a positive integer/ });
  t.same(r.kernel.leaks(), before, 'no mapping was made by a refused call');
  t.equal(bar.read32(0) >>> 0, bar.read32(0) >>> 0, 'the region still works');
  void handle;
});

t.test('Region.close retries a failed munmap: the mapping is not lost', async (t) => {
  const r = rig();
  t.teardown(() => r.dispose());
  const { io } = r.open();
  const before = r.kernel.leaks();
  const bar = io.mapBar(0);
  const mapped = r.kernel.leaks().mappings;
  t.ok(mapped > before.mappings, 'BAR 0 is mapped');
  const rule = r.kernel.failWhen({ syscall: 'munmap' }, 'ENOMEM', { times: 1 });
  t.throws(() => bar.close(), { code: 'ENOMEM' });
  t.equal(rule.hits, 1);
  t.equal(r.kernel.leaks().mappings, mapped, 'a failed munmap leaves the mapping (as Linux does)');
  t.throws(() => bar.read32(0), { code: 'ECLOSED' }, 'the region is closed to its users all the same');
  bar.close();
  t.equal(r.kernel.leaks().mappings, before.mappings, 'the second close unmapped it');
  bar.close();
  // Through the device: a failed region stays listed and the next close retries it.
  const bar2 = io.mapBar(0);
  r.kernel.failWhen({ syscall: 'munmap' }, 'ENOMEM', { times: 1 });
  t.throws(() => io.close(), { code: 'ENOMEM' });
  t.equal(r.kernel.leaks().mappings, mapped);
  io.close();
  t.equal(r.kernel.leaks().mappings, before.mappings, 'DeviceIo.close retried the region');
  t.ok(bar2.closed);
});
