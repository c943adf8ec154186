// An open VFIO device: the handle a driver works with. It holds the device fd
// its container set up; releasing it (release(), close(), or `using`) undoes
// that setup, which is also the only way to unassign a device. Regions, BARs,
// config space, interrupts and reset (lib/device) hang off it and are
// closed with it.
//
// Guarantees:
// - After release — or the container's close — every method and `fd` throw
//   ECLOSED. release() is idempotent.
// - What is built on the device is closed before the device fd is, so the
//   kernel can still be told to drop eventfds and mappings: first anything
//   registered with `own()` (newest first: such a resource may still use the
//   device's BARs and interrupts while it closes), then the device I/O
//   (regions, interrupts, config space).
// - Opening a device does no I/O on it: getInfo() asks the kernel when
//   called; info() asks once and remembers; device I/O starts on first use.
import { closedError, usageError, VfioError } from '../base/errors.js';
import { parseVfToken } from './vf-token.js';
import type { Fd, Sys } from '../libc/sys.js';
import { teardown } from '../base/cleanup.js';
import { ioctl } from '../uapi/ioctl.js';
import * as codec from '../uapi/codec.js';
import {
  VFIO_DEVICE_FEATURE_PCI_VF_TOKEN,
  VFIO_DEVICE_FEATURE_SET,
  VFIO_DEVICE_FLAGS_CAPS,
  VFIO_DEVICE_FLAGS_PCI,
  VFIO_DEVICE_FLAGS_RESET,
  vfio_device_feature,
  vfio_device_info,
} from '../uapi/vfio.js';
import type { Container } from './container/container.js';
import { DeviceIo } from '../device/index.js';
import type { DeviceBasics, DeviceHandle, DeviceMode } from '../device/handle.js';

/** What VFIO_DEVICE_GET_INFO says about a device. */
export interface DeviceInfo {
  readonly address: string;
  /** VFIO_DEVICE_FLAGS_* bits. */
  readonly flags: number;
  /** The device supports VFIO_DEVICE_RESET. */
  readonly reset: boolean;
  /** A PCI device (regions and IRQs use the PCI indexes). */
  readonly pci: boolean;
  readonly numRegions: number;
  readonly numIrqs: number;
  /** Capabilities of the device info chain (id and version). */
  readonly capabilities: readonly { readonly id: number; readonly version: number }[];
}

/** Anything the device layer builds on a device and must close before its fd. */
export interface DeviceResource {
  close(): void;
}

const INFO_ARGSZ = codec.fieldRef(vfio_device_info, 'argsz');
const FEATURE_ARGSZ = codec.fieldRef(vfio_device_feature, 'argsz');
const FEATURE_FLAGS = codec.fieldRef(vfio_device_feature, 'flags');
const INFO_FLAGS = codec.fieldRef(vfio_device_info, 'flags');
const INFO_NUM_REGIONS = codec.fieldRef(vfio_device_info, 'num_regions');
const INFO_NUM_IRQS = codec.fieldRef(vfio_device_info, 'num_irqs');
const INFO_CAP_OFFSET = codec.fieldRef(vfio_device_info, 'cap_offset');

/**
 * The argument of every first VFIO_DEVICE_GET_INFO: one buffer for the whole
 * module. Safe to share: the ioctl is synchronous and JavaScript runs one call
 * at a time on this thread (a worker has its own module instance);
 * readDeviceInfo zeroes it and writes the request before each ioctl, and
 * decodes it before returning. A second call, for a capability chain that did
 * not fit, gets a buffer of its own (as large as the kernel asks).
 */
const firstInfoArg = new Uint8Array(vfio_device_info.size);

/** Capabilities of a device without a chain: one frozen empty list for all. */
const NO_CAPS: readonly { readonly id: number; readonly version: number }[] = Object.freeze([]);

/**
 * Reads VFIO_DEVICE_GET_INFO from a device fd, capability chain included.
 * @throws VfioError any errno of the ioctl (EINVAL for an unbound cdev fd).
 */
export function readDeviceInfo(sys: Sys, fd: Fd, address: string, path?: string): DeviceInfo {
  const ctx = { device: address, path };
  let buf: Uint8Array = firstInfoArg;
  buf.fill(0);
  codec.setField(INFO_ARGSZ, buf, vfio_device_info.size);
  ioctl(sys, fd, 'VFIO_DEVICE_GET_INFO', buf, ctx);
  // The kernel raises argsz when the capability chain did not fit.
  const needed = codec.getField(INFO_ARGSZ, buf);
  if (needed > buf.length) {
    buf = codec.alloc(vfio_device_info, { argsz: needed }, needed - vfio_device_info.size);
    ioctl(sys, fd, 'VFIO_DEVICE_GET_INFO', buf, ctx);
  }
  const flags = codec.getField(INFO_FLAGS, buf);
  const capOffset = (flags & VFIO_DEVICE_FLAGS_CAPS) !== 0 ? codec.getField(INFO_CAP_OFFSET, buf) : 0;
  const capabilities = capOffset !== 0 ? [...codec.capabilities(buf, capOffset)].map(({ id, version }) => ({ id, version })) : NO_CAPS;
  return {
    address,
    flags,
    reset: (flags & VFIO_DEVICE_FLAGS_RESET) !== 0,
    pci: (flags & VFIO_DEVICE_FLAGS_PCI) !== 0,
    numRegions: codec.getField(INFO_NUM_REGIONS, buf),
    numIrqs: codec.getField(INFO_NUM_IRQS, buf),
    capabilities,
  };
}

/**
 * An open device. Its device I/O (`mapBar`, `regionInfo`, `regions`,
 * `mapRegion`, `config`, `irqs`, `reset`, `hotResetInfo`, `hotReset`) is
 * inherited from lib/device's DeviceIo.
 */
export class Device extends DeviceIo implements Disposable, DeviceHandle {
  /** Canonical PCI address (`0000:00:03.0`). */
  readonly address: string;
  /** The container the device is set up in. */
  readonly container: Container;
  private fdSlot: Fd | null;
  private readonly owned: DeviceResource[] = [];
  private basics: DeviceInfo | null = null;
  private readonly releaseFromContainer: () => void;

  /** @internal Devices come from Vfio.openDevice. */
  constructor(
    /** @internal The kernel interface, for the device I/O layer built on this device. */
    readonly sys: Sys,
    container: Container,
    address: string,
    fd: Fd,
    releaseFromContainer: () => void,
  ) {
    super();
    this.container = container;
    this.address = address;
    this.fdSlot = fd;
    this.releaseFromContainer = releaseFromContainer;
  }

  /** True once released (or its container closed). */
  get closed(): boolean {
    return this.fdSlot === null;
  }

  /** How the device is reached: its container's mode. */
  get mode(): DeviceMode {
    return this.container.mode;
  }

  /**
   * Throws unless the device is open.
   * @throws VfioError ECLOSED after release.
   */
  assertOpen(): void {
    if (this.fdSlot === null) throw closedError('device', { device: this.address });
  }

  /**
   * The device fd, for device ioctls, pread/pwrite and mmap of regions.
   * @throws VfioError ECLOSED after release.
   */
  get fd(): Fd {
    if (this.fdSlot === null) throw closedError('device', { device: this.address });
    return this.fdSlot;
  }

  /**
   * VFIO_DEVICE_GET_INFO: flags, region and IRQ counts, capabilities.
   * @throws VfioError ECLOSED after release; any errno of the ioctl.
   */
  getInfo(): DeviceInfo {
    return readDeviceInfo(this.sys, this.fd, this.address);
  }

  /**
   * Sets the VF token of an SR-IOV physical function (VFIO_DEVICE_FEATURE,
   * PCI_VF_TOKEN | SET): from now on its VFs open only with this UUID (the
   * `vfToken` option of openDevice/assignDevice). vfio-pci starts a PF with
   * a random token, so no VF opens before its PF's user sets one; the token
   * cannot be read back (it could be the previous user's).
   * @throws VfioError EINVAL `uuid` is not a UUID; ENOTSUP the device is not
   *   an SR-IOV PF driven by vfio-pci (the kernel's ENOTTY); ECLOSED; any
   *   errno of the ioctl.
   */
  setVfToken(uuid: string): void {
    const token = parseVfToken(uuid, 'the VF token');
    const fd = this.fd;
    const arg = new Uint8Array(vfio_device_feature.size + token.bytes.length);
    codec.setField(FEATURE_ARGSZ, arg, arg.length);
    codec.setField(FEATURE_FLAGS, arg, VFIO_DEVICE_FEATURE_SET | VFIO_DEVICE_FEATURE_PCI_VF_TOKEN);
    arg.set(token.bytes, vfio_device_feature.fields.data.offset);
    try {
      ioctl(this.sys, fd, 'VFIO_DEVICE_FEATURE', arg, { device: this.address });
    } catch (err) {
      if (err instanceof VfioError && err.code === 'ENOTTY') {
        throw usageError('ENOTSUP', 'not an SR-IOV physical function driven by vfio-pci: it has no VF token', {
          device: this.address,
          request: 'VFIO_DEVICE_FEATURE',
          cause: err,
        });
      }
      throw err;
    }
  }

  /**
   * VFIO_DEVICE_GET_INFO, asked once and remembered (flags and counts do not
   * change while the device is open).
   * @throws VfioError ECLOSED after release; any errno of the ioctl.
   */
  info(): DeviceBasics & DeviceInfo {
    this.assertOpen();
    this.basics ??= this.getInfo();
    return this.basics;
  }

  /**
   * @internal For a hot reset (group and no-IOMMU modes): the fd of IOMMU
   * group `groupId` when a container of this context holds it, else null;
   * always null in cdev mode.
   * @throws VfioError ECLOSED after release.
   */
  groupFd(groupId: number): Fd | null {
    if (this.fdSlot === null) throw closedError('device', { device: this.address });
    return this.container.groupFd(groupId);
  }

  /**
   * Registers a resource built on this device, closed (newest first) before
   * the device fd when the device is released. Returns it.
   * @throws VfioError ECLOSED after release.
   */
  own<T extends DeviceResource>(resource: T): T {
    if (this.fdSlot === null) throw closedError('device', { device: this.address });
    this.owned.push(resource);
    return resource;
  }

  /**
   * Closes what was built on the device, then undoes its setup in the
   * container (cdev: detach + close, which unbinds; group: close the device
   * fd, and the group leaves the container with its last device). A no-op
   * once released.
   * @throws VfioError the first error of those steps; the device is released
   *   regardless (close(2) frees the fd even when it reports an error).
   */
  release(): void {
    if (this.fdSlot === null) return;
    this.shutDown(this.releaseFromContainer);
  }

  /** Same as release(). */
  close(): void {
    this.release();
  }

  [Symbol.dispose](): void {
    this.release();
  }

  /**
   * @internal The container is closing and tears the device down itself:
   * close what was built on it and stop handing out the fd.
   */
  invalidate(): void {
    this.shutDown(null);
  }

  /**
   * release() and invalidate(): what was built on the device (owned
   * resources newest first, then its regions, interrupts and config space)
   * is closed while the fd is still open; then the fd is no longer handed
   * out and `undoSetup` (the container's part) runs. Every step runs; the
   * first error is thrown.
   */
  private shutDown(undoSetup: (() => void) | null): void {
    const owned = this.owned.splice(0).reverse();
    teardown([
      ...owned.map((r) => () => r.close()),
      () => this.closeIo(),
      () => {
        this.fdSlot = null;
        undoSetup?.();
      },
    ]);
  }
}
