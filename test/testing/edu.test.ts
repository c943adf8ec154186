// The fake's QEMU edu against QEMU's hw/misc/edu.c and what Linux 6.12 does
// with it: which access widths it takes, that it works on its own clock
// (a driver must poll the status bits or wait for the interrupt), and which
// resets vfio-pci can give it depending on where it sits.
import t, { type Test } from 'tap';
import { EFD_NONBLOCK, MAP_ANONYMOUS, MAP_PRIVATE, MAP_SHARED, O_RDWR, POLLIN } from '../../lib/libc/sys.js';
import { alloc, get } from '../../lib/uapi/codec.js';
import * as V from '../../lib/uapi/vfio.js';
import { EDU_ID, type FakeKernel, edu, pciDevice, type FakeKernelOptions } from '../../lib/testing/index.js';
import { RW, freshKernel, intArg, until } from './harness.js';

const EDU = '0000:00:03.0';
const CFG = 7n << 40n;
const ONES32 = 0xffffffffn;
const ONES64 = (1n << 64n) - 1n;

const fresh = (t: Test, opts: FakeKernelOptions = {}): FakeKernel => freshKernel(t, { mode: 'group', ...opts });

/** Opens `addr` through its group in a Type1v2 container of its own. */
function openDev(k: FakeKernel, addr = EDU, group = 3): { c: number; d: number; close(): void } {
  const s = k.sys;
  const c = s.open(`${k.devRoot}/vfio/vfio`, O_RDWR);
  const g = s.open(`${k.devRoot}/vfio/${group}`, O_RDWR);
  s.ioctl(g, V.VFIO_GROUP_SET_CONTAINER, intArg(c));
  s.ioctlInt(c, V.VFIO_SET_IOMMU, V.VFIO_TYPE1v2_IOMMU);
  const d = s.ioctl(g, V.VFIO_GROUP_GET_DEVICE_FD, Buffer.from(`${addr}\0`));
  return { c, d, close: () => [d, g, c].forEach((fd) => s.close(fd)) };
}

/** One pread of `width` bytes: vfio-pci makes it one access of that width when aligned. */
function rd(k: FakeKernel, d: number, off: number | bigint, width: number): bigint {
  const b = new Uint8Array(width);
  k.sys.pread(d, b, BigInt(off));
  return b.reduceRight((v, x) => (v << 8n) | BigInt(x), 0n);
}

function wr(k: FakeKernel, d: number, off: number | bigint, width: number, v: bigint | number): void {
  const b = new Uint8Array(width);
  let x = BigInt(v);
  for (let i = 0; i < width; i++, x >>= 8n) b[i] = Number(x & 0xffn);
  k.sys.pwrite(d, b, BigInt(off));
}

function busMaster(k: FakeKernel, d: number): void {
  wr(k, d, CFG + 4n, 2, rd(k, d, CFG + 4n, 2) | 0x4n);
}

function deviceFlags(k: FakeKernel, d: number): number {
  const info = alloc(V.vfio_device_info, { argsz: V.vfio_device_info.size });
  k.sys.ioctl(d, V.VFIO_DEVICE_GET_INFO, info);
  return get(V.vfio_device_info, info, 'flags');
}

/** VFIO_DEVICE_GET_PCI_HOT_RESET_INFO: the addresses a bus reset would reset, or the errno. */
function hotResetScope(k: FakeKernel, d: number): string[] | string {
  const H = V.vfio_pci_hot_reset_info;
  const D = V.vfio_pci_dependent_device;
  const r = alloc(H, { argsz: H.size + 4 * D.size }, 4 * D.size);
  try {
    k.sys.ioctl(d, V.VFIO_DEVICE_GET_PCI_HOT_RESET_INFO, r);
  } catch (e) {
    return (e as { code: string }).code;
  }
  return Array.from(
    { length: get(H, r, 'count') },
    (_, i) => `bus ${get(D, r, 'bus', H.size + i * D.size)} devfn ${get(D, r, 'devfn', H.size + i * D.size)}`,
  );
}

/** Anonymous memory mapped for DMA at `iova` in container `c`. */
function dmaBuffer(k: FakeKernel, c: number, iova: bigint): { addr: bigint; bytes(): Uint8Array } {
  const addr = k.sys.mmap(4096, RW, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0n);
  k.sys.ioctl(c, V.VFIO_IOMMU_MAP_DMA, alloc(V.vfio_iommu_type1_dma_map, { argsz: 32, flags: 3, vaddr: addr, iova, size: 4096n }));
  return { addr, bytes: () => k.sys.view(addr, 4096) };
}

t.test('access widths, as QEMU takes them: .valid 4..8 bytes aligned, 4 below 0x80 (pread/pwrite: one access each)', async (t) => {
  const k = fresh(t);
  const { d, close } = openDev(k);
  t.equal(rd(k, d, 0, 4), BigInt(EDU_ID), '4-byte read of the id');
  t.equal(rd(k, d, 0, 2), 0n, '2-byte read: refused by the memory core, reads 0 (unassigned_mem_read)');
  t.equal(rd(k, d, 0, 1), 0n, '1-byte read: 0');
  t.equal(rd(k, d, 2, 4), 0n, 'an unaligned 4-byte pread is two 2-byte accesses: 0');
  t.equal(rd(k, d, 0, 8), ONES64, '8-byte read below 0x80: edu_mmio_read answers all ones');
  t.equal(rd(k, d, 0x0c, 4), ONES32, 'not a register: all ones');
  t.equal(rd(k, d, 0x60, 4), ONES32, 'write-only 0x60 reads all ones');
  t.equal(rd(k, d, 0x40000, 4), ONES32, 'the DMA buffer is not behind BAR0');

  wr(k, d, 4, 4, 0x0f0f0f0f);
  t.equal(rd(k, d, 4, 4), 0xf0f0f0f0n, 'liveness: the inverse');
  wr(k, d, 4, 2, 0x1234);
  wr(k, d, 4, 1, 0x12);
  t.equal(rd(k, d, 4, 4), 0xf0f0f0f0n, '1- and 2-byte writes vanish');
  wr(k, d, 0, 8, 0x55555555_55555555n);
  t.equal(rd(k, d, 4, 4), 0xf0f0f0f0n, 'an 8-byte write below 0x80 is dropped');

  wr(k, d, 0x80, 8, 0x01234567_89abcdefn);
  t.equal(rd(k, d, 0x80, 8), 0x01234567_89abcdefn, '8-byte write and read of the DMA source');
  t.equal(rd(k, d, 0x80, 4), 0x89abcdefn, 'a 4-byte read gives its low half');
  t.equal(rd(k, d, 0x84, 4), ONES32, '0x84 is not a register');
  wr(k, d, 0x84, 4, 0x1111);
  t.equal(rd(k, d, 0x80, 8), 0x01234567_89abcdefn, 'a write to 0x84 is dropped');
  wr(k, d, 0x80, 4, 0x2222);
  t.equal(rd(k, d, 0x80, 8), 0x2222n, 'a 4-byte write sets the register to the zero-extended value');
  wr(k, d, 0x88, 8, 0x40000n);
  t.equal(rd(k, d, 0x80, 16), (0x40000n << 64n) | 0x2222n, 'a 16-byte pread is two 8-byte accesses');

  // Through a mapping, stores outside the registers are gone at the device's next look.
  const bar = k.sys.mmap(1 << 20, RW, MAP_SHARED, d, 0n);
  const u8 = k.sys.view(bar, 0x2000);
  const v = new Uint32Array(u8.buffer, u8.byteOffset, 0x800);
  v[0x1000 / 4] = 0x12345678;
  v[0x0c / 4] = 0x12345678;
  rd(k, d, 0, 4); // any system call
  t.equal(v[0x1000 / 4], 0xffffffff, 'a store to a non-register reads back as all ones');
  t.equal(v[0x0c / 4], 0xffffffff, 'also inside the register block');
  t.equal(v[0], EDU_ID, 'the id through the mapping');
  k.sys.munmap(bar, 1 << 20);
  close();
  t.same(k.leaks(), { fds: 0, mappings: 0, pinned: 0 });
});

t.test('the factorial runs on its own time: status 0x01 stays set until the result is there', async (t) => {
  const k = fresh(t, { devices: [edu({ timing: { factorialMs: 200 } })] });
  const s = k.sys;
  const { d, close } = openDev(k);
  busMaster(k, d);
  const efd = s.eventfd(0, EFD_NONBLOCK);
  const set = alloc(
    V.vfio_irq_set,
    {
      argsz: V.vfio_irq_set.size + 4,
      flags: V.VFIO_IRQ_SET_DATA_EVENTFD | V.VFIO_IRQ_SET_ACTION_TRIGGER,
      index: V.VFIO_PCI_MSI_IRQ_INDEX,
      start: 0,
      count: 1,
    },
    4,
  );
  new DataView(set.buffer, set.byteOffset).setInt32(V.vfio_irq_set.size, efd, true);
  s.ioctl(d, V.VFIO_DEVICE_SET_IRQS, set);

  wr(k, d, 0x08, 4, 5);
  t.equal(rd(k, d, 0x20, 4) & 1n, 1n, 'computing right after the write');
  t.equal(rd(k, d, 0x08, 4), 5n, 'a driver that does not wait reads its input back, not 5!');
  wr(k, d, 0x08, 4, 6);
  wr(k, d, 0x20, 4, 0x80); // raise an interrupt when done: set while computing, it still counts
  t.same(s.poll([{ fd: efd, events: POLLIN }], 0), [0], 'no interrupt yet');
  t.same(await s.pollAsync([{ fd: efd, events: POLLIN }], 5000), [POLLIN], 'the factorial-done MSI');
  t.equal(rd(k, d, 0x20, 4), 0x80n, 'done: computing clear, the interrupt enable stays');
  t.equal(rd(k, d, 0x08, 4), 120n, '5! (the write of 6 while computing was ignored)');
  t.equal(rd(k, d, 0x24, 4), 1n, 'interrupt status: factorial');
  wr(k, d, 0x64, 4, 1);
  t.equal(rd(k, d, 0x24, 4), 0n, 'acknowledged');
  wr(k, d, 0x20, 4, 0);
  wr(k, d, 0x08, 4, 40);
  await until('40!', () => (rd(k, d, 0x20, 4) & 1n) === 0n);
  t.equal(rd(k, d, 0x08, 4), 0n, "40! modulo 2^32 is 0, as edu's uint32 arithmetic has it");
  s.close(efd);
  close();
});

t.test('DMA runs from a timer: the start bit stays set and RAM keeps its old bytes until done', async (t) => {
  const k = fresh(t, { devices: [edu({ timing: { dmaMs: 200 } })] });
  const s = k.sys;
  const { c, d, close } = openDev(k);
  busMaster(k, d);
  const buf = dmaBuffer(k, c, 0x100000n);
  buf.bytes().set([1, 2, 3, 4], 0);
  // RAM -> edu, through pwrite.
  wr(k, d, 0x80, 8, 0x100000n);
  wr(k, d, 0x88, 8, 0x40000n);
  wr(k, d, 0x90, 8, 4n);
  wr(k, d, 0x98, 4, 0x1);
  t.equal(rd(k, d, 0x98, 4), 1n, 'running right after the command');
  wr(k, d, 0x80, 8, 0x200000n);
  t.equal(rd(k, d, 0x80, 8), 0x100000n, 'the source cannot change while the transfer runs');
  wr(k, d, 0x98, 4, 0x1 | 0x2);
  t.equal(rd(k, d, 0x98, 4), 1n, 'nor the command');
  await until('the DMA to the device', () => (rd(k, d, 0x98, 4) & 1n) === 0n);
  // edu -> RAM, through the mapping, with no system call while waiting.
  const bar = s.mmap(1 << 20, RW, MAP_SHARED, d, 0n);
  const v = s.view(bar, 0x100);
  const regs = new DataView(v.buffer, v.byteOffset, v.byteLength);
  regs.setBigUint64(0x80, 0x40000n, true);
  regs.setBigUint64(0x88, 0x100800n, true);
  regs.setUint32(0x98, 0x1 | 0x2, true);
  rd(k, d, 0, 4); // a system call: the device sees the command
  t.same([...buf.bytes().subarray(0x800, 0x804)], [0, 0, 0, 0], 'a driver that does not wait finds RAM unchanged');
  await until('the DMA to RAM', () => (regs.getUint32(0x98, true) & 1) === 0);
  t.same([...buf.bytes().subarray(0x800, 0x804)], [1, 2, 3, 4], 'the bytes made the round trip');

  // No system call at all between the command and its completion: the device still sees it.
  regs.setBigUint64(0x88, 0x100c00n, true);
  regs.setUint32(0x98, 0x1 | 0x2, true);
  await until('a DMA started and finished with no system call', () => (regs.getUint32(0x98, true) & 1) === 0);
  t.same([...buf.bytes().subarray(0xc00, 0xc04)], [1, 2, 3, 4], "done on the device's own clock");
  s.munmap(bar, 1 << 20);
  close();
  s.munmap(buf.addr, 4096);
  t.same(k.leaks(), { fds: 0, mappings: 0, pinned: 0 });
});

/** Wires edu's one MSI vector to a new eventfd. */
function msiEventfd(k: FakeKernel, d: number): number {
  const efd = k.sys.eventfd(0, EFD_NONBLOCK);
  const set = alloc(
    V.vfio_irq_set,
    {
      argsz: V.vfio_irq_set.size + 4,
      flags: V.VFIO_IRQ_SET_DATA_EVENTFD | V.VFIO_IRQ_SET_ACTION_TRIGGER,
      index: V.VFIO_PCI_MSI_IRQ_INDEX,
      start: 0,
      count: 1,
    },
    4,
  );
  new DataView(set.buffer, set.byteOffset).setInt32(V.vfio_irq_set.size, efd, true);
  k.sys.ioctl(d, V.VFIO_DEVICE_SET_IRQS, set);
  return efd;
}

t.test('a blocking poll sleeps until the device acts, as the process blocked in poll(2) would', async (t) => {
  const k = fresh(t, { devices: [edu({ timing: { factorialMs: 60, dmaMs: 80 } })] });
  const s = k.sys;
  const { c, d, close } = openDev(k);
  busMaster(k, d);
  const efd = msiEventfd(k, d);
  const wait = (timeoutMs: number): { revents: number[]; ms: number } => {
    const t0 = performance.now();
    const revents = s.poll([{ fd: efd, events: POLLIN }], timeoutMs);
    return { revents, ms: performance.now() - t0 };
  };
  t.equal(k.nextDeviceDeadline(), null, 'no device work yet');
  t.throws(() => s.poll([{ fd: efd, events: POLLIN }], -1), { code: 'EDEADLK' }, 'poll(-1) with nothing that can ever make the fd ready');

  // A factorial with its interrupt enabled: poll(-1) returns with the MSI.
  wr(k, d, 0x20, 4, 0x80);
  wr(k, d, 0x08, 4, 5);
  t.ok(k.nextDeviceDeadline() !== null, "the factorial is on the kernel's timer list");
  const fact = wait(-1);
  t.same(fact.revents, [POLLIN], 'poll(-1): the factorial-done MSI');
  t.ok(fact.ms >= 50, `it waited for the factorial (${fact.ms.toFixed(1)} ms)`);
  t.equal(rd(k, d, 0x08, 4), 120n, '5!');
  t.equal(rd(k, d, 0x24, 4), 1n, 'interrupt status: factorial');
  t.equal(k.nextDeviceDeadline(), null, 'nothing pending any more');
  wr(k, d, 0x64, 4, 1);
  wr(k, d, 0x20, 4, 0);
  s.read(efd, new Uint8Array(8));

  // A DMA that raises an interrupt: a 1 s poll returns when it is done, not after 1 s.
  const buf = dmaBuffer(k, c, 0x100000n);
  buf.bytes().set([9, 8, 7, 6], 0);
  wr(k, d, 0x80, 8, 0x100000n);
  wr(k, d, 0x88, 8, 0x40000n);
  wr(k, d, 0x90, 8, 4n);
  wr(k, d, 0x98, 4, 0x1 | 0x4);
  const dma = wait(1000);
  t.same(dma.revents, [POLLIN], 'the DMA-done MSI');
  t.ok(dma.ms >= 70 && dma.ms < 600, `returned when the DMA completed (${dma.ms.toFixed(1)} ms), not at the timeout`);
  t.equal(rd(k, d, 0x98, 4) & 1n, 0n, 'the transfer is done');
  t.equal(rd(k, d, 0x24, 4), 0x100n, 'interrupt status: DMA');
  wr(k, d, 0x64, 4, 0x100);
  s.read(efd, new Uint8Array(8));

  // A DMA without an interrupt: poll(-1) sleeps until it is done, then nothing can make the fd ready.
  wr(k, d, 0x80, 8, 0x40000n);
  wr(k, d, 0x88, 8, 0x100800n);
  wr(k, d, 0x98, 4, 0x1 | 0x2);
  const t0 = performance.now();
  t.throws(() => s.poll([{ fd: efd, events: POLLIN }], -1), { code: 'EDEADLK' }, 'no interrupt will come');
  t.ok(performance.now() - t0 >= 70, 'but only once the device had done its work');
  t.same([...buf.bytes().subarray(0x800, 0x804)], [9, 8, 7, 6], 'the DMA ran meanwhile');

  // A timeout shorter than the device's work: poll returns at the timeout, the work still runs.
  wr(k, d, 0x08, 4, 6);
  const short = wait(5);
  t.same(short.revents, [0], 'timeout: nothing ready');
  t.ok(short.ms >= 4, `after the 5 ms timeout (${short.ms.toFixed(1)} ms)`);
  t.equal(rd(k, d, 0x20, 4) & 1n, 1n, 'still computing: the poll did not wait for the 60 ms factorial');
  s.close(efd);
  close();
  s.munmap(buf.addr, 4096);
  t.same(k.leaks(), { fds: 0, mappings: 0, pinned: 0 });
});

t.test('a DMA outside the 4 KiB buffer stops the engine (QEMU 7.2 stops the VM), and says so', async (t) => {
  const k = fresh(t);
  const { c, d, close } = openDev(k);
  busMaster(k, d);
  dmaBuffer(k, c, 0x100000n);
  wr(k, d, 0x80, 8, 0x40000n);
  wr(k, d, 0x88, 8, 0x100000n);
  wr(k, d, 0x90, 8, 4096n); // ends at the buffer's last byte: QEMU 7.2's off-by-one refuses it
  wr(k, d, 0x98, 4, 0x1 | 0x2 | 0x4);
  await new Promise((r) => setTimeout(r, 30));
  t.equal(rd(k, d, 0x98, 4), 0x7n, 'the command never completes');
  t.equal(rd(k, d, 0x24, 4), 0n, 'no interrupt');
  t.match(k.kernelLog.join('\n'), /edu: DMA range 0x40000-0x40fff out of bounds.*QEMU 7\.2 stops the VM/);
  close();
});

t.test('resets follow the topology: none on the root bus, a bus reset alone behind a bridge; edu keeps its registers', async (t) => {
  const k = fresh(t, {
    devices: [
      edu(),
      edu({ address: '0000:01:00.0', group: 10 }),
      // Like the VM tier's edu2: behind a bridge, with another device on its bus.
      edu({ address: '0000:02:01.0', group: 11 }),
      pciDevice({ address: '0000:02:02.0', group: 12, vendor: 0x1af4, device: 0x1005, class: 0x00ff00, driver: 'virtio-pci' }),
    ],
  });
  const s = k.sys;
  const root = openDev(k);
  t.equal(deviceFlags(k, root.d), V.VFIO_DEVICE_FLAGS_PCI, 'root bus: no RESET flag (no FLR, no PM reset, no bus reset)');
  t.throws(() => s.ioctlInt(root.d, V.VFIO_DEVICE_RESET, 0), { code: 'EINVAL' }, 'VFIO_DEVICE_RESET: EINVAL');
  t.equal(hotResetScope(k, root.d), 'ENODEV', 'hot reset info: ENODEV');
  wr(k, root.d, 4, 4, 0x0f);
  root.close();
  const again = openDev(k);
  t.equal(rd(k, again.d, 4, 4), 0xfffffff0n, 'nothing reset it across close and open');
  again.close();

  const alone = openDev(k, '0000:01:00.0', 10);
  t.equal(
    deviceFlags(k, alone.d),
    V.VFIO_DEVICE_FLAGS_PCI | V.VFIO_DEVICE_FLAGS_RESET,
    'alone behind a bridge: RESET (a secondary bus reset)',
  );
  wr(k, alone.d, 4, 4, 0x0f);
  const before = k.device('0000:01:00.0').resets;
  s.ioctlInt(alone.d, V.VFIO_DEVICE_RESET, 0);
  t.equal(k.device('0000:01:00.0').resets, before + 1, 'reset');
  t.equal(rd(k, alone.d, 4, 4), 0xfffffff0n, 'edu.c has no reset handler: its registers stay');
  t.equal(rd(k, alone.d, 0, 4), BigInt(EDU_ID));
  t.same(hotResetScope(k, alone.d), ['bus 1 devfn 0'], 'hot reset info: its bus, itself');
  alone.close();

  const shared = openDev(k, '0000:02:01.0', 11);
  t.equal(deviceFlags(k, shared.d), V.VFIO_DEVICE_FLAGS_PCI, 'another device on its bus: no RESET (pci_parent_bus_reset refuses)');
  t.same(hotResetScope(k, shared.d), ['bus 2 devfn 8', 'bus 2 devfn 16'], 'hot reset info: both devices on the bus');
  shared.close();
  t.same(k.leaks(), { fds: 0, mappings: 0, pinned: 0 });
});

t.test('timing options are checked', async (t) => {
  t.throws(() => edu({ timing: { dmaMs: -1 } }), RangeError);
  t.throws(() => edu({ timing: { factorialMs: Number.NaN } }), RangeError);
});
