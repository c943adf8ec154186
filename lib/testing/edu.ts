// QEMU's `edu` teaching device (hw/misc/edu.c, docs/specs/edu.rst): vendor
// 0x1234, device 0x11e8, class 0x00ff00, revision 0x10, one 1 MiB memory BAR,
// MSI with one vector, INTx pin A, a 28-bit DMA mask (the `dma_mask`
// property; `dmaBits` here). The model follows edu.c register by register:
//
// - Access widths. edu's MemoryRegionOps say `.valid = { min 4, max 8 }` and
//   not unaligned, so QEMU's memory core refuses a 1- or 2-byte or an
//   unaligned access before edu sees it (memory_region_access_valid): the
//   read gives 0 (unassigned_mem_read), the write vanishes. edu_mmio_read/
//   write then take only 4 bytes below 0x80 and 4 or 8 from 0x80 on: an
//   8-byte access below 0x80 reads all ones and is dropped. Any offset that
//   is not a register reads all ones (`val = ~0ULL`) and drops writes; so do
//   the write-only 0x60/0x64 and the DMA buffer's window at 0x40000 (the
//   buffer is reached only by the DMA engine). A 4-byte write of a DMA
//   register sets it to the zero-extended value; a 4-byte read gives its low
//   half; 0x84 etc. are not registers.
// - Registers: 0x00 id 0x010000ed (read-only), 0x04 liveness (reads ~value),
//   0x08 factorial (ignored while computing; reads the input until the result
//   replaces it), 0x20 status (0x01 computing, read-only; 0x80 raise
//   interrupt 0x01 when a factorial is done), 0x24 interrupt status, 0x60
//   raise / 0x64 lower (edu_raise_irq/edu_lower_irq: MSI when enabled, else
//   INTx held while any status bit is set), DMA source 0x80, destination
//   0x88, count 0x90, command 0x98 (a command without the start bit is
//   ignored; source, destination, count and command writes are ignored while
//   a transfer runs).
// - Time. QEMU computes the factorial on a thread and runs a DMA from a timer
//   100 ms (virtual clock) after the command: status bit 0x01 and command bit
//   0x01 stay set until then, so a driver must poll them or wait for the
//   interrupt. Here the work is done `timing.factorialMs` / `timing.dmaMs`
//   after it started (defaults 1 and 2 ms: small, but a driver that reads the
//   result without waiting reads the old one), never in the tick that
//   started it.
// - Reset. edu.c has no reset handler: a function or bus reset resets the
//   PCI side (config space, interrupts), never edu's registers, buffer or
//   pending work. Which resets vfio-pci can do at all depends on where edu
//   sits (see `reset: 'bus'` in pci-spec.ts).
// - DMA range. The transfer must lie inside the 4 KiB buffer at 0x40000.
//   QEMU 7.2 (the VM tier's) stops the whole VM (hw_error) otherwise,
//   including for a count of 0 or a transfer that ends at the buffer's last
//   byte (its range check is off by one); newer QEMUs log and carry on. The
//   fake logs it and the engine stops there: the command stays running and no
//   interrupt comes, so a driver waiting for it fails, as its VM would.
//
// Through pread/pwrite every access is exact (DeviceModel.read/write).
// Through a mapping the model sees stores only as changed bytes at its next
// tick (device-model.ts), which costs three things: a store of the value the
// register already shows is invisible (a second identical liveness write, a
// factorial written over an equal result); the width of a store is unknown
// (a changed register counts as one 4-byte store below 0x80 and one 8-byte
// store from 0x80 on, applied in register order with the DMA command last);
// and a mapping must show one value per byte, so 0x60/0x64 show 0 there (so
// that writing all ones to them is seen) and 0x84, 0x8c, 0x94, 0x9c show the
// high halves of the 64-bit registers.
import type { AccessWidth, DeviceContext, DeviceModel } from './device-model.js';
import { pciDevice, type PciDeviceDescription, type PciDeviceSpec } from './pci-spec.js';

export const EDU_ID = 0x010000ed;

const REG = {
  id: 0x00,
  live: 0x04,
  fact: 0x08,
  status: 0x20,
  irqStatus: 0x24,
  raise: 0x60,
  ack: 0x64,
  src: 0x80,
  dst: 0x88,
  cnt: 0x90,
  cmd: 0x98,
} as const;
/** The bytes a mapping shows register values in; everything past it reads all ones. */
const REG_WINDOW = 0x100;
const DMA_START = 0x40000n;
const DMA_SIZE = 4096n;
const STATUS_COMPUTING = 0x01;
const STATUS_IRQFACT = 0x80;
const CMD_RUN = 0x1n;
const CMD_TO_RAM = 0x2n;
const CMD_IRQ = 0x4n;
const FACT_IRQ = 0x1;
const DMA_IRQ = 0x100;
const U32 = 0xffffffffn;
const U64 = (1n << 64n) - 1n;

export interface EduTiming {
  /** Milliseconds from writing 0x08 until the result is there (default 1). */
  readonly factorialMs?: number;
  /** Milliseconds from the DMA command until the transfer is done (default 2; QEMU: 100 of its virtual clock). */
  readonly dmaMs?: number;
}

/** n! modulo 2^32, as edu's thread computes it (uint32 arithmetic). */
function factorial(n: number): number {
  if (n >= 34) return 0; // 2^32 divides n! from 34! on
  let r = 1;
  for (let i = 2; i <= n; i++) r = Math.imul(r, i) >>> 0;
  return r;
}

class EduModel implements DeviceModel {
  /** The DMA engine's buffer (EduState.dma_buf): not visible through BAR0. */
  private readonly buffer = new Uint8Array(Number(DMA_SIZE));
  private addr4 = 0;
  private fact = 0;
  private status = 0;
  private irqStatus = 0;
  private readonly dma = { src: 0n, dst: 0n, cnt: 0n, cmd: 0n };
  /** When the running factorial / DMA is done, or null. */
  private factDoneAt: number | null = null;
  private dmaDoneAt: number | null = null;
  /** The DMA engine hit QEMU 7.2's hw_error: it never completes again. */
  private dmaStopped = false;
  /** What the register window of BAR0 showed after the last publish: a store through a mapping is a difference from it. */
  private readonly shown = new Uint8Array(REG_WINDOW);

  constructor(
    private readonly dmaMask: bigint,
    private readonly timing: Required<EduTiming>,
  ) {}

  reset(ctx: DeviceContext): void {
    // No reset handler in edu.c: the state stays; BAR memory shows it again.
    this.publish(ctx);
  }

  tick(ctx: DeviceContext): void {
    // Work that is due first: a command seen in this tick completes in a later one.
    this.finishDue(ctx);
    this.absorbStores(ctx);
    this.publish(ctx);
  }

  read(_ctx: DeviceContext, bar: number, offset: number, width: AccessWidth): bigint {
    if (bar !== 0 || width < 4 || offset % width !== 0) return 0n; // refused by the memory core: unassigned_mem_read
    const all = width === 8 ? U64 : U32;
    if (offset < 0x80 && width !== 4) return all;
    const v = this.register(offset);
    return v === null ? all : v & all;
  }

  write(ctx: DeviceContext, bar: number, offset: number, width: AccessWidth, value: bigint): void {
    if (bar !== 0 || width < 4 || offset % width !== 0) return; // refused by the memory core
    if (offset < 0x80 && width !== 4) return;
    this.store(ctx, offset, value);
    // Only registers changed: the rest of BAR0 was refilled by the tick that began this system call.
    this.publish(ctx, false);
  }

  /** A 4- or 8-byte read's value at a register offset (edu_mmio_read's switch), or null for "not a register". */
  private register(offset: number): bigint | null {
    switch (offset) {
      case REG.id:
        return BigInt(EDU_ID);
      case REG.live:
        return BigInt(this.addr4);
      case REG.fact:
        return BigInt(this.fact);
      case REG.status:
        return BigInt(this.status);
      case REG.irqStatus:
        return BigInt(this.irqStatus);
      case REG.src:
        return this.dma.src;
      case REG.dst:
        return this.dma.dst;
      case REG.cnt:
        return this.dma.cnt;
      case REG.cmd:
        return this.dma.cmd;
      default:
        return null;
    }
  }

  /** edu_mmio_write's switch, for an access already accepted. */
  private store(ctx: DeviceContext, offset: number, value: bigint): void {
    const v32 = Number(value & U32);
    const running = (this.dma.cmd & CMD_RUN) !== 0n;
    switch (offset) {
      case REG.live:
        this.addr4 = ~v32 >>> 0;
        break;
      case REG.fact:
        if (this.status & STATUS_COMPUTING) break;
        this.fact = v32;
        this.status |= STATUS_COMPUTING;
        this.factDoneAt = ctx.now() + this.timing.factorialMs;
        ctx.wakeAt(this.factDoneAt);
        break;
      case REG.status:
        this.status = v32 & STATUS_IRQFACT ? this.status | STATUS_IRQFACT : this.status & ~STATUS_IRQFACT;
        break;
      case REG.raise:
        this.raise(ctx, v32);
        break;
      case REG.ack:
        this.irqStatus = (this.irqStatus & ~v32) >>> 0;
        if (this.irqStatus === 0 && !ctx.msiEnabled) ctx.lowerIntx();
        break;
      case REG.src:
        if (!running) this.dma.src = value;
        break;
      case REG.dst:
        if (!running) this.dma.dst = value;
        break;
      case REG.cnt:
        if (!running) this.dma.cnt = value;
        break;
      case REG.cmd:
        if ((value & CMD_RUN) === 0n || running) break;
        this.dma.cmd = value;
        this.dmaDoneAt = ctx.now() + this.timing.dmaMs;
        ctx.wakeAt(this.dmaDoneAt);
        break;
    }
  }

  /** edu_raise_irq: the status bits accumulate; MSI when enabled, else INTx asserted. */
  private raise(ctx: DeviceContext, bits: number): void {
    this.irqStatus = (this.irqStatus | bits) >>> 0;
    if (this.irqStatus === 0) return;
    if (ctx.msiEnabled) ctx.raise('msi', 0);
    else ctx.raise('intx');
  }

  private finishDue(ctx: DeviceContext): void {
    const now = ctx.now();
    if (this.factDoneAt !== null) {
      if (now >= this.factDoneAt) {
        this.factDoneAt = null;
        this.fact = factorial(this.fact);
        this.status &= ~STATUS_COMPUTING;
        // edu_fact_thread checks IRQFACT after clearing COMPUTING: set while computing counts.
        if (this.status & STATUS_IRQFACT) this.raise(ctx, FACT_IRQ);
      } else ctx.wakeAt(this.factDoneAt);
    }
    if (this.dmaDoneAt !== null && !this.dmaStopped) {
      if (now >= this.dmaDoneAt) {
        this.dmaDoneAt = null;
        this.runDma(ctx);
      } else ctx.wakeAt(this.dmaDoneAt);
    }
  }

  /** edu_dma_timer. */
  private runDma(ctx: DeviceContext): void {
    const { src, dst, cnt, cmd } = this.dma;
    const toRam = (cmd & CMD_TO_RAM) !== 0n;
    const inBuf = toRam ? src : dst;
    // QEMU 7.2's edu_check_range: start inside [DMA_START, DMA_START + DMA_SIZE), end strictly inside it too.
    const end = inBuf + cnt;
    if (!(inBuf >= DMA_START && inBuf < DMA_START + DMA_SIZE && end > inBuf && end < DMA_START + DMA_SIZE)) {
      ctx.log(
        `edu: DMA range 0x${inBuf.toString(16)}-0x${(end - 1n).toString(16)} out of bounds of its buffer: ` +
          "QEMU 7.2 stops the VM here (hw_error); the fake edu's DMA engine stops (command stays running, no interrupt)",
      );
      this.dmaStopped = true;
      return;
    }
    const off = Number(inBuf - DMA_START);
    const n = Number(cnt);
    const clamp = (a: bigint): bigint => {
      const r = a & this.dmaMask;
      if (r !== a) ctx.log(`edu: clamping DMA 0x${a.toString(16)} to 0x${r.toString(16)}`);
      return r;
    };
    try {
      if (toRam) ctx.dmaWrite(clamp(dst), this.buffer.slice(off, off + n));
      else this.buffer.set(ctx.dmaRead(clamp(src), n), off);
    } catch (e) {
      // pci_dma_read/write's error is ignored by edu: the command still completes.
      ctx.log(`edu: DMA failed: ${(e as Error).message}`);
    }
    this.dma.cmd &= ~CMD_RUN;
    if (this.dma.cmd & CMD_IRQ) this.raise(ctx, DMA_IRQ);
  }

  /** Stores made through a mapping since the last publish, as register writes. */
  private absorbStores(ctx: DeviceContext): void {
    const mem = ctx.bar(0);
    const dv = new DataView(mem.buffer, mem.byteOffset, REG_WINDOW);
    const was = new DataView(this.shown.buffer);
    const writes: [number, bigint][] = [];
    for (let off = 0; off < 0x80; off += 4) {
      const v = dv.getUint32(off, true);
      if (v !== was.getUint32(off, true)) writes.push([off, BigInt(v)]);
    }
    for (let off = 0x80; off < 0xa0; off += 8) {
      const v = dv.getBigUint64(off, true);
      if (v !== was.getBigUint64(off, true)) writes.push([off, v]);
    }
    // Register order, except the DMA command, which drivers write after its operands.
    writes.sort(([a], [b]) => (a === REG.cmd ? 1 : b === REG.cmd ? -1 : a - b));
    for (const [off, v] of writes) this.store(ctx, off, v);
  }

  /**
   * Shows the registers in BAR0 memory, as 4-byte reads give them below 0x80
   * and 8-byte reads from 0x80; all ones elsewhere (`everywhere`: the whole
   * BAR, undoing stores made through a mapping; else the register window).
   */
  private publish(ctx: DeviceContext, everywhere = true): void {
    const mem = ctx.bar(0);
    if (everywhere) mem.fill(0xff);
    else mem.fill(0xff, 0, REG_WINDOW);
    const dv = new DataView(mem.buffer, mem.byteOffset, REG_WINDOW);
    for (let off = 0; off < 0x80; off += 4) {
      const v = off === REG.raise || off === REG.ack ? 0n : this.register(off);
      if (v !== null) dv.setUint32(off, Number(v & U32), true);
    }
    for (let off = 0x80; off < 0xa0; off += 8) dv.setBigUint64(off, this.register(off)!, true);
    this.shown.set(mem.subarray(0, REG_WINDOW));
  }
}

export interface EduOptions extends Partial<Omit<PciDeviceSpec, 'vendor' | 'device' | 'class' | 'bars' | 'model'>> {
  /** How long the factorial and a DMA take (the fake's stand-in for QEMU's thread and 100 ms timer). */
  readonly timing?: EduTiming;
}

/**
 * QEMU's edu device (`-device edu`), at 0000:00:03.0 in group 3 unless told
 * otherwise. Its only reset is a bus reset (no FLR, no power management
 * capability): `reset: 'bus'` unless told otherwise.
 */
export function edu(opts: EduOptions = {}): PciDeviceDescription {
  const { timing, ...spec } = opts;
  const t: Required<EduTiming> = { factorialMs: timing?.factorialMs ?? 1, dmaMs: timing?.dmaMs ?? 2 };
  for (const [k, v] of Object.entries(t)) {
    if (!Number.isFinite(v) || v < 0) throw new RangeError(`edu timing.${k} ${v} is not a number of milliseconds`);
  }
  const dmaBits = spec.dmaBits ?? 28;
  return pciDevice({
    address: '0000:00:03.0',
    revision: 0x10,
    subsystemVendor: 0x1af4,
    subsystemDevice: 0x1100,
    irqs: { intx: 1, msi: 1 },
    reset: 'bus',
    ...spec,
    dmaBits,
    vendor: 0x1234,
    device: 0x11e8,
    class: 0x00ff00,
    bars: [{ index: 0, size: 1 << 20, type: 'mem32' }],
    model: () => new EduModel(dmaBits >= 64 ? U64 : (1n << BigInt(dmaBits)) - 1n, t),
  });
}
