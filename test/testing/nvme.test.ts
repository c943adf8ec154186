// The fake NVMe controller (lib/testing/nvme.ts) driven with raw commands
// through the library: registers, CC/CSTS, admin and I/O queues, PRP1/PRP2
// and chained PRP lists, status codes, MSI-X per queue and QEMU's quirk
// (a vector is used only if MSI-X was on when its queue was created), and
// BAR0 as Linux reports it (MSI-X table and PBA inside, MSIX_MAPPABLE) or
// with the table left out of the mapping (sparse mmap).
import t, { type Test } from 'tap';
import { createVfio } from '../../lib/core/context.js';
import type { Device, DmaBuffer, Region } from '../../lib/index.js';
import { FakeKernel, NVME_STATUS, nvme, type FakeMode, type NvmeOptions } from '../../lib/testing/index.js';

const ADDR = '0000:00:04.0';
const NO_LEAKS = { fds: 0, mappings: 0, pinned: 0 };
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** A controller with admin queues (64 entries) at raw register level. */
async function rawController(t: Test, mode: FakeMode, opts: NvmeOptions & { msixFirst?: boolean; sparseBar0?: boolean } = {}) {
  const { msixFirst = true, ...nvmeOpts } = opts;
  const kernel = new FakeKernel({ mode, devices: [nvme(nvmeOpts)] });
  t.teardown(() => kernel.dispose());
  const v = createVfio({ sys: kernel.sys, sysfs: kernel.sysfsRoot, dev: kernel.devRoot, proc: kernel.procRoot, env: {} });
  const dev: Device = v.openDevice(ADDR);
  const bar: Region = dev.mapBar(0);
  dev.config.setBusMaster(true);
  const msix = msixFirst ? dev.irqs.enable('msix', 4) : null;
  const asq = dev.container.allocDma(4096);
  const acq = dev.container.allocDma(4096);
  bar.write32(0x24, (63 << 16) | 63);
  bar.write64(0x28, asq.iovaAt(0));
  bar.write64(0x30, acq.iovaAt(0));
  bar.write32(0x14, 1 | (6 << 16) | (4 << 20));
  for (let i = 0; i < 1000 && (bar.read32(0x1c) & 1) === 0; i++) await sleep(1);
  const queues = new Map<number, { sq: DmaBuffer; cq: DmaBuffer; tail: number; head: number; phase: number }>();
  queues.set(0, { sq: asq, cq: acq, tail: 0, head: 0, phase: 1 });
  let cid = 0;
  /** Submits 64 command bytes (fields by dword) on queue `qid` and waits for the completion: [status, dw0]. */
  const submit = async (qid: number, dw: Record<number, number>, prp1 = 0n, prp2 = 0n): Promise<[number, number]> => {
    const q = queues.get(qid)!;
    const s = new DataView(q.sq.bytes.buffer, q.sq.bytes.byteOffset + q.tail * 64, 64);
    for (let i = 0; i < 16; i++) s.setUint32(i * 4, 0, true);
    for (const [k, val] of Object.entries(dw)) s.setUint32(Number(k) * 4, val, true);
    const id = ++cid & 0xffff;
    s.setUint16(2, id, true);
    s.setBigUint64(24, prp1, true);
    s.setBigUint64(32, prp2, true);
    q.tail = (q.tail + 1) % 64;
    bar.write32(0x1000 + 8 * qid, q.tail);
    const c = new DataView(q.cq.bytes.buffer, q.cq.bytes.byteOffset, 4096);
    for (let i = 0; i < 2000; i++) {
      const st = c.getUint16(q.head * 16 + 14, true);
      if ((st & 1) === q.phase) {
        t.equal(c.getUint16(q.head * 16 + 12, true), id, 'completion for the command');
        const dw0 = c.getUint32(q.head * 16, true);
        q.head = (q.head + 1) % 64;
        if (q.head === 0) q.phase ^= 1;
        bar.write32(0x1000 + 8 * qid + 4, q.head);
        return [st >> 1, dw0];
      }
      await sleep(1);
    }
    throw new Error('no completion');
  };
  const createPair = async (qid: number, vector: number) => {
    const sq = dev.container.allocDma(4096);
    const cq = dev.container.allocDma(4096);
    queues.set(qid, { sq, cq, tail: 0, head: 0, phase: 1 });
    t.same(await submit(0, { 0: 0x05, 10: (63 << 16) | qid, 11: (vector << 16) | 3 }, cq.iovaAt(0)), [0, 0], `create CQ ${qid}`);
    t.same(await submit(0, { 0: 0x01, 10: (63 << 16) | qid, 11: (qid << 16) | 1 }, sq.iovaAt(0)), [0, 0], `create SQ ${qid}`);
  };
  return { kernel, v, dev, bar, msix, submit, createPair };
}

for (const mode of ['cdev', 'group', 'noiommu'] as FakeMode[]) {
  t.test(`${mode}: registers, identify, I/O with PRP1/PRP2/PRP lists, status codes`, async (t) => {
    const c = await rawController(t, mode, { serial: 'S123', blocks: 8192, mdts: 0 });
    const { bar, dev, submit } = c;
    const cap = bar.read64(0);
    t.equal(cap & 0xffffn, 2047n, 'CAP.MQES');
    t.equal((cap >> 24n) & 0xffn, 15n, 'CAP.TO: 7.5 s');
    t.equal((cap >> 37n) & 1n, 1n, 'CAP.CSS: NVM');
    t.equal(bar.read32(0x08), 0x00010400, 'VS 1.4');
    t.equal(bar.read32(0x1c) & 3, 1, 'CSTS.RDY');
    const page = dev.container.allocDma(4096);
    t.same(await submit(0, { 0: 0x06, 10: 1 }, page.iovaAt(0)), [0, 0], 'Identify Controller');
    const text = (a: number, n: number) => Buffer.from(page.bytes.subarray(a, a + n)).toString('latin1');
    t.equal(text(4, 20).trimEnd(), 'S123');
    t.equal(text(24, 40).trimEnd(), 'QEMU NVMe Ctrl');
    t.equal(page.bytes[77], 0, 'MDTS as configured');
    t.same(await submit(0, { 0: 0x06, 1: 1, 10: 0 }, page.iovaAt(0)), [0, 0], 'Identify Namespace');
    t.equal(new DataView(page.bytes.buffer, page.bytes.byteOffset).getBigUint64(0, true), 8192n, 'NSZE');
    t.same(await submit(0, { 0: 0x06, 1: 2, 10: 0 }, page.iovaAt(0)), [NVME_STATUS.invalidNamespace | 0x4000, 0], 'no namespace 2 (DNR)');
    t.same(await submit(0, { 0: 0x7f }), [NVME_STATUS.invalidOpcode | 0x4000, 0], 'unknown admin opcode');
    t.same(await submit(0, { 0: 0x09, 10: 7, 11: (1 << 16) | 1 }), [0, (1 << 16) | 1], 'Set Features: 2 queue pairs granted');
    t.same(
      (await submit(0, { 0: 0x05, 10: (63 << 16) | 3, 11: 3 }, page.iovaAt(0)))[0],
      NVME_STATUS.invalidQid | 0x4000,
      'queue 3 > granted',
    );
    t.same((await submit(0, { 0: 0x05, 10: 1, 11: 3 }, page.iovaAt(0)))[0], NVME_STATUS.invalidQueueSize | 0x4000, 'a 1-entry CQ');
    t.same((await submit(0, { 0: 0x05, 10: (63 << 16) | 1, 11: (99 << 16) | 3 }, page.iovaAt(0)))[0], NVME_STATUS.invalidVector | 0x4000);
    t.same(
      (await submit(0, { 0: 0x01, 10: (63 << 16) | 1, 11: (1 << 16) | 1 }, page.iovaAt(0)))[0],
      NVME_STATUS.cqInvalid | 0x4000,
      'SQ without its CQ',
    );
    await c.createPair(1, 1);
    t.same((await submit(0, { 0: 0x04, 10: 1 }))[0], NVME_STATUS.invalidQueueDeletion | 0x4000, 'CQ with an SQ on it');

    // 600 pages (2.3 MiB): PRP1 at an offset, a PRP list that chains to a second list page.
    const pages = 600;
    const data = dev.container.allocDma((pages + 1) * 4096);
    const back = dev.container.allocDma((pages + 1) * 4096);
    const lists = dev.container.allocDma(2 * 4096);
    const bytes = pages * 4096;
    for (let i = 0; i < bytes; i++) data.bytes[512 + i] = (i * 13) & 0xff;
    const prpList = (buf: DmaBuffer) => {
      const dv = new DataView(lists.bytes.buffer, lists.bytes.byteOffset, 8192);
      const entries = Array.from({ length: pages }, (_, i) => buf.iovaAt(512 + (4096 - 512) + i * 4096));
      // PRP1 covers the first 3584 bytes; entries cover the rest: 600 pages - 3584 bytes + ... = 600 entries.
      for (let i = 0; i < 511; i++) dv.setBigUint64(i * 8, entries[i]!, true);
      dv.setBigUint64(511 * 8, lists.iovaAt(4096), true); // chain
      for (let i = 511; i < pages; i++) dv.setBigUint64(4096 + (i - 511) * 8, entries[i]!, true);
      return lists.iovaAt(0);
    };
    const blocks = bytes / 512;
    t.same(await submit(1, { 0: 0x01, 1: 1, 10: 100, 12: blocks - 1 }, data.iovaAt(512), prpList(data)), [0, 0], 'Write, chained PRP list');
    t.same(await submit(1, { 0: 0x02, 1: 1, 10: 100, 12: blocks - 1 }, back.iovaAt(512), prpList(back)), [0, 0], 'Read it back');
    t.ok(Buffer.from(back.bytes.subarray(512, 512 + bytes)).equals(Buffer.from(data.bytes.subarray(512, 512 + bytes))), 'verified');
    // Two pages: PRP2 is the second page itself.
    t.same(await submit(1, { 0: 0x02, 1: 1, 10: 100, 12: 15 }, back.iovaAt(0), back.iovaAt(4096)), [0, 0], 'PRP1 + PRP2');
    t.same((await submit(1, { 0: 0x02, 1: 1, 10: 8190, 12: 3 }, back.iovaAt(0), back.iovaAt(4096)))[0], NVME_STATUS.lbaOutOfRange | 0x4000);
    t.same(
      (await submit(1, { 0: 0x02, 1: 1, 10: 0, 12: 15 }, back.iovaAt(0), back.iovaAt(4096) + 8n))[0],
      NVME_STATUS.invalidPrpOffset | 0x4000,
    );
    t.same(
      (await submit(1, { 0: 0x02, 1: 1, 10: 0, 12: 15 }, back.iovaAt(0), 0x7000_0000_0000n))[0],
      NVME_STATUS.dataTransferError | 0x4000,
      'unmapped PRP',
    );
    t.same((await submit(1, { 0: 0x55, 1: 1 }))[0], NVME_STATUS.invalidOpcode | 0x4000, 'unknown I/O opcode');
    t.same((await submit(1, { 0: 0x02, 1: 3, 12: 0 }, back.iovaAt(0)))[0], NVME_STATUS.invalidNamespace | 0x4000);

    // Shutdown, then disable: CSTS.SHST complete, then 0.
    bar.write32(0x14, bar.read32(0x14) | (1 << 14));
    for (let i = 0; i < 100 && (bar.read32(0x1c) & 0xc) === 0; i++) await sleep(1);
    t.equal(bar.read32(0x1c) & 0xc, 0x8, 'CSTS.SHST: shutdown complete');
    bar.write32(0x14, 0);
    await sleep(3);
    t.equal(bar.read32(0x1c), 0, 'disabled');
    c.v.close();
    t.same(c.kernel.leaks(), NO_LEAKS);
  });
}

t.test('each queue completes on its own MSI-X vector; MDTS refuses larger transfers', async (t) => {
  const c = await rawController(t, 'cdev');
  await c.createPair(1, 1);
  await c.createPair(2, 3);
  const data = c.dev.container.allocDma(4096);
  const seen: number[] = [];
  const offs = [0, 1, 2, 3].map((n) => c.msix!.vector(n).on(() => seen.push(n)));
  await sleep(5);
  seen.length = 0; // the admin queue's interrupts so far
  await c.submit(2, { 0: 0x02, 1: 1, 12: 0 }, data.iovaAt(0));
  await sleep(5);
  t.same(seen, [3], 'queue 2 on vector 3');
  await c.submit(1, { 0: 0x02, 1: 1, 12: 0 }, data.iovaAt(0));
  await sleep(5);
  t.same(seen, [3, 1], 'queue 1 on vector 1');
  const big = await c.submit(1, { 0: 0x02, 1: 1, 12: 1024 }, data.iovaAt(0), data.iovaAt(0));
  t.equal(big[0], NVME_STATUS.invalidField | 0x4000, '512 KiB + 1 block: past MDTS 7');
  for (const off of offs) off();
  c.v.close();
});

t.test("QEMU's quirk: a queue created while MSI-X is off never interrupts", async (t) => {
  const c = await rawController(t, 'cdev', { msixFirst: false });
  await c.createPair(1, 1);
  const msix = c.dev.irqs.enable('msix', 2);
  let fired = 0;
  const off = msix.vector(1).on(() => fired++);
  const data = c.dev.container.allocDma(4096);
  t.same(await c.submit(1, { 0: 0x02, 1: 1, 12: 0 }, data.iovaAt(0)), [0, 0], 'the command completes');
  await sleep(10);
  t.equal(fired, 0, 'but its vector was never put to use');
  t.match(c.kernel.kernelLog.join('\n'), /CQ 1's vector 1 is not in use: notification dropped/);
  off();
  c.v.close();
});

t.test('CC.EN with bad admin queue registers sets CSTS.CFS; a reset clears the controller', async (t) => {
  const kernel = new FakeKernel({ mode: 'cdev', devices: [nvme()] });
  t.teardown(() => kernel.dispose());
  const v = createVfio({ sys: kernel.sys, sysfs: kernel.sysfsRoot, dev: kernel.devRoot, proc: kernel.procRoot, env: {} });
  const dev = v.openDevice(ADDR);
  const bar = dev.mapBar(0);
  bar.write32(0x14, 1 | (6 << 16) | (4 << 20)); // ASQ/ACQ 0
  await sleep(3);
  t.equal(bar.read32(0x1c) & 2, 2, 'CSTS.CFS');
  t.match(kernel.kernelLog.join('\n'), /CC.EN refused: ASQ or ACQ is 0/);
  dev.reset();
  t.equal(bar.read32(0x1c), 0, 'FLR: CSTS back to 0');
  t.equal(bar.read32(0x14), 0, 'CC back to 0');
  v.close();
});

t.test('BAR0 region info: MSI-X table and PBA inside a mappable BAR, or left out of the mapping (sparse mmap)', async (t) => {
  for (const sparse of [false, true]) {
    const kernel = new FakeKernel({ mode: 'cdev', devices: [nvme({ sparseBar0: sparse })] });
    const v = createVfio({ sys: kernel.sys, sysfs: kernel.sysfsRoot, dev: kernel.devRoot, proc: kernel.procRoot, env: {} });
    const dev = v.openDevice(ADDR);
    const info = dev.regionInfo(0);
    t.equal(info.size, 16384);
    t.equal(info.msixMappable, !sparse, `sparse ${sparse}: MSIX_MAPPABLE`);
    t.same(info.sparseAreas?.map((a) => [a.offset, a.size]) ?? null, sparse ? [[0, 0x2000]] : null, 'sparse areas');
    const bar = dev.mapBar(0);
    t.same(
      bar.mappedAreas.map((a) => [a.offset, a.size]),
      sparse ? [[0, 0x2000]] : [[0, 16384]],
      sparse ? 'only the registers and doorbells are mapped' : 'the whole BAR is mapped',
    );
    t.equal(bar.read32(0x08), 0x00010400, 'VS through the mapping');
    // The MSI-X table (0x2000) and PBA (0x3000): vfio-pci's pread gives ~0 for the table, the PBA as it is.
    if (sparse) {
      // Outside the mapping: pread/pwrite, where vfio-pci reads the table as ~0 and drops writes to it.
      t.equal(bar.read32(0x2000), 0xffffffff, 'MSI-X table: read through pread, refused by vfio-pci');
      bar.write32(0x2000, 0x1234);
      t.equal(bar.read32(0x2000), 0xffffffff, 'a write to the table is dropped');
      t.equal(bar.read32(0x3000), 0, 'PBA through pread: nothing pending');
      const pre = kernel.syscalls;
      bar.read32(0x1c);
      t.equal(kernel.syscalls, pre, 'a register read through the mapping makes no system call');
      bar.read32(0x3000);
      t.equal(kernel.syscalls, pre + 1, 'a PBA read is one pread');
    } else {
      const pre = kernel.syscalls;
      bar.read32(0x2000 + 12);
      t.equal(kernel.syscalls, pre, 'the MSI-X table is read through the mapping (no system call)');
      t.equal(bar.read32(0x3000), 0, 'PBA: nothing pending');
    }
    v.close();
    t.same(kernel.leaks(), NO_LEAKS);
    kernel.dispose();
  }
});
