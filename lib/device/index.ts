// Device I/O: everything a userspace driver does with an opened device —
// regions and BARs, config space, interrupts, reset — gathered behind one
// object that the Device owns and closes.
//
// Guarantees:
// - `close()` releases in a safe order: every Region is unmapped (guards set
//   first), every IRQ set disabled and its eventfds closed, config space
//   closed. It must run before the device fd is closed (so the kernel is told
//   to drop the eventfds while it can still be asked); afterwards every call
//   here, and on anything it handed out, throws ECLOSED.
// - Nothing here touches the device until asked: constructing a DeviceIo
//   does no I/O.
import { resourceClosed, type DeviceHandle } from './handle.js';
import { ConfigSpace } from './config.js';
import { Irqs } from './irqs.js';
import { mapBar, type MapBarOptions } from './bar.js';
import { openRegion, type Region } from './region.js';
import { VFIO_DEVICE_FLAGS_PCI, VFIO_PCI_BAR0_REGION_INDEX, VFIO_PCI_BAR5_REGION_INDEX } from '../uapi/vfio.js';
import { allRegionInfo, regionInfo, type RegionInfo } from './region-info.js';
import { hotReset, hotResetInfo, resetDevice, type HotResetInfo } from './reset.js';

export class DeviceIo implements Disposable {
  readonly #h: DeviceHandle;
  readonly #regions = new Set<Region>();
  #config: ConfigSpace | null = null;
  #irqs: Irqs | null = null;
  #closed = false;

  constructor(h: DeviceHandle) {
    this.#h = h;
  }

  /** Region info for `index`, capabilities decoded. See region-info.ts for errors. */
  regionInfo(index: number): RegionInfo {
    this.#assertOpen();
    return regionInfo(this.#h, index);
  }

  /** Info for every region the device has. */
  regions(): RegionInfo[] {
    this.#assertOpen();
    return allRegionInfo(this.#h);
  }

  /**
   * Opens any region (ROM, VGA, device-specific ones) for access; a BAR index
   * (0..5) is the same as mapBar. See openRegion for errors.
   */
  mapRegion(index: number, opts: MapBarOptions = {}): Region {
    this.#assertOpen();
    if (
      index >= VFIO_PCI_BAR0_REGION_INDEX &&
      index <= VFIO_PCI_BAR5_REGION_INDEX &&
      (this.#h.info().flags & VFIO_DEVICE_FLAGS_PCI) !== 0
    ) {
      return this.mapBar(index - VFIO_PCI_BAR0_REGION_INDEX, opts);
    }
    return this.#track(openRegion(this.#h, regionInfo(this.#h, index), opts, this.#untrack));
  }

  /** Maps BAR `bar` with its decoding enabled. See bar.ts for errors. */
  mapBar(bar: number, opts: MapBarOptions = {}): Region {
    this.#assertOpen();
    return this.#track(mapBar(this.#h, this.config, bar, opts, this.#untrack));
  }

  /** PCI config space (opened on first access). */
  get config(): ConfigSpace {
    this.#assertOpen();
    this.#config ??= new ConfigSpace(this.#h);
    return this.#config;
  }

  /** The device's interrupts. */
  get irqs(): Irqs {
    this.#assertOpen();
    this.#irqs ??= new Irqs(this.#h);
    return this.#irqs;
  }

  /** Function reset. See reset.ts for errors. */
  reset(): void {
    this.#assertOpen();
    resetDevice(this.#h);
  }

  hotResetInfo(): HotResetInfo {
    this.#assertOpen();
    return hotResetInfo(this.#h);
  }

  hotReset(): void {
    this.#assertOpen();
    hotReset(this.#h);
  }

  get closed(): boolean {
    return this.#closed;
  }

  /**
   * Unmaps every region, disables every interrupt and closes its eventfds.
   * Idempotent, except that a region whose munmap failed stays listed and a
   * later close() retries it (the mapping is still there).
   * Errors: the first failure, after everything was released.
   */
  close(): void {
    if (this.#closed) {
      for (const r of [...this.#regions]) r.close();
      return;
    }
    this.#closed = true;
    let first: unknown;
    const attempt = (fn: () => void): void => {
      try {
        fn();
      } catch (err) {
        first ??= err;
      }
    };
    // Each region leaves #regions (#untrack) once all its mappings are gone.
    for (const r of [...this.#regions]) attempt(() => r.close());
    if (this.#irqs !== null) {
      const irqs = this.#irqs;
      attempt(() => irqs.close());
    }
    if (this.#config !== null) {
      const config = this.#config;
      attempt(() => config.close());
    }
    if (first !== undefined) throw first;
  }

  [Symbol.dispose](): void {
    this.close();
  }

  #track(r: Region): Region {
    this.#regions.add(r);
    return r;
  }

  readonly #untrack = (r: Region): void => {
    this.#regions.delete(r);
  };

  #assertOpen(): void {
    if (this.#closed) throw resourceClosed(this.#h, 'device I/O');
    this.#h.assertOpen();
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
