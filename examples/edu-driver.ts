// A complete userspace driver for QEMU's `edu` device (docs/specs/edu.rst in
// QEMU), in TypeScript, through VFIO: identify the device, check that it is
// alive, move data RAM -> device -> RAM with its DMA engine, and compute a
// factorial that the device announces with an MSI interrupt.
//
// It is the model to copy for your own device: open it, map its BAR, turn on
// bus mastering, enable interrupts, allocate DMA memory in the device's
// container, and let `using` release everything in the right order.
//
//   npm run examples:edu-driver -- 0000:00:03.0        (edu bound to vfio-pci, as root)
//
// In your own project, import from 'vfio' instead of '../lib/index.js'.
import { pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import { vfio, type Device, type IrqSet, type Region, type Vfio } from '../lib/index.js';

// --- the device's registers (BAR0), from QEMU's docs/specs/edu.rst ----------
const REG_ID = 0x00; //          identification: 0xRRrr00ed (RR.rr = version)
const REG_LIVENESS = 0x04; //    reads back the inverse of what was written
const REG_FACTORIAL = 0x08; //   write n: computes n! in place
const REG_STATUS = 0x20; //      bit 0 computing, bit 7 raise an interrupt after n!
const REG_IRQ_STATUS = 0x24; //  what raised the interrupt
const REG_IRQ_ACK = 0x64; //     write the status bits back to lower it
const REG_DMA_SRC = 0x80; //     64-bit DMA source address
const REG_DMA_DST = 0x88; //     64-bit DMA destination address
const REG_DMA_COUNT = 0x90; //   bytes to move
const REG_DMA_CMD = 0x98; //     bit 0 start, bit 1 direction (1: device -> RAM), bit 2 interrupt when done

const STATUS_IRQ_ON_FACTORIAL = 0x80;
const DMA_START = 0x1;
const DMA_DEVICE_TO_RAM = 0x2;
const DMA_IRQ_WHEN_DONE = 0x4;
const IRQ_FACTORIAL = 0x001;
const IRQ_DMA = 0x100;

/** edu's own 4 KiB buffer, as the DMA engine addresses it. */
const EDU_BUFFER = 0x40000n;
/** Bytes per transfer: QEMU 7.2's edu aborts on a full 4096-byte one. */
const DMA_LENGTH = 2048;
/** How long to wait for an interrupt (QEMU without KVM is slow). */
const IRQ_TIMEOUT_MS = 10_000;

export interface EduOptions {
  /**
   * Exclusive upper bound of the addresses edu's DMA engine can reach: 2^28
   * unless QEMU was started with `-device edu,dma_mask=...`.
   */
  readonly dmaLimit?: bigint;
  /** Reach BAR0 through pread/pwrite instead of a mapping (same accessors, slower). */
  readonly noMmap?: boolean;
}

export class Edu implements Disposable {
  readonly #dev: Device;
  readonly #bar: Region;
  readonly #msi: IrqSet;
  readonly #dmaLimit: bigint;

  /**
   * Opens edu at `address` and gets it ready: BAR0 mapped, bus mastering on
   * (the device may DMA and send MSIs only then), one MSI vector enabled.
   * Everything is released again if a step fails.
   */
  static open(ctx: Vfio, address: string, opts: EduOptions = {}): Edu {
    const dev = ctx.openDevice(address);
    try {
      return new Edu(dev, opts);
    } catch (err) {
      dev.release();
      throw err;
    }
  }

  private constructor(dev: Device, opts: EduOptions) {
    this.#dev = dev;
    this.#dmaLimit = opts.dmaLimit ?? 2n ** 28n;
    // The BAR, the MSI set and their eventfds belong to the device: releasing
    // it (dispose) closes them first.
    this.#bar = dev.mapBar(0, { noMmap: opts.noMmap });
    const id = this.#bar.read32(REG_ID);
    if ((id & 0xffff) !== 0x00ed) throw new Error(`${dev.address} is not an edu device (identification 0x${id.toString(16)})`);
    dev.config.setBusMaster(true);
    this.#msi = dev.irqs.enable('msi', 1);
  }

  get address(): string {
    return this.#dev.address;
  }

  /** The VFIO mode the device is driven in. */
  get mode(): string {
    return this.#dev.mode;
  }

  /** Whether BAR0 is mmap'd (else reached with pread/pwrite). */
  get mapped(): boolean {
    return this.#bar.mappedAreas.length > 0;
  }

  /** The identification register and the version it encodes. */
  identify(): { id: number; major: number; minor: number } {
    const id = this.#bar.read32(REG_ID);
    return { id, major: id >>> 24, minor: (id >>> 16) & 0xff };
  }

  /** Writes `value` to the liveness register; a live device returns its inverse. */
  checkLiveness(value: number): { wrote: number; read: number; alive: boolean } {
    this.#bar.write32(REG_LIVENESS, value);
    const read = this.#bar.read32(REG_LIVENESS);
    return { wrote: value, read, alive: read === ~value >>> 0 };
  }

  /**
   * Sends DMA_LENGTH bytes of a pattern from RAM into edu's buffer, brings
   * them back into another part of the same DMA buffer, and compares. The
   * device sees the buffer at its IOVA (its physical address in no-IOMMU
   * mode): the one address the program hands it.
   */
  async dmaRoundTrip(): Promise<{ iova: bigint; bytes: number; verified: boolean }> {
    // One page, locked and mapped for the device below its DMA limit; freed
    // (unmapped, then unlocked) when this function returns, however it does.
    using buf = this.#dev.container.allocDma(2 * DMA_LENGTH, { dmaLimit: this.#dmaLimit });
    const out = buf.bytes.subarray(0, DMA_LENGTH);
    const back = buf.bytes.subarray(DMA_LENGTH, 2 * DMA_LENGTH);
    for (let i = 0; i < out.length; i++) out[i] = (i * 7 + 3) & 0xff;
    back.fill(0);

    await this.#dma(buf.iova, EDU_BUFFER, 0);
    await this.#dma(EDU_BUFFER, buf.iovaAt(DMA_LENGTH), DMA_DEVICE_TO_RAM);
    const verified = back.every((b, i) => b === out[i]);
    return { iova: buf.iova, bytes: DMA_LENGTH, verified };
  }

  /** n! computed by the device, which raises an interrupt when it is done. */
  async factorial(n: number): Promise<number> {
    this.#bar.write32(REG_STATUS, STATUS_IRQ_ON_FACTORIAL);
    this.#bar.write32(REG_FACTORIAL, n);
    await this.#interrupt(IRQ_FACTORIAL, `${n}!`);
    return this.#bar.read32(REG_FACTORIAL);
  }

  /** Releases the device: MSI disabled, BAR unmapped, device fd closed. */
  [Symbol.dispose](): void {
    this.#dev.release();
  }

  /** One DMA transfer of DMA_LENGTH bytes, completed by an interrupt. */
  async #dma(src: bigint, dst: bigint, direction: number): Promise<void> {
    this.#bar.write64(REG_DMA_SRC, src);
    this.#bar.write64(REG_DMA_DST, dst);
    this.#bar.write64(REG_DMA_COUNT, BigInt(DMA_LENGTH));
    this.#bar.write32(REG_DMA_CMD, DMA_START | direction | DMA_IRQ_WHEN_DONE);
    await this.#interrupt(IRQ_DMA, 'a DMA transfer');
    if ((this.#bar.read32(REG_DMA_CMD) & DMA_START) !== 0) throw new Error('edu signalled the end of a DMA transfer that is still running');
  }

  /**
   * Waits for the MSI, then reads and acknowledges edu's interrupt status
   * (edu keeps interrupting until the status is written back).
   */
  async #interrupt(expected: number, what: string): Promise<void> {
    try {
      await this.#msi.vector(0).wait({ signal: AbortSignal.timeout(IRQ_TIMEOUT_MS) });
    } catch (err) {
      if (err instanceof DOMException && err.name === 'TimeoutError') {
        throw new Error(`no interrupt from edu for ${what} within ${IRQ_TIMEOUT_MS / 1000} s`);
      }
      throw err;
    }
    const status = this.#bar.read32(REG_IRQ_STATUS);
    this.#bar.write32(REG_IRQ_ACK, status);
    if ((status & expected) === 0) {
      throw new Error(`edu interrupted with status 0x${status.toString(16)}, expected bit 0x${expected.toString(16)} (for ${what})`);
    }
  }
}

const USAGE = `usage: edu-driver <address> [--dma-bits N] [--no-mmap] [--factorial N]

Drives QEMU's edu device (bound to vfio-pci) at <address>: identification,
liveness, a DMA round trip through the IOMMU (physical addresses in no-IOMMU
mode), and an interrupt-driven factorial.

  --dma-bits N    address bits edu's DMA engine decodes (default 28, edu's
                  default; 64 for -device edu,dma_mask=0xffffffffffffffff)
  --factorial N   the factorial to compute (default 10; 12 is the largest
                  that fits edu's 32-bit register)
  --no-mmap       reach BAR0 with pread/pwrite instead of mapping it`;

/** Runs the driver; returns the exit code. `ctx` is the VFIO context (the real kernel unless a test gives another). */
export async function main(argv: readonly string[], ctx: Vfio = vfio, log: (line: string) => void = console.log): Promise<number> {
  let args;
  try {
    args = parseArgs({
      args: [...argv],
      allowPositionals: true,
      options: {
        'dma-bits': { type: 'string' },
        'no-mmap': { type: 'boolean' },
        factorial: { type: 'string' },
        help: { type: 'boolean', short: 'h' },
      },
    });
  } catch (err) {
    console.error(`edu-driver: ${(err as Error).message}\n${USAGE}`);
    return 2;
  }
  if (args.values.help === true) {
    log(USAGE);
    return 0;
  }
  const bits = Number(args.values['dma-bits'] ?? '28');
  const n = Number(args.values.factorial ?? '10');
  if (args.positionals.length !== 1 || !Number.isInteger(bits) || bits < 12 || bits > 64 || !Number.isInteger(n) || n < 0 || n > 12) {
    console.error(`edu-driver: bad arguments\n${USAGE}`);
    return 2;
  }
  const target = args.positionals[0] as string;
  try {
    using edu = Edu.open(ctx, target, { dmaLimit: 2n ** BigInt(bits), noMmap: args.values['no-mmap'] === true });
    log(`edu ${edu.address}, ${edu.mode} mode, BAR0 ${edu.mapped ? "mmap'd" : 'through pread/pwrite'}`);

    const { id, major, minor } = edu.identify();
    log(`  identification  0x${id.toString(16).padStart(8, '0')} (edu version ${major}.${minor})`);

    const live = edu.checkLiveness(0x12345678);
    log(
      `  liveness        wrote 0x${live.wrote.toString(16)}, read back 0x${live.read.toString(16)}: ${live.alive ? 'alive' : 'NOT the inverse'}`,
    );
    if (!live.alive) return 1;

    const dma = await edu.dmaRoundTrip();
    const where = edu.mode === 'noiommu' ? 'physical address' : 'IOVA';
    log(
      `  DMA round trip  ${dma.bytes} bytes RAM -> edu -> RAM at ${where} 0x${dma.iova.toString(16)}: ${dma.verified ? 'verified' : 'MISMATCH'}`,
    );
    if (!dma.verified) return 1;

    const result = await edu.factorial(n);
    log(`  factorial       ${n}! = ${result} (completion signalled by MSI)`);
    return 0;
  } catch (err) {
    // A VfioError's message says which call failed, with what errno, and what to do.
    console.error(`edu-driver: ${err instanceof Error ? err.message : String(err)}`);
    return 1;
  }
}

// Run when executed directly (node dist/examples/edu-driver.js), not when imported.
if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  process.exitCode = await main(process.argv.slice(2));
}
