// Discovery of one PCI device from sysfs: what it is (vendor, device, class),
// who drives it, which IOMMU group it is in, whether that group is a no-IOMMU
// one, and which VFIO cdev node it has. Read with node:fs under the
// configurable roots; these reads are not kernel calls the library makes on
// the device (they open nothing that stays open).
//
// Guarantees:
// - The address is validated (lib/pci-address.ts) before any path is built.
// - A device that does not exist, or that no VFIO driver manages, is a
//   VfioError ENODEV naming the device and what to do about it.
import { existsSync, readFileSync, readdirSync, readlinkSync } from 'node:fs';
import { basename, join } from 'node:path';
import { usageError } from './libc/errors.js';
import { parsePciAddress } from './pci-address.js';
import { pciDeviceDir, vfioCdevDir, vfioGroupNode, type Roots } from './paths.js';

/** What sysfs says about a PCI device. */
export interface PciDeviceDescription {
  /** Canonical address, `0000:00:03.0`. */
  readonly address: string;
  readonly vendor: number;
  readonly device: number;
  /** 24-bit class code (class, subclass, prog-if), e.g. 0x00ff00. */
  readonly class: number;
  /** Bound driver (`vfio-pci`), or null when none is bound. */
  readonly driver: string | null;
  /** IOMMU group number, or null when the device has none. */
  readonly iommuGroup: number | null;
  /** True when the group is a VFIO no-IOMMU group (`/dev/vfio/noiommu-N`). */
  readonly noiommu: boolean;
  /** The group's node (`/dev/vfio/3`, `/dev/vfio/noiommu-0`) when it exists. */
  readonly groupNode: string | null;
  /** The device's cdev node (`/dev/vfio/devices/vfio0`) when it exists. */
  readonly cdevNode: string | null;
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
    return readdirSync(join(dir, 'vfio-dev')).find((n) => /^vfio[0-9]+$/.test(n)) ?? null;
  } catch {
    return null;
  }
}

/** True when the bound driver is vfio-pci or a vfio-pci variant (mlx5_vfio_pci, ...). */
function isVfioDriver(driver: string | null): boolean {
  return driver !== null && /vfio/.test(driver);
}

/**
 * Reads what sysfs knows about a PCI device.
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
    if (!existsSync(dir)) {
      throw usageError('ENODEV', `no such PCI device in ${join(roots.sysfs, 'bus', 'pci', 'devices')}`, {
        device: canonical,
      });
    }
    throw err;
  }
  const groupName = linkName(join(dir, 'iommu_group'));
  const iommuGroup = groupName !== null && /^[0-9]+$/.test(groupName) ? Number(groupName) : null;
  let noiommu = false;
  let groupNode: string | null = null;
  if (iommuGroup !== null) {
    // A group is either an IOMMU group or a no-IOMMU one: the kernel names
    // its node /dev/vfio/N or /dev/vfio/noiommu-N by the same unique group
    // number, never both. The usual one first.
    const plain = vfioGroupNode(roots, iommuGroup, false);
    const unsafe = vfioGroupNode(roots, iommuGroup, true);
    if (existsSync(plain)) {
      groupNode = plain;
    } else if (existsSync(unsafe)) {
      noiommu = true;
      groupNode = unsafe;
    }
  }
  const cdev = cdevName(dir);
  const cdevPath = cdev === null ? null : join(vfioCdevDir(roots), cdev);
  return {
    address: canonical,
    vendor,
    device: readHex(dir, 'device', canonical),
    class: readHex(dir, 'class', canonical),
    driver: linkName(join(dir, 'driver')),
    iommuGroup,
    noiommu,
    groupNode,
    cdevNode: cdevPath !== null && existsSync(cdevPath) ? cdevPath : null,
  };
}

/**
 * The other devices of the device's IOMMU group that a kernel driver claims
 * for DMA: their driver is neither a VFIO driver nor one that leaves DMA to
 * its user (pci-stub, pcieport). While one exists the group is not viable:
 * the kernel will not hand the group's DMA to userspace.
 */
export function groupBlockers(roots: Roots, desc: PciDeviceDescription): { address: string; driver: string }[] {
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
export function notViableDetail(roots: Roots, desc: PciDeviceDescription): string {
  const who = groupBlockers(roots, desc)
    .map((b) => `${b.address} is bound to ${b.driver}`)
    .join(', ');
  return `IOMMU group ${desc.iommuGroup} is not viable${who === '' ? '' : ` (${who})`}: bind every device in it to vfio-pci (or unbind it)`;
}

/**
 * Throws unless a VFIO driver manages the device.
 * @throws VfioError ENODEV with what to do (bind it to vfio-pci).
 */
export function requireVfioManaged(desc: PciDeviceDescription): void {
  if (isVfioDriver(desc.driver)) return;
  const bound = desc.driver === null ? 'no driver is bound' : `it is bound to ${desc.driver}`;
  throw usageError('ENODEV', `not managed by VFIO: ${bound}; bind it to vfio-pci`, { device: desc.address });
}
