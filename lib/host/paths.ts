// Where the kernel's VFIO files live, under roots that tests can move (the
// fake kernel builds its /sys, /dev and /proc in a temporary directory).
// Every path the library opens or reads is built here, and only from a
// canonical PCI address (lib/host/pci-address.ts) or a number, never from raw
// user input.
//
// Guarantees:
// - Every function returns what `path.join` of the root and the parts
//   returns. The fixed directories of a Roots object are joined once and
//   kept with it (a device's bring-up builds ~10 paths; each join normalizes
//   the whole string again); they are built again whenever a root string
//   differs from the one they were made from. A canonical PCI address or a
//   number has no `/` and is never `.` or `..`, so appending it after a `/`
//   to a joined directory (which never ends in `/`) is that join.
import { join } from 'node:path';

/** The three filesystem roots the library reads: `/sys`, `/dev`, `/proc` by default. */
export interface Roots {
  readonly sysfs: string;
  readonly dev: string;
  readonly proc: string;
}

export const DEFAULT_ROOTS: Roots = { sysfs: '/sys', dev: '/dev', proc: '/proc' };

/** The fixed paths under one set of roots, and the root strings they were joined from. */
interface FixedPaths {
  readonly sysfs: string;
  readonly dev: string;
  readonly proc: string;
  readonly pciDevices: string;
  readonly vfioDir: string;
  readonly vfioContainer: string;
  readonly vfioCdevDir: string;
  readonly iommufd: string;
  readonly noiommuParameter: string;
  readonly type1Module: string;
  readonly iommufdModule: string;
  readonly osrelease: string;
  readonly pagemap: string;
}

const fixedByRoots = new WeakMap<Roots, FixedPaths>();

function fixed(roots: Roots): FixedPaths {
  const f = fixedByRoots.get(roots);
  if (f !== undefined && f.sysfs === roots.sysfs && f.dev === roots.dev && f.proc === roots.proc) return f;
  const { sysfs, dev, proc } = roots;
  const made: FixedPaths = {
    sysfs,
    dev,
    proc,
    pciDevices: join(sysfs, 'bus', 'pci', 'devices'),
    vfioDir: join(dev, 'vfio'),
    vfioContainer: join(dev, 'vfio', 'vfio'),
    vfioCdevDir: join(dev, 'vfio', 'devices'),
    iommufd: join(dev, 'iommu'),
    noiommuParameter: join(sysfs, 'module', 'vfio', 'parameters', 'enable_unsafe_noiommu_mode'),
    type1Module: join(sysfs, 'module', 'vfio_iommu_type1'),
    iommufdModule: join(sysfs, 'module', 'iommufd'),
    osrelease: join(proc, 'sys', 'kernel', 'osrelease'),
    pagemap: join(proc, 'self', 'pagemap'),
  };
  fixedByRoots.set(roots, made);
  return made;
}

/** The directory of all PCI devices in sysfs (`/sys/bus/pci/devices`). */
export function pciDevicesDir(roots: Roots): string {
  return fixed(roots).pciDevices;
}

/** The sysfs directory of a PCI device (`/sys/bus/pci/devices/0000:00:03.0`). */
export function pciDeviceDir(roots: Roots, canonical: string): string {
  return `${fixed(roots).pciDevices}/${canonical}`;
}

/** The legacy container node `/dev/vfio/vfio`. */
export function vfioContainerNode(roots: Roots): string {
  return fixed(roots).vfioContainer;
}

/** A group node: `/dev/vfio/<N>`, or `/dev/vfio/noiommu-<N>` for a no-IOMMU group. */
export function vfioGroupNode(roots: Roots, group: number, noiommu: boolean): string {
  return `${fixed(roots).vfioDir}/${noiommu ? `noiommu-${group}` : String(group)}`;
}

/** The directory of per-device cdev nodes, `/dev/vfio/devices`. */
export function vfioCdevDir(roots: Roots): string {
  return fixed(roots).vfioCdevDir;
}

/** The IOMMUFD node `/dev/iommu`. */
export function iommufdNode(roots: Roots): string {
  return fixed(roots).iommufd;
}

/** `enable_unsafe_noiommu_mode` of the vfio module: `Y` when no-IOMMU groups may exist. */
export function noiommuParameter(roots: Roots): string {
  return fixed(roots).noiommuParameter;
}

/** Present when the Type1 IOMMU driver (vfio_iommu_type1) is loaded or built in. */
export function type1ModuleDir(roots: Roots): string {
  return fixed(roots).type1Module;
}

/** The calling process's page map (virtual page → physical frame). */
export function pagemapFile(roots: Roots): string {
  return fixed(roots).pagemap;
}

/** Present when iommufd is loaded or built in. */
export function iommufdModuleDir(roots: Roots): string {
  return fixed(roots).iommufdModule;
}

/** The running kernel's release (`6.12.43+deb13-amd64`). */
export function osReleaseFile(roots: Roots): string {
  return fixed(roots).osrelease;
}
