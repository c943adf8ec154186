// A Vfio context: one kernel (`sys`), one filesystem view (sysfs, /dev,
// /proc roots), an optional forced mode, and the containers made through it.
// `vfio` (lib/index.ts) is the context on the real kernel; tests build one on
// the fake kernel with createVfio.
//
// Guarantees:
// - A device is in at most one container of a context; the default container
//   is created on first need, in the mode of the device that needs it (or of
//   the machine when asked for directly).
// - The forced mode (option `mode`, else the VFIO_MODE environment variable)
//   is validated on first use: an unknown name is EINVAL, a mode the machine
//   or device cannot give is ENXIO — never a silent fallback.
// - After close() every method throws ECLOSED; closing closes every
//   container (and so every device and DMA buffer) of the context.
import { teardown } from '../base/cleanup.js';
import { CdevBackend } from './container/cdev.js';
import { Container, type AssignOptions, type ContainerEnv } from './container/container.js';
import { parseVfToken } from './vf-token.js';
import { GroupBackend } from './container/group.js';
import type { Fd } from '../libc/sys.js';
import type { Device, DeviceInfo } from './device.js';
import { closedError, usageError } from '../base/errors.js';
import type { Sys } from '../libc/sys.js';
import {
  chooseMode,
  deviceMachineProblem,
  deviceModeProblem,
  groupContainerKind,
  machineModeProblem,
  machinePreference,
  parseMode,
  type GroupContainerKind,
  type VfioMode,
} from '../host/mode.js';
import { DEFAULT_ROOTS, type Roots } from '../host/paths.js';
import { parsePciAddress } from '../host/pci-address.js';
import {
  describePciDevice,
  locatePciDevice,
  requireVfioManaged,
  type PciDeviceDescription,
  type PciDeviceLocation,
} from '../host/sysfs.js';

export interface VfioOptions {
  /** The kernel: the real one (lib/libc/koffi-sys.ts) or a fake. */
  readonly sys: Sys;
  /** Root of sysfs (default `/sys`). */
  readonly sysfs?: string;
  /** Root of devfs (default `/dev`). */
  readonly dev?: string;
  /** Root of procfs (default `/proc`). */
  readonly proc?: string;
  /** Force a mode; overrides VFIO_MODE. */
  readonly mode?: VfioMode;
  /** Where VFIO_MODE is read from (default `process.env`). */
  readonly env?: Readonly<Record<string, string | undefined>>;
}

export interface ContainerOptions {
  /** The container's mode (default: the forced mode, else the best the machine offers). */
  readonly mode?: VfioMode;
  /**
   * cdev mode only: allocate the new container's IOAS in the iommufd of this
   * (open, cdev) container of the same context, instead of opening
   * /dev/iommu again: one iommufd file holding several IOAS, as DPDK does.
   */
  readonly iommufdOf?: Container;
}

export class Vfio implements Disposable {
  private readonly sys: Sys;
  private readonly roots: Roots;
  private readonly modeOption: unknown;
  private readonly env: Readonly<Record<string, string | undefined>>;
  private forcedCache: { mode: VfioMode | undefined } | undefined;
  private pageSizeCache: number | undefined;
  private readonly containers = new Set<Container>();
  private defaultSlot: Container | null = null;
  private readonly deviceOwners = new Map<string, Container>();
  private readonly groupOwners = new Map<number, Container>();
  private envCache: ContainerEnv | undefined;
  private closedFlag = false;

  constructor(opts: VfioOptions) {
    this.sys = opts.sys;
    this.roots = {
      sysfs: opts.sysfs ?? DEFAULT_ROOTS.sysfs,
      dev: opts.dev ?? DEFAULT_ROOTS.dev,
      proc: opts.proc ?? DEFAULT_ROOTS.proc,
    };
    this.modeOption = opts.mode;
    this.env = opts.env ?? process.env;
  }

  /**
   * The forced mode (option, else VFIO_MODE), or undefined.
   * @throws VfioError EINVAL for an unknown mode name.
   */
  get forcedMode(): VfioMode | undefined {
    if (this.forcedCache === undefined) {
      const fromEnv = this.env['VFIO_MODE'];
      const mode =
        this.modeOption !== undefined
          ? parseMode(this.modeOption, 'the mode option')
          : fromEnv !== undefined && fromEnv !== ''
            ? parseMode(fromEnv, 'VFIO_MODE')
            : undefined;
      this.forcedCache = { mode };
    }
    return this.forcedCache.mode;
  }

  /**
   * The mode a device would be driven in ('cdev' | 'group' | 'noiommu'), or,
   * without an address, the mode of a new container on this machine.
   * @throws VfioError EINVAL not a PCI address, or a bad forced mode; ENODEV
   *   no such device, or not bound to a VFIO driver; ENXIO VFIO is not
   *   available (the message says why, per mode), or the forced mode is not;
   *   ECLOSED.
   */
  getMode(address?: string): VfioMode {
    this.checkOpen();
    if (address === undefined) return this.machineMode(this.forcedMode);
    return this.deviceMode(this.locateManaged(address));
  }

  /**
   * Who serves /dev/vfio/vfio on this machine, from the filesystem (nothing
   * is opened): 'legacy' (vfio's container with vfio_iommu_type1),
   * 'iommufd-compat' (iommufd's emulation, CONFIG_IOMMUFD_VFIO_CONTAINER),
   * or null when there is no /dev/vfio/vfio. An open container's
   * `containerKind` is the kernel's own answer.
   * @throws VfioError ECLOSED.
   */
  getContainerKind(): GroupContainerKind | null {
    this.checkOpen();
    return groupContainerKind(this.roots);
  }

  /**
   * What sysfs says about a PCI device: ids, driver, IOMMU group, nodes.
   * @throws VfioError EINVAL not a PCI address; ENODEV no such device; ECLOSED.
   */
  describeDevice(address: string): PciDeviceDescription {
    this.checkOpen();
    return describePciDevice(this.roots, address);
  }

  /**
   * VFIO_DEVICE_GET_INFO for a device, without leaving anything set up: an
   * open or assigned device is asked through its fd; otherwise the device is
   * set up just for the call (in its group's container if another device of
   * the group is assigned, else in a temporary container) and torn down.
   * @throws VfioError EINVAL; ENODEV; ENXIO; EBUSY the device or its group is
   *   in use elsewhere; ECLOSED; any errno of the setup or the ioctl.
   */
  getDeviceInfo(address: string): DeviceInfo {
    this.checkOpen();
    const desc = this.locateManaged(address);
    const holder = this.deviceOwners.get(desc.address) ?? (desc.iommuGroup === null ? undefined : this.groupOwners.get(desc.iommuGroup));
    if (holder !== undefined) return holder.deviceInfo(desc);
    const mode = this.deviceMode(desc);
    const temporary = new Container(this.containerEnv(), mode);
    this.containers.add(temporary);
    let info: DeviceInfo;
    try {
      temporary.assignDescribed(desc);
      info = temporary.deviceInfo(desc);
    } catch (err) {
      closeQuietly(temporary);
      throw err;
    }
    temporary.close();
    return info;
  }

  /**
   * Opens a device: in the container it was assigned to, else in the default
   * container (created now, in this device's mode, if there is none). The
   * Device releases the setup on release()/close()/`using`.
   * @throws VfioError EINVAL not a PCI address; ENODEV no such device or not
   *   bound to a VFIO driver; EEXIST already open in this context; EBUSY its
   *   IOMMU group is in another container, the group is not viable, or the
   *   kernel says the device is in use; ENOTSUP the default container's mode
   *   cannot drive it, or a `vfToken` in cdev mode on a kernel before 6.17;
   *   EACCES vfio-pci wants a VF token (an SR-IOV VF of a PF it drives, or
   *   such a PF while its VFs are open) and none or another one was given;
   *   ENXIO VFIO is not available; ECLOSED; any errno of the open(2) and
   *   ioctls involved. Nothing stays set up after a failure.
   */
  openDevice(address: string, opts: AssignOptions = {}): Device {
    this.checkOpen();
    // Checked first: a malformed token leaves nothing behind. A device
    // already assigned was opened (and its token checked) by assignDevice.
    const vfToken = opts.vfToken === undefined ? null : parseVfToken(opts.vfToken);
    // An assigned device is found by its canonical address, without reading
    // sysfs again: its container holds its group or device fd open, and
    // while that fd is open the kernel keeps it bound to vfio-pci (an unbind
    // waits for the release), so the description would say the same. The
    // usual call names it as assignDevice recorded it (canonically): found
    // as it is; any other spelling is parsed, and so validated, first.
    let canonical = address;
    let assigned = this.deviceOwners.get(address);
    if (assigned === undefined) {
      canonical = parsePciAddress(address).canonical;
      assigned = this.deviceOwners.get(canonical);
    }
    if (assigned !== undefined) return assigned.openAssigned(canonical);
    const desc = this.locateManaged(canonical);
    const created = this.defaultSlot === null || this.defaultSlot.closed;
    const container = this.defaultContainerFor(desc);
    try {
      container.assignDescribed(desc, vfToken);
    } catch (err) {
      // A default container made for this call goes with it: a failed call
      // leaves no fd behind.
      if (created) closeQuietly(container);
      throw err;
    }
    return container.openAssigned(desc.address);
  }

  /**
   * A new, empty container.
   * @throws VfioError EINVAL bad mode name, or an `iommufdOf` that is not
   *   an open cdev container of this context; ENXIO the mode is not available
   *   here (or VFIO is not at all); ECLOSED; any errno of opening
   *   /dev/vfio/vfio or /dev/iommu and checking them.
   */
  createContainer(opts: ContainerOptions = {}): Container {
    this.checkOpen();
    const forced = opts.mode !== undefined ? parseMode(opts.mode, 'the container mode') : this.forcedMode;
    const mode = this.machineMode(forced);
    const other = opts.iommufdOf;
    if (other === undefined) return this.newContainer(mode);
    if (!this.containers.has(other) || other.borrowed) {
      throw usageError('EINVAL', 'iommufdOf must be an open container made by this context');
    }
    const state = other.kernelState;
    if (mode !== 'cdev' || state.mode !== 'cdev') {
      throw usageError('EINVAL', `iommufdOf needs two cdev containers (this one: ${mode}, ${other.label}: ${state.mode})`);
    }
    const backend = CdevBackend.open(this.sys, this.roots, this.pageSize, state.iommufd);
    return this.registered(new Container(this.containerEnv(), mode, backend));
  }

  /**
   * The default container, created on first use in the mode the machine
   * offers (openDevice creates it in the device's mode instead).
   * @throws VfioError as createContainer.
   */
  get defaultContainer(): Container {
    this.checkOpen();
    if (this.defaultSlot === null || this.defaultSlot.closed) {
      this.defaultSlot = this.createContainer();
    }
    return this.defaultSlot;
  }

  /**
   * @internal A borrowed container (lib/share) on fds another process or
   * thread lent: in cdev mode its iommufd and the id of the IOAS in it; in
   * group modes its container fd and the IOMMU type the lender set. The
   * container owns the fds once this returns (not when it throws).
   * @throws VfioError ECLOSED.
   */
  adoptContainer(
    lent:
      | { readonly mode: 'cdev'; readonly iommufd: Fd; readonly ioasId: number }
      | { readonly mode: 'group' | 'noiommu'; readonly containerFd: Fd; readonly iommuType: number },
  ): Container {
    this.checkOpen();
    const backend =
      lent.mode === 'cdev'
        ? CdevBackend.adopt(this.sys, this.roots, this.pageSize, lent.iommufd, lent.ioasId)
        : GroupBackend.adopt(this.sys, this.roots, lent.mode, lent.containerFd, lent.iommuType);
    return this.registered(new Container(this.containerEnv(), lent.mode, backend));
  }

  /** @internal The kernel interface (lib/share opens its sockets through it). */
  get kernel(): Sys {
    return this.sys;
  }

  get closed(): boolean {
    return this.closedFlag;
  }

  /**
   * Closes every container of the context (devices, mappings, buffers).
   * Safe to call again: a second call finishes what a failed step left.
   * @throws VfioError the first error (every container is still closed).
   */
  close(): void {
    this.closedFlag = true;
    this.defaultSlot = null;
    teardown([...this.containers].map((c) => () => c.close()));
  }

  [Symbol.dispose](): void {
    this.close();
  }

  private checkOpen(): void {
    if (this.closedFlag) throw closedError('the Vfio context');
  }

  /** The machine's mode: the forced one (only that mode is checked), else the first available in the machine's preference. */
  private machineMode(forced: VfioMode | undefined): VfioMode {
    const problem = (m: VfioMode): string | null => machineModeProblem(this.roots, m);
    return forced !== undefined ? chooseMode(problem, forced, {}) : chooseMode(problem, undefined, {}, machinePreference(this.roots));
  }

  /** The mode a device would be driven in: the forced one, else the first the machine and the device offer. */
  private deviceMode(desc: PciDeviceLocation): VfioMode {
    return chooseMode((m) => deviceMachineProblem(this.roots, desc, m), this.forcedMode, { device: desc.address });
  }

  private locateManaged(address: string): PciDeviceLocation {
    const desc = locatePciDevice(this.roots, address);
    requireVfioManaged(desc);
    return desc;
  }

  private defaultContainerFor(desc: PciDeviceLocation): Container {
    if (this.defaultSlot === null || this.defaultSlot.closed) {
      this.defaultSlot = this.newContainer(this.deviceMode(desc));
    }
    return this.defaultSlot;
  }

  private newContainer(mode: VfioMode): Container {
    return this.registered(new Container(this.containerEnv(), mode));
  }

  private registered(c: Container): Container {
    this.containers.add(c);
    return c;
  }

  private get pageSize(): number {
    this.pageSizeCache ??= this.sys.pageSize();
    return this.pageSizeCache;
  }

  /** What every container of this context shares: made once (it holds nothing that changes). */
  private containerEnv(): ContainerEnv {
    this.envCache ??= {
      sys: this.sys,
      roots: this.roots,
      pageSize: this.pageSize,
      deviceOwners: this.deviceOwners,
      groupOwners: this.groupOwners,
      locate: (address, mode) => locatePciDevice(this.roots, address, { cdev: mode === 'cdev' }),
      deviceProblem: deviceModeProblem,
      forget: (c) => {
        this.containers.delete(c);
        if (this.defaultSlot === c) this.defaultSlot = null;
      },
    };
    return this.envCache;
  }
}

/** Closes a container while another error propagates: that error is the one to report. */
function closeQuietly(c: Container): void {
  try {
    c.close();
  } catch {
    // Reported instead: the error that made the caller give up. A container
    // whose close failed stays in the context, whose close() finishes it.
  }
}

/**
 * A Vfio context on the given kernel and filesystem roots. The mode option
 * and VFIO_MODE are validated when first used.
 * @throws VfioError EINVAL when `opts.sys` is missing.
 */
export function createVfio(opts: VfioOptions): Vfio {
  if (typeof opts !== 'object' || opts === null || typeof opts.sys !== 'object' || opts.sys === null) {
    throw usageError('EINVAL', 'createVfio needs { sys }: the kernel interface (koffiSys, or a fake kernel)');
  }
  return new Vfio(opts);
}
