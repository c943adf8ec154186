// SR-IOV as sysfs shows it (Documentation/ABI/testing/sysfs-bus-pci): a
// physical function has sriov_totalvfs, sriov_numvfs and one virtfnN link per
// virtual function; a VF has a physfn link back to its PF. Reading only: the
// `vfio` command writes sriov_numvfs (lib/cli).
import { existsSync, readdirSync, readFileSync, readlinkSync } from 'node:fs';
import { basename } from 'node:path';
import { parsePciAddress } from './pci-address.js';
import { pciDeviceDir, type Roots } from './paths.js';

/** A PF's SR-IOV state. */
export interface SriovFunction {
  /** sriov_totalvfs: how many VFs the device can have. */
  readonly totalVfs: number;
  /** sriov_numvfs: how many it has now. */
  readonly numVfs: number;
  /** The VFs' addresses, in virtfn order. */
  readonly vfs: readonly string[];
}

function readCount(path: string): number | null {
  try {
    const n = Number(readFileSync(path, 'utf8').trim());
    return Number.isSafeInteger(n) && n >= 0 ? n : null;
  } catch {
    return null;
  }
}

/**
 * The device's SR-IOV state when it is a PF (it has sriov_totalvfs), else null.
 * @throws VfioError EINVAL `address` is not a PCI address.
 */
export function sriovOf(roots: Roots, address: string): SriovFunction | null {
  const dir = pciDeviceDir(roots, parsePciAddress(address).canonical);
  const totalVfs = readCount(`${dir}/sriov_totalvfs`);
  if (totalVfs === null) return null;
  let names: string[];
  try {
    names = readdirSync(dir).filter((n) => /^virtfn[0-9]+$/.test(n));
  } catch {
    names = [];
  }
  names.sort((a, b) => Number(a.slice(6)) - Number(b.slice(6)));
  const vfs = names.map((n) => basename(readlinkSync(`${dir}/${n}`)));
  return { totalVfs, numVfs: readCount(`${dir}/sriov_numvfs`) ?? vfs.length, vfs };
}

/**
 * The PF of a VF (its physfn link), or null for a device that is not a VF.
 * @throws VfioError EINVAL `address` is not a PCI address.
 */
export function physfnOf(roots: Roots, address: string): string | null {
  const link = `${pciDeviceDir(roots, parsePciAddress(address).canonical)}/physfn`;
  try {
    return basename(readlinkSync(link));
  } catch {
    return null;
  }
}

/** The sriov_numvfs control file of a PF (written to create or remove VFs). */
export function sriovNumvfsFile(roots: Roots, address: string): string {
  return `${pciDeviceDir(roots, parsePciAddress(address).canonical)}/sriov_numvfs`;
}

/** Whether any device on the machine is an SR-IOV PF. */
export function hasSriovDevice(roots: Roots, addresses: readonly string[]): boolean {
  return addresses.some((a) => existsSync(`${pciDeviceDir(roots, a)}/sriov_totalvfs`));
}
