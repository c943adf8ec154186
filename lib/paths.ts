// Where the kernel's VFIO files live, under roots that tests can move (the
// fake kernel builds its /sys, /dev and /proc in a temporary directory).
// Every path the library opens or reads is built here, and only from a
// canonical PCI address (lib/pci-address.ts) or a number, never from raw
// user input.
import { join } from 'node:path';

/** The three filesystem roots the library reads: `/sys`, `/dev`, `/proc` by default. */
export interface Roots {
  readonly sysfs: string;
  readonly dev: string;
  readonly proc: string;
}

export const DEFAULT_ROOTS: Roots = { sysfs: '/sys', dev: '/dev', proc: '/proc' };

/** The sysfs directory of a PCI device (`/sys/bus/pci/devices/0000:00:03.0`). */
export function pciDeviceDir(roots: Roots, canonical: string): string {
  return join(roots.sysfs, 'bus', 'pci', 'devices', canonical);
}

/** The legacy container node `/dev/vfio/vfio`. */
export function vfioContainerNode(roots: Roots): string {
  return join(roots.dev, 'vfio', 'vfio');
}

/** A group node: `/dev/vfio/<N>`, or `/dev/vfio/noiommu-<N>` for a no-IOMMU group. */
export function vfioGroupNode(roots: Roots, group: number, noiommu: boolean): string {
  return join(roots.dev, 'vfio', noiommu ? `noiommu-${group}` : String(group));
}

/** The directory of per-device cdev nodes, `/dev/vfio/devices`. */
export function vfioCdevDir(roots: Roots): string {
  return join(roots.dev, 'vfio', 'devices');
}

/** The IOMMUFD node `/dev/iommu`. */
export function iommufdNode(roots: Roots): string {
  return join(roots.dev, 'iommu');
}

/** `enable_unsafe_noiommu_mode` of the vfio module: `Y` when no-IOMMU groups may exist. */
export function noiommuParameter(roots: Roots): string {
  return join(roots.sysfs, 'module', 'vfio', 'parameters', 'enable_unsafe_noiommu_mode');
}

/** Present when the Type1 IOMMU driver (vfio_iommu_type1) is loaded or built in. */
export function type1ModuleDir(roots: Roots): string {
  return join(roots.sysfs, 'module', 'vfio_iommu_type1');
}

/** The calling process's page map (virtual page → physical frame). */
export function pagemapFile(roots: Roots): string {
  return join(roots.proc, 'self', 'pagemap');
}
