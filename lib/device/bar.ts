// Opening a BAR: the region, made safe to touch first.
//
// Guarantees:
// - The BAR's decoding is on before the Region exists: memory space for a
//   memory BAR (an access with it off is SIGBUS on a mapping, EIO through
//   pread), I/O space for an I/O BAR. mapBar turns it on in the command
//   register; it never turns it off.
// - An MSI-X table that the kernel does not declare mappable (no
//   MSIX_MAPPABLE capability and no sparse areas to follow) is never mmap'd:
//   its pages are reached through pread/pwrite instead.
import { usageError } from '../base/errors.js';
import { VFIO_DEVICE_FLAGS_PCI, VFIO_PCI_BAR0_REGION_INDEX } from '../uapi/vfio.js';
import type { ConfigSpace } from './config.js';
import type { DeviceHandle } from './handle.js';
import { openRegion, type OpenRegionOptions, type Region } from './region.js';
import { regionInfo, type RegionArea } from './region-info.js';

export type MapBarOptions = Pick<OpenRegionOptions, 'offset' | 'size' | 'noMmap'>;

/**
 * Maps BAR `bar` (0..5), or [offset, offset+size) of it.
 *
 * Errors: EINVAL `bar` is not 0..5 or the range is outside the BAR; ENOTSUP
 * the device is not PCI; ENOENT the BAR is not implemented (size 0, which is
 * also the upper half of a 64-bit BAR); ECLOSED; mmap's errors.
 */
export function mapBar(h: DeviceHandle, config: ConfigSpace, bar: number, opts: MapBarOptions = {}, onClose?: (r: Region) => void): Region {
  h.assertOpen();
  if (!Number.isInteger(bar) || bar < 0 || bar > 5) throw usageError('EINVAL', `BAR index ${bar} must be 0..5`, { device: h.address });
  if ((h.info().flags & VFIO_DEVICE_FLAGS_PCI) === 0)
    throw usageError('ENOTSUP', 'the device is not a PCI device: it has no BARs', { device: h.address });
  const info = regionInfo(h, VFIO_PCI_BAR0_REGION_INDEX + bar);
  if (info.size === 0) {
    throw usageError('ENOENT', `BAR ${bar} is not implemented (size 0; the upper half of a 64-bit BAR also reads so)`, {
      device: h.address,
    });
  }
  const kind = config.bar(bar);
  if (kind.space === 'memory') config.setMemorySpace(true);
  else config.setIoSpace(true);
  const exclude: RegionArea[] = [];
  if (info.mappable && !info.msixMappable && info.sparseAreas === null) {
    const msix = config.msix();
    if (msix !== null && msix.tableBar === bar) exclude.push({ offset: msix.tableOffset, size: msix.tableSize });
  }
  return openRegion(h, info, { ...opts, exclude }, onClose);
}
