// Which of the kernel's three VFIO interfaces a device (or the machine) can be
// driven through, decided from the filesystem alone (nothing is opened):
//
// - 'cdev':    /dev/iommu and the device's /dev/vfio/devices/vfioN (IOMMUFD).
// - 'group':   /dev/vfio/vfio, the group node /dev/vfio/N, and a Type1 IOMMU
//              driver (the vfio_iommu_type1 module, or IOMMUFD's emulation
//              of it, which needs /dev/iommu).
// - 'noiommu': vfio's enable_unsafe_noiommu_mode is Y and the device's group
//              is a no-IOMMU group (/dev/vfio/noiommu-N). DMA then uses
//              physical addresses: nothing protects memory from the device.
//
// A mode can be forced (an option, or the VFIO_MODE environment variable);
// a forced mode the machine cannot give is an ENXIO error saying why, never a
// silent fallback.
//
// Guarantees:
// - `availability` reports, per mode, either null (usable) or the reason it
//   is not, so every refusal can say what is missing.
// - A no-IOMMU device is only ever offered 'noiommu' (binding it through an
//   IOMMU path would fail later and less clearly).
import { existsSync, readFileSync, readdirSync } from 'node:fs';
import { dirname } from 'node:path';
import { usageError, VfioError } from '../base/errors.js';
import { iommufdModuleDir, iommufdNode, noiommuParameter, type1ModuleDir, vfioCdevDir, vfioContainerNode, type Roots } from './paths.js';
import type { PciDeviceLocation } from './sysfs.js';

export type VfioMode = 'cdev' | 'group' | 'noiommu';

/** Preference order when nothing is forced. */
export const VFIO_MODES: readonly VfioMode[] = ['cdev', 'group', 'noiommu'];

/** Per mode: null when usable, else why not. */
export type ModeAvailability = Record<VfioMode, string | null>;

/**
 * Parses a mode name from an option or the environment.
 * @throws VfioError EINVAL for anything but 'cdev', 'group', 'noiommu'.
 */
export function parseMode(value: unknown, source: string): VfioMode {
  if (typeof value === 'string' && (VFIO_MODES as readonly string[]).includes(value)) return value as VfioMode;
  throw usageError('EINVAL', `${source} is ${JSON.stringify(value)}; expected one of ${VFIO_MODES.join(', ')}`);
}

function noiommuEnabled(roots: Roots): boolean {
  try {
    return readFileSync(noiommuParameter(roots), 'utf8').trim() === 'Y';
  } catch {
    return false;
  }
}

/**
 * Why the machine cannot give `mode` (before looking at any device), or null
 * when it can. Looks only at what that mode needs.
 */
export function machineModeProblem(roots: Roots, mode: VfioMode): string | null {
  switch (mode) {
    case 'cdev':
      if (!existsSync(iommufdNode(roots))) return `${iommufdNode(roots)} does not exist (load iommufd; kernel 6.6+ with CONFIG_IOMMUFD)`;
      if (!existsSync(vfioCdevDir(roots))) return `${vfioCdevDir(roots)} does not exist (kernel without CONFIG_VFIO_DEVICE_CDEV)`;
      return null;
    case 'group':
      if (!existsSync(vfioContainerNode(roots))) return `${vfioContainerNode(roots)} does not exist (load the vfio module)`;
      // IOMMUFD's emulation of Type1 (it needs /dev/iommu) will do too.
      if (!existsSync(type1ModuleDir(roots)) && !existsSync(iommufdNode(roots))) return 'no Type1 IOMMU driver (load vfio_iommu_type1)';
      return null;
    case 'noiommu':
      if (!noiommuEnabled(roots)) return `${noiommuParameter(roots)} is not Y (no-IOMMU mode is disabled)`;
      if (!existsSync(vfioContainerNode(roots))) return `${vfioContainerNode(roots)} does not exist (load the vfio module)`;
      return null;
  }
}

/**
 * Who serves /dev/vfio/vfio (group and no-IOMMU modes):
 * - 'legacy': vfio's own container with the vfio_iommu_type1 driver;
 * - 'iommufd-compat': iommufd's emulation of it (CONFIG_IOMMUFD_VFIO_CONTAINER),
 *   which the kernel builds only without the legacy container, so never
 *   beside vfio_iommu_type1. It speaks Type1v2 but lacks what
 *   iommufd_vfio_check_extension() leaves out (VFIO_UPDATE_VADDR, dirty
 *   tracking; P2P mappings of another device's BAR): none of which this
 *   library uses.
 */
export type GroupContainerKind = 'legacy' | 'iommufd-compat';

/**
 * Who serves /dev/vfio/vfio, from the filesystem alone, or null when there is
 * no such node: vfio_iommu_type1 present means the legacy container (the
 * driver depends on it); iommufd present without it means the compat
 * container. Neither: the legacy container whose Type1 module is not loaded
 * yet. A container that is open knows for sure (Container.containerKind
 * asks the kernel).
 */
export function groupContainerKind(roots: Roots): GroupContainerKind | null {
  if (!existsSync(vfioContainerNode(roots))) return null;
  if (existsSync(type1ModuleDir(roots))) return 'legacy';
  return existsSync(iommufdModuleDir(roots)) ? 'iommufd-compat' : 'legacy';
}

/** What the machine offers, before looking at any device. */
export function machineAvailability(roots: Roots): ModeAvailability {
  return {
    cdev: machineModeProblem(roots, 'cdev'),
    group: machineModeProblem(roots, 'group'),
    noiommu: machineModeProblem(roots, 'noiommu'),
  };
}

/**
 * Why the device itself cannot be driven in `mode` (its nodes, its group),
 * or null when it can; the machine's side is machineModeProblem's. A
 * container already open in `mode` has proved the machine's side.
 */
export function deviceModeProblem(desc: PciDeviceLocation, mode: VfioMode): string | null {
  const noGroup = desc.iommuGroup === null ? 'the device has no IOMMU group' : null;
  const inNoiommuGroup = desc.noiommu ? `the device's group ${desc.iommuGroup} is a no-IOMMU group (use noiommu mode)` : null;
  switch (mode) {
    case 'cdev':
      return (
        inNoiommuGroup ??
        (desc.cdevNode === null
          ? 'the device has no vfio-dev cdev node (kernel without CONFIG_VFIO_DEVICE_CDEV, or not bound to vfio-pci)'
          : null)
      );
    case 'group':
      return (
        noGroup ??
        inNoiommuGroup ??
        (desc.groupNode === null ? `/dev/vfio/${desc.iommuGroup} does not exist (is the device bound to vfio-pci?)` : null)
      );
    case 'noiommu':
      return (
        noGroup ??
        (!desc.noiommu ? `the device's group ${desc.iommuGroup} has an IOMMU (no-IOMMU mode is only for devices without one)` : null)
      );
  }
}

/** Why the machine or the device cannot give `mode`, or null: the machine's reason first. */
export function deviceMachineProblem(roots: Roots, desc: PciDeviceLocation, mode: VfioMode): string | null {
  return machineModeProblem(roots, mode) ?? deviceModeProblem(desc, mode);
}

/**
 * The order in which a machine's modes are preferred for a container made
 * without a device: VFIO_MODES, except that a machine whose VFIO groups are
 * all no-IOMMU groups (/dev/vfio/noiommu-N and no /dev/vfio/N) prefers
 * 'noiommu' — there is no IOMMU for the other modes to use.
 */
export function machinePreference(roots: Roots): readonly VfioMode[] {
  let names: string[];
  try {
    names = readdirSync(dirname(vfioContainerNode(roots)));
  } catch {
    return VFIO_MODES;
  }
  const noiommuOnly = names.some((n) => /^noiommu-[0-9]+$/.test(n)) && !names.some((n) => /^[0-9]+$/.test(n));
  return noiommuOnly ? ['noiommu', 'cdev', 'group'] : VFIO_MODES;
}

/**
 * The mode to use: the forced one when given (it must be available), else the
 * first available in `order` (default VFIO_MODES). `problem` says why a mode
 * is not available (null: it is); it is asked only about the modes the
 * choice needs (each check reads the filesystem).
 * @throws VfioError ENXIO naming the reason for each unavailable mode.
 */
export function chooseMode(
  problem: (mode: VfioMode) => string | null,
  forced: VfioMode | undefined,
  ctx: { device?: string },
  order: readonly VfioMode[] = VFIO_MODES,
): VfioMode {
  if (forced !== undefined) {
    const why = problem(forced);
    if (why === null) return forced;
    throw new VfioError({ code: 'ENXIO', device: ctx.device, detail: `${forced} mode was forced but is not available: ${why}` });
  }
  const mode = order.find((m) => problem(m) === null);
  if (mode !== undefined) return mode;
  const why = VFIO_MODES.map((m) => `${m}: ${problem(m)}`).join('; ');
  throw new VfioError({ code: 'ENXIO', device: ctx.device, detail: `VFIO is not available: ${why}` });
}
