// Fake PCI devices described as data: `pciDevice({...})` checks a description
// and builds its config space; `edu()` is QEMU's edu device. Nothing here runs
// anything: the FakeKernel turns descriptions into live devices.
//
// The interrupt counts VFIO reports are derived from config space, as
// vfio-pci derives them (interrupt pin, MSI Multiple Message Capable, MSI-X
// Table Size, PCIe capability), so a raw `config` and the `irqs` shorthand
// cannot disagree.
import type { DeviceModel } from './device-model.js';

export const PCI_CFG_SIZE = 256;
export const PCIE_CFG_SIZE = 4096;

export const PCI_CAP_ID_PM = 0x01;
export const PCI_CAP_ID_MSI = 0x05;
export const PCI_CAP_ID_EXP = 0x10;
export const PCI_CAP_ID_MSIX = 0x11;

/** One BAR. A 64-bit BAR also takes the next BAR slot. */
export interface BarSpec {
  readonly index: number;
  /** Size in bytes: a power of two, at least 16 for memory and 4 for I/O. */
  readonly size: number;
  readonly type?: 'mem32' | 'mem64' | 'io';
  readonly prefetchable?: boolean;
  /**
   * Whether vfio-pci lets it be mmap'd (VFIO_REGION_INFO_FLAG_MMAP). Default:
   * true for memory BARs; I/O BARs never are.
   */
  readonly mmap?: boolean;
  /** Region flags READ/WRITE (default true): false models a variant driver that forbids it. */
  readonly read?: boolean;
  readonly write?: boolean;
  /**
   * Sparse mmap areas (VFIO_REGION_INFO_CAP_SPARSE_MMAP), as a variant driver
   * reports them: mmap is then allowed only inside these (page aligned) areas.
   */
  readonly sparse?: readonly { readonly offset: number; readonly size: number }[];
  /**
   * Whether the region info of the BAR holding the MSI-X table reports
   * VFIO_REGION_INFO_CAP_MSIX_MAPPABLE (Linux 4.16+: the table may be
   * mmap'd with the rest). Default true; false models a kernel that keeps
   * the table out of the mapping (with `sparse` areas around it).
   */
  readonly msixMappable?: boolean;
  /** Fills the BAR's initial (and after-reset) contents. */
  readonly init?: (bytes: Uint8Array) => void;
}

/** A device-specific region (index 9 and up) with a VFIO_REGION_INFO_CAP_TYPE. */
export interface RegionSpec {
  readonly type: number;
  readonly subtype: number;
  readonly size: number;
  readonly read?: boolean;
  readonly write?: boolean;
  readonly mmap?: boolean;
  readonly init?: (bytes: Uint8Array) => void;
}

export interface IrqSpec {
  /** INTx: 1 gives interrupt pin A (default 1). */
  readonly intx?: 0 | 1;
  /** MSI vectors (1, 2, 4, 8, 16 or 32), 0 for no MSI capability (default 1). */
  readonly msi?: number;
  /** MSI-X table size, 0 for none (default 0). */
  readonly msix?: number;
  /** Where the MSI-X table and PBA live (default: BAR 0, table at 0, PBA after it). */
  readonly msixBar?: number;
  readonly msixTableOffset?: number;
  readonly msixPbaOffset?: number;
  /** ERR needs a PCIe device: 1 makes the device PCIe. */
  readonly err?: 0 | 1;
  /** vfio-pci always offers one REQ interrupt; only 1 is accepted. */
  readonly req?: 1;
}

export interface PciDeviceSpec {
  /** Canonical PCI address, `0000:00:03.0`. */
  readonly address: string;
  /** IOMMU group number (also the no-IOMMU group number in noiommu mode). */
  readonly group?: number;
  readonly vendor: number;
  readonly device: number;
  /** 24-bit class code, e.g. 0x00ff00. */
  readonly class: number;
  readonly revision?: number;
  readonly subsystemVendor?: number;
  readonly subsystemDevice?: number;
  readonly bars?: readonly BarSpec[];
  /** An expansion ROM of this size (power of two). */
  readonly rom?: { readonly size: number; readonly init?: (bytes: Uint8Array) => void };
  readonly irqs?: IrqSpec;
  /** PCI Express: 4 KiB config space, a PCIe capability, the ERR interrupt. */
  readonly pcie?: boolean;
  /** Raw config space (256 or 4096 bytes) instead of the built one, or a function that edits the built one. */
  readonly config?: Uint8Array | ((cfg: ConfigBuilder) => void);
  /**
   * Whether pci_try_reset_function() works, which vfio-pci tries at the first
   * open and reports as VFIO_DEVICE_FLAGS_RESET. `true` (default): the
   * device has a function-level method (FLR, PM reset, ...). `false`: none.
   * `'bus'`: no function-level method, so Linux falls back to resetting the
   * device's bus (pci_parent_bus_reset), which it does only for a device
   * behind a bridge (not on the root bus, bus 00 in the fake's topology) and
   * alone on its bus: QEMU's conventional devices such as edu.
   */
  readonly reset?: boolean | 'bus';
  /** The bound driver: 'vfio-pci' (default), another driver's name, or null for none. */
  readonly driver?: string | null;
  /**
   * Devices with the same name share a bus (slot) that a hot reset resets
   * together. Default: the device's bus when it is behind a bridge (bus
   * other than 00: pci_probe_reset_bus works there), none on the root bus
   * (VFIO_DEVICE_GET_PCI_HOT_RESET_INFO: ENODEV).
   */
  readonly hotResetGroup?: string;
  /** Whether MSI-X vectors can be added while enabled (x86 with interrupt remapping: yes). Default true. */
  readonly dynamicMsix?: boolean;
  /** PCIe AtomicOp completer support reported in VFIO_DEVICE_INFO_CAP_PCI_ATOMIC_COMP. */
  readonly atomicOps?: { readonly comp32?: boolean; readonly comp64?: boolean; readonly comp128?: boolean };
  /** Device-specific regions, indexes 9, 10, ... */
  readonly regions?: readonly RegionSpec[];
  /** A behavioural model that runs the device (see device-model.ts). */
  readonly model?: () => DeviceModel;
  /** The device's DMA address width in bits (edu: 28). Default 64. */
  readonly dmaBits?: number;
  /**
   * An SR-IOV physical function: it can have up to `totalVfs` virtual
   * functions (sysfs sriov_totalvfs). Its VFs are the devices whose `physfn`
   * names it; how many there are is its sriov_numvfs.
   */
  readonly sriov?: { readonly totalVfs: number };
  /** A virtual function: the address of its PF (a device with `sriov`). */
  readonly physfn?: string;
}

/** A checked device description: what the FakeKernel instantiates. */
export interface PciDeviceDescription {
  readonly address: string;
  readonly segment: number;
  readonly bus: number;
  readonly devfn: number;
  readonly group: number;
  readonly vendor: number;
  readonly device: number;
  readonly class: number;
  readonly revision: number;
  readonly subsystemVendor: number;
  readonly subsystemDevice: number;
  readonly bars: readonly Required<Pick<BarSpec, 'index' | 'size' | 'type' | 'prefetchable' | 'mmap' | 'read' | 'write'>>[] &
    readonly BarSpec[];
  readonly rom: PciDeviceSpec['rom'] | null;
  readonly pcie: boolean;
  /** Initial config space, BAR address bits still zero (the kernel assigns addresses). */
  readonly config: Uint8Array;
  readonly reset: boolean | 'bus';
  readonly driver: string | null;
  readonly hotResetGroup: string | null;
  readonly dynamicMsix: boolean;
  readonly atomicOps: { readonly comp32: boolean; readonly comp64: boolean; readonly comp128: boolean };
  readonly regions: readonly RegionSpec[];
  readonly model: (() => DeviceModel) | null;
  readonly dmaBits: number;
  /** SR-IOV PF: sriov_totalvfs; null for any other device. */
  readonly sriov: { readonly totalVfs: number } | null;
  /** SR-IOV VF: its PF's address; null for any other device. */
  readonly physfn: string | null;
}

const ADDRESS = /^([0-9a-f]{4}):([0-9a-f]{2}):([01][0-9a-f])\.([0-7])$/;

function isPow2(n: number): boolean {
  return Number.isSafeInteger(n) && n > 0 && (n & (n - 1)) === 0;
}

/** Builds a type 0 config space with a capability list. */
export class ConfigBuilder {
  readonly bytes: Uint8Array;
  private readonly dv: DataView;
  private lastCap = 0;
  private nextFree = 0x40;
  private lastExt = -1;
  private nextExt = 0x100;

  constructor(size: number) {
    this.bytes = new Uint8Array(size);
    this.dv = new DataView(this.bytes.buffer);
  }

  u8(off: number, v: number): void {
    this.dv.setUint8(off, v);
  }
  u16(off: number, v: number): void {
    this.dv.setUint16(off, v, true);
  }
  u32(off: number, v: number): void {
    this.dv.setUint32(off, v >>> 0, true);
  }

  /** Appends a standard capability of `length` bytes; returns its offset. */
  addCapability(id: number, length: number): number {
    const at = this.nextFree;
    if (at + length > PCI_CFG_SIZE) throw new RangeError('capabilities do not fit in 256 bytes of config space');
    this.u8(at, id);
    this.u8(at + 1, 0);
    if (this.lastCap === 0) {
      this.u8(0x34, at);
      this.u16(0x06, this.dv.getUint16(0x06, true) | 0x10); // status: capability list
    } else {
      this.u8(this.lastCap + 1, at);
    }
    this.lastCap = at;
    this.nextFree = (at + length + 3) & ~3;
    return at;
  }

  /** Appends a PCIe extended capability (config space must be 4 KiB); returns its offset. */
  addExtendedCapability(id: number, version: number, length: number): number {
    if (this.bytes.byteLength < PCIE_CFG_SIZE) throw new RangeError('extended capabilities need a PCIe config space');
    const at = this.nextExt;
    if (at + length > PCIE_CFG_SIZE) throw new RangeError('extended capabilities do not fit');
    this.u32(at, id | (version << 16));
    if (this.lastExt >= 0) this.u32(this.lastExt, this.dv.getUint32(this.lastExt, true) | (at << 20));
    this.lastExt = at;
    this.nextExt = (at + length + 3) & ~3;
    return at;
  }
}

function buildConfig(spec: PciDeviceSpec, bars: PciDeviceDescription['bars'], pcie: boolean): Uint8Array {
  const cfg = new ConfigBuilder(pcie ? PCIE_CFG_SIZE : PCI_CFG_SIZE);
  cfg.u16(0x00, spec.vendor);
  cfg.u16(0x02, spec.device);
  cfg.u8(0x08, spec.revision ?? 0);
  cfg.u8(0x09, spec.class & 0xff);
  cfg.u8(0x0a, (spec.class >> 8) & 0xff);
  cfg.u8(0x0b, (spec.class >> 16) & 0xff);
  cfg.u8(0x0e, 0x00); // header type 0
  for (const b of bars) {
    const flags = b.type === 'io' ? 0x1 : (b.type === 'mem64' ? 0x4 : 0) | (b.prefetchable ? 0x8 : 0);
    cfg.u32(0x10 + 4 * b.index, flags);
  }
  cfg.u16(0x2c, spec.subsystemVendor ?? 0);
  cfg.u16(0x2e, spec.subsystemDevice ?? 0);
  const irqs = spec.irqs ?? {};
  cfg.u8(0x3d, (irqs.intx ?? 1) ? 1 : 0);
  if (pcie) {
    const at = cfg.addCapability(PCI_CAP_ID_EXP, 0x3c);
    cfg.u16(at + 2, 0x0002); // version 2, endpoint
    cfg.u32(at + 4, 0x8000); // DevCap: role-based error reporting
    const a = spec.atomicOps ?? {};
    cfg.u32(at + 0x24, (a.comp32 ? 1 << 7 : 0) | (a.comp64 ? 1 << 8 : 0) | (a.comp128 ? 1 << 9 : 0));
  }
  const msi = irqs.msi ?? 1;
  if (msi > 0) {
    const at = cfg.addCapability(PCI_CAP_ID_MSI, 14);
    cfg.u16(at + 2, (Math.log2(msi) << 1) | 0x80); // Multiple Message Capable, 64-bit
  }
  const msix = irqs.msix ?? 0;
  if (msix > 0) {
    const at = cfg.addCapability(PCI_CAP_ID_MSIX, 12);
    const bir = irqs.msixBar ?? 0;
    const table = irqs.msixTableOffset ?? 0;
    const pba = irqs.msixPbaOffset ?? table + msix * 16;
    cfg.u16(at + 2, msix - 1);
    cfg.u32(at + 4, table | bir);
    cfg.u32(at + 8, pba | bir);
  }
  if (typeof spec.config === 'function') spec.config(cfg);
  return cfg.bytes;
}

/**
 * Checks a device description and builds its config space.
 * @throws TypeError/RangeError for a description no real device could have.
 */
export function pciDevice(spec: PciDeviceSpec): PciDeviceDescription {
  const m = ADDRESS.exec(spec.address);
  if (m === null) throw new TypeError(`${spec.address} is not a canonical PCI address (0000:00:03.0)`);
  const [, seg, bus, dev, fn] = m as unknown as [string, string, string, string, string];
  const bars = (spec.bars ?? []).map((b) => {
    const type = b.type ?? 'mem32';
    if (!Number.isInteger(b.index) || b.index < 0 || b.index > (type === 'mem64' ? 4 : 5)) {
      throw new RangeError(`BAR index ${b.index} is not valid for a ${type} BAR`);
    }
    if (!isPow2(b.size) || b.size < (type === 'io' ? 4 : 16)) throw new RangeError(`BAR ${b.index} size ${b.size} is not a power of two`);
    if (type === 'io' && b.mmap === true) throw new RangeError(`I/O BAR ${b.index} cannot be mmap-able`);
    for (const a of b.sparse ?? []) {
      if (a.offset % 4096 !== 0 || a.size % 4096 !== 0 || a.offset + a.size > Math.max(b.size, 4096)) {
        throw new RangeError(`BAR ${b.index} sparse area ${JSON.stringify(a)} is not page aligned inside the BAR`);
      }
    }
    return {
      ...b,
      type,
      prefetchable: b.prefetchable ?? false,
      mmap: type !== 'io' && (b.mmap ?? true),
      read: b.read ?? true,
      write: b.write ?? true,
    };
  });
  const taken = new Set<number>();
  for (const b of bars) {
    for (const i of b.type === 'mem64' ? [b.index, b.index + 1] : [b.index]) {
      if (taken.has(i)) throw new RangeError(`BAR slot ${i} is used twice`);
      taken.add(i);
    }
  }
  const irqs = spec.irqs ?? {};
  if (irqs.msi !== undefined && irqs.msi !== 0 && (!isPow2(irqs.msi) || irqs.msi > 32)) {
    throw new RangeError(`MSI supports 1..32 vectors in powers of two, not ${irqs.msi}`);
  }
  if (irqs.msix !== undefined && (!Number.isInteger(irqs.msix) || irqs.msix < 0 || irqs.msix > 2048)) {
    throw new RangeError(`MSI-X table size ${irqs.msix} is not 0..2048`);
  }
  if ((irqs.msix ?? 0) > 0) {
    const bar = bars.find((b) => b.index === (irqs.msixBar ?? 0));
    const end = Math.max(irqs.msixTableOffset ?? 0, irqs.msixPbaOffset ?? 0) + (irqs.msix ?? 0) * 16;
    if (bar === undefined || bar.type === 'io' || end > bar.size) {
      throw new RangeError(`the MSI-X table does not fit in memory BAR ${irqs.msixBar ?? 0}`);
    }
  }
  const pcie = spec.pcie ?? irqs.err === 1;
  if (irqs.err === 1 && spec.pcie === false) throw new RangeError('the ERR interrupt needs a PCIe device');
  let config: Uint8Array;
  if (spec.config instanceof Uint8Array) {
    if (spec.config.byteLength !== PCI_CFG_SIZE && spec.config.byteLength !== PCIE_CFG_SIZE) {
      throw new RangeError('config space is 256 or 4096 bytes');
    }
    config = spec.config.slice();
  } else {
    config = buildConfig(spec, bars, pcie);
  }
  if (spec.sriov !== undefined && (!Number.isInteger(spec.sriov.totalVfs) || spec.sriov.totalVfs < 1 || spec.sriov.totalVfs > 0xffff)) {
    throw new RangeError(`sriov_totalvfs ${spec.sriov.totalVfs} is not 1..65535`);
  }
  if (spec.sriov !== undefined && spec.physfn !== undefined) throw new RangeError('a device is a PF or a VF, not both');
  if (spec.rom !== undefined && (!isPow2(spec.rom.size) || spec.rom.size < 2048)) {
    throw new RangeError(`ROM size ${spec.rom.size} is not a power of two >= 2048`);
  }
  return Object.freeze({
    address: spec.address,
    segment: parseInt(seg, 16),
    bus: parseInt(bus, 16),
    devfn: (parseInt(dev, 16) << 3) | parseInt(fn, 10),
    group: spec.group ?? parseInt(dev, 16),
    vendor: spec.vendor,
    device: spec.device,
    class: spec.class,
    revision: spec.revision ?? 0,
    subsystemVendor: spec.subsystemVendor ?? 0,
    subsystemDevice: spec.subsystemDevice ?? 0,
    bars,
    rom: spec.rom ?? null,
    pcie: config.byteLength === PCIE_CFG_SIZE,
    config,
    reset: spec.reset ?? true,
    driver: spec.driver === undefined ? 'vfio-pci' : spec.driver,
    hotResetGroup: spec.hotResetGroup ?? (parseInt(bus, 16) === 0 ? null : `bus ${seg}:${bus}`),
    dynamicMsix: spec.dynamicMsix ?? true,
    atomicOps: {
      comp32: spec.atomicOps?.comp32 ?? false,
      comp64: spec.atomicOps?.comp64 ?? false,
      comp128: spec.atomicOps?.comp128 ?? false,
    },
    regions: spec.regions ?? [],
    model: spec.model ?? null,
    dmaBits: spec.dmaBits ?? 64,
    sriov: spec.sriov ?? null,
    physfn: spec.physfn ?? null,
  });
}
