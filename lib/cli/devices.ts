// The PCI devices of the machine as the `vfio` command shows them: sysfs
// identity, driver, IOMMU group and its members, whether the group is viable,
// and the VFIO mode a VFIO-managed device would be driven in. Everything
// comes from sysfs and /dev (nothing is opened), so `vfio ls` works for any
// user and disturbs no device.
import { readdirSync, readlinkSync } from 'node:fs';
import { basename, join } from 'node:path';
import type { Vfio } from '../core/context.js';
import { VfioError } from '../base/errors.js';
import type { VfioMode } from '../host/mode.js';
import { parsePciAddress } from '../host/pci-address.js';
import { pciDeviceDir, type Roots } from '../host/paths.js';
import { describePciDevice, groupBlockers, type PciDeviceDescription } from '../host/sysfs.js';
import { physfnOf, sriovOf, type SriovFunction } from '../host/sriov.js';

export interface GroupMember {
  readonly address: string;
  readonly driver: string | null;
}

export interface DeviceReport {
  readonly address: string;
  readonly vendor: number;
  readonly device: number;
  readonly class: number;
  readonly driver: string | null;
  /** Bound to vfio-pci or a vfio-pci variant driver. */
  readonly vfio: boolean;
  readonly iommuGroup: number | null;
  readonly noiommu: boolean;
  /** Every device of the IOMMU group, this one included, by address. */
  readonly groupMembers: readonly GroupMember[];
  /**
   * True when no device of the group (this one included) is bound to a
   * kernel driver that does DMA itself; null when the device has no group.
   */
  readonly viable: boolean | null;
  /** The group's devices that make it not viable, with their drivers. */
  readonly blockers: readonly GroupMember[];
  /** The mode a VFIO-managed device would be driven in; null otherwise. */
  readonly mode: VfioMode | null;
  /** Why `mode` is null for a VFIO-managed device (no usable interface). */
  readonly modeError: string | null;
  readonly groupNode: string | null;
  readonly cdevNode: string | null;
  /** An SR-IOV PF: how many VFs it can have and has, and their addresses; null otherwise. */
  readonly sriov: SriovFunction | null;
  /** An SR-IOV VF: its PF's address; null otherwise. */
  readonly physfn: string | null;
}

/**
 * Drivers that leave a group viable: VFIO's own (vfio-pci and its variants)
 * and those that never do DMA for the kernel (pci-stub, and pcieport on
 * bridges). The same rule as lib/host/sysfs.ts's groupBlockers.
 */
export function isVfioDriver(driver: string | null): boolean {
  return driver !== null && /vfio/.test(driver);
}
function keepsGroupViable(driver: string | null): boolean {
  return driver === null || isVfioDriver(driver) || driver === 'pci-stub' || driver === 'pcieport';
}

/** Every PCI device address in sysfs, sorted. */
export function pciAddresses(roots: Roots): string[] {
  let names: string[];
  try {
    names = readdirSync(join(roots.sysfs, 'bus', 'pci', 'devices'));
  } catch {
    return [];
  }
  return names.filter(isPciAddress).sort();
}

function isPciAddress(name: string): boolean {
  try {
    return parsePciAddress(name).canonical === name;
  } catch {
    return false;
  }
}

function driverOf(roots: Roots, address: string): string | null {
  try {
    return basename(readlinkSync(join(pciDeviceDir(roots, address), 'driver')));
  } catch {
    return null;
  }
}

/** The devices of `desc`'s IOMMU group (it included), sorted by address. */
export function groupMembers(roots: Roots, desc: PciDeviceDescription): GroupMember[] {
  if (desc.iommuGroup === null) return [{ address: desc.address, driver: desc.driver }];
  let names: string[];
  try {
    names = readdirSync(join(pciDeviceDir(roots, desc.address), 'iommu_group', 'devices'));
  } catch {
    names = [desc.address];
  }
  return names
    .filter(isPciAddress)
    .sort()
    .map((address) => ({ address, driver: address === desc.address ? desc.driver : driverOf(roots, address) }));
}

/**
 * Everything `vfio ls` and `vfio info` say about a device before opening it.
 * @throws VfioError EINVAL not a PCI address; ENODEV no such device.
 */
export function inspectDevice(roots: Roots, vfio: Vfio, address: string): DeviceReport {
  const desc = describePciDevice(roots, address);
  const vfioBound = isVfioDriver(desc.driver);
  const members = groupMembers(roots, desc);
  const others = groupBlockers(roots, desc).map((b) => ({ address: b.address, driver: b.driver }));
  const blockers = keepsGroupViable(desc.driver) ? others : [{ address: desc.address, driver: desc.driver }, ...others];
  let mode: VfioMode | null = null;
  let modeError: string | null = null;
  if (vfioBound) {
    try {
      mode = vfio.getMode(desc.address);
    } catch (err) {
      if (!(err instanceof VfioError)) throw err;
      modeError = err.message;
    }
  }
  return {
    address: desc.address,
    vendor: desc.vendor,
    device: desc.device,
    class: desc.class,
    driver: desc.driver,
    vfio: vfioBound,
    iommuGroup: desc.iommuGroup,
    noiommu: desc.noiommu,
    groupMembers: members,
    viable: desc.iommuGroup === null ? null : blockers.length === 0,
    blockers,
    mode,
    modeError,
    groupNode: desc.groupNode,
    cdevNode: desc.cdevNode,
    sriov: sriovOf(roots, desc.address),
    physfn: physfnOf(roots, desc.address),
  };
}
