// The TypeScript side of `npm run bench`: the same work as bench/c/bench.c,
// through the library's public API (lib/index.ts), run in the VM guest.
//
// Usage: node main.js MODE EDU CASE:ITERS:BATCHES ...   (the C program's arguments)
// Prints one `BENCH {json}` line per case, as the C program does. The case
// `import` must come first: it times loading the library, which this module
// therefore imports only dynamically.
//
// Each case mirrors its C counterpart step for step; bench/README.md lists
// what both do. One warm-up batch (JIT, page faults) runs before the timed ones.
// Type-only: erased from the JS, so it loads nothing before the timed import.
import type { Container, Device, DmaBuffer, IrqSet, Region } from '../../lib/index.js';

const started = process.hrtime.bigint();
const lib = await import('../../lib/index.js');
const importNs = Number(process.hrtime.bigint() - started);

/** `host`: only the ram-* and ffi-floor cases, natively on the host (no device, no TCG). */
type Mode = 'group' | 'cdev' | 'host';

const PAGE = 4096;
// edu's registers (QEMU docs/specs/edu.rst).
const EDU_LIVENESS = 0x04;
const EDU_IRQ_RAISE = 0x60;
const EDU_IRQ_ACK = 0x64;

const [modeArg, edu, ...plan] = process.argv.slice(2);
if ((modeArg !== 'group' && modeArg !== 'cdev' && modeArg !== 'host') || edu === undefined || plan.length === 0) {
  process.stderr.write('usage: node main.js group|cdev|host EDU CASE:ITERS:BATCHES ...\n');
  process.exit(2);
}
const mode: Mode = modeArg;
const { vfio } = lib;

function now(): number {
  return Number(process.hrtime.bigint());
}

function emit(name: string, unit: 'op' | 'event', samples: readonly number[]): void {
  const rounded = samples.map((s) => Math.round(s * 10) / 10);
  process.stdout.write(`BENCH ${JSON.stringify({ impl: 'ts', mode, case: name, unit, samples: rounded })}\n`);
}

/**
 * Untimed warm-up: the JIT must have compiled the hot paths before the timed
 * batches. Under TCG, with the second vCPU shared by V8's compiler threads,
 * that takes seconds; the guest script sets it (BENCH_WARMUP_MS).
 */
const WARMUP_NS = Number(process.env['BENCH_WARMUP_MS'] ?? 0) * 1e6;

/** Runs `batch` (which does `iters` operations) untimed for WARMUP_NS (at least once), then `batches` times: ns per operation per batch. */
function timeBatches(iters: number, batches: number, batch: () => void): number[] {
  const w0 = now();
  do batch();
  while (now() - w0 < WARMUP_NS);
  const out: number[] = [];
  for (let b = 0; b < batches; b++) {
    const t0 = now();
    batch();
    out.push((now() - t0) / iters);
  }
  return out;
}

/** Calls `step` until the warm-up time has passed (at least once), then `n` times; returns what the timed calls returned. */
async function timeEvents(n: number, step: () => Promise<number>): Promise<number[]> {
  const w0 = now();
  do await step();
  while (now() - w0 < WARMUP_NS);
  const out: number[] = [];
  for (let i = 0; i < n; i++) out.push(await step());
  return out;
}

// --- the device, set up as bench.c's bring_up() does ---------------------------

interface Setup {
  readonly container: Container;
  readonly device: Device;
  readonly bar: Region;
  readonly msi: IrqSet;
}

/** Open the container, assign the device, read its info, map BAR0, enable one MSI vector. */
function bringUp(): Setup {
  if (mode === 'host') throw new Error("this case needs the VM's device (mode host runs only ram-* and ffi-floor)");
  const container = vfio.createContainer({ mode });
  container.assignDevice(edu!);
  const device = vfio.openDevice(edu!);
  device.info();
  const bar = device.mapBar(0);
  const msi = device.irqs.enable('msi', 1);
  return { container, device, bar, msi };
}

// --- the cases ----------------------------------------------------------------

function caseRegionInfo(s: Setup, iters: number, batches: number): number[] {
  return timeBatches(iters, batches, () => {
    for (let i = 0; i < iters; i++) s.device.regionInfo(0);
  });
}

function caseDma(s: Setup, size: number, iters: number, batches: number, opts: { hugepages?: boolean } = {}): number[] {
  const buf = s.container.allocDma(size, opts);
  if (opts.hugepages === true && !buf.hugepages) process.stderr.write('bench: no free 2 MiB huge page: dma-2m on normal pages\n');
  buf.unmap();
  const out = timeBatches(iters, batches, () => {
    for (let i = 0; i < iters; i++) {
      buf.map();
      buf.unmap();
    }
  });
  buf.free();
  return out;
}

// The MMIO/RAM loops: bench.c's case_mmio, each in a function of its own
// that takes the region (or view) and the count as arguments, as C has them
// in registers, with the register offset a constant the JIT folds in, as
// C's compiler does. Written inside the batch closure (as they were), the
// loops read the region, the count and the offset from the closure's
// context on every iteration, checking the module constant for its temporal
// dead zone each time: work C does not do. And the JIT compiles such a long
// loop on-stack while it runs, before the code after it (`sink ^= sum`) ever
// ran; that code then bailed out to the interpreter at the end of every
// batch, inside the clock (~0.05 ms natively, each time). Here nothing
// follows the loop but the return.

function readLoop(region: Region, n: number): number {
  let sum = 0;
  for (let i = 0; i < n; i++) sum = (sum + region.read32(EDU_LIVENESS)) >>> 0;
  return sum;
}

function writeLoop(region: Region, n: number): void {
  for (let i = 0; i < n; i++) region.write32(EDU_LIVENESS, i >>> 0);
}

function viewsReadLoop(u32: Uint32Array, n: number): number {
  let sum = 0;
  for (let i = 0; i < n; i++) sum = (sum + u32[EDU_LIVENESS / 4]!) >>> 0;
  return sum;
}

function caseRead32(r: Region, iters: number, batches: number): number[] {
  let sink = 0;
  const out = timeBatches(iters, batches, () => {
    sink ^= readLoop(r, iters);
  });
  if (sink === -1) process.stdout.write('');
  return out;
}

function caseWrite32(r: Region, iters: number, batches: number): number[] {
  return timeBatches(iters, batches, () => writeLoop(r, iters));
}

/** Informational: the same reads through Region.views() (typed arrays, no per-access checks). */
function caseViewsRead32(r: Region, iters: number, batches: number): number[] {
  let sink = 0;
  const out = r.withViews((v) =>
    timeBatches(iters, batches, () => {
      sink ^= viewsReadLoop(v.u32, iters);
    }),
  );
  if (sink === -1) process.stdout.write('');
  return out;
}

async function caseIrq(s: Setup, iters: number): Promise<number[]> {
  s.device.config.setBusMaster(true); // edu's MSI is a bus-master write
  const events = s.msi.vector(0).events();
  try {
    return await timeEvents(iters, async () => {
      const t0 = now();
      s.bar.write32(EDU_IRQ_RAISE, 1);
      const r = await events.next();
      const dt = now() - t0;
      if (r.done === true) throw new Error('the MSI vector ended');
      s.bar.write32(EDU_IRQ_ACK, 1);
      return dt;
    });
  } finally {
    await events.return?.();
  }
}

/** Informational: one `await vector.wait()` per interrupt (starts and stops listening each time). */
async function caseIrqWait(s: Setup, iters: number): Promise<number[]> {
  s.device.config.setBusMaster(true);
  const vector = s.msi.vector(0);
  return timeEvents(iters, async () => {
    const t0 = now();
    const next = vector.wait();
    s.bar.write32(EDU_IRQ_RAISE, 1);
    await next;
    const dt = now() - t0;
    s.bar.write32(EDU_IRQ_ACK, 1);
    return dt;
  });
}

function caseBringUp(iters: number, batches: number): number[] {
  const out: number[] = [];
  // Only the bring-up is timed; each one's teardown runs outside the clock.
  const w0 = now();
  let warm = true;
  while (out.length < batches) {
    let total = 0;
    for (let i = 0; i < iters; i++) {
      const t0 = now();
      const s = bringUp();
      total += now() - t0;
      s.container.close();
    }
    if (warm) warm = now() - w0 < WARMUP_NS;
    else out.push(total / iters);
  }
  return out;
}

function caseFirstBringUp(): number[] {
  const t0 = now();
  const s = bringUp();
  const dt = now() - t0;
  s.container.close();
  return [dt];
}

/** N live mappings: map N buffers (the library allocates their IOVAs), then unmap them all. One op = one map + one unmap. */
function caseScale(s: Setup, n: number, batches: number): number[] {
  const bufs: DmaBuffer[] = [];
  for (let i = 0; i < n; i++) bufs.push(s.container.allocDma(PAGE));
  for (const b of bufs) b.unmap();
  const out = timeBatches(n, batches, () => {
    for (const b of bufs) b.map();
    for (const b of bufs) b.unmap();
  });
  for (const b of bufs) b.free();
  return out;
}

// --- main ---------------------------------------------------------------------

let shared = null as Setup | null;
const setup = (): Setup => (shared ??= bringUp());

for (const spec of plan) {
  const m = /^([a-z0-9-]+):(\d+):(\d+)$/.exec(spec);
  if (m === null) throw new Error(`bad case ${spec}`);
  const name = m[1]!;
  const iters = Number(m[2]);
  const batches = Number(m[3]);
  switch (name) {
    case 'import':
      emit(name, 'op', [importNs]);
      break;
    case 'first-bring-up':
    case 'bring-up':
      if (shared !== null) {
        shared.container.close();
        shared = null;
      }
      emit(name, 'op', name === 'bring-up' ? caseBringUp(iters, batches) : caseFirstBringUp());
      break;
    case 'region-info':
      emit(name, 'op', caseRegionInfo(setup(), iters, batches));
      break;
    case 'dma-4k':
      emit(name, 'op', caseDma(setup(), PAGE, iters, batches));
      break;
    case 'dma-2m':
      // On a 2 MiB huge page (bench.c's case_dma_huge says why).
      emit(name, 'op', caseDma(setup(), 2 << 20, iters, batches, { hugepages: true }));
      break;
    case 'mmio-read32':
      emit(name, 'op', caseRead32(setup().bar, iters, batches));
      break;
    case 'mmio-write32':
      emit(name, 'op', caseWrite32(setup().bar, iters, batches));
      break;
    case 'ram-read32':
    case 'ram-write32':
    case 'ram-views-read32': {
      const { ramRegion } = await import('./ram-region.js');
      const ram = ramRegion(PAGE);
      const run = name === 'ram-read32' ? caseRead32 : name === 'ram-write32' ? caseWrite32 : caseViewsRead32;
      const out = run(ram.region, iters, batches);
      ram.close();
      emit(name, 'op', out);
      break;
    }
    case 'ffi-floor': {
      // Every system call of the library goes through this binding
      // (lib/libc/koffi-sys.ts); getuid(2) does no work in the kernel.
      const { koffiSys } = await import('../../lib/libc/koffi-sys.js');
      let sink = 0;
      emit(
        name,
        'op',
        timeBatches(iters, batches, () => {
          for (let i = 0; i < iters; i++) sink ^= koffiSys.getuid();
        }),
      );
      if (sink === -1) process.stdout.write('');
      break;
    }
    case 'irq':
    case 'irq-remote': // the same work; run.sh puts the MSI on the other CPU
      emit(name, 'event', await caseIrq(setup(), iters));
      break;
    case 'irq-wait':
      emit(name, 'event', await caseIrqWait(setup(), iters));
      break;
    case 'scale-1k':
      emit(name, 'op', caseScale(setup(), 1000, batches));
      break;
    case 'scale-10k':
      emit(name, 'op', caseScale(setup(), 10000, batches));
      break;
    default:
      throw new Error(`unknown case ${name}`);
  }
}
shared?.container.close();
vfio.close();
