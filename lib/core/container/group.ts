// The legacy VFIO container: /dev/vfio/vfio plus one /dev/vfio/<N> per IOMMU
// group, with the Type1v2 IOMMU (or, for no-IOMMU groups, the no-IOMMU
// "type"). Plain Type1 (v1) is not used: every vfio_iommu_type1 since Linux
// 3.15 offers v2 (and so does iommufd's /dev/vfio/vfio compatibility), long
// before any kernel Node runs on; v1's unmap rules (a request may unmap more
// or less than asked) and its GET_INFO without page sizes would need a
// second code path that nothing could exercise.
//
// Kernel rules this follows (drivers/vfio/container.c, group.c):
// - The API version must be VFIO_API_VERSION and the IOMMU type must be
//   offered by VFIO_CHECK_EXTENSION; both are checked when the container opens.
// - A group must be viable (every device in it bound to vfio-pci or to
//   nothing) before it joins a container.
// - VFIO_SET_IOMMU needs at least one group in the container, so it runs when
//   the first group joins, and never again while a group stays. The kernel
//   refuses VFIO_IOMMU_MAP_DMA before it (EINVAL); the Container never asks.
// - When the last group leaves, the kernel drops the IOMMU and every mapping
//   with it; the next group to join sets the IOMMU again.
// - A device fd comes from its group fd by name; several devices of one group
//   share that group fd. A group leaves the container (UNSET_CONTAINER, then
//   close) only when none of its device fds is open: the kernel refuses
//   UNSET_CONTAINER with EBUSY otherwise.
//
// Guarantees: `attach` opens nothing that outlives a failure; `detach`,
// `pruneGroups` and `close` run every step even when one fails (close(2)
// releases the fd even when it reports an error) and throw the first error.
//
// A borrowed backend (`adopt`, for lib/share) holds fds another process or
// thread set up and lent: the same open files, so it maps and unmaps in the
// same Type1 IOMMU (the IOMMU type is already set: VFIO_SET_IOMMU is never
// issued again), but it never changes the setup: no group joins or leaves
// (no SET_CONTAINER / UNSET_CONTAINER), and closing it only closes its fds.
import { teardown, withUnwind, type Unwind } from '../../base/cleanup.js';
import { ioctl, ioctlInt, openFile, type IoctlContext } from '../../uapi/ioctl.js';
import { usageError, VfioError } from '../../base/errors.js';
import { O_CLOEXEC, O_RDWR, type Fd, type Sys } from '../../libc/sys.js';
import type { IovaRange } from '../iova-allocator.js';
import { explainTokenRefusal, type VfToken } from '../vf-token.js';
import { vfioContainerNode, vfioGroupNode, type Roots } from '../../host/paths.js';
import type { GroupContainerKind } from '../../host/mode.js';
import { iommu_destroy } from '../../uapi/iommufd.js';
import { notViableDetail, type PciDeviceLocation } from '../../host/sysfs.js';
import * as codec from '../../uapi/codec.js';
import {
  VFIO_API_VERSION,
  VFIO_DMA_MAP_FLAG_READ,
  VFIO_DMA_MAP_FLAG_WRITE,
  VFIO_GROUP_FLAGS_CONTAINER_SET,
  VFIO_GROUP_FLAGS_VIABLE,
  VFIO_IOMMU_INFO_CAPS,
  VFIO_IOMMU_INFO_PGSIZES,
  VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE,
  VFIO_NOIOMMU_IOMMU,
  VFIO_TYPE1v2_IOMMU,
  vfio_group_status,
  vfio_iommu_type1_dma_map,
  vfio_iommu_type1_dma_unmap,
  vfio_iommu_type1_info,
  vfio_iommu_type1_info_cap_iova_range,
  vfio_iova_range,
} from '../../uapi/vfio.js';
import { unmapMismatch, type AttachedDevice, type ContainerBackend, type IommuInfo } from './backend.js';

/** One IOMMU group attached to the container. */
export interface GroupMembership {
  readonly group: number;
  /** The group fd (0 is valid). */
  readonly fd: Fd;
  readonly node: string;
  /** Addresses of the devices whose fds are open through this group. */
  readonly devices: Set<string>;
}

// The fields map and unmap write on every call, looked up once.
const MAP_ARGSZ = codec.fieldRef(vfio_iommu_type1_dma_map, 'argsz');
const MAP_FLAGS = codec.fieldRef(vfio_iommu_type1_dma_map, 'flags');
const MAP_VADDR = codec.fieldRef(vfio_iommu_type1_dma_map, 'vaddr');
const MAP_IOVA = codec.fieldRef(vfio_iommu_type1_dma_map, 'iova');
const MAP_SIZE = codec.fieldRef(vfio_iommu_type1_dma_map, 'size');
const UNMAP_ARGSZ = codec.fieldRef(vfio_iommu_type1_dma_unmap, 'argsz');
const UNMAP_IOVA = codec.fieldRef(vfio_iommu_type1_dma_unmap, 'iova');
const UNMAP_SIZE = codec.fieldRef(vfio_iommu_type1_dma_unmap, 'size');
// The fields of the group's status, read when a group joins.
const STATUS_ARGSZ = codec.fieldRef(vfio_group_status, 'argsz');
const STATUS_FLAGS = codec.fieldRef(vfio_group_status, 'flags');

export class GroupBackend implements ContainerBackend {
  readonly dmaMode: 'iommu' | 'identity';
  /** The container fd (/dev/vfio/vfio); -1 once closed. */
  containerFd: Fd;
  /** The IOMMU type VFIO_SET_IOMMU uses when the first group joins. */
  readonly iommuType: number;
  /** containerKind() once asked. */
  private kindCache: GroupContainerKind | null = null;
  /** Whether VFIO_SET_IOMMU is in effect (a group is attached). */
  private iommuSet = false;
  /** Attached groups by number. */
  readonly groups = new Map<number, GroupMembership>();
  /**
   * The arguments of VFIO_IOMMU_MAP_DMA and VFIO_IOMMU_UNMAP_DMA: one buffer
   * each for the backend's life instead of one per call (map + unmap is a
   * driver's hot path). Safe to reuse: the ioctl is synchronous and
   * JavaScript runs one call at a time on this thread (a worker has its own
   * backend); each buffer is zeroed and written whole before every ioctl,
   * and the kernel's answer (the unmapped size) is read before the method
   * returns.
   */
  private readonly mapArg = new Uint8Array(vfio_iommu_type1_dma_map.size);
  private readonly unmapArg = new Uint8Array(vfio_iommu_type1_dma_unmap.size);
  /** What a failed map/unmap names: the container node. */
  private readonly dmaCtx: IoctlContext;

  private constructor(
    private readonly sys: Sys,
    private readonly roots: Roots,
    readonly mode: 'group' | 'noiommu',
    private readonly node: string,
    containerFd: Fd,
    iommuType: number,
    /** Lent by another process or thread (see `adopt`): use the setup, never change it. */
    readonly borrowed = false,
  ) {
    this.containerFd = containerFd;
    this.iommuType = iommuType;
    this.dmaMode = mode === 'noiommu' ? 'identity' : 'iommu';
    this.iommuSet = borrowed;
    this.dmaCtx = { path: node };
  }

  /**
   * A borrowed backend on a container fd whose IOMMU type `iommuType` the
   * lender already set. It owns `containerFd` from now on (and each group fd
   * given to `adoptGroup`). Issues no system call.
   */
  static adopt(sys: Sys, roots: Roots, mode: 'group' | 'noiommu', containerFd: Fd, iommuType: number): GroupBackend {
    return new GroupBackend(sys, roots, mode, vfioContainerNode(roots), containerFd, iommuType, true);
  }

  /**
   * Borrowed backends: records lent group `group` with its fd (owned from
   * now on). A group already known keeps its fd; the duplicate is closed.
   */
  adoptGroup(group: number, fd: Fd): void {
    if (!this.borrowed) throw usageError('EINVAL', 'only a borrowed container adopts groups');
    if (this.groups.has(group)) {
      this.sys.close(fd);
      return;
    }
    const node = vfioGroupNode(this.roots, group, this.mode === 'noiommu');
    this.groups.set(group, { group, fd, node, devices: new Set() });
  }

  /** Borrowed backends: records a lent device fd as open through its (adopted) group. */
  adoptDevice(address: string, group: number): void {
    const member = this.groups.get(group);
    if (member === undefined) throw usageError('EINVAL', `IOMMU group ${group} was not lent with the container`, { device: address });
    member.devices.add(address);
  }

  /**
   * Opens /dev/vfio/vfio and checks the API version and the IOMMU type.
   * @throws VfioError ENXIO wrong API version or no usable IOMMU type; any
   *   errno of open(2) or the ioctls. Nothing stays open after a failure.
   */
  static open(sys: Sys, roots: Roots, mode: 'group' | 'noiommu'): GroupBackend {
    const node = vfioContainerNode(roots);
    return withUnwind((u) => {
      const fd = openFile(sys, node, O_RDWR | O_CLOEXEC);
      u.defer(() => sys.close(fd));
      const ctx = { path: node };
      const version = ioctlInt(sys, fd, 'VFIO_GET_API_VERSION', 0, ctx);
      if (version !== VFIO_API_VERSION) {
        throw usageError('ENXIO', `VFIO API version ${version}; this library speaks version ${VFIO_API_VERSION}`, { path: node });
      }
      const has = (type: number): boolean => ioctlInt(sys, fd, 'VFIO_CHECK_EXTENSION', type, ctx) > 0;
      let type: number;
      if (mode === 'noiommu') {
        if (!has(VFIO_NOIOMMU_IOMMU)) {
          throw usageError('ENXIO', 'the container does not offer the no-IOMMU type (enable_unsafe_noiommu_mode is off)', { path: node });
        }
        type = VFIO_NOIOMMU_IOMMU;
      } else if (has(VFIO_TYPE1v2_IOMMU)) type = VFIO_TYPE1v2_IOMMU;
      else {
        throw usageError(
          'ENXIO',
          'the container offers no Type1v2 IOMMU (load vfio_iommu_type1; plain Type1, from kernels before 3.15, is not supported)',
          { path: node },
        );
      }
      return new GroupBackend(sys, roots, mode, node, fd, type);
    });
  }

  /**
   * Who serves this container, asked of the kernel once and remembered:
   * iommufd answers its own IOMMU_DESTROY on the compat container (ENOENT
   * for id 0, which it never hands out), the legacy container does not know
   * it (EINVAL before VFIO_SET_IOMMU, ENOTTY from Type1 after).
   * @throws VfioError any other errno of the ioctl.
   */
  containerKind(): GroupContainerKind {
    if (this.kindCache === null) {
      const arg = codec.alloc(iommu_destroy, { size: iommu_destroy.size, id: 0 });
      try {
        ioctl(this.sys, this.containerFd, 'IOMMU_DESTROY', arg, { path: this.node });
        throw usageError('EIO', 'IOMMU_DESTROY of id 0 succeeded on the VFIO container', { path: this.node });
      } catch (err) {
        if (!(err instanceof VfioError)) throw err;
        if (err.code === 'ENOENT') this.kindCache = 'iommufd-compat';
        else if (err.code === 'EINVAL' || err.code === 'ENOTTY') this.kindCache = 'legacy';
        else throw err;
      }
    }
    return this.kindCache;
  }

  get iommuLive(): boolean {
    return this.iommuSet;
  }

  attach(desc: PciDeviceLocation, vfToken: VfToken | null = null): AttachedDevice {
    const address = desc.address;
    if (this.borrowed) {
      throw usageError('ENOTSUP', 'a borrowed container cannot set devices up: the process that lent it assigns them', { device: address });
    }
    if (desc.iommuGroup === null || desc.groupNode === null) {
      throw usageError('ENODEV', 'the device has no VFIO group node', { device: address });
    }
    const group = desc.iommuGroup;
    const groupNode = desc.groupNode;
    return withUnwind((u) => {
      let member = this.groups.get(group);
      if (member === undefined) member = this.join(desc, group, groupNode, u);
      // The token rides in the device name, as vfio-pci's match() parses it
      // (QEMU and DPDK pass it the same way).
      const name = Buffer.from(vfToken === null ? `${address}\0` : `${address} vf_token=${vfToken.text}\0`);
      let fd: Fd;
      try {
        fd = ioctl(this.sys, member.fd, 'VFIO_GROUP_GET_DEVICE_FD', name, { path: groupNode, device: address });
      } catch (err) {
        throw explainTokenRefusal(err, this.roots, address, vfToken, 'VFIO_GROUP_GET_DEVICE_FD');
      }
      member.devices.add(address);
      return { address, fd, group };
    });
  }

  /** Opens a group, checks it, and joins it to this container (setting the IOMMU if it is the first). */
  private join(desc: PciDeviceLocation, group: number, node: string, u: Unwind): GroupMembership {
    const sys = this.sys;
    const device = desc.address;
    const ctx = { path: node, device };
    const fd = openGroupNode(sys, node, group, device);
    u.defer(() => sys.close(fd));
    const status = new Uint8Array(vfio_group_status.size);
    codec.setField(STATUS_ARGSZ, status, vfio_group_status.size);
    ioctl(sys, fd, 'VFIO_GROUP_GET_STATUS', status, ctx);
    const flags = codec.getField(STATUS_FLAGS, status);
    if ((flags & VFIO_GROUP_FLAGS_VIABLE) === 0) {
      throw usageError('EBUSY', notViableDetail(this.roots, desc), ctx);
    }
    if ((flags & VFIO_GROUP_FLAGS_CONTAINER_SET) !== 0) {
      throw usageError('EBUSY', `IOMMU group ${group} is already in a container`, ctx);
    }
    const containerFdArg = new Uint8Array(4);
    new DataView(containerFdArg.buffer).setInt32(0, this.containerFd, true);
    ioctl(sys, fd, 'VFIO_GROUP_SET_CONTAINER', containerFdArg, ctx);
    u.defer(() => ioctlInt(sys, fd, 'VFIO_GROUP_UNSET_CONTAINER', 0, ctx));
    if (!this.iommuSet) {
      ioctlInt(sys, this.containerFd, 'VFIO_SET_IOMMU', this.iommuType, { path: this.node, device });
      this.iommuSet = true;
      // The kernel drops the IOMMU when this (only) group leaves again.
      u.defer(() => {
        this.iommuSet = false;
      });
    }
    const member: GroupMembership = { group, fd, node, devices: new Set() };
    this.groups.set(group, member);
    u.defer(() => this.groups.delete(group));
    return member;
  }

  detach(dev: AttachedDevice): void {
    const member = this.groups.get(dev.group);
    member?.devices.delete(dev.address);
    this.sys.close(dev.fd);
  }

  pruneDropsIommu(): boolean {
    if (this.borrowed || this.groups.size === 0) return false;
    for (const m of this.groups.values()) if (m.devices.size > 0) return false;
    return true;
  }

  pruneGroups(): void {
    // The lender's groups stay in its container; close() closes our fds.
    if (this.borrowed) return;
    const steps: (() => void)[] = [];
    for (const m of [...this.groups.values()]) {
      if (m.devices.size > 0) continue;
      const ctx = { path: m.node };
      // UNSET first so that an error there is reported; close(2) of the group
      // fd would unset it too, so the group is gone either way.
      steps.push(() => {
        try {
          ioctlInt(this.sys, m.fd, 'VFIO_GROUP_UNSET_CONTAINER', 0, ctx);
        } catch (err) {
          // EINVAL: the group is in no container any more. The kernel takes a
          // group out itself once its last device left vfio-pci (an unbind,
          // which waits for the release, e.g. after the REQ notifier asked
          // for the device): what this step wanted is done.
          if (!(err instanceof VfioError && err.code === 'EINVAL')) throw err;
        }
      });
      steps.push(() => {
        this.groups.delete(m.group);
        if (this.groups.size === 0) this.iommuSet = false;
        this.sys.close(m.fd);
      });
    }
    teardown(steps);
  }

  iommuInfo(device?: string, _u?: Unwind): IommuInfo {
    if (this.dmaMode === 'identity' || !this.iommuSet) {
      throw usageError('EINVAL', 'the container has no IOMMU yet: it is set when the first device is assigned', { device });
    }
    const ctx = { path: this.node, device };
    // First call: the kernel fills the fixed part and says (argsz) how much
    // room the capability chain needs; second call with that much room.
    let buf = codec.alloc(vfio_iommu_type1_info, { argsz: vfio_iommu_type1_info.size });
    ioctl(this.sys, this.containerFd, 'VFIO_IOMMU_GET_INFO', buf, ctx);
    const needed = codec.get(vfio_iommu_type1_info, buf, 'argsz');
    if (needed > buf.length) {
      buf = codec.alloc(vfio_iommu_type1_info, { argsz: needed }, needed - vfio_iommu_type1_info.size);
      ioctl(this.sys, this.containerFd, 'VFIO_IOMMU_GET_INFO', buf, ctx);
    }
    const info = codec.read(vfio_iommu_type1_info, buf);
    if ((info.flags & VFIO_IOMMU_INFO_PGSIZES) === 0 || info.iova_pgsizes === 0n) {
      throw usageError('EIO', 'VFIO_IOMMU_GET_INFO reported no IOMMU page sizes', ctx);
    }
    const pageSizes = info.iova_pgsizes;
    const granule = pageSizes & -pageSizes;
    // Without an IOVA-range capability (kernels before 5.4) the whole 64-bit
    // space is usable as far as the kernel tells.
    let ranges: IovaRange[] = [{ start: 0n, last: (1n << 64n) - 1n }];
    if ((info.flags & VFIO_IOMMU_INFO_CAPS) !== 0 && info.cap_offset !== 0) {
      for (const cap of codec.capabilities(buf, info.cap_offset)) {
        if (cap.id !== VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE) continue;
        const n = codec.get(vfio_iommu_type1_info_cap_iova_range, buf, 'nr_iovas', cap.offset);
        ranges = [];
        for (let i = 0; i < n; i++) {
          const at = cap.offset + codec.elementOffset(vfio_iommu_type1_info_cap_iova_range, 'iova_ranges', i);
          const r = codec.read(vfio_iova_range, buf, at);
          ranges.push({ start: r.start, last: r.end });
        }
      }
    }
    return { ranges, granule, pageSizes };
  }

  map(vaddr: bigint, iova: bigint, size: bigint): void {
    const arg = this.mapArg;
    arg.fill(0);
    codec.setField(MAP_ARGSZ, arg, vfio_iommu_type1_dma_map.size);
    codec.setField(MAP_FLAGS, arg, VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE);
    codec.setField(MAP_VADDR, arg, vaddr);
    codec.setField(MAP_IOVA, arg, iova);
    codec.setField(MAP_SIZE, arg, size);
    ioctl(this.sys, this.containerFd, 'VFIO_IOMMU_MAP_DMA', arg, this.dmaCtx);
  }

  unmap(iova: bigint, size: bigint): void {
    const unmapped = this.unmapRange(iova, size);
    // Type1 answers an unmap of nothing with success and size 0: a mapping
    // the library believes in but the kernel does not have. Never let that
    // pass silently (SPDK once corrupted I/O that way).
    if (unmapped !== size) throw unmapMismatch('VFIO_IOMMU_UNMAP_DMA', this.node, iova, size, unmapped);
  }

  /**
   * Unmaps whatever lies in [iova, iova + size) — any number of whole
   * mappings, or none — and returns how many bytes the kernel unmapped
   * (`unmap` checks it is exactly one mapping; lib/share clears an IOVA
   * window a borrower may have left mappings in).
   */
  unmapRange(iova: bigint, size: bigint): bigint {
    const arg = this.unmapArg;
    arg.fill(0);
    codec.setField(UNMAP_ARGSZ, arg, vfio_iommu_type1_dma_unmap.size);
    codec.setField(UNMAP_IOVA, arg, iova);
    codec.setField(UNMAP_SIZE, arg, size);
    ioctl(this.sys, this.containerFd, 'VFIO_IOMMU_UNMAP_DMA', arg, this.dmaCtx);
    return codec.getField(UNMAP_SIZE, arg);
  }

  close(): void {
    const steps: (() => void)[] = [];
    if (this.borrowed) {
      // Our copies of the lender's group fds; the groups stay where they are.
      for (const m of [...this.groups.values()]) {
        steps.push(() => {
          this.groups.delete(m.group);
          this.sys.close(m.fd);
        });
      }
    }
    const fd = this.containerFd;
    if (fd !== -1) {
      steps.push(() => {
        this.containerFd = -1;
        this.iommuSet = false;
        this.sys.close(fd);
      });
    }
    teardown(steps);
  }
}

/**
 * Opens a group node. The kernel lets one open of a group exist at a time, so
 * EBUSY here means another process (or another context of this one) holds the
 * group: said so, as cdev mode says why its bind is refused.
 */
function openGroupNode(sys: Sys, node: string, group: number, device: string): Fd {
  try {
    return openFile(sys, node, O_RDWR | O_CLOEXEC, device);
  } catch (err) {
    if (err instanceof VfioError && err.code === 'EBUSY') {
      throw err.annotate({
        detail: `IOMMU group ${group} is already open in another process or VFIO context (the kernel allows one open of a group at a time)`,
      });
    }
    throw err;
  }
}
