// A live fake PCI device: its BARs (real memory), config space, interrupts,
// optional behavioural model, and what vfio-pci does with it (vfio_pci_core.c
// and vfio_pci_rdwr.c): region info, region read/write, region mmap, enable
// on first open, disable on last close, function reset.
//
// Time: a model runs at its ticks (device-model.ts). Besides the ticks the
// Sys gives it, a device ticks when its model asked (`wakeAt`, one timer) and
// every BUS_CLOCK_MS while it is open (the bus clock). Both timers are
// unref'd: they never keep the process alive on their own (whoever waits for
// the device holds the process: a pending pollAsync, a sleep), and
// `dispose()` stops them.
import type { VfToken } from './sriov.js';
import {
  vfio_region_info_cap_sparse_mmap,
  vfio_region_info_cap_type,
  vfio_region_sparse_mmap_area,
  vfio_info_cap_header,
  VFIO_PCI_BAR5_REGION_INDEX,
  VFIO_PCI_CONFIG_REGION_INDEX,
  VFIO_PCI_MSIX_IRQ_INDEX,
  VFIO_PCI_MSI_IRQ_INDEX,
  VFIO_PCI_NUM_REGIONS,
  VFIO_PCI_ROM_REGION_INDEX,
  VFIO_PCI_VGA_REGION_INDEX,
  VFIO_REGION_INFO_CAP_MSIX_MAPPABLE,
  VFIO_REGION_INFO_CAP_SPARSE_MMAP,
  VFIO_REGION_INFO_CAP_TYPE,
  VFIO_REGION_INFO_FLAG_MMAP,
  VFIO_REGION_INFO_FLAG_READ,
  VFIO_REGION_INFO_FLAG_WRITE,
} from '../uapi/vfio.js';
import { write } from '../uapi/codec.js';
import { CapChain } from './caps.js';
import {
  ConfigSpace,
  PCI_COMMAND_INTX_DISABLE,
  PCI_COMMAND_IO,
  PCI_COMMAND_MASTER,
  PCI_COMMAND_MEMORY,
  type BarLayout,
} from './config-space.js';
import type { KernelCore } from './core.js';
import type { AccessWidth, DeviceContext, DeviceModel, IrqKind } from './device-model.js';
import { fail } from './errors.js';
import type { EventFdFile } from './eventfd.js';
import type { MmapRequest, MmapTarget } from './files.js';
import { IrqState } from './irqs.js';
import { Backing, PAGE_SIZE } from './memory.js';
import type { PciDeviceDescription } from './pci-spec.js';

/** VFIO_PCI_OFFSET_SHIFT: a region's offset in the device fd is its index << 40. */
export const REGION_SHIFT = 40n;
const POS_MASK = (1n << REGION_SHIFT) - 1n;
/** How often an open device with a model looks at its registers with no system call made. */
const BUS_CLOCK_MS = 1;

/** Device-visible memory: the IOMMU's translation for this device, or physical memory (no-IOMMU). */
export interface DmaSpace {
  read(iova: bigint, length: number): Uint8Array;
  write(iova: bigint, bytes: Uint8Array): void;
}

/** What the device needs from the rest of the fake kernel. */
export interface DeviceHost extends KernelCore {
  /** Every PCI device of the machine (the topology a bus reset looks at). */
  readonly pciDevices: ReadonlyMap<string, FakePciDevice>;
  /** Where the device's DMA lands now, or why it is blocked. */
  dmaSpaceOf(dev: FakePciDevice): DmaSpace | string;
  /** eventfd_ctx_fdget() on the process's fd table. */
  eventfdOf(fd: number): EventFdFile;
}

export interface RegionInfo {
  readonly size: bigint;
  readonly flags: number;
  readonly caps: CapChain;
}

interface Bar {
  readonly layout: BarLayout;
  readonly backing: Backing;
  readonly mmap: boolean;
  readonly read: boolean;
  readonly write: boolean;
  readonly sparse: readonly { readonly offset: number; readonly size: number }[] | undefined;
  readonly msixMappable: boolean;
  readonly init: ((bytes: Uint8Array) => void) | undefined;
}

export class FakePciDevice implements DeviceContext {
  readonly config: ConfigSpace;
  readonly irqs: IrqState;
  private readonly bars = new Map<number, Bar>();
  private readonly rom: Backing | null;
  private readonly regions: { spec: PciDeviceDescription['regions'][number]; backing: Backing }[];
  private readonly model: DeviceModel | null;
  /** vfio_device->open_count. */
  openCount = 0;
  /** An SR-IOV PF bound to vfio-pci: its VF token (./sriov.ts); null otherwise. */
  vfToken: VfToken | null = null;
  /** A VF whose PF is bound to vfio-pci: that PF (sriov_pf_core_dev); null otherwise. */
  sriovPf: FakePciDevice | null = null;
  /** vfio_device->cdev_opened: bound through its cdev (BIND_IOMMUFD). */
  cdevOpened = false;
  /** vdev->reset_works, decided when the device is enabled. */
  resetWorks = false;
  /** How many times the device was reset (function, hot, or on open/close). */
  resets = 0;
  /** The tick the model asked for (wakeAt), if any. */
  private wake: { readonly at: number; readonly timer: NodeJS.Timeout } | null = null;
  /** The bus clock while the device is open. */
  private clock: NodeJS.Timeout | null = null;

  constructor(
    readonly desc: PciDeviceDescription,
    private readonly host: DeviceHost,
    busAddress: (size: number, type: BarLayout['type']) => bigint,
    /** The vfio device index (vfioN), or null when no VFIO driver is bound. */
    readonly vfioIndex: number | null,
  ) {
    const layouts: BarLayout[] = [];
    for (const b of desc.bars) {
      const layout: BarLayout = {
        index: b.index,
        size: b.size,
        type: b.type,
        prefetchable: b.prefetchable,
        busAddress: busAddress(b.size, b.type),
      };
      layouts.push(layout);
      const length = Math.max(b.size, PAGE_SIZE);
      const backing = new Backing('device', length, host.phys, 0, layout.busAddress);
      this.bars.set(b.index, {
        layout,
        backing,
        mmap: b.mmap,
        read: b.read,
        write: b.write,
        sparse: b.sparse,
        msixMappable: b.msixMappable ?? true,
        init: b.init,
      });
    }
    this.rom = desc.rom === null ? null : new Backing('device', desc.rom!.size, host.phys, 0, busAddress(desc.rom!.size, 'mem32'));
    if (this.rom !== null) desc.rom!.init?.(new Uint8Array(this.rom.buffer));
    this.regions = desc.regions.map((spec) => {
      const backing = new Backing(
        'device',
        Math.max(spec.size, PAGE_SIZE),
        host.phys,
        0,
        busAddress(Math.max(spec.size, PAGE_SIZE), 'mem64'),
      );
      spec.init?.(new Uint8Array(backing.buffer, 0, spec.size));
      return { spec, backing };
    });
    this.config = new ConfigSpace(desc, layouts, this.rom === null ? null : this.rom.busAddress);
    const self = this; // the IRQ host's getters read live device state
    this.irqs = new IrqState({
      eventfd: (fd) => host.eventfdOf(fd),
      isPcie: this.config.isPcie,
      dynamicMsix: desc.dynamicMsix,
      get busMaster() {
        return self.config.busMaster;
      },
      get intxDisabled() {
        return (self.config.command & PCI_COMMAND_INTX_DISABLE) !== 0;
      },
      msixMasked: (v) => this.msixMasked(v),
      log: (line) => this.log(line),
    });
    this.model = desc.model?.() ?? null;
    this.initBars();
  }

  get address(): string {
    return this.desc.address;
  }

  log(line: string): void {
    this.host.dmesg(`${this.address}: ${line}`);
  }

  /** Number of regions: the nine vfio-pci ones plus device-specific ones. */
  get numRegions(): number {
    return VFIO_PCI_NUM_REGIONS + this.regions.length;
  }

  private initBars(): void {
    for (const b of this.bars.values()) {
      const bytes = new Uint8Array(b.backing.buffer);
      bytes.fill(0);
      b.init?.(bytes.subarray(0, b.layout.size));
    }
    this.model?.reset(this);
  }

  // ---- DeviceContext (what a model sees) ----

  bar(index: number): Uint8Array {
    const b = this.bars.get(index);
    if (b === undefined) throw new RangeError(`${this.address} has no BAR ${index}`);
    return new Uint8Array(b.backing.buffer, 0, b.layout.size);
  }

  get msiEnabled(): boolean {
    return this.irqs.type === VFIO_PCI_MSI_IRQ_INDEX;
  }

  get msixEnabled(): boolean {
    return this.irqs.type === VFIO_PCI_MSIX_IRQ_INDEX;
  }

  get busMaster(): boolean {
    return this.config.busMaster;
  }

  raise(kind: IrqKind, vector = 0): boolean {
    switch (kind) {
      case 'intx':
        return this.irqs.raiseIntx(true);
      case 'msi':
        return this.irqs.raiseMsi(VFIO_PCI_MSI_IRQ_INDEX, vector);
      case 'msix':
        return this.irqs.raiseMsi(VFIO_PCI_MSIX_IRQ_INDEX, vector);
      case 'err':
      case 'req':
        return this.irqs.raiseSlot(kind);
    }
  }

  /** An INTx edge (assert and release), as a test raises it. */
  pulseIntx(): boolean {
    return this.irqs.raiseIntx(false);
  }

  lowerIntx(): void {
    this.irqs.lowerIntx();
  }

  private dmaSpace(): DmaSpace {
    if (!this.config.busMaster) fail('EIO', `${this.address}: DMA with bus mastering off (master abort)`);
    const s = this.host.dmaSpaceOf(this);
    if (typeof s === 'string') fail('EFAULT', `${this.address}: DMA blocked: ${s}`);
    return s;
  }

  private checkMask(iova: bigint, length: number): void {
    if (this.desc.dmaBits < 64 && iova + BigInt(length) > 1n << BigInt(this.desc.dmaBits)) {
      fail('EFAULT', `${this.address}: IOVA 0x${iova.toString(16)} is beyond the device's ${this.desc.dmaBits}-bit DMA mask`);
    }
  }

  dmaRead(iova: bigint, length: number): Uint8Array {
    this.checkMask(iova, length);
    return this.dmaSpace().read(iova, length);
  }

  dmaWrite(iova: bigint, bytes: Uint8Array): void {
    this.checkMask(iova, bytes.byteLength);
    this.dmaSpace().write(iova, bytes);
  }

  now(): number {
    return performance.now();
  }

  wakeAt(at: number): void {
    if (this.wake !== null && this.wake.at <= at) return;
    if (this.wake !== null) clearTimeout(this.wake.timer);
    const timer = setTimeout(
      () => {
        this.wake = null;
        this.timerTick();
      },
      Math.max(0, Math.ceil(at - this.now())),
    );
    timer.unref();
    this.wake = { at, timer };
  }

  /** Lets the model act on register writes made since the last call, and on work that is due. */
  tick(): void {
    this.model?.tick(this);
  }

  /** A tick from a timer: nobody to throw to, so a model failure goes to the kernel log. */
  private timerTick(): void {
    try {
      this.tick();
    } catch (e) {
      this.log(`device model failed in a timer tick: ${(e as Error).message}`);
    }
  }

  /** Stops the device's timers (the machine is going away). */
  dispose(): void {
    if (this.wake !== null) clearTimeout(this.wake.timer);
    this.wake = null;
    this.stopClock();
  }

  private stopClock(): void {
    if (this.clock !== null) clearInterval(this.clock);
    this.clock = null;
  }

  private msixMasked(v: number): boolean {
    const t = this.config.msixTable();
    const at = this.config.cap(0x11);
    if (t === null || at === null) return false;
    if (this.config.bytes[at + 3]! & 0x40) return true; // function mask
    const b = this.bars.get(t.bar);
    if (b === undefined) return false;
    const ctrl = t.offset + v * 16 + 12;
    return (new DataView(b.backing.buffer).getUint32(ctrl, true) & 1) !== 0;
  }

  // ---- vfio-pci core ----

  /** vfio_pci_core_enable(): first open. */
  enable(): void {
    // vfio_pci_core_finish_enable(): an open VF counts as a user of its PF's token.
    if (this.sriovPf?.vfToken) this.sriovPf.vfToken.users++;
    this.config.restore();
    this.config.setCommandBits(PCI_COMMAND_MASTER, false);
    const kinds = [...this.bars.values()].map((b) => b.layout.type);
    if (kinds.some((t) => t !== 'io') || this.rom !== null) this.config.setCommandBits(PCI_COMMAND_MEMORY, true);
    if (kinds.includes('io')) this.config.setCommandBits(PCI_COMMAND_IO, true);
    this.resetWorks = this.desc.reset === 'bus' ? this.aloneBehindBridge() : this.desc.reset;
    if (this.resetWorks) this.functionReset();
    if (this.model !== null && this.clock === null) {
      this.clock = setInterval(() => this.timerTick(), BUS_CLOCK_MS);
      this.clock.unref();
    }
  }

  /**
   * pci_parent_bus_reset()'s condition: not on the root bus (bus 00 here;
   * every other bus sits behind its own bridge) and no other device on the
   * bus, VFIO's or not.
   */
  private aloneBehindBridge(): boolean {
    const { segment, bus } = this.desc;
    if (bus === 0) return false;
    return ![...this.host.pciDevices.values()].some((d) => d !== this && d.desc.segment === segment && d.desc.bus === bus);
  }

  /** vfio_pci_core_close_device(): last close. */
  disable(): void {
    if (this.sriovPf?.vfToken) this.sriovPf.vfToken.users--;
    this.stopClock();
    this.irqs.disableAll();
    if (this.resetWorks) this.functionReset();
    this.config.restore();
  }

  /** pci_try_reset_function(): the device's own state resets; config space is saved and restored around it. */
  functionReset(): void {
    this.resets++;
    this.initBars();
    this.irqs.lowerIntx();
  }

  regionInfo(index: number): RegionInfo | null {
    const caps = new CapChain();
    const RW = VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE;
    if (index === VFIO_PCI_CONFIG_REGION_INDEX) return { size: BigInt(this.config.size), flags: RW, caps };
    if (index <= VFIO_PCI_BAR5_REGION_INDEX) {
      const b = this.bars.get(index);
      if (b === undefined) return { size: 0n, flags: 0, caps };
      let flags = (b.read ? VFIO_REGION_INFO_FLAG_READ : 0) | (b.write ? VFIO_REGION_INFO_FLAG_WRITE : 0);
      if (b.mmap) {
        flags |= VFIO_REGION_INFO_FLAG_MMAP;
        if (b.sparse !== undefined) {
          const cap = caps.add(
            vfio_region_info_cap_sparse_mmap,
            VFIO_REGION_INFO_CAP_SPARSE_MMAP,
            1,
            { nr_areas: b.sparse.length },
            b.sparse.length * vfio_region_sparse_mmap_area.size,
          );
          b.sparse.forEach((a, i) => {
            write(
              vfio_region_sparse_mmap_area,
              cap,
              { offset: a.offset, size: a.size },
              vfio_region_info_cap_sparse_mmap.size + i * vfio_region_sparse_mmap_area.size,
            );
          });
        }
        if (b.msixMappable && this.config.msixTable()?.bar === index)
          caps.add(vfio_info_cap_header, VFIO_REGION_INFO_CAP_MSIX_MAPPABLE, 1, {});
      }
      return { size: BigInt(b.layout.size), flags, caps };
    }
    if (index === VFIO_PCI_ROM_REGION_INDEX) {
      return this.rom === null
        ? { size: 0n, flags: 0, caps }
        : { size: BigInt(this.rom.byteLength), flags: VFIO_REGION_INFO_FLAG_READ, caps };
    }
    if (index === VFIO_PCI_VGA_REGION_INDEX) return null; // no VGA: EINVAL
    const r = this.regions[index - VFIO_PCI_NUM_REGIONS];
    if (r === undefined) return null;
    caps.add(vfio_region_info_cap_type, VFIO_REGION_INFO_CAP_TYPE, 1, { type: r.spec.type, subtype: r.spec.subtype });
    const flags =
      ((r.spec.read ?? true) ? VFIO_REGION_INFO_FLAG_READ : 0) |
      ((r.spec.write ?? true) ? VFIO_REGION_INFO_FLAG_WRITE : 0) |
      ((r.spec.mmap ?? false) ? VFIO_REGION_INFO_FLAG_MMAP : 0);
    return { size: BigInt(r.spec.size), flags, caps };
  }

  /** vfio_pci_rw(): read or write at a device-fd offset. Returns the byte count. */
  rw(offset: bigint, buf: Uint8Array, isWrite: boolean): number {
    if (buf.byteLength === 0) return 0;
    const index = Number(offset >> REGION_SHIFT);
    const pos = offset & POS_MASK;
    if (index >= this.numRegions) fail('EINVAL', `region ${index} does not exist`);
    if (index === VFIO_PCI_CONFIG_REGION_INDEX) return this.configRw(pos, buf, isWrite);
    if (index === VFIO_PCI_ROM_REGION_INDEX) {
      if (isWrite) fail('EINVAL', 'the ROM region cannot be written');
      if (this.rom === null) fail('EINVAL', 'the device has no ROM');
      return this.memRw(this.rom, this.rom.byteLength, pos, buf, false, true, null);
    }
    if (index <= VFIO_PCI_BAR5_REGION_INDEX) {
      const b = this.bars.get(index);
      if (b === undefined) fail('EINVAL', `BAR ${index} is not implemented`);
      if (isWrite ? !b.write : !b.read) fail('EINVAL', `BAR ${index} cannot be ${isWrite ? 'written' : 'read'}`);
      const t = this.config.msixTable();
      const excl = t !== null && t.bar === index ? t : null;
      const model = this.model;
      if (model?.read !== undefined && model.write !== undefined) {
        return this.accessRw(model as Required<DeviceModel>, index, b.layout.size, pos, buf, isWrite, b.layout.type !== 'io', excl);
      }
      if (!isWrite) this.tick();
      const n = this.memRw(b.backing, b.layout.size, pos, buf, isWrite, b.layout.type !== 'io', excl);
      if (isWrite) this.tick();
      return n;
    }
    if (index === VFIO_PCI_VGA_REGION_INDEX) fail('EINVAL', 'the device has no VGA region');
    const r = this.regions[index - VFIO_PCI_NUM_REGIONS]!;
    if (isWrite ? !(r.spec.write ?? true) : !(r.spec.read ?? true))
      fail('EINVAL', `region ${index} cannot be ${isWrite ? 'written' : 'read'}`);
    return this.memRw(r.backing, r.spec.size, pos, buf, isWrite, false, null);
  }

  private configRw(pos: bigint, buf: Uint8Array, isWrite: boolean): number {
    // vfio_config_do_rw(): an access that does not fit config space is EFAULT.
    if (pos >= BigInt(this.config.size) || pos + BigInt(buf.byteLength) > BigInt(this.config.size)) {
      fail('EFAULT', `config access [${pos}, ${pos + BigInt(buf.byteLength)}) outside ${this.config.size} bytes`);
    }
    if (isWrite) this.config.write(Number(pos), buf);
    else buf.set(this.config.read(Number(pos), buf.byteLength));
    return buf.byteLength;
  }

  /**
   * What vfio_pci_bar_rw() checks before any access: the offset inside the
   * region (EINVAL), memory decoding on for a memory BAR (EIO); the access is
   * truncated at the region's end.
   */
  private rwSpan(end: number, pos: bigint, buf: Uint8Array, testMem: boolean): { start: number; count: number } {
    if (pos >= BigInt(end)) fail('EINVAL', `offset ${pos} is past the region's ${end} bytes`);
    if (testMem && !this.config.memoryEnabled) fail('EIO', 'memory decoding is disabled in the command register');
    const start = Number(pos);
    return { start, count: Math.min(buf.byteLength, end - start) };
  }

  /** vfio_pci_bar_rw() + do_io_rw(): truncated at the end; the MSI-X table reads as ~0 and drops writes. */
  private memRw(
    backing: Backing,
    end: number,
    pos: bigint,
    buf: Uint8Array,
    isWrite: boolean,
    testMem: boolean,
    excl: { offset: number; size: number } | null,
  ): number {
    const { start: p, count } = this.rwSpan(end, pos, buf, testMem);
    const mem = new Uint8Array(backing.buffer, p, count);
    for (let i = 0; i < count; i++) {
      const inTable = excl !== null && p + i >= excl.offset && p + i < excl.offset + excl.size;
      if (isWrite) {
        if (!inTable) mem[i] = buf[i]!;
      } else buf[i] = inTable ? 0xff : mem[i]!;
    }
    return count;
  }

  /**
   * vfio_pci_core_do_io_rw() on a device whose model takes accesses: each
   * step is one access of the widest of 8, 4, 2, 1 bytes that the offset's
   * alignment and the bytes left allow (8 needs ioread64, which x86-64 has);
   * the excluded MSI-X table reads ~0 and drops writes.
   */
  private accessRw(
    model: Required<DeviceModel>,
    index: number,
    end: number,
    pos: bigint,
    buf: Uint8Array,
    isWrite: boolean,
    testMem: boolean,
    excl: { offset: number; size: number } | null,
  ): number {
    const { start, count } = this.rwSpan(end, pos, buf, testMem);
    const dv = new DataView(buf.buffer, buf.byteOffset, count);
    let done = 0;
    while (done < count) {
      const off = start + done;
      const left = count - done;
      let fillable = left;
      if (excl !== null) fillable = off < excl.offset ? Math.min(left, excl.offset - off) : off >= excl.offset + excl.size ? left : 0;
      if (fillable === 0) {
        const n = Math.min(left, excl!.offset + excl!.size - off);
        if (!isWrite) buf.fill(0xff, done, done + n);
        done += n;
        continue;
      }
      const width: AccessWidth =
        fillable >= 8 && off % 8 === 0 ? 8 : fillable >= 4 && off % 4 === 0 ? 4 : fillable >= 2 && off % 2 === 0 ? 2 : 1;
      if (isWrite) model.write(this, index, off, width, getLe(dv, done, width));
      else setLe(dv, done, width, model.read(this, index, off, width));
      done += width;
    }
    return count;
  }

  /** vfio_pci_core_mmap(). */
  mmap(req: MmapRequest): MmapTarget {
    const index = Number(req.offset >> REGION_SHIFT);
    const start = Number(req.offset & POS_MASK);
    if (index >= this.numRegions) fail('EINVAL', `region ${index} does not exist`);
    if (!req.shared) fail('EINVAL', 'device regions must be mapped MAP_SHARED');
    if (index >= VFIO_PCI_NUM_REGIONS) {
      const r = this.regions[index - VFIO_PCI_NUM_REGIONS]!;
      if (!(r.spec.mmap ?? false)) fail('EINVAL', `region ${index} is not mmap-able`);
      if (start + req.length > Math.max(r.spec.size, PAGE_SIZE)) fail('EINVAL', 'mapping past the end of the region');
      return { backing: r.backing, offset: start, pfnmap: true, hugeSize: 0 };
    }
    if (index >= VFIO_PCI_ROM_REGION_INDEX) fail('EINVAL', `region ${index} (ROM, config, VGA) cannot be mapped`);
    const b = this.bars.get(index);
    if (b === undefined || !b.mmap) fail('EINVAL', `BAR ${index} is not mmap-able`);
    const physLen = Math.ceil(b.layout.size / PAGE_SIZE) * PAGE_SIZE;
    if (start + req.length > physLen) fail('EINVAL', `mapping [${start}, ${start + req.length}) past BAR ${index}'s ${physLen} bytes`);
    if (b.sparse !== undefined && !b.sparse.some((a) => start >= a.offset && start + req.length <= a.offset + a.size)) {
      fail('EINVAL', `mapping [${start}, ${start + req.length}) is not inside one sparse mmap area of BAR ${index}`);
    }
    return {
      backing: b.backing,
      offset: start,
      pfnmap: true,
      hugeSize: 0,
      accessFault: () => (this.config.memoryEnabled ? null : `${this.address}: memory decoding is off (the access would SIGBUS)`),
    };
  }
}

function getLe(dv: DataView, at: number, width: AccessWidth): bigint {
  switch (width) {
    case 1:
      return BigInt(dv.getUint8(at));
    case 2:
      return BigInt(dv.getUint16(at, true));
    case 4:
      return BigInt(dv.getUint32(at, true));
    case 8:
      return dv.getBigUint64(at, true);
  }
}

function setLe(dv: DataView, at: number, width: AccessWidth, v: bigint): void {
  const mask = (1n << BigInt(8 * width)) - 1n;
  const x = v & mask;
  switch (width) {
    case 1:
      return dv.setUint8(at, Number(x));
    case 2:
      return dv.setUint16(at, Number(x), true);
    case 4:
      return dv.setUint32(at, Number(x), true);
    case 8:
      return dv.setBigUint64(at, x, true);
  }
}
