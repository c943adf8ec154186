// QEMU's `edu` teaching device (hw/misc/edu.c, docs/specs/edu.rst): vendor
// 0x1234, device 0x11e8, class 0x00ff00, revision 0x10, one 1 MiB memory BAR,
// MSI with one vector, INTx pin A, a 28-bit DMA mask. The model implements
// its registers: identification (0x00), liveness check (0x04, reads the
// inverse of what was written), factorial (0x08, status 0x20), interrupt
// status/raise/acknowledge (0x24/0x60/0x64) and the DMA engine (0x80 source,
// 0x88 destination, 0x90 count, 0x98 command) with its 4 KiB buffer at
// 0x40000. Write-only registers (0x60, 0x64) read back as 0 here.
// As on QEMU, the DMA buffer is the device's own memory, reached only by the
// DMA engine: BAR0 reads over it give all ones (edu_mmio_read's default).
import type { DeviceContext, DeviceModel } from './device-model.js';
import { pciDevice, type PciDeviceDescription, type PciDeviceSpec } from './pci-spec.js';

export const EDU_ID = 0x010000ed;
const DMA_BUF = 0x40000;
const DMA_BUF_SIZE = 4096;
const STATUS_IRQFACT = 0x80;
const DMA_START = 0x1;
const DMA_TO_RAM = 0x2;
const DMA_IRQ = 0x4;
const IRQ_FACT = 0x1;
const IRQ_DMA = 0x100;

class EduModel implements DeviceModel {
  /** The DMA engine's buffer: not visible through BAR0. */
  private readonly buffer = new Uint8Array(DMA_BUF_SIZE);
  private live = 0;
  private fact = 0;
  private irqStatus = 0;

  private dv(ctx: DeviceContext): DataView {
    const b = ctx.bar(0);
    return new DataView(b.buffer, b.byteOffset, b.byteLength);
  }

  reset(ctx: DeviceContext): void {
    const b = ctx.bar(0);
    b.fill(0);
    this.buffer.fill(0);
    const dv = this.dv(ctx);
    dv.setUint32(0x00, EDU_ID, true);
    this.live = 0;
    this.fact = 0;
    this.irqStatus = 0;
    dv.setUint32(0x04, 0, true);
    dv.setUint32(0x08, 0, true);
    ctx.lowerIntx();
  }

  private raise(ctx: DeviceContext, bits: number): void {
    this.irqStatus = (this.irqStatus | bits) >>> 0;
    if (ctx.msiEnabled) ctx.raise('msi', 0);
    else ctx.raise('intx');
  }

  tick(ctx: DeviceContext): void {
    const dv = this.dv(ctx);
    dv.setUint32(0x00, EDU_ID, true);
    const live = dv.getUint32(0x04, true);
    if (live !== this.live) {
      this.live = ~live >>> 0;
      dv.setUint32(0x04, this.live, true);
    }
    const n = dv.getUint32(0x08, true);
    if (n !== this.fact) {
      let f = 1;
      for (let i = 2; i <= n; i++) f = Math.imul(f, i) >>> 0;
      this.fact = f;
      dv.setUint32(0x08, f, true);
      if (dv.getUint32(0x20, true) & STATUS_IRQFACT) this.raise(ctx, IRQ_FACT);
    }
    dv.setUint32(0x20, dv.getUint32(0x20, true) & STATUS_IRQFACT, true); // never "computing": done at once
    const raise = dv.getUint32(0x60, true);
    if (raise !== 0) {
      dv.setUint32(0x60, 0, true);
      this.raise(ctx, raise);
    }
    const ack = dv.getUint32(0x64, true);
    if (ack !== 0) {
      dv.setUint32(0x64, 0, true);
      this.irqStatus = (this.irqStatus & ~ack) >>> 0;
      if (this.irqStatus === 0 && !ctx.msiEnabled) ctx.lowerIntx();
    }
    const cmd = dv.getUint32(0x98, true);
    if (cmd & DMA_START) {
      this.dma(ctx, dv, cmd);
      dv.setUint32(0x98, cmd & ~DMA_START, true);
      if (cmd & DMA_IRQ) this.raise(ctx, IRQ_DMA);
    }
    dv.setUint32(0x24, this.irqStatus, true);
    // Whatever a driver stored over the buffer's window did not reach it.
    ctx.bar(0).fill(0xff, DMA_BUF, DMA_BUF + DMA_BUF_SIZE);
  }

  private dma(ctx: DeviceContext, dv: DataView, cmd: number): void {
    const src = dv.getBigUint64(0x80, true);
    const dst = dv.getBigUint64(0x88, true);
    const cnt = Number(dv.getBigUint64(0x90, true));
    const mask = (1n << 28n) - 1n;
    const inBuf = (a: bigint): number | null => {
      const off = Number(a) - DMA_BUF;
      return a >= BigInt(DMA_BUF) && off + cnt <= DMA_BUF_SIZE ? off : null;
    };
    try {
      if (cmd & DMA_TO_RAM) {
        const off = inBuf(src);
        if (off === null) return ctx.log('edu: DMA source outside the device buffer');
        ctx.dmaWrite(dst & mask, this.buffer.slice(off, off + cnt));
      } else {
        const off = inBuf(dst);
        if (off === null) return ctx.log('edu: DMA destination outside the device buffer');
        this.buffer.set(ctx.dmaRead(src & mask, cnt), off);
      }
    } catch (e) {
      ctx.log(`edu: DMA failed: ${(e as Error).message}`);
    }
  }
}

export interface EduOptions extends Partial<Omit<PciDeviceSpec, 'vendor' | 'device' | 'class' | 'bars' | 'model'>> {}

/** QEMU's edu device (`-device edu`), at 0000:00:03.0 in group 3 unless told otherwise. */
export function edu(opts: EduOptions = {}): PciDeviceDescription {
  return pciDevice({
    address: '0000:00:03.0',
    revision: 0x10,
    subsystemVendor: 0x1af4,
    subsystemDevice: 0x1100,
    irqs: { intx: 1, msi: 1 },
    dmaBits: 28,
    ...opts,
    vendor: 0x1234,
    device: 0x11e8,
    class: 0x00ff00,
    bars: [{ index: 0, size: 1 << 20, type: 'mem32' }],
    model: () => new EduModel(),
  });
}
