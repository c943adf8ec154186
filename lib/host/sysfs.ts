// Discovery of one PCI device from sysfs: what it is (vendor, device, class),
// who drives it, which IOMMU group it is in, whether that group is a no-IOMMU
// one, and which VFIO cdev node it has. Read with node:fs under the
// configurable roots; these reads are not kernel calls the library makes on
// the device (they open nothing that stays open).
//
// Two depths: `locatePciDevice` reads only what setting a device up needs
// (driver, group, nodes: each read is a system call, and setting a device up
// is what drivers do over and over); `describePciDevice` adds the ids.
//
// Guarantees:
// - The address is validated (lib/host/pci-address.ts) before any path is built.
// - A device that does not exist, or that no VFIO driver manages, is a
//   VfioError ENODEV naming the device and what to do about it.
// - Nothing is remembered: every call reads sysfs and /dev again.
import { existsSync, readFileSync, readdirSync, readlinkSync } from 'node:fs';
import { basename, join } from 'node:path';
import { usageError, type VfioError } from '../base/errors.js';
import { parsePciAddress } from './pci-address.js';
import { pciDeviceDir, pciDevicesDir, vfioCdevDir, vfioGroupNode, type Roots } from './paths.js';

/** Where VFIO reaches a PCI device, as sysfs and /dev say: what setting it up needs. */
export interface PciDeviceLocation {
  /** Canonical address, `0000:00:03.0`. */
  readonly address: string;
  /** Bound driver (`vfio-pci`), or null when none is bound. */
  readonly driver: string | null;
  /** IOMMU group number, or null when the device has none. */
  readonly iommuGroup: number | null;
  /** True when the group is a VFIO no-IOMMU group (`/dev/vfio/noiommu-N`). */
  readonly noiommu: boolean;
  /** The group's node (`/dev/vfio/3`, `/dev/vfio/noiommu-0`) when it exists. */
  readonly groupNode: string | null;
  /**
   * The device's cdev node (`/dev/vfio/devices/vfio0`) when it exists; null
   * also when the location was made without looking for it (`cdev: false`).
   */
  readonly cdevNode: string | null;
}

/** What sysfs says about a PCI device. */
export interface PciDeviceDescription extends PciDeviceLocation {
  readonly vendor: number;
  readonly device: number;
  /** 24-bit class code (class, subclass, prog-if), e.g. 0x00ff00. */
  readonly class: number;
}

function readHex(dir: string, file: string, device: string): number {
  const path = join(dir, file);
  let text: string;
  try {
    text = readFileSync(path, 'utf8').trim();
  } catch (cause) {
    throw usageError('ENODEV', `cannot read ${file} of the PCI device`, { device, path, cause });
  }
  const n = /^0x[0-9a-fA-F]+$/.test(text) ? parseInt(text, 16) : NaN;
  if (!Number.isSafeInteger(n)) throw usageError('EIO', `${path} holds ${JSON.stringify(text)}, not a hex number`, { device, path });
  return n;
}

function linkName(path: string): string | null {
  try {
    return basename(readlinkSync(path));
  } catch {
    return null;
  }
}

function cdevName(dir: string): string | null {
  try {
    return readdirSync(`${dir}/vfio-dev`).find((n) => /^vfio[0-9]+$/.test(n)) ?? null;
  } catch {
    return null;
  }
}

/** True when the bound driver is vfio-pci or a vfio-pci variant (mlx5_vfio_pci, ...). */
function isVfioDriver(driver: string | null): boolean {
  return driver !== null && /vfio/.test(driver);
}

/**
 * Where VFIO reaches a PCI device: its driver, IOMMU group, group node and
 * cdev node (not its ids: see describePciDevice). With `cdev: false` the cdev
 * node is not looked for (cdevNode is null): for a caller that will not use
 * cdev mode, it saves reading the device's vfio-dev directory.
 * @throws VfioError EINVAL `address` is not a PCI address; ENODEV no such
 *   device in sysfs.
 */
export function locatePciDevice(roots: Roots, address: unknown, opts: { readonly cdev?: boolean } = {}): PciDeviceLocation {
  const canonical = parsePciAddress(address).canonical;
  return locate(roots, canonical, opts.cdev !== false);
}

function locate(roots: Roots, canonical: string, withCdev: boolean): PciDeviceLocation {
  const dir = pciDeviceDir(roots, canonical);
  const groupName = linkName(`${dir}/iommu_group`);
  const driver = linkName(`${dir}/driver`);
  // A device has an IOMMU group or a driver almost always: only when both
  // links are missing is the directory looked at, to tell a device without
  // either from no device at all.
  if (groupName === null && driver === null && !existsSync(dir)) throw noSuchDevice(roots, canonical);
  const iommuGroup = groupName !== null && /^[0-9]+$/.test(groupName) ? Number(groupName) : null;
  let noiommu = false;
  let groupNode: string | null = null;
  if (iommuGroup !== null) {
    // A group is either an IOMMU group or a no-IOMMU one: the kernel names
    // its node /dev/vfio/N or /dev/vfio/noiommu-N by the same unique group
    // number, never both. The usual one first.
    const plain = vfioGroupNode(roots, iommuGroup, false);
    if (existsSync(plain)) {
      groupNode = plain;
    } else {
      const unsafe = vfioGroupNode(roots, iommuGroup, true);
      if (existsSync(unsafe)) {
        noiommu = true;
        groupNode = unsafe;
      }
    }
  }
  let cdevNode: string | null = null;
  if (withCdev) {
    const cdev = cdevName(dir);
    const cdevPath = cdev === null ? null : `${vfioCdevDir(roots)}/${cdev}`;
    if (cdevPath !== null && existsSync(cdevPath)) cdevNode = cdevPath;
  }
  return { address: canonical, driver, iommuGroup, noiommu, groupNode, cdevNode };
}

function noSuchDevice(roots: Roots, canonical: string): VfioError {
  return usageError('ENODEV', `no such PCI device in ${pciDevicesDir(roots)}`, { device: canonical });
}

/**
 * Reads what sysfs knows about a PCI device: its location and its ids.
 * @throws VfioError EINVAL `address` is not a PCI address; ENODEV no such
 *   device in sysfs.
 */
export function describePciDevice(roots: Roots, address: unknown): PciDeviceDescription {
  const canonical = parsePciAddress(address).canonical;
  const dir = pciDeviceDir(roots, canonical);
  // The first read doubles as the existence check: only when it fails is the
  // directory looked at, to say which of the two went wrong.
  let vendor: number;
  try {
    vendor = readHex(dir, 'vendor', canonical);
  } catch (err) {
    if (!existsSync(dir)) throw noSuchDevice(roots, canonical);
    throw err;
  }
  const loc = locate(roots, canonical, true);
  return {
    address: canonical,
    vendor,
    device: readHex(dir, 'device', canonical),
    class: readHex(dir, 'class', canonical),
    driver: loc.driver,
    iommuGroup: loc.iommuGroup,
    noiommu: loc.noiommu,
    groupNode: loc.groupNode,
    cdevNode: loc.cdevNode,
  };
}

/**
 * The other devices of the device's IOMMU group that a kernel driver claims
 * for DMA: their driver is neither a VFIO driver nor one that leaves DMA to
 * its user (pci-stub, pcieport). While one exists the group is not viable:
 * the kernel will not hand the group's DMA to userspace.
 */
export function groupBlockers(roots: Roots, desc: PciDeviceLocation): { address: string; driver: string }[] {
  const dir = join(pciDeviceDir(roots, desc.address), 'iommu_group', 'devices');
  let names: string[];
  try {
    names = readdirSync(dir);
  } catch {
    return [];
  }
  const out: { address: string; driver: string }[] = [];
  for (const name of names) {
    if (name === desc.address) continue;
    const driver = linkName(join(dir, name, 'driver'));
    if (driver !== null && !isVfioDriver(driver) && driver !== 'pci-stub' && driver !== 'pcieport') out.push({ address: name, driver });
  }
  return out;
}

/** Why a device's group is not viable, in words shared by both backends. */
export function notViableDetail(roots: Roots, desc: PciDeviceLocation): string {
  const who = groupBlockers(roots, desc)
    .map((b) => `${b.address} is bound to ${b.driver}`)
    .join(', ');
  return `IOMMU group ${desc.iommuGroup} is not viable${who === '' ? '' : ` (${who})`}: bind every device in it to vfio-pci (or unbind it)`;
}

/**
 * Throws unless a VFIO driver manages the device.
 * @throws VfioError ENODEV with what to do (bind it to vfio-pci).
 */
export function requireVfioManaged(desc: PciDeviceLocation): void {
  if (isVfioDriver(desc.driver)) return;
  const bound = desc.driver === null ? 'no driver is bound' : `it is bound to ${desc.driver}`;
  throw usageError('ENODEV', `not managed by VFIO: ${bound}; bind it to vfio-pci`, { device: desc.address });
}
