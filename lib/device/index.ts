// Device I/O: everything a userspace driver does with an opened device —
// regions and BARs, config space, interrupts, reset — as one base class. The
// Device of lib/core extends it (so `dev.mapBar()` reaches ./bar.ts in one
// step); the tests extend it over a bare device fd. A subclass supplies the
// DeviceHandle members: the fd and its lifetime.
//
// Guarantees:
// - `closeIo()` releases in a safe order: every Region is unmapped (guards
//   set first), every IRQ set disabled and its eventfds closed, config space
//   closed. The subclass calls it before it closes the device fd (so the
//   kernel is told to drop the eventfds while it can still be asked);
//   afterwards every call here, and on anything it handed out, throws ECLOSED.
// - Nothing here touches the device until asked: constructing a DeviceIo
//   does no I/O.
import { teardown } from '../base/cleanup.js';
import type { Fd, Sys } from '../libc/sys.js';
import { resourceClosed, type DeviceBasics, type DeviceHandle, type DeviceMode } from './handle.js';
import { ConfigSpace } from './config.js';
import { Irqs } from './irqs.js';
import { mapBar, type MapBarOptions } from './bar.js';
import { openRegion, type Region } from './region.js';
import { VFIO_DEVICE_FLAGS_PCI, VFIO_PCI_BAR0_REGION_INDEX, VFIO_PCI_BAR5_REGION_INDEX } from '../uapi/vfio.js';
import { allRegionInfo, regionInfo, type RegionInfo } from './region-info.js';
import { hotReset, hotResetInfo, resetDevice, type HotResetInfo } from './reset.js';

export abstract class DeviceIo implements DeviceHandle {
  abstract readonly sys: Sys;
  abstract readonly fd: Fd;
  abstract readonly address: string;
  abstract readonly mode: DeviceMode;
  abstract readonly closed: boolean;
  abstract assertOpen(): void;
  abstract info(): DeviceBasics;
  abstract groupFd(groupId: number): Fd | null;

  readonly #regions = new Set<Region>();
  #config: ConfigSpace | null = null;
  #irqs: Irqs | null = null;
  #ioClosed = false;

  /**
   * Region info for `index`, capabilities decoded (sparse mmap, type, MSI-X).
   * @throws VfioError EINVAL `index` is not a region of the device; ENOENT
   *   the VGA region of a device without VGA; ECLOSED; the ioctl's errors.
   */
  regionInfo(index: number): RegionInfo {
    this.#assertIoOpen();
    return regionInfo(this, index);
  }

  /**
   * Info for every region the device has.
   * @throws VfioError ECLOSED; the ioctl's errors.
   */
  regions(): RegionInfo[] {
    this.#assertIoOpen();
    return allRegionInfo(this);
  }

  /**
   * Opens any region (ROM, VGA, device-specific ones) for access; a BAR index
   * (0..5) is the same as mapBar.
   * @throws VfioError as regionInfo and mapBar; ENOENT the region has size
   *   0; EACCES it is neither readable nor writable.
   */
  mapRegion(index: number, opts: MapBarOptions = {}): Region {
    this.#assertIoOpen();
    if (index >= VFIO_PCI_BAR0_REGION_INDEX && index <= VFIO_PCI_BAR5_REGION_INDEX && (this.info().flags & VFIO_DEVICE_FLAGS_PCI) !== 0) {
      return this.mapBar(index - VFIO_PCI_BAR0_REGION_INDEX, opts);
    }
    return this.#track(openRegion(this, regionInfo(this, index), opts, this.#untrack));
  }

  /**
   * Maps BAR `bar` (mmap where the region allows it, else pread/pwrite), its
   * decoding enabled.
   * @throws VfioError EINVAL `bar` is not 0..5 or the range is outside the
   *   BAR; ENOTSUP not a PCI device; ENOENT the BAR is not implemented;
   *   ECLOSED; mmap's errors.
   */
  mapBar(bar: number, opts: MapBarOptions = {}): Region {
    this.#assertIoOpen();
    return this.#track(mapBar(this, this.config, bar, opts, this.#untrack));
  }

  /**
   * PCI config space (opened on first access).
   * @throws VfioError ECLOSED.
   */
  get config(): ConfigSpace {
    this.#assertIoOpen();
    this.#config ??= new ConfigSpace(this);
    return this.#config;
  }

  /**
   * The device's interrupts.
   * @throws VfioError ECLOSED.
   */
  get irqs(): Irqs {
    this.#assertIoOpen();
    this.#irqs ??= new Irqs(this);
    return this.#irqs;
  }

  /**
   * Function reset (VFIO_DEVICE_RESET).
   * @throws VfioError ENOTSUP the device cannot be reset this way; ECLOSED;
   *   the ioctl's errors (EAGAIN: another reset is under way).
   */
  reset(): void {
    this.#assertIoOpen();
    resetDevice(this);
  }

  /**
   * The devices a hot reset of this one would also reset.
   * @throws VfioError ENODEV the device cannot be hot reset (no slot or bus
   *   reset); ECLOSED; the ioctl's errors.
   */
  hotResetInfo(): HotResetInfo {
    this.#assertIoOpen();
    return hotResetInfo(this);
  }

  /**
   * Hot reset of the device's slot or bus.
   * @throws VfioError EPERM an affected device (or its group) is not owned
   *   by this process; ENODEV the device cannot be hot reset; ECLOSED; the
   *   ioctl's errors.
   */
  hotReset(): void {
    this.#assertIoOpen();
    hotReset(this);
  }

  /**
   * Unmaps every region, disables every interrupt and closes its eventfds,
   * closes config space. The subclass calls it before it closes the device
   * fd. Idempotent, except that a region whose munmap failed stays listed
   * and a later call retries it (Linux leaves the mapping in place).
   * @throws the first failure, after everything was released.
   */
  protected closeIo(): void {
    // Each region leaves #regions (#untrack) once all its mappings are gone.
    const regions = [...this.#regions];
    if (this.#ioClosed) {
      teardown(regions.map((r) => () => r.close()));
      return;
    }
    this.#ioClosed = true;
    const irqs = this.#irqs;
    const config = this.#config;
    teardown([...regions.map((r) => () => r.close()), () => irqs?.close(), () => config?.close()]);
  }

  #track(r: Region): Region {
    this.#regions.add(r);
    return r;
  }

  readonly #untrack = (r: Region): void => {
    this.#regions.delete(r);
  };

  #assertIoOpen(): void {
    this.assertOpen();
    if (this.#ioClosed) throw resourceClosed(this, 'device I/O');
  }
}

export type { DeviceBasics, DeviceHandle, DeviceMode } from './handle.js';
export { ConfigSpace } from './config.js';
export type {
  BarKind,
  Capability,
  CapabilityName,
  CommandFlags,
  DeviceIds,
  ExtendedCapability,
  ExtendedCapabilityName,
  MsixLayout,
} from './config.js';
export { CAP_ID, EXT_CAP_ID } from './pci-regs.js';
export { Irqs, IrqSet, IrqVector, IRQ_INDEX } from './irqs.js';
export type { EnableOptions, IrqInfo, IrqKind, Unsubscribe, WaitOptions } from './irqs.js';
export { Region } from './region.js';
export type { MmioViews, OpenRegionOptions } from './region.js';
export type { AccessWidth } from './hexdump.js';
export type { MapBarOptions } from './bar.js';
export type { RegionArea, RegionInfo, RegionType } from './region-info.js';
export type { DependentDevice, HotResetInfo } from './reset.js';
