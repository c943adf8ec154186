// The fake's /sys, /dev and /proc: a temporary directory laid out like the
// real ones, with real symlinks where sysfs has them, so that code reading
// sysfs with node:fs sees what it would see on a machine. Device nodes are
// empty regular files (existsSync finds them); opening them through the fake
// Sys gives the fake files, and nothing else.
import { mkdirSync, mkdtempSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { KernelConfig } from './core.js';
import type { PciDeviceDescription } from './pci-spec.js';

export interface TreeDevice {
  readonly desc: PciDeviceDescription;
  /** The IOMMU group the device is in, or null (no IOMMU and not VFIO's). */
  readonly iommuGroup: number | null;
  readonly vfioIndex: number | null;
}

export interface TreeGroup {
  readonly id: number;
  readonly noiommu: boolean;
  /** Whether VFIO made a group node for it. */
  readonly vfio: boolean;
}

export interface Trees {
  readonly base: string;
  readonly sysfsRoot: string;
  readonly devRoot: string;
  readonly procRoot: string;
}

const hex = (n: number, digits: number): string => `0x${n.toString(16).padStart(digits, '0')}\n`;

function file(path: string, text: string | Uint8Array): void {
  writeFileSync(path, text);
}

function dir(path: string): string {
  mkdirSync(path, { recursive: true });
  return path;
}

/** The directory under /sys/devices a device sits in: its host bridge's. */
const parentOf = (address: string): string => `pci${address.slice(0, 4)}:${address.slice(5, 7)}`;

export function buildTrees(config: KernelConfig, devices: readonly TreeDevice[], groups: readonly TreeGroup[]): Trees {
  const base = mkdtempSync(join(tmpdir(), 'vfio-fake-'));
  const sys = dir(join(base, 'sys'));
  const dev = dir(join(base, 'dev'));
  const proc = dir(join(base, 'proc'));

  const drivers = new Set(devices.map((d) => d.desc.driver).filter((d): d is string => d !== null));
  drivers.add('vfio-pci');
  for (const drv of drivers) {
    const d = dir(join(sys, 'bus', 'pci', 'drivers', drv));
    for (const f of ['bind', 'unbind', 'new_id', 'remove_id']) file(join(d, f), '');
  }
  dir(join(sys, 'bus', 'pci', 'devices'));
  dir(join(sys, 'kernel', 'iommu_groups'));

  for (const g of groups) {
    const gd = dir(join(sys, 'kernel', 'iommu_groups', String(g.id), 'devices'));
    file(join(gd, '..', 'type'), g.noiommu ? 'blocked\n' : 'DMA\n');
    if (g.noiommu) file(join(gd, '..', 'name'), 'vfio-noiommu\n');
  }

  for (const d of devices) {
    const { desc } = d;
    const parent = parentOf(desc.address);
    const dd = dir(join(sys, 'devices', parent, desc.address));
    file(join(dd, 'vendor'), hex(desc.vendor, 4));
    file(join(dd, 'device'), hex(desc.device, 4));
    file(join(dd, 'class'), hex(desc.class, 6));
    file(join(dd, 'revision'), hex(desc.revision, 2));
    file(join(dd, 'subsystem_vendor'), hex(desc.subsystemVendor, 4));
    file(join(dd, 'subsystem_device'), hex(desc.subsystemDevice, 4));
    file(join(dd, 'numa_node'), '-1\n');
    file(join(dd, 'config'), desc.config);
    const rel = join('..', '..', '..', 'devices', parent, desc.address);
    symlinkSync(rel, join(sys, 'bus', 'pci', 'devices', desc.address));
    if (d.iommuGroup !== null) {
      symlinkSync(join('..', '..', '..', 'kernel', 'iommu_groups', String(d.iommuGroup)), join(dd, 'iommu_group'));
      symlinkSync(join('..', rel), join(sys, 'kernel', 'iommu_groups', String(d.iommuGroup), 'devices', desc.address));
    }
    if (desc.driver !== null) {
      symlinkSync(join('..', '..', '..', 'bus', 'pci', 'drivers', desc.driver), join(dd, 'driver'));
      symlinkSync(join('..', rel), join(sys, 'bus', 'pci', 'drivers', desc.driver, desc.address));
    }
    // SR-IOV: a PF's sriov_totalvfs / sriov_numvfs and virtfnN links, a VF's physfn link.
    if (desc.sriov !== null) {
      const vfs = devices.filter((v) => v.desc.physfn === desc.address);
      file(join(dd, 'sriov_totalvfs'), `${desc.sriov.totalVfs}\n`);
      file(join(dd, 'sriov_numvfs'), `${vfs.length}\n`);
      vfs.forEach((v, i) => symlinkSync(join('..', '..', parentOf(v.desc.address), v.desc.address), join(dd, `virtfn${i}`)));
    }
    if (desc.physfn !== null) symlinkSync(join('..', '..', parentOf(desc.physfn), desc.physfn), join(dd, 'physfn'));
    if (d.vfioIndex !== null && config.cdevInterface && config.mode !== 'noiommu') {
      const name = `vfio${d.vfioIndex}`;
      const vd = dir(join(dd, 'vfio-dev', name));
      file(join(vd, 'dev'), `511:${d.vfioIndex}\n`);
      dir(join(sys, 'class', 'vfio-dev'));
      symlinkSync(join('..', '..', 'devices', parent, desc.address, 'vfio-dev', name), join(sys, 'class', 'vfio-dev', name));
      dir(join(dev, 'vfio', 'devices'));
      file(join(dev, 'vfio', 'devices', name), '');
    }
  }

  const params = dir(join(sys, 'module', 'vfio', 'parameters'));
  file(join(params, 'enable_unsafe_noiommu_mode'), config.noiommuParam ? 'Y\n' : 'N\n');
  // vfio-pci's enable_sriov: off, as the module loads by default.
  file(join(dir(join(sys, 'module', 'vfio_pci', 'parameters')), 'enable_sriov'), 'N\n');
  // vfio_iommu_type1 exists only beside the legacy container (it depends on
  // CONFIG_VFIO_CONTAINER); the compat container is iommufd's.
  if (config.type1 && config.containerKind === 'legacy') {
    file(join(dir(join(sys, 'module', 'vfio_iommu_type1', 'parameters')), 'dma_entry_limit'), `${config.dmaEntryLimit}\n`);
  }
  if (config.containerKind === 'iommufd-compat') dir(join(sys, 'module', 'iommufd'));
  file(join(dir(join(proc, 'sys', 'kernel')), 'osrelease'), `${config.release}\n`);

  if (config.groupInterface) {
    dir(join(dev, 'vfio'));
    file(join(dev, 'vfio', 'vfio'), '');
    for (const g of groups) if (g.vfio) file(join(dev, 'vfio', g.noiommu ? `noiommu-${g.id}` : String(g.id)), '');
  }
  if (config.cdevInterface) {
    dir(join(sys, 'module', 'iommufd'));
    file(join(dev, 'iommu'), '');
  }
  file(join(dir(join(proc, 'self')), 'pagemap'), '');
  return { base, sysfsRoot: sys, devRoot: dev, procRoot: proc };
}
