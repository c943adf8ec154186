// A device's config space as vfio-pci presents it through the config region
// (vfio_pci_config.c): identification, capability pointers and capability
// headers are read-only; the command register and capability control fields
// are writable; BAR registers are virtualized, so writing all ones and
// reading back gives the size mask (BAR sizing) and never moves the real BAR;
// bytes outside the header and every capability are passed through raw.
import { PCI_CAP_ID_EXP, PCI_CAP_ID_MSI, PCI_CAP_ID_MSIX, PCI_CFG_SIZE, type PciDeviceDescription } from './pci-spec.js';

export const PCI_COMMAND = 0x04;
export const PCI_COMMAND_IO = 0x1;
export const PCI_COMMAND_MEMORY = 0x2;
export const PCI_COMMAND_MASTER = 0x4;
export const PCI_COMMAND_INTX_DISABLE = 0x400;
const COMMAND_WRITABLE = 0x0547;

export interface BarLayout {
  readonly index: number;
  readonly size: number;
  readonly type: 'mem32' | 'mem64' | 'io';
  readonly prefetchable: boolean;
  readonly busAddress: bigint;
}

interface CapInfo {
  readonly id: number;
  readonly at: number;
}

export class ConfigSpace {
  readonly bytes: Uint8Array;
  private readonly dv: DataView;
  private readonly initial: Uint8Array;
  /** Per byte: which bits a write may change (BAR dwords are handled apart). */
  private readonly writable: Uint8Array;
  readonly caps: readonly CapInfo[];

  constructor(
    private readonly desc: PciDeviceDescription,
    private readonly bars: readonly BarLayout[],
    readonly romAddress: bigint | null,
  ) {
    this.bytes = desc.config.slice();
    this.dv = new DataView(this.bytes.buffer);
    for (const b of bars) {
      const flags = this.dv.getUint32(0x10 + 4 * b.index, true) & (b.type === 'io' ? 0x3 : 0xf);
      this.dv.setUint32(0x10 + 4 * b.index, (Number(b.busAddress & 0xffffffffn) & ~(b.type === 'io' ? 0x3 : 0xf)) | flags, true);
      if (b.type === 'mem64') this.dv.setUint32(0x14 + 4 * b.index, Number(b.busAddress >> 32n), true);
    }
    if (romAddress !== null) this.dv.setUint32(0x30, Number(romAddress), true);
    this.caps = this.walkCaps();
    this.writable = this.buildWritable();
    this.initial = this.bytes.slice();
  }

  get size(): number {
    return this.bytes.byteLength;
  }

  private walkCaps(): CapInfo[] {
    const out: CapInfo[] = [];
    if ((this.dv.getUint16(0x06, true) & 0x10) === 0) return out;
    let at = this.bytes[0x34]! & ~3;
    const seen = new Set<number>();
    while (at >= 0x40 && at < PCI_CFG_SIZE && !seen.has(at)) {
      seen.add(at);
      out.push({ id: this.bytes[at]!, at });
      at = this.bytes[at + 1]! & ~3;
    }
    return out;
  }

  private capLength(c: CapInfo): number {
    switch (c.id) {
      case PCI_CAP_ID_MSI: {
        const flags = this.dv.getUint16(c.at + 2, true);
        return ((flags & 0x80) !== 0 ? 14 : 10) + ((flags & 0x100) !== 0 ? 10 : 0);
      }
      case PCI_CAP_ID_MSIX:
        return 12;
      case PCI_CAP_ID_EXP:
        return 0x3c;
      default:
        return 8;
    }
  }

  private buildWritable(): Uint8Array {
    const w = new Uint8Array(this.bytes.byteLength).fill(0xff); // raw pass-through by default
    w.fill(0, 0, 0x40); // the standard header: read-only unless listed below
    w[PCI_COMMAND] = COMMAND_WRITABLE & 0xff;
    w[PCI_COMMAND + 1] = COMMAND_WRITABLE >> 8;
    w[0x0c] = 0xff; // cache line size
    w[0x0d] = 0xff; // latency timer
    w[0x3c] = 0xff; // interrupt line
    const set16 = (off: number, mask: number): void => {
      w[off] = mask & 0xff;
      w[off + 1] = mask >> 8;
    };
    for (const c of this.caps) {
      const len = Math.min(this.capLength(c), this.bytes.byteLength - c.at);
      w.fill(0, c.at, c.at + len);
      if (c.id === PCI_CAP_ID_MSI) {
        const is64 = (this.dv.getUint16(c.at + 2, true) & 0x80) !== 0;
        set16(c.at + 2, 0x0071); // MSI enable, Multiple Message Enable
        w.fill(0xff, c.at + 4, c.at + (is64 ? 14 : 10)); // address (and high address), data
        w[c.at + 4] = 0xfc;
      } else if (c.id === PCI_CAP_ID_MSIX) {
        set16(c.at + 2, 0xc000); // MSI-X enable, function mask
      } else if (c.id === PCI_CAP_ID_EXP) {
        set16(c.at + 8, 0xffff); // device control
        set16(c.at + 0x10, 0xffff); // link control
        set16(c.at + 0x28, 0xffff); // device control 2
      }
    }
    return w;
  }

  read(off: number, len: number): Uint8Array {
    return this.bytes.slice(off, off + len);
  }

  /** A config write from the user, applied dword by dword with vfio's rules. */
  write(off: number, data: Uint8Array): void {
    for (let i = 0; i < data.byteLength; ) {
      const at = off + i;
      const dword = at & ~3;
      const n = Math.min(4 - (at - dword), data.byteLength - i);
      if (dword >= 0x10 && dword < 0x28) this.writeBar(dword, at, data.subarray(i, i + n));
      else if (dword === 0x30) this.writeRom(at, data.subarray(i, i + n));
      else {
        for (let j = 0; j < n; j++) {
          const m = this.writable[at + j]!;
          this.bytes[at + j] = (this.bytes[at + j]! & ~m) | (data[i + j]! & m);
        }
      }
      i += n;
    }
  }

  private merged(dword: number, at: number, part: Uint8Array): number {
    const tmp = this.bytes.slice(dword, dword + 4);
    tmp.set(part, at - dword);
    return new DataView(tmp.buffer).getUint32(0, true);
  }

  private writeBar(dword: number, at: number, part: Uint8Array): void {
    const slot = (dword - 0x10) / 4;
    const v = this.merged(dword, at, part);
    const own = this.bars.find((b) => b.index === slot);
    const upper = this.bars.find((b) => b.type === 'mem64' && b.index + 1 === slot);
    let stored = 0;
    if (own !== undefined) {
      const flagBits = own.type === 'io' ? 0x3 : 0xf;
      const mask = own.size >= 2 ** 32 ? 0 : ~(own.size - 1) & ~flagBits;
      stored = ((v & mask) | (this.initial[dword]! & flagBits)) >>> 0;
    } else if (upper !== undefined) {
      const mask = upper.size > 2 ** 32 ? ~(upper.size / 2 ** 32 - 1) : 0xffffffff;
      stored = (v & mask) >>> 0;
    }
    this.dv.setUint32(dword, stored, true);
  }

  private writeRom(at: number, part: Uint8Array): void {
    const v = this.merged(0x30, at, part);
    const size = this.desc.rom?.size ?? 0;
    this.dv.setUint32(0x30, size === 0 ? 0 : ((v & ~(size - 1) & 0xfffff800) | (v & 1)) >>> 0, true);
  }

  get command(): number {
    return this.dv.getUint16(PCI_COMMAND, true);
  }

  setCommandBits(bits: number, on: boolean): void {
    const c = this.command;
    this.dv.setUint16(PCI_COMMAND, on ? c | bits : c & ~bits, true);
  }

  get memoryEnabled(): boolean {
    return (this.command & PCI_COMMAND_MEMORY) !== 0;
  }

  get busMaster(): boolean {
    return (this.command & PCI_COMMAND_MASTER) !== 0;
  }

  cap(id: number): number | null {
    return this.caps.find((c) => c.id === id)?.at ?? null;
  }

  /** Where the MSI-X table is (vfio excludes it from BAR read/write). */
  msixTable(): { bar: number; offset: number; size: number } | null {
    const at = this.cap(PCI_CAP_ID_MSIX);
    if (at === null) return null;
    const t = this.initialU32(at + 4);
    return { bar: t & 7, offset: t & ~7, size: ((this.initialU16(at + 2) & 0x7ff) + 1) * 16 };
  }

  private initialU16(off: number): number {
    return new DataView(this.initial.buffer).getUint16(off, true);
  }

  private initialU32(off: number): number {
    return new DataView(this.initial.buffer).getUint32(off, true);
  }

  /** vfio_pci_get_irq_count() for each VFIO interrupt index. */
  irqCount(index: number): number {
    switch (index) {
      case 0:
        return this.bytes[0x3d] ? 1 : 0;
      case 1: {
        const at = this.cap(PCI_CAP_ID_MSI);
        return at === null ? 0 : 1 << ((this.initialU16(at + 2) & 0x0e) >> 1);
      }
      case 2: {
        const at = this.cap(PCI_CAP_ID_MSIX);
        return at === null ? 0 : (this.initialU16(at + 2) & 0x7ff) + 1;
      }
      case 3:
        return this.isPcie ? 1 : 0;
      case 4:
        return 1;
      default:
        return 0;
    }
  }

  get isPcie(): boolean {
    return this.cap(PCI_CAP_ID_EXP) !== null;
  }

  /** PCIe Device Capabilities 2 (AtomicOp completer bits), 0 when not PCIe. */
  get devcap2(): number {
    const at = this.cap(PCI_CAP_ID_EXP);
    return at === null ? 0 : this.initialU32(at + 0x24);
  }

  /** Back to the state saved when the device was enabled (function reset + restore). */
  restore(): void {
    this.bytes.set(this.initial);
  }
}
