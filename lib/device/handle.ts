// What the device I/O modules need from an opened device, and nothing more.
// The Device of lib/core/device.ts implements this interface; the modules in this
// folder never import the Device itself, so they can be built and tested on a
// bare device fd.
//
// Guarantees:
// - Every module calls `assertOpen()` (directly or through `deviceIoctl`)
//   before it uses `fd`, so a closed device answers VfioError ECLOSED instead
//   of a system call on a stale (or reused!) fd number.
import { ioctl, ioctlInt, type IoctlName } from '../uapi/ioctl.js';
import { closedError, VfioError } from '../base/errors.js';
import type { Fd, Sys } from '../libc/sys.js';

/** How the device was reached: decides the form of a hot reset. */
export type DeviceMode = 'group' | 'noiommu' | 'cdev';

/** The fields of VFIO_DEVICE_GET_INFO that device I/O depends on. */
export interface DeviceBasics {
  /** VFIO_DEVICE_FLAGS_* (RESET, PCI, ...). */
  readonly flags: number;
  /** Region indexes are 0 .. numRegions-1 (9 fixed PCI ones + device-specific). */
  readonly numRegions: number;
  /** IRQ indexes are 0 .. numIrqs-1 (INTx, MSI, MSI-X, ERR, REQ for PCI). */
  readonly numIrqs: number;
}

export interface DeviceHandle {
  readonly sys: Sys;
  /** The device fd. Only meaningful after `assertOpen()` succeeded. */
  readonly fd: Fd;
  /** PCI address (`0000:00:03.0`), put on every error. */
  readonly address: string;
  readonly mode: DeviceMode;
  /** True once the device is closed (or being closed). */
  readonly closed: boolean;
  /** Throws VfioError ECLOSED when the device is closed. */
  assertOpen(): void;
  /** VFIO_DEVICE_GET_INFO, fetched once and cached by the Device. */
  info(): DeviceBasics;
  /**
   * Group and no-IOMMU modes: an fd of IOMMU group `groupId` if this process
   * holds that group open (for a hot reset, which must prove ownership of
   * every affected group). `null` when it does not, and always in cdev mode.
   */
  groupFd(groupId: number): Fd | null;
}

/**
 * ioctl on the device fd through the library's one ioctl path (../ioctl.ts:
 * request by uapi name, error annotated with it and the device), after the
 * liveness check. `detail` says what was being attempted.
 */
export function deviceIoctl(h: DeviceHandle, name: IoctlName, arg: Uint8Array, detail?: string): number {
  h.assertOpen();
  try {
    return ioctl(h.sys, h.fd, name, arg);
  } catch (err) {
    throw withContext(err, h, detail);
  }
}

/** The integer form (requests without an argument, such as VFIO_DEVICE_RESET). */
export function deviceIoctlInt(h: DeviceHandle, name: IoctlName, arg: number, detail?: string): number {
  h.assertOpen();
  try {
    return ioctlInt(h.sys, h.fd, name, arg);
  } catch (err) {
    throw withContext(err, h, detail);
  }
}

/** The device (and what was being attempted) on a failure; added only then, so a successful call allocates nothing. */
function withContext(err: unknown, h: DeviceHandle, detail: string | undefined): unknown {
  return err instanceof VfioError ? err.annotate(detail === undefined ? { device: h.address } : { device: h.address, detail }) : err;
}

/** ECLOSED for a resource (region, IRQ set) of this device. */
export function resourceClosed(h: Pick<DeviceHandle, 'address'>, what: string): VfioError {
  return closedError(what, { device: h.address });
}
