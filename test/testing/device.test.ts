// VFIO device fds on the fake kernel: info, regions, config space, BARs,
// mmap, interrupts, reset and hot reset (vfio_pci_core.c, vfio_pci_rdwr.c,
// vfio_pci_config.c, vfio_pci_intrs.c).
import t, { type Test } from 'tap';
import { EFD_NONBLOCK, MAP_ANONYMOUS, MAP_PRIVATE, MAP_SHARED, O_RDONLY, O_RDWR, POLLIN, PROT_READ } from '../../lib/libc/sys.js';
import { alloc, capabilities, elementOffset, get, read } from '../../lib/uapi/codec.js';
import * as V from '../../lib/uapi/vfio.js';
import { EDU_ID, FakeKernel, edu, pciDevice, type FakeKernelOptions } from '../../lib/testing/index.js';
import { RW, freshKernel, intArg, until } from './harness.js';

const CFG = 7n << 40n;

const fresh = (t: Test, opts: FakeKernelOptions = {}): FakeKernel => freshKernel(t, { mode: 'group', ...opts });

/** Opens `addr` through its group in a Type1v2 container. */
function openDev(k: FakeKernel, addr = '0000:00:03.0', group = '3', flags = O_RDWR): { c: number; g: number; d: number; close(): void } {
  const s = k.sys;
  const c = s.open(`${k.devRoot}/vfio/vfio`, O_RDWR);
  const g = s.open(`${k.devRoot}/vfio/${group}`, flags);
  s.ioctl(g, V.VFIO_GROUP_SET_CONTAINER, intArg(c));
  s.ioctlInt(c, V.VFIO_SET_IOMMU, V.VFIO_TYPE1v2_IOMMU);
  const d = s.ioctl(g, V.VFIO_GROUP_GET_DEVICE_FD, Buffer.from(`${addr}\0`));
  return { c, g, d, close: () => [d, g, c].forEach((fd) => s.close(fd)) };
}

function u32At(k: FakeKernel, fd: number, off: bigint): number {
  const b = new Uint8Array(4);
  k.sys.pread(fd, b, off);
  return new DataView(b.buffer).getUint32(0, true);
}

function putU32(k: FakeKernel, fd: number, off: bigint, v: number): void {
  const b = new Uint8Array(4);
  new DataView(b.buffer).setUint32(0, v >>> 0, true);
  k.sys.pwrite(fd, b, off);
}

function regionInfo(k: FakeKernel, d: number, index: number, argsz: number = V.vfio_region_info.size): Buffer {
  const r = alloc(V.vfio_region_info, { argsz, index }, Math.max(0, argsz - V.vfio_region_info.size));
  k.sys.ioctl(d, V.VFIO_DEVICE_GET_REGION_INFO, r);
  return r;
}

function irqInfo(k: FakeKernel, d: number, index: number): { flags: number; count: number } {
  const r = alloc(V.vfio_irq_info, { argsz: V.vfio_irq_info.size, index });
  k.sys.ioctl(d, V.VFIO_DEVICE_GET_IRQ_INFO, r);
  return { flags: get(V.vfio_irq_info, r, 'flags'), count: get(V.vfio_irq_info, r, 'count') };
}

function setIrqs(
  k: FakeKernel,
  d: number,
  index: number,
  flags: number,
  start: number,
  count: number,
  fds: number[] = [],
  bools: number[] = [],
): void {
  const data = fds.length > 0 ? fds.length * 4 : bools.length;
  const b = alloc(V.vfio_irq_set, { argsz: V.vfio_irq_set.size + data, flags, index, start, count }, data);
  const dv = new DataView(b.buffer, b.byteOffset);
  fds.forEach((fd, i) => dv.setInt32(V.vfio_irq_set.size + 4 * i, fd, true));
  bools.forEach((v, i) => dv.setUint8(V.vfio_irq_set.size + i, v));
  k.sys.ioctl(d, V.VFIO_DEVICE_SET_IRQS, b);
}

const EVENTFD_TRIGGER = V.VFIO_IRQ_SET_DATA_EVENTFD | V.VFIO_IRQ_SET_ACTION_TRIGGER;
const NONE_TRIGGER = V.VFIO_IRQ_SET_DATA_NONE | V.VFIO_IRQ_SET_ACTION_TRIGGER;

function counter(k: FakeKernel, fd: number): bigint {
  const b = new Uint8Array(8);
  try {
    k.sys.read(fd, b);
  } catch {
    return 0n;
  }
  return new DataView(b.buffer).getBigUint64(0, true);
}

function setBusMaster(k: FakeKernel, d: number): void {
  const cmd = new Uint8Array(2);
  k.sys.pread(d, cmd, CFG + 4n);
  cmd[0]! |= 0x04;
  k.sys.pwrite(d, cmd, CFG + 4n);
}

t.test('GET_INFO: PCI|RESET, 9 regions, 5 irqs, argsz rules, capability chain', async (t) => {
  const atomic = pciDevice({
    address: '0000:00:04.0',
    group: 4,
    vendor: 0x15b3,
    device: 0x101e,
    class: 0x020000,
    pcie: true,
    atomicOps: { comp32: true, comp64: true },
  });
  // edu behind a bridge, alone on its bus: its bus reset is its function reset.
  const k = fresh(t, { devices: [edu({ address: '0000:01:00.0', group: 3 }), atomic] });
  const s = k.sys;
  const dev = openDev(k, '0000:01:00.0');
  const L = V.vfio_device_info;
  t.throws(() => s.ioctl(dev.d, V.VFIO_DEVICE_GET_INFO, alloc(L, { argsz: 12 })), { code: 'EINVAL' });
  const info = alloc(L, { argsz: L.size });
  s.ioctl(dev.d, V.VFIO_DEVICE_GET_INFO, info);
  t.same(read(L, info), {
    argsz: L.size,
    flags: V.VFIO_DEVICE_FLAGS_PCI | V.VFIO_DEVICE_FLAGS_RESET,
    num_regions: 9,
    num_irqs: 5,
    cap_offset: 0,
    pad: 0,
  });
  const dev2 = openDev(k, '0000:00:04.0', '4');
  const i2 = alloc(L, { argsz: L.size });
  s.ioctl(dev2.d, V.VFIO_DEVICE_GET_INFO, i2);
  t.ok(get(L, i2, 'flags') & V.VFIO_DEVICE_FLAGS_CAPS);
  const need = get(L, i2, 'argsz');
  t.equal(need, L.size + V.vfio_device_info_cap_pci_atomic_comp.size);
  const full = alloc(L, { argsz: need }, need - L.size);
  s.ioctl(dev2.d, V.VFIO_DEVICE_GET_INFO, full);
  const [cap] = [...capabilities(full, get(L, full, 'cap_offset'))];
  t.equal(cap?.id, V.VFIO_DEVICE_INFO_CAP_PCI_ATOMIC_COMP);
  t.equal(get(V.vfio_device_info_cap_pci_atomic_comp, full, 'flags', cap!.offset), V.VFIO_PCI_ATOMIC_COMP32 | V.VFIO_PCI_ATOMIC_COMP64);
  dev.close();
  dev2.close();
  t.same(k.leaks(), { fds: 0, mappings: 0, pinned: 0 });
});

t.test('GET_REGION_INFO: BARs, config, ROM, VGA, offsets, MSI-X mappable and sparse caps, device regions', async (t) => {
  const nvme = pciDevice({
    address: '0000:00:05.0',
    group: 5,
    vendor: 0x8086,
    device: 0x0953,
    class: 0x010802,
    pcie: true,
    bars: [
      { index: 0, size: 16384, type: 'mem64' },
      {
        index: 2,
        size: 65536,
        sparse: [
          { offset: 0, size: 4096 },
          { offset: 8192, size: 8192 },
        ],
      },
      { index: 4, size: 256, type: 'io' },
    ],
    irqs: { msix: 8, msixBar: 0, msixTableOffset: 0x2000 },
    regions: [{ type: 0x80008086, subtype: 1, size: 4096 }],
  });
  const k = fresh(t, { devices: [edu(), nvme] });
  const s = k.sys;
  const dev = openDev(k);
  const L = V.vfio_region_info;
  t.throws(() => s.ioctl(dev.d, V.VFIO_DEVICE_GET_REGION_INFO, alloc(L, { argsz: 16, index: 0 })), { code: 'EINVAL' });
  const bar0 = read(L, regionInfo(k, dev.d, 0));
  t.same(bar0, { argsz: 32, flags: 7, index: 0, cap_offset: 0, size: 1n << 20n, offset: 0n });
  t.same(read(L, regionInfo(k, dev.d, 1)), { argsz: 32, flags: 0, index: 1, cap_offset: 0, size: 0n, offset: 1n << 40n }, 'an absent BAR');
  t.same(read(L, regionInfo(k, dev.d, 7)), { argsz: 32, flags: 3, index: 7, cap_offset: 0, size: 256n, offset: 7n << 40n });
  t.equal(read(L, regionInfo(k, dev.d, 6)).size, 0n, 'no ROM');
  t.throws(() => regionInfo(k, dev.d, 8), { code: 'EINVAL' }, 'no VGA');
  t.throws(() => regionInfo(k, dev.d, 9), { code: 'EINVAL' });
  const nd = openDev(k, '0000:00:05.0', '5');
  const short = read(L, regionInfo(k, nd.d, 0));
  t.equal(short.flags, 7 | V.VFIO_REGION_INFO_FLAG_CAPS, 'the MSI-X BAR has a capability');
  t.equal(short.cap_offset, 0);
  t.equal(short.argsz, 32 + 8);
  const full = regionInfo(k, nd.d, 0, short.argsz);
  t.same(
    [...capabilities(full, get(L, full, 'cap_offset'))].map((c) => c.id),
    [V.VFIO_REGION_INFO_CAP_MSIX_MAPPABLE],
  );
  t.same(read(L, regionInfo(k, nd.d, 1)).size, 0n, 'the upper half of a 64-bit BAR');
  const sp = regionInfo(k, nd.d, 2, 128);
  const caps = [...capabilities(sp, get(L, sp, 'cap_offset'))];
  t.equal(caps[0]?.id, V.VFIO_REGION_INFO_CAP_SPARSE_MMAP);
  const S = V.vfio_region_info_cap_sparse_mmap;
  t.equal(get(S, sp, 'nr_areas', caps[0]!.offset), 2);
  t.same(read(V.vfio_region_sparse_mmap_area, sp, caps[0]!.offset + elementOffset(S, 'areas', 1)), { offset: 8192n, size: 8192n });
  t.equal(read(L, regionInfo(k, nd.d, 4)).flags, 3, 'I/O BARs are not mmap-able');
  const dr = regionInfo(k, nd.d, 9, 64);
  t.equal(get(L, dr, 'offset'), 9n << 40n);
  const [tc] = [...capabilities(dr, get(L, dr, 'cap_offset'))];
  t.same(read(V.vfio_region_info_cap_type, dr, tc!.offset), {
    header: { id: V.VFIO_REGION_INFO_CAP_TYPE, version: 1, next: 0 },
    type: 0x80008086,
    subtype: 1,
  });
  const info = alloc(V.vfio_device_info, { argsz: V.vfio_device_info.size });
  s.ioctl(nd.d, V.VFIO_DEVICE_GET_INFO, info);
  t.equal(get(V.vfio_device_info, info, 'num_regions'), 10);
  dev.close();
  nd.close();
});

t.test('config space through the config region, as vfio-pci virtualizes it', async (t) => {
  const k = fresh(t);
  const s = k.sys;
  const { d, close } = openDev(k);
  t.equal(u32At(k, d, CFG), 0x11e81234, 'vendor and device');
  putU32(k, d, CFG, 0);
  t.equal(u32At(k, d, CFG), 0x11e81234, 'identification is read-only');
  t.equal(u32At(k, d, CFG + 0x10n) & 0xf, 0, 'BAR0: 32-bit, non-prefetchable memory');
  putU32(k, d, CFG + 0x10n, 0xffffffff);
  t.equal(u32At(k, d, CFG + 0x10n), 0xfff00000, 'BAR sizing: 1 MiB');
  const cmd = new Uint8Array(2);
  s.pread(d, cmd, CFG + 4n);
  t.equal(cmd[0]! & 0x2, 0x2, 'memory decoding is on after open');
  t.equal(cmd[0]! & 0x4, 0, 'bus mastering is off after open');
  t.equal(u32At(k, d, CFG + 0x34n) & 0xff, 0x40, 'a capability list');
  const cap = new Uint8Array(4);
  s.pread(d, cap, CFG + 0x40n);
  t.equal(cap[0], 0x05, 'MSI');
  t.throws(() => s.pread(d, new Uint8Array(8), CFG + 252n), { code: 'EFAULT' }, 'past the end of config space');
  t.throws(() => s.pread(d, new Uint8Array(4), 10n << 40n), { code: 'EINVAL' }, 'no such region');
  t.equal(s.pread(d, new Uint8Array(0), CFG + 256n), 0, 'a zero-length access');
  close();
});

t.test('BAR pread/pwrite: edu registers, bounds, memory enable, MSI-X table exclusion', async (t) => {
  const msix = pciDevice({
    address: '0000:00:06.0',
    group: 6,
    vendor: 0x1af4,
    device: 0x1041,
    class: 0x020000,
    bars: [{ index: 0, size: 8192 }],
    irqs: { msix: 4, msixTableOffset: 0x1000 },
  });
  const k = fresh(t, { devices: [edu(), msix] });
  const s = k.sys;
  const { d, close } = openDev(k);
  t.equal(u32At(k, d, 0n), EDU_ID);
  putU32(k, d, 4n, 0x12345678);
  t.equal(u32At(k, d, 4n), ~0x12345678 >>> 0, 'liveness check reads the inverse');
  putU32(k, d, 8n, 5);
  await until('the factorial', () => (u32At(k, d, 0x20n) & 0x1) === 0);
  t.equal(u32At(k, d, 8n), 120, 'factorial');
  t.throws(() => s.pread(d, new Uint8Array(4), 1n << 20n), { code: 'EINVAL' }, 'at the end of the BAR');
  t.equal(s.pread(d, new Uint8Array(16), (1n << 20n) - 4n), 4, 'truncated at the end');
  t.throws(() => s.pread(d, new Uint8Array(4), 2n << 40n), { code: 'EINVAL' }, 'an absent BAR');
  putU32(k, d, CFG + 4n, 0);
  t.throws(() => s.pread(d, new Uint8Array(4), 0n), { code: 'EIO' }, 'memory decoding off');
  putU32(k, d, CFG + 4n, 2);
  const m = openDev(k, '0000:00:06.0', '6');
  putU32(k, m.d, 0x1000n, 0x1234);
  t.equal(u32At(k, m.d, 0x1000n), 0xffffffff, 'the MSI-X table reads as ~0');
  t.equal(k.device('0000:00:06.0').bar(0)[0x1000], 0, 'and drops writes');
  putU32(k, m.d, 0x0ffcn, 7);
  t.equal(u32At(k, m.d, 0x0ffcn), 7, 'outside the table is plain memory');
  close();
  m.close();
});

t.test('mmap of regions: MMAP flag, bounds, MAP_SHARED, shared memory with the device', async (t) => {
  const k = fresh(t);
  const s = k.sys;
  const { d, close } = openDev(k);
  t.throws(() => s.mmap(4096, RW, MAP_PRIVATE, d, 0n), { code: 'EINVAL' }, 'MAP_PRIVATE');
  t.throws(() => s.mmap(2 << 20, RW, MAP_SHARED, d, 0n), { code: 'EINVAL' }, 'past the BAR');
  t.throws(() => s.mmap(4096, RW, MAP_SHARED, d, CFG), { code: 'EINVAL' }, 'config space');
  t.throws(() => s.mmap(4096, RW, MAP_SHARED, d, 1n << 40n), { code: 'EINVAL' }, 'an absent BAR');
  t.throws(() => s.mmap(4096, RW, MAP_SHARED, d, 12n << 40n), { code: 'EINVAL' }, 'no such region');
  const bar = s.mmap(1 << 20, RW, MAP_SHARED, d, 0n);
  const v = s.view(bar, 0x100);
  t.equal(new DataView(v.buffer, v.byteOffset).getUint32(0, true), EDU_ID, 'the mapping shows the registers');
  v[0x40] = 0x99;
  t.equal(k.device('0000:00:03.0').bar(0)[0x40], 0x99, 'and writes reach the device memory');
  const tail = s.mmap(4096, RW, MAP_SHARED, d, (1n << 20n) - 4096n);
  s.munmap(tail, 4096);
  s.munmap(bar, 1 << 20);
  close();
  t.same(k.leaks(), { fds: 0, mappings: 0, pinned: 0 });
});

t.test('mmap of a device opened read-only: no shared writable mapping (EACCES)', async (t) => {
  const k = new FakeKernel({ mode: 'cdev' });
  t.teardown(() => k.dispose());
  const s = k.sys;
  const iommu = s.open(`${k.devRoot}/iommu`, O_RDWR);
  const d = s.open(`${k.devRoot}/vfio/devices/vfio0`, O_RDONLY);
  s.ioctl(d, V.VFIO_DEVICE_BIND_IOMMUFD, alloc(V.vfio_device_bind_iommufd, { argsz: V.vfio_device_bind_iommufd.size, iommufd: iommu }));
  t.throws(() => s.mmap(4096, RW, MAP_SHARED, d, 0n), { code: 'EACCES' });
  const ro = s.mmap(4096, PROT_READ, MAP_SHARED, d, 0n);
  t.throws(() => s.pwrite(d, new Uint8Array(4), 0n), { code: 'EBADF' }, 'not open for writing');
  s.munmap(ro, 4096);
  s.close(d);
  s.close(iommu);
});

t.test('mmap keeps the device open; memory decoding off makes views fault', async (t) => {
  const sparse = pciDevice({
    address: '0000:00:07.0',
    group: 7,
    vendor: 1,
    device: 2,
    class: 0x020000,
    bars: [{ index: 0, size: 16384, sparse: [{ offset: 4096, size: 4096 }] }],
  });
  const k = fresh(t, { devices: [edu(), sparse] });
  const s = k.sys;
  const dev = openDev(k);
  const bar = s.mmap(1 << 20, RW, MAP_SHARED, dev.d, 0n);
  putU32(k, dev.d, CFG + 4n, 0);
  t.throws(() => s.view(bar, 4), { code: 'EFAULT' }, 'memory decoding off: the access would SIGBUS');
  putU32(k, dev.d, CFG + 4n, 2);
  dev.close();
  t.equal(k.device('0000:00:03.0').openCount, 1, 'the mapping holds the device file');
  t.equal(k.leaks().fds, 0);
  s.munmap(bar, 1 << 20);
  t.equal(k.device('0000:00:03.0').openCount, 0, 'munmap releases it');
  const sp = openDev(k, '0000:00:07.0', '7');
  t.throws(() => s.mmap(4096, RW, MAP_SHARED, sp.d, 0n), { code: 'EINVAL' }, 'outside the sparse areas');
  const ok = s.mmap(4096, RW, MAP_SHARED, sp.d, 4096n);
  s.munmap(ok, 4096);
  sp.close();
  t.same(k.leaks(), { fds: 0, mappings: 0, pinned: 0 });
});

t.test('GET_IRQ_INFO: counts derived from config space', async (t) => {
  const pcie = pciDevice({
    address: '0000:00:08.0',
    group: 8,
    vendor: 1,
    device: 2,
    class: 0x020000,
    pcie: true,
    bars: [{ index: 0, size: 16384 }],
    irqs: { msi: 4, msix: 16 },
    dynamicMsix: false,
  });
  const k = fresh(t, { devices: [edu(), pcie] });
  const dev = openDev(k);
  t.same(irqInfo(k, dev.d, 0), { flags: V.VFIO_IRQ_INFO_EVENTFD | V.VFIO_IRQ_INFO_MASKABLE | V.VFIO_IRQ_INFO_AUTOMASKED, count: 1 });
  t.same(irqInfo(k, dev.d, 1), { flags: V.VFIO_IRQ_INFO_EVENTFD | V.VFIO_IRQ_INFO_NORESIZE, count: 1 });
  t.same(irqInfo(k, dev.d, 2), { flags: V.VFIO_IRQ_INFO_EVENTFD, count: 0 }, 'MSI-X without NORESIZE: dynamic allocation');
  t.throws(() => irqInfo(k, dev.d, 3), { code: 'EINVAL' }, 'ERR needs PCIe');
  t.same(irqInfo(k, dev.d, 4), { flags: V.VFIO_IRQ_INFO_EVENTFD | V.VFIO_IRQ_INFO_NORESIZE, count: 1 });
  t.throws(() => irqInfo(k, dev.d, 5), { code: 'EINVAL' });
  const p = openDev(k, '0000:00:08.0', '8');
  t.equal(irqInfo(k, p.d, 1).count, 4);
  t.same(irqInfo(k, p.d, 2), { flags: V.VFIO_IRQ_INFO_EVENTFD | V.VFIO_IRQ_INFO_NORESIZE, count: 16 });
  t.equal(irqInfo(k, p.d, 3).count, 1);
  dev.close();
  p.close();
});

t.test('SET_IRQS: MSI through eventfds, raiseIrq, pollAsync, disable (vfio_pci_intrs.c)', async (t) => {
  const k = fresh(t);
  const s = k.sys;
  const { d, close } = openDev(k);
  const efd = s.eventfd(0, EFD_NONBLOCK);
  t.throws(() => setIrqs(k, d, 1, EVENTFD_TRIGGER, 0, 2, [efd, efd]), { code: 'EINVAL' }, 'beyond the one MSI vector');
  t.throws(() => setIrqs(k, d, 1, EVENTFD_TRIGGER, 1, 0), { code: 'EINVAL' }, 'start beyond the count, even with count 0');
  t.throws(() => setIrqs(k, d, 1, NONE_TRIGGER, 0, 0), { code: 'EINVAL' }, 'disabling what is not enabled');
  t.throws(() => setIrqs(k, d, 1, EVENTFD_TRIGGER | V.VFIO_IRQ_SET_DATA_BOOL, 0, 1, [efd]), { code: 'EINVAL' }, 'two data types');
  t.throws(() => setIrqs(k, d, 1, V.VFIO_IRQ_SET_DATA_NONE | V.VFIO_IRQ_SET_ACTION_MASK, 0, 1), { code: 'ENOTTY' }, 'MSI has no mask');
  t.throws(
    () => setIrqs(k, d, 1, V.VFIO_IRQ_SET_DATA_NONE | V.VFIO_IRQ_SET_ACTION_MASK | V.VFIO_IRQ_SET_ACTION_TRIGGER, 0, 1),
    { code: 'ENOTTY' },
    'two actions',
  );
  t.throws(() => setIrqs(k, d, 1, EVENTFD_TRIGGER, 0, 1, [99]), { code: 'EBADF' });
  const notEventfd = s.memfdCreate('x', 0);
  t.throws(() => setIrqs(k, d, 1, EVENTFD_TRIGGER, 0, 1, [notEventfd]), { code: 'EINVAL' });
  s.close(notEventfd);
  t.throws(
    () =>
      s.ioctl(
        d,
        V.VFIO_DEVICE_SET_IRQS,
        alloc(V.vfio_irq_set, { argsz: V.vfio_irq_set.size, flags: EVENTFD_TRIGGER, index: 1, start: 0, count: 1 }),
      ),
    { code: 'EINVAL' },
    'argsz does not cover the eventfd',
  );
  setIrqs(k, d, 1, EVENTFD_TRIGGER, 0, 1, [efd]);
  t.equal(k.device('0000:00:03.0').irqType, V.VFIO_PCI_MSI_IRQ_INDEX);
  t.equal(k.raiseIrq('0000:00:03.0', 'msi', 0), false, 'no MSI without bus mastering');
  setBusMaster(k, d);
  const waiting = s.pollAsync([{ fd: efd, events: POLLIN }], -1);
  t.equal(k.raiseIrq('0000:00:03.0', 'msi', 0), true);
  t.same(await waiting, [POLLIN]);
  t.equal(counter(k, efd), 1n);
  setIrqs(k, d, 1, NONE_TRIGGER, 0, 1);
  t.equal(counter(k, efd), 1n, 'DATA_NONE triggers the vector (loopback)');
  setIrqs(k, d, 1, V.VFIO_IRQ_SET_DATA_BOOL | V.VFIO_IRQ_SET_ACTION_TRIGGER, 0, 1, [], [0]);
  t.equal(counter(k, efd), 0n, 'a false bool does not');
  t.throws(() => setIrqs(k, d, 0, EVENTFD_TRIGGER, 0, 1, [efd]), { code: 'EINVAL' }, 'INTx while MSI is enabled');
  s.close(efd);
  t.equal(k.raiseIrq('0000:00:03.0', 'msi', 0), true, 'the kernel holds the eventfd after its fd is closed');
  setIrqs(k, d, 1, NONE_TRIGGER, 0, 0);
  t.equal(k.device('0000:00:03.0').irqType, null, 'count 0 + DATA_NONE + TRIGGER disables');
  close();
  t.same(k.leaks(), { fds: 0, mappings: 0, pinned: 0 });
});

t.test('SET_IRQS: INTx automask, mask/unmask, pending delivery', async (t) => {
  const k = fresh(t);
  const s = k.sys;
  const { d, close } = openDev(k);
  const efd = s.eventfd(0, EFD_NONBLOCK);
  t.throws(
    () => setIrqs(k, d, 0, V.VFIO_IRQ_SET_DATA_NONE | V.VFIO_IRQ_SET_ACTION_UNMASK, 0, 1),
    { code: 'EINVAL' },
    'unmask before enable',
  );
  setIrqs(k, d, 0, EVENTFD_TRIGGER, 0, 1, [efd]);
  t.equal(k.raiseIrq('0000:00:03.0', 'intx'), true);
  t.equal(counter(k, efd), 1n);
  t.equal(k.raiseIrq('0000:00:03.0', 'intx'), false, 'automasked until unmasked');
  t.equal(counter(k, efd), 0n);
  setIrqs(k, d, 0, V.VFIO_IRQ_SET_DATA_NONE | V.VFIO_IRQ_SET_ACTION_UNMASK, 0, 1);
  t.equal(counter(k, efd), 1n, 'the pending interrupt is delivered on unmask');
  t.throws(() => setIrqs(k, d, 0, V.VFIO_IRQ_SET_DATA_EVENTFD | V.VFIO_IRQ_SET_ACTION_MASK, 0, 1, [efd]), { code: 'ENOTTY' });
  setIrqs(k, d, 0, V.VFIO_IRQ_SET_DATA_NONE | V.VFIO_IRQ_SET_ACTION_TRIGGER, 0, 0);
  t.equal(k.device('0000:00:03.0').irqType, null);
  s.close(efd);
  close();
});

t.test('SET_IRQS: MSI-X blocks, dynamic vectors, ERR and REQ', async (t) => {
  const mk = (address: string, group: number, dynamicMsix: boolean) =>
    pciDevice({
      address,
      group,
      vendor: 1,
      device: 2,
      class: 0x020000,
      pcie: true,
      bars: [{ index: 0, size: 16384 }],
      irqs: { msix: 8 },
      dynamicMsix,
    });
  const k = fresh(t, { devices: [mk('0000:00:08.0', 8, true), mk('0000:00:09.0', 9, false)] });
  const s = k.sys;
  const a = openDev(k, '0000:00:08.0', '8');
  const b = openDev(k, '0000:00:09.0', '9');
  const e = [0, 1, 2, 3].map(() => s.eventfd(0, EFD_NONBLOCK));
  setBusMaster(k, a.d);
  setIrqs(k, a.d, 2, EVENTFD_TRIGGER, 0, 2, [e[0]!, e[1]!]);
  setIrqs(k, a.d, 2, EVENTFD_TRIGGER, 5, 1, [e[2]!]);
  t.equal(k.raiseIrq('0000:00:08.0', 'msix', 5), true, 'a vector added while enabled');
  t.equal(counter(k, e[2]!), 1n);
  setIrqs(k, b.d, 2, EVENTFD_TRIGGER, 0, 2, [e[0]!, e[1]!]);
  t.throws(() => setIrqs(k, b.d, 2, EVENTFD_TRIGGER, 5, 1, [e[2]!]), { code: 'EINVAL' }, 'no dynamic MSI-X: the vector was not allocated');
  t.throws(() => setIrqs(k, a.d, 2, EVENTFD_TRIGGER, 7, 2, [e[0]!, e[1]!]), { code: 'EINVAL' }, 'beyond the table');
  k.device('0000:00:08.0').bar(0)[1 * 16 + 12] = 1; // mask vector 1 in the MSI-X table
  t.equal(k.raiseIrq('0000:00:08.0', 'msix', 1), false, 'a vector masked in the MSI-X table');
  setIrqs(k, a.d, 3, EVENTFD_TRIGGER, 0, 1, [e[3]!]);
  t.equal(k.raiseIrq('0000:00:08.0', 'err'), true);
  t.equal(counter(k, e[3]!), 1n);
  setIrqs(k, a.d, 4, EVENTFD_TRIGGER, 0, 1, [e[3]!]);
  t.equal(k.raiseIrq('0000:00:08.0', 'req'), true, 'the request notifier');
  setIrqs(k, a.d, 4, EVENTFD_TRIGGER, 0, 1, [-1]);
  t.equal(k.raiseIrq('0000:00:08.0', 'req'), false, 'fd -1 removes it');
  t.throws(() => setIrqs(k, a.d, 4, NONE_TRIGGER, 0, 1), { code: 'EINVAL' }, 'DATA_NONE with no trigger set');
  a.close();
  b.close();
  e.forEach((fd) => s.close(fd));
  t.same(k.leaks(), { fds: 0, mappings: 0, pinned: 0 });
});

t.test('RESET: works when the device can reset, EINVAL when not', async (t) => {
  const flr = pciDevice({
    address: '0000:00:03.0',
    group: 3,
    vendor: 0x8086,
    device: 0x10d3,
    class: 0x020000,
    pcie: true,
    bars: [{ index: 0, size: 4096, init: (b) => b.fill(0xa5) }],
  });
  const noreset = pciDevice({
    address: '0000:00:04.0',
    group: 4,
    vendor: 1,
    device: 2,
    class: 0x020000,
    bars: [{ index: 0, size: 4096, init: (b) => b.fill(0x5a) }],
    reset: false,
  });
  const k = fresh(t, { devices: [flr, noreset] });
  const s = k.sys;
  const a = openDev(k);
  putU32(k, a.d, 8n, 4);
  t.equal(u32At(k, a.d, 8n), 4, 'device state changed');
  const before = k.device('0000:00:03.0').resets;
  s.ioctlInt(a.d, V.VFIO_DEVICE_RESET, 0);
  t.equal(k.device('0000:00:03.0').resets, before + 1);
  t.equal(u32At(k, a.d, 8n), 0xa5a5a5a5, 'the device state is back to power-on values');
  t.equal(u32At(k, a.d, CFG + 4n) & 0x2, 0x2, 'config space is restored around the reset');
  const b = openDev(k, '0000:00:04.0', '4');
  const info = alloc(V.vfio_device_info, { argsz: V.vfio_device_info.size });
  s.ioctl(b.d, V.VFIO_DEVICE_GET_INFO, info);
  t.equal(get(V.vfio_device_info, info, 'flags'), V.VFIO_DEVICE_FLAGS_PCI);
  t.throws(() => s.ioctlInt(b.d, V.VFIO_DEVICE_RESET, 0), { code: 'EINVAL' });
  a.close();
  b.close();
});

t.test('ioctl numbers collide across fd kinds: dispatch on the kind first', async (t) => {
  const k = fresh(t);
  const s = k.sys;
  t.equal(V.VFIO_IOMMU_GET_INFO, V.VFIO_DEVICE_GET_PCI_HOT_RESET_INFO);
  const { c, g, d, close } = openDev(k);
  const hr = alloc(V.vfio_pci_hot_reset_info, { argsz: V.vfio_pci_hot_reset_info.size });
  t.throws(
    () => s.ioctl(d, V.VFIO_IOMMU_GET_INFO, hr),
    { code: 'ENODEV' },
    'on a device fd it is GET_PCI_HOT_RESET_INFO (edu has no bus reset here)',
  );
  const info = alloc(V.vfio_iommu_type1_info, { argsz: V.vfio_iommu_type1_info.size });
  t.equal(s.ioctl(c, V.VFIO_IOMMU_GET_INFO, info), 0, 'on the container it is IOMMU_GET_INFO');
  t.throws(() => s.ioctl(g, V.VFIO_IOMMU_GET_INFO, info), { code: 'ENOTTY' });
  const efd = s.eventfd(0, 0);
  t.throws(() => s.ioctl(efd, V.VFIO_IOMMU_GET_INFO, info), { code: 'ENOTTY' });
  s.close(efd);
  close();
});

t.test('hot reset, group path: info with group ids, ENOSPC, group fds', async (t) => {
  const a = edu({ hotResetGroup: 'bus1', address: '0000:01:00.0', group: 10 });
  const b = edu({ hotResetGroup: 'bus1', address: '0000:01:00.1', group: 11 });
  const k = fresh(t, { devices: [a, b] });
  const s = k.sys;
  const A = openDev(k, '0000:01:00.0', '10');
  const H = V.vfio_pci_hot_reset_info;
  const small = alloc(H, { argsz: H.size + V.vfio_pci_dependent_device.size }, V.vfio_pci_dependent_device.size);
  t.throws(() => s.ioctl(A.d, V.VFIO_DEVICE_GET_PCI_HOT_RESET_INFO, small), { code: 'ENOSPC' });
  t.equal(get(H, small, 'count'), 2, 'count tells the room needed');
  t.equal(get(V.vfio_pci_dependent_device, small, 'devfn', H.size), 0, 'the array is left alone');
  const full = alloc(H, { argsz: H.size + 2 * V.vfio_pci_dependent_device.size }, 2 * V.vfio_pci_dependent_device.size);
  s.ioctl(A.d, V.VFIO_DEVICE_GET_PCI_HOT_RESET_INFO, full);
  t.equal(get(H, full, 'flags'), 0, 'group ids, not devids');
  const devs = [0, 1].map((i) => read(V.vfio_pci_dependent_device, full, H.size + i * V.vfio_pci_dependent_device.size));
  t.same(
    devs.map((x) => [x.group_id, x.bus, x.devfn]),
    [
      [10, 1, 0],
      [11, 1, 1],
    ],
  );
  const R = V.vfio_pci_hot_reset;
  const reset = (fds: number[]): void => {
    const r = alloc(R, { argsz: R.size + 4 * fds.length, count: fds.length }, 4 * fds.length);
    fds.forEach((fd, i) => new DataView(r.buffer, r.byteOffset).setInt32(R.size + 4 * i, fd, true));
    s.ioctl(A.d, V.VFIO_DEVICE_PCI_HOT_RESET, r);
  };
  t.throws(() => reset([]), { code: 'EINVAL' }, 'group-opened devices must pass group fds');
  t.throws(() => reset([A.g]), { code: 'EINVAL' }, "the other device's group is missing");
  t.throws(() => reset([A.g, 99]), { code: 'EBADF' });
  t.throws(() => reset([A.g, A.c]), { code: 'EINVAL' }, 'not a group fd');
  t.throws(() => reset([A.g, A.g, A.g]), { code: 'EINVAL' }, 'more fds than affected devices');
  const g11 = s.open(`${k.devRoot}/vfio/11`, O_RDWR);
  const before = k.device('0000:01:00.1').resets;
  reset([A.g, g11]);
  t.equal(k.device('0000:01:00.1').resets, before + 1, 'the whole bus was reset');
  s.close(g11);
  A.close();
});

t.test('hot reset, cdev path: devids, OWNED flag, zero-length array', async (t) => {
  const a = edu({ hotResetGroup: 'bus1', address: '0000:01:00.0', group: 10 });
  const b = edu({ hotResetGroup: 'bus1', address: '0000:01:00.1', group: 11 });
  const k = new FakeKernel({ mode: 'cdev', devices: [a, b] });
  t.teardown(() => k.dispose());
  const s = k.sys;
  const iommu = s.open(`${k.devRoot}/iommu`, O_RDWR);
  const bindDev = (n: number): number => {
    const d = s.open(`${k.devRoot}/vfio/devices/vfio${n}`, O_RDWR);
    s.ioctl(d, V.VFIO_DEVICE_BIND_IOMMUFD, alloc(V.vfio_device_bind_iommufd, { argsz: V.vfio_device_bind_iommufd.size, iommufd: iommu }));
    return d;
  };
  const d0 = bindDev(0);
  const H = V.vfio_pci_hot_reset_info;
  const D = V.vfio_pci_dependent_device;
  const info = (): { flags: number; devids: number[] } => {
    const r = alloc(H, { argsz: H.size + 2 * D.size }, 2 * D.size);
    s.ioctl(d0, V.VFIO_DEVICE_GET_PCI_HOT_RESET_INFO, r);
    return { flags: get(H, r, 'flags'), devids: [0, 1].map((i) => get(D, r, 'devid', H.size + i * D.size)) };
  };
  t.same(info(), { flags: V.VFIO_PCI_HOT_RESET_FLAG_DEV_ID, devids: [1, 0xffffffff] }, 'the other device is not owned');
  const R = V.vfio_pci_hot_reset;
  t.throws(
    () => s.ioctl(d0, V.VFIO_DEVICE_PCI_HOT_RESET, alloc(R, { argsz: R.size })),
    { code: 'EINVAL' },
    'a device not owned by this iommufd',
  );
  t.throws(
    () => s.ioctl(d0, V.VFIO_DEVICE_PCI_HOT_RESET, alloc(R, { argsz: R.size + 4, count: 1 }, 4)),
    { code: 'EINVAL' },
    'cdev-opened devices pass no group fds',
  );
  const d1 = bindDev(1);
  t.same(info(), { flags: V.VFIO_PCI_HOT_RESET_FLAG_DEV_ID | V.VFIO_PCI_HOT_RESET_FLAG_DEV_ID_OWNED, devids: [1, 2] });
  const before = k.device('0000:01:00.1').resets;
  s.ioctl(d0, V.VFIO_DEVICE_PCI_HOT_RESET, alloc(R, { argsz: R.size }));
  t.equal(k.device('0000:01:00.1').resets, before + 1, 'the other device on the bus was reset too');
  [d0, d1, iommu].forEach((fd) => s.close(fd));
  t.same(k.leaks(), { fds: 0, mappings: 0, pinned: 0 });
});

t.test("edu model: DMA engine and interrupts driven through an mmap'd BAR", async (t) => {
  const k = fresh(t);
  const s = k.sys;
  const { c, d, close } = openDev(k);
  setBusMaster(k, d);
  const efd = s.eventfd(0, EFD_NONBLOCK);
  setIrqs(k, d, 1, EVENTFD_TRIGGER, 0, 1, [efd]);
  const buf = s.mmap(4096, RW, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0n);
  s.view(buf, 4).set([0xde, 0xad, 0xbe, 0xef]);
  s.ioctl(c, V.VFIO_IOMMU_MAP_DMA, alloc(V.vfio_iommu_type1_dma_map, { argsz: 32, flags: 3, vaddr: buf, iova: 0x100000n, size: 4096n }));
  const bar = s.mmap(1 << 20, RW, MAP_SHARED, d, 0n);
  const r = s.view(bar, 0x100);
  const dv = new DataView(r.buffer, r.byteOffset, r.byteLength);
  dv.setBigUint64(0x80, 0x100000n, true); // source: RAM
  dv.setBigUint64(0x88, 0x40000n, true); // destination: the device buffer
  dv.setBigUint64(0x90, 4n, true);
  dv.setUint32(0x98, 0x1 | 0x4, true); // start, RAM to device, interrupt when done
  const ready = await s.pollAsync([{ fd: efd, events: POLLIN }], 1000);
  t.same(ready, [POLLIN], 'the DMA-done interrupt arrived as MSI');
  t.equal(dv.getUint32(0x24, true), 0x100, 'interrupt status says DMA');
  dv.setUint32(0x64, 0x100, true); // acknowledge
  t.same(
    [...k.device('0000:00:03.0').bar(0).subarray(0x40000, 0x40004)],
    [0xff, 0xff, 0xff, 0xff],
    'as on QEMU, BAR0 does not show the DMA buffer',
  );
  dv.setBigUint64(0x80, 0x40000n, true); // source: the device buffer
  dv.setBigUint64(0x88, 0x100800n, true); // destination: RAM, 2 KiB further
  dv.setUint32(0x98, 0x1 | 0x2, true); // start, device to RAM
  // No system call, no interrupt asked for: the device sees the command on its own and clears the start bit when done.
  await until('the DMA to RAM', () => (dv.getUint32(0x98, true) & 0x1) === 0);
  t.same([...s.view(buf + 0x800n, 4)], [0xde, 0xad, 0xbe, 0xef], 'the device read the buffer through the IOMMU and wrote it back');
  s.munmap(bar, 1 << 20);
  s.munmap(buf, 4096);
  s.close(efd);
  close();
  t.same(k.leaks(), { fds: 0, mappings: 0, pinned: 0 });
});
