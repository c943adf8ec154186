// The public face of the library.
//
// `vfio` is the context on the real kernel. It loads the koffi binding only
// when it first makes a system call, so importing the package (or building a
// context on a fake kernel with createVfio) never loads native code, and the
// package stays require()-able (no top-level await).
import { createRequire } from 'node:module';
import { createVfio, type Vfio } from './core/context.js';
import type { Sys } from './libc/sys.js';
import { nativeLoadError } from './libc/load-error.js';

export { createVfio, Vfio, type VfioOptions, type ContainerOptions } from './core/context.js';
export { Container, type ContainerKernelState } from './core/container/container.js';
export type { IommuInfo } from './core/container/backend.js';
export { Device, type DeviceInfo, type DeviceResource } from './core/device.js';
export { DmaBuffer, type DmaMapOptions, type DmaAllocOptions } from './core/dma.js';
export { ConfigSpace, Irqs, IrqSet, IrqVector, Region, IRQ_INDEX, CAP_ID, EXT_CAP_ID } from './device/index.js';
export type {
  AccessWidth,
  EnableOptions,
  HotResetInfo,
  IrqInfo,
  IrqKind,
  MapBarOptions,
  MmioViews,
  RegionInfo,
  RegionArea,
  RegionType,
  WaitOptions,
} from './device/index.js';
export type { IovaRange } from './core/iova-allocator.js';
export type { VfioMode } from './host/mode.js';
export { parsePciAddress, canonicalPciAddress, type PciAddress } from './host/pci-address.js';
export type { PciDeviceDescription } from './host/sysfs.js';
export { VfioError, type VfioErrorInit } from './base/errors.js';
export type { Sys, Fd } from './libc/sys.js';

/** Every Sys method, for lazySys (the check below fails to compile when one is missing). */
const SYS_METHODS = [
  'open',
  'close',
  'ioctl',
  'ioctlInt',
  'mmap',
  'munmap',
  'mlock',
  'munlock',
  'view',
  'read',
  'tryRead',
  'write',
  'pread',
  'pwrite',
  'ftruncate',
  'eventfd',
  'memfdCreate',
  'poll',
  'pollAsync',
  'watchEventfd',
  'dup',
  'addSeals',
  'getSeals',
  'socket',
  'bind',
  'listen',
  'accept',
  'connect',
  'sendmsg',
  'recvmsg',
  'peerCredentials',
  'pageSize',
  'getuid',
] as const satisfies readonly (keyof Sys)[];
const allSysMethods: Exclude<keyof Sys, (typeof SYS_METHODS)[number]> extends never ? true : never = true;
void allSysMethods;

/**
 * A Sys that loads the real one on first use: each method starts as a stub
 * that loads it and then replaces every stub with the real, bound method, so
 * from then on a call costs what a direct call does (no Proxy, no lookup).
 */
function lazySys(load: () => Sys): Sys {
  const lazy = {} as Record<(typeof SYS_METHODS)[number], (...args: unknown[]) => unknown>;
  const materialize = (): void => {
    const real = load() as unknown as Record<string, (...args: unknown[]) => unknown>;
    for (const name of SYS_METHODS) lazy[name] = real[name]!.bind(real);
  };
  for (const name of SYS_METHODS) {
    lazy[name] = (...args) => {
      materialize();
      return lazy[name](...args);
    };
  }
  return lazy as unknown as Sys;
}

function loadKoffiSys(): Sys {
  // Synchronous on purpose: the API is synchronous, and require() of an ES
  // module without top-level await is supported from Node 20.19.
  const require = createRequire(import.meta.url);
  try {
    return (require('./libc/koffi-sys.js') as { koffiSys: Sys }).koffiSys;
  } catch (err) {
    // A plain Error here (EMFILE, a missing .node file) would break the errno
    // contract; the next call tries the load again.
    throw nativeLoadError(err);
  }
}

/** The context on the real kernel: /sys, /dev, /proc, and VFIO_MODE from the environment. */
export const vfio: Vfio = createVfio({ sys: lazySys(loadKoffiSys) });
