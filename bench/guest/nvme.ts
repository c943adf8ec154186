// The TypeScript half of the NVMe benchmark (bench/guest/nvme.sh runs it in
// the VM guest, next to fio on the kernel's nvme driver): 4 KiB random reads
// by the example driver (examples/nvme) through the library, at a queue
// depth, completions by MSI-X or polled, for a time.
//
// Usage: node nvme.js ADDRESS QD interrupt|poll SECONDS
// Prints one `BENCH-NVME {json}` line: impl 'ts', qd, completions, ios,
// seconds, iops, p50/p99 latency in µs (submission to completion, as fio's
// clat is measured from submission to the kernel's completion).
//
// The buffers are allocated and mapped once; each I/O is one Read command,
// one SQ doorbell, and one CQ doorbell per batch of completions reaped.
import { vfio } from '../../lib/index.js';
import { Nvme } from '../../examples/nvme/driver.js';

const [address, qdArg, completions, secondsArg] = process.argv.slice(2);
const qd = Number(qdArg);
const seconds = Number(secondsArg);
if (address === undefined || !(qd >= 1 && qd <= 63) || (completions !== 'interrupt' && completions !== 'poll') || !(seconds > 0)) {
  process.stderr.write('usage: node nvme.js ADDRESS QD interrupt|poll SECONDS\n');
  process.exit(2);
}

const nvme = await Nvme.open(vfio, address, { ioQueues: 1, completions });
try {
  const bs = nvme.namespace.blockSize;
  const perIo = 4096 / bs;
  // Reads spread over the first 1 GiB (or the namespace), 4 KiB aligned.
  const slots = Math.floor(Math.min(Number(nvme.namespace.blocks), (1 << 30) / bs) / perIo);
  using buf = nvme.allocBuffer(qd * 4096);
  let seed = 0x9e3779b9;
  const rand = (): number => {
    seed ^= seed << 13;
    seed ^= seed >>> 17;
    seed ^= seed << 5;
    return (seed >>> 0) % slots;
  };
  const lat: number[] = [];
  let ios = 0;
  let warm = true;
  const warmUntil = performance.now() + 1000;
  const end = warmUntil + seconds * 1000;
  let endedAt = 0;
  // One loop per slot of the queue depth: each keeps one read in flight.
  const worker = async (slot: number): Promise<void> => {
    for (;;) {
      const t0 = performance.now();
      if (t0 >= end) return;
      await nvme.read(rand() * perIo, perIo, buf, slot * 4096);
      const t1 = performance.now();
      if (warm && t1 >= warmUntil) warm = false;
      if (!warm && t1 < end) {
        ios++;
        lat.push(t1 - t0);
        endedAt = t1;
      }
    }
  };
  const started = warmUntil;
  await Promise.all(Array.from({ length: qd }, (_, s) => worker(s)));
  lat.sort((a, b) => a - b);
  const pct = (p: number): number => Math.round(lat[Math.min(lat.length - 1, Math.floor((p / 100) * lat.length))]! * 1000 * 10) / 10;
  const elapsed = (endedAt - started) / 1000;
  process.stdout.write(
    `BENCH-NVME ${JSON.stringify({ impl: 'ts', qd, completions, ios, seconds: elapsed, iops: Math.round(ios / elapsed), p50us: pct(50), p99us: pct(99) })}\n`,
  );
} finally {
  await nvme.close();
}
