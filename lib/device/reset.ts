// Device reset: the function reset (VFIO_DEVICE_RESET) and the PCI hot
// (secondary bus or slot) reset, whose argument differs between modes.
//
// Guarantees:
// - A function reset on a device whose info lacks VFIO_DEVICE_FLAGS_RESET is
//   ENOTSUP before any ioctl (the kernel would say EINVAL).
// - Hot-reset info follows the kernel's protocol: ask with no room, get
//   ENOSPC and the count, ask again with room for it (again if a device
//   appeared in between). Note: VFIO_DEVICE_GET_PCI_HOT_RESET_INFO has the
//   same number as VFIO_IOMMU_GET_INFO; it is only ever sent to a device fd.
// - A hot reset proves ownership of every affected device before the ioctl:
//   group mode passes one fd per affected IOMMU group (EPERM, naming the
//   device, when this process has not opened one of them); cdev mode passes
//   the empty group-fd array, which makes the kernel check that every
//   affected device is bound to the same iommufd (EPERM up front when the
//   info already says some are not).
import { usageError, VfioError } from '../base/errors.js';
import type { Fd } from '../libc/sys.js';
import { alloc, elementOffset, get, read } from '../uapi/codec.js';
import {
  VFIO_DEVICE_FLAGS_RESET,
  VFIO_PCI_DEVID_NOT_OWNED,
  VFIO_PCI_DEVID_OWNED,
  VFIO_PCI_HOT_RESET_FLAG_DEV_ID,
  VFIO_PCI_HOT_RESET_FLAG_DEV_ID_OWNED,
  vfio_pci_dependent_device,
  vfio_pci_hot_reset,
  vfio_pci_hot_reset_info,
} from '../uapi/vfio.js';
import { deviceIoctl, deviceIoctlInt, type DeviceHandle } from './handle.js';

/** One device that a hot reset of this device would also reset. */
export interface DependentDevice {
  /** `0000:01:00.0` */
  readonly address: string;
  readonly segment: number;
  readonly bus: number;
  readonly slot: number;
  readonly function: number;
  /** Group mode: its IOMMU group. null in cdev mode. */
  readonly groupId: number | null;
  /**
   * cdev mode: its iommufd device id when it is bound to our iommufd; null
   * when it is owned but not opened (VFIO_PCI_DEVID_OWNED), or in group mode.
   */
  readonly devid: number | null;
  /** cdev mode: whether this process owns it; group mode: null (decided per group). */
  readonly owned: boolean | null;
}

export interface HotResetInfo {
  /** VFIO_PCI_HOT_RESET_FLAG_* as returned. */
  readonly flags: number;
  /** The kernel reported iommufd device ids (the device is a cdev). */
  readonly byDevid: boolean;
  /** cdev mode: every affected device is owned by this iommufd. */
  readonly allOwned: boolean | null;
  readonly devices: readonly DependentDevice[];
}

const u32 = (v: number): number => v >>> 0;

function pciAddress(segment: number, bus: number, devfn: number): string {
  const hex = (v: number, n: number): string => v.toString(16).padStart(n, '0');
  return `${hex(segment, 4)}:${hex(bus, 2)}:${hex(devfn >> 3, 2)}.${devfn & 7}`;
}

/**
 * Function-level reset (FLR, PM reset, or whatever the kernel chose for the
 * device). Mappings stay valid: the kernel zaps and refaults them.
 *
 * Errors: ENOTSUP the device cannot be reset this way (info flags lack
 * RESET); ECLOSED; the kernel's answer otherwise (EAGAIN: another reset
 * holds the device's lock).
 */
export function resetDevice(h: DeviceHandle): void {
  h.assertOpen();
  if ((h.info().flags & VFIO_DEVICE_FLAGS_RESET) === 0) {
    throw usageError('ENOTSUP', 'the device does not support a function reset (VFIO_DEVICE_FLAGS_RESET is not set): try a hot reset', {
      device: h.address,
    });
  }
  deviceIoctlInt(h, 'VFIO_DEVICE_RESET', 0);
}

/**
 * The devices a hot reset of this device would reset too.
 *
 * Errors: ENODEV the device cannot be hot reset (no slot or bus reset);
 * ECLOSED; EAGAIN the set kept changing.
 */
export function hotResetInfo(h: DeviceHandle): HotResetInfo {
  let room = 0;
  for (let tries = 0; tries < 3; tries++) {
    const extra = room * vfio_pci_dependent_device.size;
    const buf = alloc(vfio_pci_hot_reset_info, { argsz: vfio_pci_hot_reset_info.size + extra }, extra);
    try {
      deviceIoctl(h, 'VFIO_DEVICE_GET_PCI_HOT_RESET_INFO', buf);
    } catch (err) {
      // ENOSPC is the protocol, not a failure: the kernel wrote the count.
      if (err instanceof VfioError && err.code === 'ENOSPC') {
        room = get(vfio_pci_hot_reset_info, buf, 'count');
        continue;
      }
      if (err instanceof VfioError && err.code === 'ENODEV') {
        throw err.annotate({ detail: 'the device cannot be hot reset: neither its slot nor its bus supports reset' });
      }
      throw err;
    }
    return decodeInfo(h, buf, room);
  }
  throw new VfioError({
    code: 'EAGAIN',
    device: h.address,
    request: 'VFIO_DEVICE_GET_PCI_HOT_RESET_INFO',
    detail: 'the set of affected devices kept changing',
  });
}

function decodeInfo(h: DeviceHandle, buf: Buffer, room: number): HotResetInfo {
  const hdr = read(vfio_pci_hot_reset_info, buf);
  if (hdr.count > room) {
    throw new VfioError({
      code: 'EIO',
      device: h.address,
      request: 'VFIO_DEVICE_GET_PCI_HOT_RESET_INFO',
      detail: `kernel reported ${hdr.count} devices in room for ${room}`,
    });
  }
  const byDevid = (hdr.flags & VFIO_PCI_HOT_RESET_FLAG_DEV_ID) !== 0;
  const devices: DependentDevice[] = [];
  for (let i = 0; i < hdr.count; i++) {
    const d = read(vfio_pci_dependent_device, buf, elementOffset(vfio_pci_hot_reset_info, 'devices', i));
    const id = d.devid; // the same bytes as group_id: which one is meant depends on byDevid
    const notOwned = u32(id) === u32(VFIO_PCI_DEVID_NOT_OWNED);
    devices.push({
      address: pciAddress(d.segment, d.bus, d.devfn),
      segment: d.segment,
      bus: d.bus,
      slot: d.devfn >> 3,
      function: d.devfn & 7,
      groupId: byDevid ? null : d.group_id,
      devid: byDevid && !notOwned && u32(id) !== u32(VFIO_PCI_DEVID_OWNED) ? id : null,
      owned: byDevid ? !notOwned : null,
    });
  }
  return { flags: hdr.flags, byDevid, allOwned: byDevid ? (hdr.flags & VFIO_PCI_HOT_RESET_FLAG_DEV_ID_OWNED) !== 0 : null, devices };
}

/**
 * Hot reset of the slot or bus the device sits on: resets every device of
 * `hotResetInfo()` at once. All of them must belong to this process.
 *
 * Errors: EPERM an affected device (or its group) is not owned by this
 * process; ENODEV the device cannot be hot reset; ECLOSED; the kernel's
 * answer otherwise (EINVAL an fd that is not a group, EBUSY a device in use).
 */
export function hotReset(h: DeviceHandle): void {
  const info = hotResetInfo(h);
  let fds: Fd[];
  if (h.mode === 'cdev') {
    const foreign = info.devices.filter((d) => d.owned === false);
    if (info.byDevid && (foreign.length > 0 || info.allOwned === false)) {
      throw usageError(
        'EPERM',
        `a hot reset would also reset ${foreign.map((d) => d.address).join(', ') || 'devices'} not bound to this iommufd`,
        { device: h.address },
      );
    }
    // The zero-length group-fd array: the kernel checks ownership through
    // the iommufd the device is bound to.
    fds = [];
  } else {
    const groups = new Map<number, Fd>();
    for (const d of info.devices) {
      if (d.groupId === null || groups.has(d.groupId)) continue;
      const fd = h.groupFd(d.groupId);
      if (fd === null) {
        throw usageError(
          'EPERM',
          `a hot reset would also reset ${d.address} in IOMMU group ${d.groupId}, which this process has not opened`,
          { device: h.address },
        );
      }
      groups.set(d.groupId, fd);
    }
    fds = [...groups.values()];
  }
  const fdSize = elementOffset(vfio_pci_hot_reset, 'group_fds', 1) - elementOffset(vfio_pci_hot_reset, 'group_fds', 0);
  const extra = fds.length * fdSize;
  const buf = alloc(vfio_pci_hot_reset, { argsz: vfio_pci_hot_reset.size + extra, count: fds.length }, extra);
  fds.forEach((fd, i) => buf.writeInt32LE(fd, elementOffset(vfio_pci_hot_reset, 'group_fds', i)));
  deviceIoctl(h, 'VFIO_DEVICE_PCI_HOT_RESET', buf);
}
