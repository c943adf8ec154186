// The NVMe example driver (examples/nvme) on QEMU's nvme in the VM, in the
// booted mode: identify fields against QEMU's command line, random writes
// and reads (one block to 128 KiB: PRP1, PRP2 and PRP lists) all verified,
// several I/O queue pairs each completing on its own MSI-X vector (as the
// kernel counts them in /proc/interrupts), BAR0's region info against
// sysfs and the library's mapping choice, and huge-page buffers in no-IOMMU
// mode; and an enabled MSI-X set growing on the real kernel.
// VFIO_NVME_IOS sets how many random writes+reads run (default 200 in CI,
// bounded for TCG; VFIO_NVME_IOS=1000 is the full count).
//
// The machine's nvme comes from VFIO_VM_NVME / VFIO_VM_NVME_SERIAL (test/vm/run.sh).
import t from 'tap';
import { readFileSync } from 'node:fs';
import { vfio } from '../../../lib/index.js';
import { Nvme } from '../../../examples/nvme/driver.js';
import { guestEnv } from './guest-env.js';

const env = guestEnv();
const address = process.env.VFIO_VM_NVME ?? '';
const nvmeSerial = process.env.VFIO_VM_NVME_SERIAL ?? '';
if (env === null) {
  t.plan(0, 'VM guest test: runs inside the VM via `npm run test:vm`');
} else if (address === '') {
  t.plan(0, 'this VM machine has no NVMe controller (VFIO_VM_NVME unset: test/vm/run.sh predates it)');
} else {
  const { mode } = env;
  const IOS = Number(process.env.VFIO_NVME_IOS ?? '200');
  const QUEUES = 3;

  /** MSI-X interrupts the kernel counted per vector of the device (vfio-msix[N](address) lines of /proc/interrupts). */
  const msixCounts = (): Map<number, number> => {
    const counts = new Map<number, number>();
    for (const line of readFileSync('/proc/interrupts', 'utf8').split('\n')) {
      const m = /vfio-msix\[(\d+)\]\((\S+)\)/.exec(line);
      if (m === null || m[2] !== address) continue;
      const perCpu = line
        .trim()
        .split(/\s+/)
        .slice(1)
        .filter((f) => /^\d+$/.test(f));
      counts.set(
        Number(m[1]),
        perCpu.reduce((a, b) => a + Number(b), 0),
      );
    }
    return counts;
  };

  t.test('BAR0: region info as the kernel reports it, and the mapping the library chose', async (t) => {
    using dev = vfio.openDevice(address);
    const info = dev.regionInfo(0);
    const [start, end] = readFileSync(`/sys/bus/pci/devices/${address}/resource`, 'utf8')
      .split('\n')[0]!
      .split(/\s+/)
      .map((x) => BigInt(x));
    t.equal(BigInt(info.size), end! - start! + 1n, 'size matches sysfs resource');
    t.equal(info.mappable, true, 'mmap-able');
    t.equal(info.msixMappable, true, 'Linux reports MSIX_MAPPABLE for the BAR holding the MSI-X table');
    t.equal(info.sparseAreas, null, 'no sparse areas');
    const bar = dev.mapBar(0);
    t.same(bar.mappedAreas, [{ offset: 0, size: info.size }], 'so the library maps the whole BAR');
    t.equal(bar.read32(0x08), 0x00010400, 'VS 1.4 through the mapping');
  });

  t.test("identify: model, the serial on QEMU's command line, namespace", async (t) => {
    await using nvme = await Nvme.open(vfio, address, { ioQueues: 1 });
    t.equal(nvme.mode, mode);
    t.equal(nvme.controller.model, 'QEMU NVMe Ctrl');
    t.equal(nvme.controller.serial, nvmeSerial);
    t.equal(nvme.controller.version, '1.4.0');
    t.ok(nvme.namespace.blocks > 0n, `namespace 1: ${nvme.namespace.blocks} blocks of ${nvme.namespace.blockSize}`);
    t.ok(nvme.controller.maxTransfer >= 128 * 1024, `MDTS ${nvme.controller.maxTransfer} bytes`);
  });

  t.test(`${IOS} writes and reads at random LBAs, 1 block to 128 KiB, on ${QUEUES} queues, each on its own vector`, async (t) => {
    await using nvme = await Nvme.open(vfio, address, { ioQueues: QUEUES });
    const bs = nvme.namespace.blockSize;
    const span = Math.min(Number(nvme.namespace.blocks), (16 * 1024 * 1024) / bs);
    const shadow = new Uint8Array(span * bs);
    using out = nvme.allocBuffer(128 * 1024);
    using back = nvme.allocBuffer(128 * 1024);
    let seed = 12345;
    const rand = (n: number): number => {
      seed = (Math.imul(seed, 1103515245) + 12345) >>> 0;
      return seed % n;
    };
    const before = msixCounts();
    let verified = 0;
    const started = performance.now();
    for (let i = 0; i < IOS; i++) {
      const blocks = 1 + rand((128 * 1024) / bs);
      const lba = rand(span - blocks + 1);
      const queue = 1 + (i % QUEUES);
      const bytes = blocks * bs;
      const o = out.bytes;
      for (let k = 0; k < bytes; k += 4) o[k] = rand(256);
      await nvme.write(lba, blocks, out, 0, queue);
      shadow.set(o.subarray(0, bytes), lba * bs);
      back.bytes.fill(0, 0, bytes);
      await nvme.read(lba, blocks, back, 0, queue);
      if (Buffer.compare(Buffer.from(back.bytes.buffer, back.bytes.byteOffset, bytes), Buffer.from(o.buffer, o.byteOffset, bytes)) === 0)
        verified++;
    }
    const ms = performance.now() - started;
    t.equal(verified, IOS, `${IOS} write+read pairs verified (${(ms / 1000).toFixed(1)} s, ${((2 * IOS) / (ms / 1000)).toFixed(0)} I/O/s)`);
    // The shadow: every block written reads back as last written.
    let same = true;
    for (let lba = 0; lba < span; lba += 256) {
      const n = Math.min(256, span - lba);
      await nvme.read(lba, n, back, 0, 1);
      if (Buffer.compare(Buffer.from(back.bytes.buffer, back.bytes.byteOffset, n * bs), Buffer.from(shadow.buffer, lba * bs, n * bs)) !== 0)
        same = false;
    }
    t.ok(same, 'the first 16 MiB read back as the shadow copy says');
    const after = msixCounts();
    for (let q = 1; q <= QUEUES; q++) {
      t.ok(
        (after.get(q) ?? 0) - (before.get(q) ?? 0) >= IOS / QUEUES,
        `queue ${q} completed on MSI-X vector ${q} (${(after.get(q) ?? 0) - (before.get(q) ?? 0)} interrupts)`,
      );
    }
  });

  t.test('polled completions, and a buffer of two huge pages (no-IOMMU: per-page physical addresses)', async (t) => {
    await using nvme = await Nvme.open(vfio, address, { ioQueues: 1, completions: 'poll' });
    const bs = nvme.namespace.blockSize;
    using buf = vfio.defaultContainer.allocDma(4 * 1024 * 1024, { hugepages: true });
    if (mode === 'noiommu') t.equal(buf.contiguousFrom(0) <= 2 * 1024 * 1024 || buf.contiguous, true, 'contiguous per huge page');
    const edge = 2 * 1024 * 1024 - 64 * 1024;
    for (let i = 0; i < 128 * 1024; i++) buf.bytes[edge + i] = (i * 29) & 0xff;
    await nvme.write(0, (128 * 1024) / bs, buf, edge);
    buf.bytes.fill(0, edge, edge + 128 * 1024);
    await nvme.read(0, (128 * 1024) / bs, buf, edge);
    t.ok(
      buf.bytes.subarray(edge, edge + 128 * 1024).every((b, i) => b === ((i * 29) & 0xff)),
      '128 KiB across the huge-page boundary verified',
    );
  });

  t.test('an enabled MSI-X set grows on the real kernel (no NORESIZE), its vectors keep working', async (t) => {
    using dev = vfio.openDevice(address);
    dev.config.setBusMaster(true);
    const info = dev.irqs.info('msix');
    t.ok(info.count >= 4, `${info.count} MSI-X vectors`);
    t.equal(info.noresize, false, 'the kernel allows adding vectors to an enabled MSI-X set');
    const set = dev.irqs.enable('msix', 2);
    const v0 = set.vector(0);
    set.grow(4);
    t.equal(set.count, 4);
    t.equal(set.vector(0), v0, 'vector 0 kept');
    set.trigger(3);
    t.equal(await set.vector(3).wait({ signal: AbortSignal.timeout(10_000) }), 1, 'a new vector is wired (loopback)');
    set.trigger(0);
    t.equal(await v0.wait({ signal: AbortSignal.timeout(10_000) }), 1, 'an old one still is');
    set.trigger(1);
    await new Promise((r) => setTimeout(r, 50));
    t.equal(set.vector(1).take(), 1, 'take(): the pending count, without waiting');
    t.equal(set.vector(1).take(), 0);
  });
}
