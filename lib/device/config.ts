// PCI configuration space through the VFIO config region: width-exact
// reads and writes, the command register, and the capability lists.
//
// Guarantees:
// - Every access is one pread/pwrite of exactly its width at the config
//   region's offset in the device fd (config space is never mmap'd); vfio-pci
//   applies its virtualization (BARs, some capabilities) to what we see.
// - The capability walks trust nothing they read: a pointer into the header,
//   a loop, or a chain longer than the space can hold ends the walk (standard
//   list: at most 48 hops, the PCI spec's bound; extended: 480).
// - After close (its own, or the device's) every call throws ECLOSED.
import { usageError } from '../base/errors.js';
import { VFIO_DEVICE_FLAGS_PCI, VFIO_PCI_CONFIG_REGION_INDEX } from '../uapi/vfio.js';
import { resourceClosed, type DeviceHandle } from './handle.js';
import {
  BAR_IO_SPACE,
  BAR_MEM_PREFETCH,
  BAR_MEM_TYPE_64,
  BAR_MEM_TYPE_MASK,
  CAP_ID,
  CFG_BAR0,
  CFG_CAPABILITY_LIST,
  CFG_CLASS_PROG,
  CFG_COMMAND,
  CFG_DEVICE_ID,
  CFG_HEADER_TYPE,
  CFG_INTERRUPT_PIN,
  CFG_REVISION,
  CFG_STATUS,
  CFG_SUBSYSTEM_ID,
  CFG_SUBSYSTEM_VENDOR_ID,
  CFG_VENDOR_ID,
  COMMAND_BUS_MASTER,
  COMMAND_INTX_DISABLE,
  COMMAND_IO_SPACE,
  COMMAND_MEMORY_SPACE,
  CONVENTIONAL_CONFIG_SIZE,
  EXT_CAP_ID,
  EXT_CAP_START,
  EXT_CAP_TTL,
  MSIX_BIR_MASK,
  MSIX_CONTROL,
  MSIX_CONTROL_ENABLE,
  MSIX_CONTROL_TABLE_SIZE,
  MSIX_ENTRY_SIZE,
  MSIX_PBA,
  MSIX_TABLE,
  STATUS_CAP_LIST,
  STD_CAP_FLOOR,
  STD_CAP_TTL,
} from './pci-regs.js';
import { openRegion, type Region } from './region.js';
import { regionInfo } from './region-info.js';

export type CapabilityName = keyof typeof CAP_ID;
export type ExtendedCapabilityName = keyof typeof EXT_CAP_ID;

export interface Capability {
  readonly id: number;
  /** Offset of the capability header in config space. */
  readonly offset: number;
  /** Our name for the id, when it is one the spec defines. */
  readonly name: CapabilityName | undefined;
}

export interface ExtendedCapability {
  readonly id: number;
  readonly version: number;
  readonly offset: number;
  readonly name: ExtendedCapabilityName | undefined;
}

export interface CommandFlags {
  readonly ioSpace: boolean;
  readonly memorySpace: boolean;
  readonly busMaster: boolean;
  readonly intxDisable: boolean;
}

export interface DeviceIds {
  readonly vendorId: number;
  readonly deviceId: number;
  readonly subsystemVendorId: number;
  readonly subsystemId: number;
  /** 24 bits: base class << 16 | subclass << 8 | programming interface. */
  readonly classCode: number;
  readonly revision: number;
  readonly headerType: number;
  /** INTx pin: 0 none, 1..4 INTA..INTD. */
  readonly interruptPin: number;
}

/** Where the MSI-X table and PBA live, from the MSI-X capability. */
export interface MsixLayout {
  readonly capOffset: number;
  /** Number of table entries (vectors). */
  readonly vectors: number;
  readonly enabled: boolean;
  readonly tableBar: number;
  readonly tableOffset: number;
  /** Bytes of the table: vectors * 16. */
  readonly tableSize: number;
  readonly pbaBar: number;
  readonly pbaOffset: number;
}

/** A BAR as its register describes it (size comes from the region info). */
export interface BarKind {
  readonly bar: number;
  readonly space: 'memory' | 'io';
  readonly is64: boolean;
  readonly prefetchable: boolean;
}

const CAP_NAMES = new Map<number, CapabilityName>(Object.entries(CAP_ID).map(([k, v]) => [v, k as CapabilityName]));
const EXT_CAP_NAMES = new Map<number, ExtendedCapabilityName>(Object.entries(EXT_CAP_ID).map(([k, v]) => [v, k as ExtendedCapabilityName]));

export class ConfigSpace implements Disposable {
  readonly #h: DeviceHandle;
  /** Opened on first use: constructing a ConfigSpace does no I/O. */
  #region: Region | null = null;
  #closed = false;

  constructor(h: DeviceHandle) {
    this.#h = h;
  }

  get closed(): boolean {
    return this.#closed || this.#h.closed;
  }

  /** Bytes of config space: 256 (conventional PCI) or 4096 (PCI Express). */
  get size(): number {
    return this.#cfg().size;
  }

  read8(offset: number): number {
    return this.#cfg().read8(offset);
  }
  read16(offset: number): number {
    return this.#cfg().read16(offset);
  }
  read32(offset: number): number {
    return this.#cfg().read32(offset);
  }
  write8(offset: number, value: number): void {
    this.#cfg().write8(offset, value);
  }
  write16(offset: number, value: number): void {
    this.#cfg().write16(offset, value);
  }
  write32(offset: number, value: number): void {
    this.#cfg().write32(offset, value);
  }

  ids(): DeviceIds {
    const classProg = this.read8(CFG_CLASS_PROG) | (this.read16(CFG_CLASS_PROG + 1) << 8);
    return {
      vendorId: this.read16(CFG_VENDOR_ID),
      deviceId: this.read16(CFG_DEVICE_ID),
      subsystemVendorId: this.read16(CFG_SUBSYSTEM_VENDOR_ID),
      subsystemId: this.read16(CFG_SUBSYSTEM_ID),
      classCode: classProg,
      revision: this.read8(CFG_REVISION),
      headerType: this.read8(CFG_HEADER_TYPE),
      interruptPin: this.read8(CFG_INTERRUPT_PIN),
    };
  }

  // --- command register ------------------------------------------------------

  command(): CommandFlags {
    const c = this.read16(CFG_COMMAND);
    return {
      ioSpace: (c & COMMAND_IO_SPACE) !== 0,
      memorySpace: (c & COMMAND_MEMORY_SPACE) !== 0,
      busMaster: (c & COMMAND_BUS_MASTER) !== 0,
      intxDisable: (c & COMMAND_INTX_DISABLE) !== 0,
    };
  }

  /** Memory space decoding: must be on before a memory BAR is touched (else SIGBUS/EIO). */
  setMemorySpace(on: boolean): void {
    this.#updateCommand(COMMAND_MEMORY_SPACE, on);
  }
  setIoSpace(on: boolean): void {
    this.#updateCommand(COMMAND_IO_SPACE, on);
  }
  /** Bus mastering: the device may issue DMA (and MSI writes) only while it is on. */
  setBusMaster(on: boolean): void {
    this.#updateCommand(COMMAND_BUS_MASTER, on);
  }
  setIntxDisable(on: boolean): void {
    this.#updateCommand(COMMAND_INTX_DISABLE, on);
  }

  /** Read-modify-write of the 16-bit command register; writes only on change. */
  #updateCommand(bit: number, on: boolean): void {
    const c = this.read16(CFG_COMMAND);
    const next = on ? c | bit : c & ~bit;
    if (next !== c) this.write16(CFG_COMMAND, next);
  }

  // --- BARs --------------------------------------------------------------------

  /** What BAR `bar` (0..5) decodes, from its register. */
  bar(bar: number): BarKind {
    if (!Number.isInteger(bar) || bar < 0 || bar > 5)
      throw usageError('EINVAL', `BAR index ${bar} must be 0..5`, { device: this.#h.address });
    const raw = this.read32(CFG_BAR0 + 4 * bar);
    if ((raw & BAR_IO_SPACE) !== 0) return { bar, space: 'io', is64: false, prefetchable: false };
    return {
      bar,
      space: 'memory',
      is64: (raw & BAR_MEM_TYPE_MASK) === BAR_MEM_TYPE_64,
      prefetchable: (raw & BAR_MEM_PREFETCH) !== 0,
    };
  }

  // --- capabilities ------------------------------------------------------------

  /** The standard capability list (from 0x34), in chain order. */
  capabilities(): Capability[] {
    const out: Capability[] = [];
    if ((this.read16(CFG_STATUS) & STATUS_CAP_LIST) === 0) return out;
    const seen = new Set<number>();
    let at = this.read8(CFG_CAPABILITY_LIST) & ~3;
    for (let hops = 0; hops < STD_CAP_TTL; hops++) {
      if (at < STD_CAP_FLOOR || seen.has(at)) break;
      seen.add(at);
      // The id and the next pointer in one access (one pread): `at` is
      // dword-aligned and below 0x100, so the 16 bits lie in the header.
      const header = this.read16(at);
      const id = header & 0xff;
      if (id === 0xff) break; // all-ones: the function is not answering
      out.push({ id, offset: at, name: CAP_NAMES.get(id) });
      at = (header >>> 8) & ~3;
    }
    return out;
  }

  findCapability(id: number | CapabilityName): Capability | null {
    const want = typeof id === 'number' ? id : CAP_ID[id];
    return this.capabilities().find((c) => c.id === want) ?? null;
  }

  /** The PCI Express extended capability list (from 0x100); empty on 256-byte config spaces. */
  extendedCapabilities(): ExtendedCapability[] {
    const out: ExtendedCapability[] = [];
    const size = this.size;
    if (size <= CONVENTIONAL_CONFIG_SIZE) return out;
    const seen = new Set<number>();
    let at = EXT_CAP_START;
    for (let hops = 0; hops < EXT_CAP_TTL; hops++) {
      if (at < EXT_CAP_START || at + 4 > size || seen.has(at)) break;
      seen.add(at);
      const header = this.read32(at);
      if (header === 0 || header === 0xffffffff) break;
      const id = header & 0xffff;
      // vfio-pci hides some capabilities by zeroing their id but keeps the
      // chain going through them: skip those, follow `next`.
      if (id !== 0) out.push({ id, version: (header >>> 16) & 0xf, offset: at, name: EXT_CAP_NAMES.get(id) });
      at = (header >>> 20) & 0xffc;
    }
    return out;
  }

  findExtendedCapability(id: number | ExtendedCapabilityName): ExtendedCapability | null {
    const want = typeof id === 'number' ? id : EXT_CAP_ID[id];
    return this.extendedCapabilities().find((c) => c.id === want) ?? null;
  }

  /** The MSI-X table/PBA placement, or null when the function has no MSI-X. */
  msix(): MsixLayout | null {
    const cap = this.findCapability(CAP_ID.msix);
    if (cap === null) return null;
    const control = this.read16(cap.offset + MSIX_CONTROL);
    const table = this.read32(cap.offset + MSIX_TABLE);
    const pba = this.read32(cap.offset + MSIX_PBA);
    const vectors = (control & MSIX_CONTROL_TABLE_SIZE) + 1;
    return {
      capOffset: cap.offset,
      vectors,
      enabled: (control & MSIX_CONTROL_ENABLE) !== 0,
      tableBar: table & MSIX_BIR_MASK,
      tableOffset: table - (table & MSIX_BIR_MASK),
      tableSize: vectors * MSIX_ENTRY_SIZE,
      pbaBar: pba & MSIX_BIR_MASK,
      pbaOffset: pba - (pba & MSIX_BIR_MASK),
    };
  }

  // --- lifetime ----------------------------------------------------------------

  /** Idempotent; config space holds no mapping, only the guard. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#region?.close();
    this.#region = null;
  }

  [Symbol.dispose](): void {
    this.close();
  }

  #cfg(): Region {
    if (this.#closed) throw resourceClosed(this.#h, 'config space');
    if (this.#region !== null) return this.#region;
    const h = this.#h;
    h.assertOpen();
    if ((h.info().flags & VFIO_DEVICE_FLAGS_PCI) === 0) {
      throw usageError('ENOTSUP', 'the device is not a PCI device: it has no PCI config space', { device: h.address });
    }
    this.#region = openRegion(h, regionInfo(h, VFIO_PCI_CONFIG_REGION_INDEX), { noMmap: true });
    return this.#region;
  }
}
