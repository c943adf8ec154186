// The one Container type: a set of devices that share an IOMMU address space,
// and the DMA mappings in it. The kernel work is done by a backend
// (./group.ts for group and no-IOMMU mode, ./cdev.ts for IOMMUFD); this module
// holds the policy that is the same in every mode:
//
// - Assignment: a device belongs to at most one container of a Vfio context;
//   assigning it twice to this container is EEXIST, to another one EBUSY.
//   Devices of one IOMMU group stay in one container (the kernel puts the
//   whole group behind one IOMMU domain). Assigning sets the device up at
//   once; opening an assigned device reuses that setup (it is never opened
//   twice).
// - DMA: the container allocates IOVAs (lib/core/iova-allocator.ts) inside the
//   IOMMU's ranges and records every mapping. Mappings belong to the
//   container, not to a device: in group mode the kernel forgets them when
//   the last group leaves, so the container unmaps them first and maps them
//   again (at the same IOVAs) when the next group joins. That also lets a
//   buffer be mapped in group mode before any device is assigned. The
//   IOMMU's ranges narrow as devices attach, so they are read again before
//   the first allocation after an attach. In no-IOMMU
//   mode (`dmaMode === 'identity'`) nothing is mapped: a buffer's IOVA is its
//   physical address.
// - Unmap: the kernel must unmap exactly what was mapped. If it does not
//   (Type1 reports a different size, IOMMUFD says ENOENT) the unmap throws
//   EIO in both modes, the mapping is forgotten, and its IOVA range is never
//   handed out again (what the IOMMU holds there is unknown).
// - Close: devices are torn down first (vfio-pci stops their DMA), then every
//   mapping is unmapped, then groups leave, then the container's own fds
//   close (IOAS destroyed, iommufd / container fd closed), and last the DMA
//   memory is unmapped from the process. Afterwards every call on the
//   container, its devices and its buffers throws ECLOSED.
// - Sharing (lib/share): a container can lend an assigned device to another
//   process or thread (it cannot be opened here while lent) and reserve IOVA
//   blocks for it (never handed out here until given back). The other side
//   holds a borrowed container: the same kernel objects through its own fds,
//   whose IOVAs come only from the blocks reserved for it, and which never
//   changes the setup (no assign, no SET_IOMMU, no detach, no destroy).
import { teardown, withUnwind, type Unwind } from '../../base/cleanup.js';
import {
  DmaBuffer,
  allocLockedMemory,
  HUGE_PAGE_SIZE,
  physicalPages,
  type DmaAllocOptions,
  type DmaMapOptions,
  type DmaOwner,
} from '../dma.js';
import { Device, readDeviceInfo, type DeviceInfo } from '../device.js';
import { IovaAllocator, type IovaRange } from '../iova-allocator.js';
import { closedError, usageError, VfioError } from '../../base/errors.js';
import { validateBigInt, validateBoolean, validateOptions } from '../../base/validate.js';
import type { Fd, Sys } from '../../libc/sys.js';
import type { GroupContainerKind, VfioMode } from '../../host/mode.js';
import type { Roots } from '../../host/paths.js';
import { requireVfioManaged, type PciDeviceLocation } from '../../host/sysfs.js';
import type { AttachedDevice, IommuInfo, MappedFile } from './backend.js';
import { CdevBackend, type CdevDevice } from './cdev.js';
import { parseVfToken, type VfToken } from '../vf-token.js';
import { GroupBackend } from './group.js';

/**
 * A shareable buffer's memfd, mapped from offset 0 (lib/core/dma.ts maps the
 * whole file): what a backend maps by file; undefined for other buffers.
 */
function fileOf(buf: DmaBuffer): MappedFile | undefined {
  return buf.shareable ? { fd: buf.memfd, offset: 0n } : undefined;
}

/** Options for opening or assigning a device. */
export interface AssignOptions {
  /**
   * The VF token (a UUID, `bd8d9d2b-5a5f-4f5a-a211-f591514ba1f3`) vfio-pci
   * asks for before it opens an SR-IOV VF whose PF it drives, or such a PF
   * while its VFs are open (the PF's user sets it with Device.setVfToken).
   * Group mode passes it on every kernel; cdev mode needs Linux 6.17+.
   */
  readonly vfToken?: string;
}

/** What a container needs from the Vfio context that made it. */
export interface ContainerEnv {
  readonly sys: Sys;
  readonly roots: Roots;
  readonly pageSize: number;
  /** Which container holds each assigned device (canonical address), across the context. */
  readonly deviceOwners: Map<string, Container>;
  /** Which container holds devices of each IOMMU group, across the context. */
  readonly groupOwners: Map<number, Container>;
  /**
   * Where VFIO reaches a device, as sysfs says (validates the address); the
   * cdev node is looked for only when `mode` is 'cdev'.
   */
  locate(address: unknown, mode: VfioMode): PciDeviceLocation;
  /**
   * Why the device itself cannot be driven in `mode` (its nodes, its group),
   * or null. The machine's side needs no check: the container is open in
   * that mode.
   */
  deviceProblem(desc: PciDeviceLocation, mode: VfioMode): string | null;
  /** The container closed: forget it. */
  forget(container: Container): void;
}

/**
 * The kernel objects behind a container, as explicit typed fields per mode
 * (for diagnostics and for handing a container to another process).
 */
export type ContainerKernelState =
  | {
      readonly mode: 'cdev';
      readonly iommufd: Fd;
      readonly ioasId: number;
      /** Bound devices: their fd and their id inside the iommufd (hot reset names devices by it). */
      readonly devices: readonly { readonly address: string; readonly fd: Fd; readonly devId: number }[];
    }
  | {
      readonly mode: 'group' | 'noiommu';
      readonly containerFd: Fd;
      /** VFIO_TYPE1v2_IOMMU or VFIO_NOIOMMU_IOMMU. */
      readonly iommuType: number;
      /** Whether the IOMMU type is set (a group is attached). */
      readonly iommuSet: boolean;
      readonly groups: readonly { readonly group: number; readonly fd: Fd; readonly devices: readonly string[] }[];
    };

/** One DMA mapping the container made. */
interface Mapping {
  readonly iova: bigint;
  readonly size: bigint;
  readonly vaddr: bigint;
  /** The buffer, or null once its memory is gone while the kernel still maps it (an orphan). */
  buffer: DmaBuffer | null;
  /** False in group mode while no group is attached: mapped again when one joins. */
  inKernel: boolean;
}

interface DeviceSlot {
  readonly attached: AttachedDevice;
  handle: Device | null;
  /** Who borrows the device (lib/share), or null while it is this container's to open. */
  lentTo: string | null;
  /** Borrowed containers: tells the lender when the Device is released. */
  readonly onRelease: (() => void) | null;
}

/** A device lent to another process or thread (lib/share): what the borrower needs. */
export interface LentDevice {
  readonly address: string;
  /** The device fd (the borrower receives its own copy). */
  readonly fd: Fd;
  readonly group: number;
  /** cdev mode: the device's id in the iommufd; null in group modes. */
  readonly devId: number | null;
  /** The node the device was opened through (cdev node or group node), for messages. */
  readonly path: string;
}

let nextContainerId = 1;

/** The mapping recorded on one of this module's containers' buffers, or null. */
function mappingOf(buf: DmaBuffer): Mapping | null {
  // The cast holds: only Container.mapWith records on a buffer, and it records a Mapping.
  return buf.mappingRecord as Mapping | null;
}

export class Container implements Disposable, DmaOwner {
  /** Unique per process, for messages (`container #2`). */
  readonly id: number;
  readonly mode: VfioMode;
  private readonly backend: GroupBackend | CdevBackend;
  private state: 'open' | 'closed' = 'open';
  /** Null in identity mode, where nothing is allocated. */
  private allocator: IovaAllocator | null;
  /**
   * The allocator's ranges must be read again from the IOMMU before the next
   * allocation: they are unknown at first, and narrow as devices attach.
   */
  private rangesStale = true;
  private readonly slots = new Map<string, DeviceSlot>();
  /**
   * The books of DMA mappings: a buffer's mapping is kept on the buffer
   * (DmaBuffer.mappingRecord, found from `buffers`), so that map and unmap
   * touch no collection; `orphans` holds the mappings whose buffer's memory
   * is gone while the kernel still maps them. `allMappings()` lists both.
   */
  private readonly orphans = new Set<Mapping>();
  private readonly buffers = new Set<DmaBuffer>();
  /** IOVA blocks reserved for borrowers (lib/share): iova -> size. */
  private readonly reservations = new Map<bigint, bigint>();
  /** Borrowed containers: the IOVA blocks the lender reserved for us, the only ones we allocate from. */
  private readonly windows: IovaRange[] = [];

  /**
   * @internal Containers come from Vfio.createContainer / Vfio.defaultContainer;
   * a borrowed one (lib/share) from Vfio.adoptContainer, with its backend.
   */
  constructor(
    private readonly env: ContainerEnv,
    mode: VfioMode,
    backend?: GroupBackend | CdevBackend,
  ) {
    this.mode = mode;
    this.backend =
      backend ?? (mode === 'cdev' ? CdevBackend.open(env.sys, env.roots, env.pageSize) : GroupBackend.open(env.sys, env.roots, mode));
    this.id = nextContainerId++;
    // Identity mode allocates nothing. Otherwise start from the whole space:
    // the IOMMU's ranges are read before the first allocation that finds the
    // IOMMU live (in group mode, only once a group joined; until then
    // mappings are recorded and the kernel checks them when it joins).
    this.allocator =
      this.backend.dmaMode === 'identity' ? null : new IovaAllocator([{ start: 0n, last: (1n << 64n) - 1n }], BigInt(env.pageSize));
    if (this.backend.borrowed && this.allocator !== null) {
      // Nothing to allocate from until the lender reserves a window for us.
      this.allocator = new IovaAllocator([], BigInt(env.pageSize));
      this.rangesStale = false;
    }
  }

  /** For messages: `container #2`. */
  get label(): string {
    return `container #${this.id}`;
  }

  /** 'iommu': buffers are mapped through the IOMMU. 'identity': no IOMMU; a buffer's IOVA is its physical address. */
  get dmaMode(): 'iommu' | 'identity' {
    return this.backend.dmaMode;
  }

  /**
   * Who serves the container, as the kernel answers: 'iommufd' (cdev mode),
   * 'legacy' (vfio's /dev/vfio/vfio with vfio_iommu_type1) or
   * 'iommufd-compat' (/dev/vfio/vfio served by iommufd,
   * CONFIG_IOMMUFD_VFIO_CONTAINER). Group mode asks the kernel once.
   * @throws VfioError ECLOSED; any errno of the probe ioctl.
   */
  get containerKind(): 'iommufd' | GroupContainerKind {
    this.checkOpen();
    const b = this.backend;
    return b instanceof GroupBackend ? b.containerKind() : 'iommufd';
  }

  /**
   * Whether shareable (memfd-backed) buffers are mapped by file and offset
   * (IOMMU_IOAS_MAP_FILE, cdev mode on Linux 6.13+), so that the pin
   * follows the file rather than this process's mapping: true or false once
   * the first such buffer was mapped, null before; false in group modes,
   * which map by address.
   */
  get mapsByFile(): boolean | null {
    const b = this.backend;
    return b instanceof CdevBackend ? b.mapsByFile : false;
  }

  get closed(): boolean {
    return this.state === 'closed';
  }

  /**
   * Addresses of the devices assigned to this container.
   * @throws VfioError ECLOSED after close (a closed container holds nothing).
   */
  get devices(): readonly string[] {
    this.checkOpen();
    return [...this.slots.keys()];
  }

  /**
   * The kernel objects behind the container.
   * @throws VfioError ECLOSED after close: the fds it would list are closed (and may be reused).
   */
  get kernelState(): ContainerKernelState {
    this.checkOpen();
    const b = this.backend;
    if (b instanceof CdevBackend) {
      const devices = [...this.slots.values()].map((slot) => {
        const d = slot.attached as CdevDevice;
        return { address: d.address, fd: d.fd, devId: d.devId };
      });
      return { mode: 'cdev', iommufd: b.iommufd, ioasId: b.ioasId, devices };
    }
    return {
      mode: b.mode,
      containerFd: b.containerFd,
      iommuType: b.iommuType,
      iommuSet: b.iommuLive,
      groups: [...b.groups.values()].map((g) => ({ group: g.group, fd: g.fd, devices: [...g.devices] })),
    };
  }

  /**
   * Sets a device up in this container: group mode joins its IOMMU group
   * (setting the IOMMU when it is the first group) and takes the device fd
   * from the group; cdev mode opens the device node, binds it to the
   * container's iommufd and attaches it to the IOAS. Vfio.openDevice then
   * hands out a Device for it without opening it again. There is no
   * unassign: releasing the Device undoes this.
   * @throws VfioError EINVAL not a PCI address; ENODEV no such device or not
   *   bound to a VFIO driver; EEXIST already assigned to this container;
   *   EBUSY assigned to another container, or its IOMMU group is (the message
   *   names it), or the group is not viable; ENOTSUP the device cannot be
   *   driven in this container's mode; ECLOSED the container is closed; any
   *   errno of the open(2) and ioctls involved; EACCES vfio-pci wants a VF
   *   token (a VF of a PF bound to vfio-pci, or such a PF while its VFs are
   *   open) and none or another one was given: the message says so; EINVAL
   *   a `vfToken` that is not a UUID, or given for a device that takes none;
   *   ENOTSUP a `vfToken` in cdev mode on a kernel before 6.17. Nothing
   *   stays set up after a failure.
   */
  assignDevice(address: string, opts: AssignOptions = {}): void {
    this.checkOpen();
    const vfToken = opts.vfToken === undefined ? null : parseVfToken(opts.vfToken);
    this.assignDescribed(this.env.locate(address, this.mode), vfToken);
  }

  /** @internal assignDevice for a device already located (and a token already checked). */
  assignDescribed(desc: PciDeviceLocation, vfToken: VfToken | null = null): void {
    this.checkOpen();
    const device = desc.address;
    requireVfioManaged(desc);
    const owner = this.env.deviceOwners.get(device);
    if (owner === this) throw usageError('EEXIST', `already assigned to ${this.label}`, { device });
    if (owner !== undefined) throw usageError('EBUSY', `assigned to ${owner.label}, not ${this.label}`, { device });
    const group = desc.iommuGroup;
    const groupOwner = group === null ? undefined : this.env.groupOwners.get(group);
    if (groupOwner !== undefined && groupOwner !== this) {
      throw usageError('EBUSY', `its IOMMU group ${group} is in ${groupOwner.label}; devices of one group share a container`, {
        device,
      });
    }
    const why = this.env.deviceProblem(desc, this.mode);
    if (why !== null) throw usageError('ENOTSUP', `cannot be driven by this ${this.mode} container: ${why}`, { device });

    withUnwind((u) => {
      const wasLive = this.backend.iommuLive;
      const attached = this.backend.attach(desc, vfToken);
      u.defer(() => teardown([() => this.backend.detach(attached), () => this.backend.pruneGroups()]));
      if (this.backend.dmaMode === 'iommu') {
        if (!wasLive && this.backend.iommuLive) this.replayMappings(u, device);
        this.rangesStale = true;
      }
      this.slots.set(device, { attached, handle: null, lentTo: null, onRelease: null });
      this.env.deviceOwners.set(device, this);
      this.env.groupOwners.set(attached.group, this);
    });
  }

  /**
   * @internal The Device for an assigned device (Vfio.openDevice).
   * @throws VfioError EEXIST the device is already open.
   */
  openAssigned(address: string): Device {
    this.checkOpen();
    const slot = this.slots.get(address);
    if (slot === undefined) throw usageError('ENODEV', `not assigned to ${this.label}`, { device: address });
    if (slot.handle !== null) throw usageError('EEXIST', `already open in ${this.label}: release that Device first`, { device: address });
    if (slot.lentTo !== null)
      throw usageError('EBUSY', `lent to ${slot.lentTo}: it is theirs to drive until they give it back`, { device: address });
    const handle = new Device(this.env.sys, this, address, slot.attached.fd, () => this.releaseDevice(address));
    slot.handle = handle;
    return handle;
  }

  /**
   * @internal The fd of IOMMU group `groupId` if a container of this context
   * holds the group open (group and no-IOMMU modes), else null.
   */
  groupFd(groupId: number): Fd | null {
    const owner = this.env.groupOwners.get(groupId);
    if (owner === undefined) return null;
    const b = owner.backend;
    return b instanceof GroupBackend ? (b.groups.get(groupId)?.fd ?? null) : null;
  }

  /**
   * @internal VFIO_DEVICE_GET_INFO for a device of this container, or for a
   * device of one of its groups set up just for the call.
   */
  deviceInfo(desc: PciDeviceLocation): DeviceInfo {
    this.checkOpen();
    const slot = this.slots.get(desc.address);
    if (slot !== undefined) return readDeviceInfo(this.env.sys, slot.attached.fd, desc.address);
    // A device of a group this container holds: take its fd for the call only.
    const attached = this.backend.attach(desc);
    let info: DeviceInfo;
    try {
      info = readDeviceInfo(this.env.sys, attached.fd, desc.address);
    } catch (err) {
      try {
        this.backend.detach(attached);
      } catch {
        // The GET_INFO error is the one to report.
      }
      throw err;
    }
    this.backend.detach(attached);
    return info;
  }

  /**
   * Allocates `size` bytes (rounded up to whole pages) of locked memory and
   * maps it for DMA: at `opts.iova`, or at an IOVA the container picks below
   * `opts.dmaLimit`. In identity (no-IOMMU) mode the device sees physical
   * addresses (reading them needs root), page by page: `buf.iovaAt(offset)`
   * is right for any buffer, `buf.iova` only for a physically contiguous one
   * (`buf.contiguous`: one page, or one huge page with `hugepages`). `opts.shareable` backs it with
   * a memfd, so that lib/share can hand it to another process or thread.
   * `opts.hugepages` asks for 2 MiB pages (see DmaAllocOptions); such a buffer
   * gets a 2 MiB-aligned IOVA unless `align` or `iova` says otherwise. In
   * a borrowed container the IOVA comes from the windows the lender reserved
   * for it (ENOSPC when none has room).
   * @throws VfioError EINVAL bad size or options, or an IOVA outside the
   *   IOMMU's ranges; EEXIST the IOVA overlaps a mapping; ENOSPC no IOVA room
   *   below the limit (identity mode: the physical address is above it);
   *   ENOTSUP an explicit IOVA in identity mode; ENOMEM/EAGAIN/EPERM locking
   *   the memory failed (RLIMIT_MEMLOCK); EPERM in identity mode, physical
   *   addresses are not readable without root; ECLOSED the
   *   container is closed; any errno of the map ioctl. Nothing is left
   *   allocated or mapped after a failure.
   */
  allocDma(size: number, options?: DmaAllocOptions): DmaBuffer {
    this.checkOpen();
    const opts = validateOptions(options);
    this.checkMapOptions(opts);
    if (opts.shareable !== undefined) validateBoolean(opts.shareable, 'shareable');
    if (opts.hugepages !== undefined) validateBoolean(opts.hugepages, 'hugepages');
    const mem = allocLockedMemory(this.env.sys, size, this.env.pageSize, {
      shared: opts.shareable === true ? `vfio-dma ${this.label}` : undefined,
      hugepages: opts.hugepages,
    });
    const buf = new DmaBuffer(this.env.sys, this, mem.vaddr, mem.size, mem.memfd, mem.hugepages);
    this.buffers.add(buf);
    // A 2 MiB-aligned IOVA lets the IOMMU map a huge page with one entry.
    const hugeAlign = mem.hugepages && opts.align === undefined && opts.iova === undefined;
    try {
      this.mapBuffer(buf, hugeAlign ? { ...opts, align: BigInt(HUGE_PAGE_SIZE) } : opts);
    } catch (err) {
      try {
        buf.free();
      } catch {
        // The map error is the one to report; the container's close retries the free.
      }
      throw err;
    }
    return buf;
  }

  /**
   * The IOMMU's usable IOVA ranges and page sizes.
   * @throws VfioError ENOTSUP in identity (no-IOMMU) mode; EINVAL in group
   *   mode before the first device is assigned (there is no IOMMU yet);
   *   ECLOSED; any errno of VFIO_IOMMU_GET_INFO / IOMMU_IOAS_IOVA_RANGES.
   */
  iommuInfo(): IommuInfo {
    this.checkOpen();
    if (this.backend.dmaMode === 'identity') {
      throw usageError('ENOTSUP', `${this.label} is in no-IOMMU mode: there are no IOVA ranges, the IOVA is the physical address`);
    }
    return this.backend.iommuInfo();
  }

  /**
   * Unmaps every DMA mapping of the container (its buffers stay allocated,
   * without an IOVA, until mapped again or freed).
   * @throws VfioError the first unmap error (EIO: the kernel did not hold a
   *   mapping; the others are still attempted); ECLOSED.
   */
  unmapAll(): void {
    this.checkOpen();
    const steps: (() => void)[] = [];
    for (const buf of this.buffers) if (buf.mapped) steps.push(() => this.unmapBuffer(buf));
    for (const m of this.orphans) steps.push(() => this.unmapOrphan(m));
    teardown(steps);
  }

  /**
   * Releases everything, in order: devices (their Device handles become
   * closed), DMA mappings, groups, the IOAS and the container's fds, and the
   * DMA buffers' memory. Safe to call again: a second call finishes what a
   * failed step left.
   * @throws VfioError the first error of those steps (every step still runs).
   */
  close(): void {
    this.state = 'closed';
    const steps: (() => void)[] = [];
    for (const [address, slot] of [...this.slots]) {
      steps.push(() => {
        this.forgetDevice(address, slot);
        teardown([() => slot.handle?.invalidate(), () => this.backend.detach(slot.attached)]);
      });
    }
    for (const m of this.allMappings()) {
      steps.push(() => {
        this.dropMapping(m, false);
        if (m.inKernel) this.backend.unmap(m.iova, m.size);
      });
    }
    steps.push(() => this.backend.pruneGroups());
    steps.push(() => this.backend.close());
    for (const buf of [...this.buffers]) steps.push(() => buf.free());
    teardown(steps);
    // Only a complete close lets the context forget the container: after a
    // failed step, the context's close() calls this again to finish.
    this.env.forget(this);
  }

  [Symbol.dispose](): void {
    this.close();
  }

  // --- DmaOwner: what buffers call ---------------------------------------

  /** @internal */
  mapBuffer(buf: DmaBuffer, opts: DmaMapOptions): bigint {
    this.checkOpen();
    this.checkMapOptions(opts);
    const size = buf.sizeBig;
    if (opts.iova !== undefined) {
      // An explicit IOVA is taken as given, so the other options are checked against it here.
      if (opts.dmaLimit !== undefined && opts.iova + size > opts.dmaLimit) {
        throw usageError(
          'EINVAL',
          `iova 0x${opts.iova.toString(16)} + ${size} bytes reaches past dmaLimit 0x${opts.dmaLimit.toString(16)}`,
        );
      }
      if (opts.align !== undefined && opts.iova % opts.align !== 0n) {
        throw usageError('EINVAL', `iova 0x${opts.iova.toString(16)} is not aligned to ${opts.align}`);
      }
    }
    if (this.allocator === null) {
      // Identity mode: the device sees physical addresses.
      // Each page has its own physical address (buf.iovaAt); buf.iova is only
      // handed out when they are consecutive (buf.contiguous).
      const pages = physicalPages(this.env.sys, this.env.roots, buf.vaddr, buf.size, this.env.pageSize);
      const phys = pages.addresses[0]!;
      const align = opts.align ?? 1n;
      const page = BigInt(pages.pageSize);
      const above = opts.dmaLimit === undefined ? undefined : pages.addresses.find((a) => a + page > opts.dmaLimit!);
      if (phys % align !== 0n || above !== undefined) {
        throw usageError(
          'ENOSPC',
          `no-IOMMU mode: the buffer's physical address 0x${(above ?? phys).toString(16)} does not satisfy the requested ` +
            `${above === undefined ? 'alignment' : 'DMA limit'} (the kernel chose the pages; allocate again or lift the limit)`,
        );
      }
      buf.setIova(phys, null, pages.addresses.length === 1 ? null : pages);
      return phys;
    }
    // The IOMMU's ranges changed (or were never read): read them first, and
    // undo what that query keeps (cdev: its result page) if the map fails.
    const current = this.allocator;
    if (this.rangesStale && this.backend.iommuLive) {
      return withUnwind((u) => this.mapWith(this.freshAllocator(current, u), buf, size, opts));
    }
    return this.mapWith(current, buf, size, opts);
  }

  /**
   * Allocates (or reserves, for `opts.iova`) the buffer's IOVA in
   * `allocator`, maps it if the IOMMU is live, and records the mapping; the
   * IOVA goes back to the allocator if the map fails.
   */
  private mapWith(allocator: IovaAllocator, buf: DmaBuffer, size: bigint, opts: DmaMapOptions): bigint {
    let iova: bigint;
    if (opts.iova !== undefined) {
      allocator.reserve(opts.iova, size);
      iova = opts.iova;
    } else {
      iova = allocator.allocate(
        size,
        opts.align === undefined && opts.dmaLimit === undefined ? undefined : { align: opts.align, limit: opts.dmaLimit },
      );
    }
    const live = this.backend.iommuLive;
    if (live) {
      try {
        this.backend.map(buf.vaddr, iova, size, fileOf(buf));
      } catch (err) {
        allocator.release(iova, size);
        throw err;
      }
    }
    const m: Mapping = { iova, size, vaddr: buf.vaddr, buffer: buf, inKernel: live };
    buf.setIova(iova, m);
    return iova;
  }

  /** @internal */
  unmapBuffer(buf: DmaBuffer): void {
    const m = mappingOf(buf);
    if (m === null) {
      buf.setIova(null);
      return;
    }
    if (m.inKernel) {
      try {
        this.backend.unmap(m.iova, m.size);
      } catch (err) {
        if (err instanceof VfioError && err.code === 'EIO') {
          // The kernel does not hold what we mapped: forget the mapping but
          // never reuse its IOVAs.
          this.dropMapping(m, false);
        } else if (!buf.live) {
          // The buffer's memory is going away while the kernel still maps
          // it: keep the mapping as an orphan, unmapped by unmapAll or close.
          buf.setIova(null);
          m.buffer = null;
          this.orphans.add(m);
        }
        throw err;
      }
    }
    this.dropMapping(m, true);
  }

  /** @internal */
  forgetBuffer(buf: DmaBuffer): void {
    this.buffers.delete(buf);
  }

  // --- internals ------------------------------------------------------------

  private checkOpen(): void {
    if (this.state !== 'open') throw closedError(this.label);
  }

  private checkMapOptions(opts: DmaMapOptions): void {
    // No option (the usual map()): nothing to check.
    if (opts.iova === undefined && opts.dmaLimit === undefined && opts.align === undefined) return;
    if (opts.iova !== undefined) validateBigInt(opts.iova, 'iova');
    if (opts.dmaLimit !== undefined) validateBigInt(opts.dmaLimit, 'dmaLimit');
    if (opts.align !== undefined) validateBigInt(opts.align, 'align');
    if (opts.iova !== undefined && this.backend.dmaMode === 'identity') {
      throw usageError('ENOTSUP', `${this.label} is in no-IOMMU mode: a buffer's IOVA is its physical address and cannot be chosen`);
    }
    if (opts.align !== undefined && (opts.align === 0n || (opts.align & (opts.align - 1n)) !== 0n)) {
      throw usageError('EINVAL', `align ${opts.align} is not a power of two`);
    }
  }

  /** Every mapping in the books (a snapshot): the buffers' and the orphans. */
  private allMappings(): Mapping[] {
    const out: Mapping[] = [];
    for (const buf of this.buffers) {
      const m = mappingOf(buf);
      if (m !== null) out.push(m);
    }
    for (const m of this.orphans) out.push(m);
    return out;
  }

  /** Removes a mapping from the books; `reuse` gives its IOVAs back to the allocator. */
  private dropMapping(m: Mapping, reuse: boolean): void {
    if (m.buffer === null) this.orphans.delete(m);
    else m.buffer.setIova(null);
    if (reuse) this.allocator?.release(m.iova, m.size);
  }

  private unmapOrphan(m: Mapping): void {
    try {
      this.backend.unmap(m.iova, m.size);
    } catch (err) {
      if (err instanceof VfioError && err.code === 'EIO') this.dropMapping(m, false);
      throw err;
    }
    this.dropMapping(m, true);
  }

  private allocatorFor(info: IommuInfo): IovaAllocator {
    const page = BigInt(this.env.pageSize);
    const granule = info.granule > page ? info.granule : page;
    const allocator = new IovaAllocator(info.ranges, granule);
    const reserved = [...this.reservations].map(([iova, size]) => ({ iova, size }));
    allocator.setRanges(info.ranges, [...this.allMappings(), ...reserved]);
    return allocator;
  }

  /** The allocator, its ranges read from the IOMMU first when they may have changed. */
  private freshAllocator(allocator: IovaAllocator, u: Unwind): IovaAllocator {
    if (!this.rangesStale || !this.backend.iommuLive) return allocator;
    this.allocator = this.allocatorFor(this.backend.iommuInfo(undefined, u));
    this.rangesStale = false;
    return this.allocator;
  }

  /** Maps the container's recorded mappings again (group mode, the first group just joined). */
  private replayMappings(u: Unwind, device: string): void {
    for (const m of this.allMappings()) {
      if (m.inKernel) continue;
      try {
        this.backend.map(m.vaddr, m.iova, m.size, m.buffer === null ? undefined : fileOf(m.buffer));
      } catch (err) {
        if (err instanceof VfioError) {
          err.annotate({ device, detail: `mapping the container's DMA buffer at IOVA 0x${m.iova.toString(16)} again` });
        }
        throw err;
      }
      m.inKernel = true;
      u.defer(() => {
        m.inKernel = false;
        this.backend.unmap(m.iova, m.size);
      });
    }
  }

  /** Group mode: the IOMMU is about to go away; take the mappings out of the kernel first. */
  private suspendMappings(): void {
    const steps: (() => void)[] = [];
    for (const m of this.allMappings()) {
      if (!m.inKernel) continue;
      steps.push(() => {
        m.inKernel = false;
        // The kernel drops the mapping with the IOMMU anyway; an orphan has
        // nothing left to map again, so its IOVAs are free after that.
        if (m.buffer === null) this.dropMapping(m, true);
        this.backend.unmap(m.iova, m.size);
      });
    }
    teardown(steps);
  }

  private forgetDevice(address: string, slot: DeviceSlot): void {
    this.slots.delete(address);
    this.env.deviceOwners.delete(address);
    const group = slot.attached.group;
    const sharing = [...this.slots.values()].some((s) => s.attached.group === group);
    if (!sharing && this.env.groupOwners.get(group) === this) this.env.groupOwners.delete(group);
  }

  /** Device.release: undo the device's setup; its group leaves with its last device. */
  private releaseDevice(address: string): void {
    const slot = this.slots.get(address);
    if (slot === undefined) return;
    this.forgetDevice(address, slot);
    teardown([
      () => this.backend.detach(slot.attached),
      () => {
        if (this.backend.pruneDropsIommu()) this.suspendMappings();
      },
      () => this.backend.pruneGroups(),
      () => slot.onRelease?.(),
    ]);
  }

  // --- sharing with other processes and threads (lib/share) ---------------

  /** True for a container another process or thread lent (lib/share): it uses the lender's setup and never changes it. */
  get borrowed(): boolean {
    return this.backend.borrowed;
  }

  /** @internal What lib/share needs to build messages and adopt fds. */
  get kernelEnv(): { readonly sys: Sys; readonly roots: Roots; readonly pageSize: number } {
    return { sys: this.env.sys, roots: this.env.roots, pageSize: this.env.pageSize };
  }

  /**
   * @internal Lends assigned device `address` to `borrower` (a name for
   * messages). Until returnDevice, the device cannot be opened or lent here.
   * @throws VfioError ENODEV not assigned to this container; EBUSY open here
   *   or already lent; ECLOSED.
   */
  lendDevice(address: string, borrower: string): LentDevice {
    this.checkOpen();
    const slot = this.slots.get(address);
    if (slot === undefined) throw usageError('ENODEV', `not assigned to ${this.label}`, { device: address });
    if (slot.handle !== null)
      throw usageError('EBUSY', `open in ${this.label}: release that Device before lending it`, { device: address });
    if (slot.lentTo !== null) throw usageError('EBUSY', `already lent to ${slot.lentTo}`, { device: address });
    const a = slot.attached;
    const b = this.backend;
    const lent: LentDevice =
      b instanceof CdevBackend
        ? { address, fd: a.fd, group: a.group, devId: (a as CdevDevice).devId, path: (a as CdevDevice).node }
        : { address, fd: a.fd, group: a.group, devId: null, path: b.groups.get(a.group)?.node ?? '' };
    slot.lentTo = borrower;
    return lent;
  }

  /** @internal The borrower gave device `address` back (a no-op when it is not lent). */
  returnDevice(address: string): void {
    const slot = this.slots.get(address);
    if (slot !== undefined) slot.lentTo = null;
  }

  /**
   * @internal Reserves `size` bytes of IOVA space for a borrower: never
   * handed out here until releaseIova. Returns the block and the IOMMU
   * granule the borrower must keep to.
   * @throws VfioError ENOTSUP no-IOMMU mode (there are no IOVAs to share);
   *   EINVAL group mode before the first device (no IOMMU yet), bad size or
   *   alignment; ENOSPC no room below `dmaLimit`; ECLOSED; any errno of
   *   reading the IOMMU's ranges.
   */
  reserveIova(size: bigint, opts: { readonly dmaLimit?: bigint; readonly align?: bigint } = {}): { iova: bigint; granule: bigint } {
    this.checkOpen();
    if (this.borrowed) throw usageError('ENOTSUP', `${this.label} is borrowed: IOVA space is reserved by its lender`);
    const current = this.allocator;
    if (current === null)
      throw usageError('ENOTSUP', `${this.label} is in no-IOMMU mode: DMA uses physical addresses, there is no IOVA space to reserve`);
    if (!this.backend.iommuLive) throw usageError('EINVAL', `${this.label} has no IOMMU yet: assign a device first`);
    return withUnwind((u) => {
      const allocator = this.freshAllocator(current, u);
      const iova = allocator.allocate(size, { align: opts.align, limit: opts.dmaLimit });
      this.reservations.set(iova, size);
      return { iova, granule: allocator.granule };
    });
  }

  /**
   * @internal Gives a reserved block back: first unmaps whatever a borrower
   * left mapped in it (a borrower that died cannot), then frees it here.
   * @throws VfioError any errno of the unmap (the block stays reserved).
   */
  releaseIova(iova: bigint): void {
    const size = this.reservations.get(iova);
    if (size === undefined) return;
    if (this.state === 'open' && this.backend.iommuLive) this.backend.unmapRange(iova, size);
    this.reservations.delete(iova);
    this.allocator?.release(iova, size);
  }

  /**
   * @internal Borrowed group-mode containers: a group the lender lent, with
   * its fd (owned from now on; a duplicate of a known group is closed).
   * @throws VfioError EINVAL not a borrowed group-mode container; ECLOSED.
   */
  adoptGroup(group: number, fd: Fd): void {
    this.checkOpen();
    if (!(this.backend instanceof GroupBackend) || !this.borrowed) {
      throw usageError('EINVAL', `${this.label} is not a borrowed group-mode container`);
    }
    this.backend.adoptGroup(group, fd);
  }

  /**
   * @internal Borrowed containers: a device the lender lent arrives (its fd,
   * owned from now on). `onRelease` runs when its Device is released.
   * @throws VfioError EINVAL not a borrowed container, or (group modes) its
   *   group was not lent; EEXIST already here; EBUSY in another container of
   *   this context; ECLOSED.
   */
  adoptDevice(attached: AttachedDevice | CdevDevice, onRelease: () => void): void {
    this.checkOpen();
    const device = attached.address;
    if (!this.borrowed) throw usageError('EINVAL', `${this.label} is not borrowed: it sets its devices up itself`, { device });
    const owner = this.env.deviceOwners.get(device);
    if (owner === this) throw usageError('EEXIST', `already in ${this.label}`, { device });
    if (owner !== undefined) throw usageError('EBUSY', `in ${owner.label}, not ${this.label}`, { device });
    if (this.backend instanceof GroupBackend) this.backend.adoptDevice(device, attached.group);
    this.slots.set(device, { attached, handle: null, lentTo: null, onRelease });
    this.env.deviceOwners.set(device, this);
    this.env.groupOwners.set(attached.group, this);
  }

  /**
   * @internal Borrowed containers: an IOVA block the lender reserved for us
   * (aligned to `granule`, the IOMMU's); allocDma allocates only inside these.
   */
  addIovaWindow(range: IovaRange, granule: bigint): void {
    this.checkOpen();
    if (!this.borrowed || this.allocator === null) throw usageError('EINVAL', `${this.label} takes no IOVA windows`);
    this.windows.push(range);
    const g = granule > this.allocator.granule ? granule : this.allocator.granule;
    const allocator = new IovaAllocator(this.windows, g);
    allocator.setRanges(this.windows, this.allMappings());
    this.allocator = allocator;
  }

  /** @internal True when `buf` was allocated by this container and not freed. */
  ownsBuffer(buf: DmaBuffer): boolean {
    return this.buffers.has(buf);
  }

  /** The IOVA windows a borrowed container allocates from (empty otherwise). */
  get iovaWindows(): readonly IovaRange[] {
    return [...this.windows];
  }
}
