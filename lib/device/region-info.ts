// VFIO_DEVICE_GET_REGION_INFO with its capability chain decoded.
//
// Guarantees:
// - The two-call protocol of the kernel is followed: ask with the bare struct;
//   when the kernel says (flags CAPS, a larger argsz) that the chain did not
//   fit, ask again with that size. The chain is walked with the codec's
//   loop-safe walker, and every capability is checked to fit the buffer.
// - An index the device does not have is EINVAL before any ioctl, naming the
//   valid range; the VGA region on a device without VGA (the kernel's EINVAL)
//   is reported as ENOENT, the same code as any other missing region.
// - Sizes and offsets inside a region are plain numbers (a region larger than
//   2^53 bytes is refused with EOVERFLOW, not rounded); the region's offset in
//   the device fd stays a bigint.
// - Every call asks the kernel (nothing is cached). The first, fixed-size
//   ask reuses one module-wide argument buffer, zeroed and written before
//   each ioctl (see `firstArg`).
import { usageError, VfioError } from '../base/errors.js';
import { alloc, capabilities, elementOffset, fieldRef, get, getField, getFieldNumber, read, setField } from '../uapi/codec.js';
import {
  VFIO_PCI_BAR0_REGION_INDEX,
  VFIO_PCI_BAR5_REGION_INDEX,
  VFIO_PCI_CONFIG_REGION_INDEX,
  VFIO_PCI_ROM_REGION_INDEX,
  VFIO_PCI_VGA_REGION_INDEX,
  VFIO_REGION_INFO_CAP_MSIX_MAPPABLE,
  VFIO_REGION_INFO_CAP_SPARSE_MMAP,
  VFIO_REGION_INFO_CAP_TYPE,
  VFIO_REGION_INFO_FLAG_CAPS,
  VFIO_REGION_INFO_FLAG_MMAP,
  VFIO_REGION_INFO_FLAG_READ,
  VFIO_REGION_INFO_FLAG_WRITE,
  VFIO_REGION_TYPE_PCI_VENDOR_MASK,
  VFIO_REGION_TYPE_PCI_VENDOR_TYPE,
  vfio_region_info,
  vfio_region_info_cap_sparse_mmap,
  vfio_region_info_cap_type,
  vfio_region_sparse_mmap_area,
} from '../uapi/vfio.js';
import { deviceIoctl, type DeviceHandle } from './handle.js';

/** A byte range inside a region: [offset, offset + size). */
export interface RegionArea {
  readonly offset: number;
  readonly size: number;
}

/** VFIO_REGION_INFO_CAP_TYPE: what a device-specific region is. */
export interface RegionType {
  readonly type: number;
  readonly subtype: number;
  /** Set when `type` is a PCI vendor type: the vendor id is `vendorId`. */
  readonly vendorId: number | null;
}

export interface RegionInfo {
  readonly index: number;
  /** `bar0`..`bar5`, `rom`, `config`, `vga`, or `region<N>` for device-specific ones. */
  readonly name: string;
  /** Bytes; 0 for a BAR or ROM the device does not implement. */
  readonly size: number;
  /** Where the region starts in the device fd (for pread/pwrite/mmap). */
  readonly fdOffset: bigint;
  /** VFIO_REGION_INFO_FLAG_* as the kernel returned them. */
  readonly flags: number;
  readonly readable: boolean;
  readonly writable: boolean;
  readonly mappable: boolean;
  /**
   * The areas that may be mmap'd when the kernel restricts them
   * (VFIO_REGION_INFO_CAP_SPARSE_MMAP); null when there is no such
   * restriction (then the whole region may be mapped if `mappable`).
   */
  readonly sparseAreas: readonly RegionArea[] | null;
  readonly type: RegionType | null;
  /** VFIO_REGION_INFO_CAP_MSIX_MAPPABLE: the MSI-X table in this BAR may be mmap'd. */
  readonly msixMappable: boolean;
  /** Every capability of the chain, known or not (id, version). */
  readonly capabilities: readonly { readonly id: number; readonly version: number }[];
}

const FIXED_NAMES: Readonly<Record<number, string>> = {
  [VFIO_PCI_ROM_REGION_INDEX]: 'rom',
  [VFIO_PCI_CONFIG_REGION_INDEX]: 'config',
  [VFIO_PCI_VGA_REGION_INDEX]: 'vga',
};

function nameOf(index: number): string {
  if (index >= VFIO_PCI_BAR0_REGION_INDEX && index <= VFIO_PCI_BAR5_REGION_INDEX) return `bar${index - VFIO_PCI_BAR0_REGION_INDEX}`;
  return FIXED_NAMES[index] ?? `region${index}`;
}

/** The names of the fixed PCI regions, made once (regionInfo names one per call). */
const PCI_NAMES: readonly string[] = Array.from({ length: VFIO_PCI_VGA_REGION_INDEX + 1 }, (_, i) => nameOf(i));

/** The name of region `index` of a PCI device. */
export function regionName(index: number): string {
  return PCI_NAMES[index] ?? nameOf(index);
}

/** A kernel u64 (read as a number by getFieldNumber) that must be a byte count or offset inside a region. */
function safeNumber(v: number, exact: () => bigint, what: string, h: DeviceHandle): number {
  if (!Number.isSafeInteger(v)) {
    throw new VfioError({ code: 'EOVERFLOW', device: h.address, detail: `${what} ${exact()} does not fit a JavaScript number` });
  }
  return v;
}

const ARGSZ = fieldRef(vfio_region_info, 'argsz');
const FLAGS = fieldRef(vfio_region_info, 'flags');
const INDEX = fieldRef(vfio_region_info, 'index');
const CAP_OFFSET = fieldRef(vfio_region_info, 'cap_offset');
const SIZE = fieldRef(vfio_region_info, 'size');
const FD_OFFSET = fieldRef(vfio_region_info, 'offset');

/**
 * The argument of every first VFIO_DEVICE_GET_REGION_INFO: one buffer for the
 * whole module instead of one per call. Safe to share: the ioctl is
 * synchronous and JavaScript runs one call at a time on this thread (a
 * worker has its own module instance); regionInfo zeroes it and writes the
 * request before each ioctl, and decodes it before returning, so no call
 * sees another's bytes. A second call, for a capability chain that did not
 * fit, gets a buffer of its own (it is as large as the kernel asks).
 */
const firstArg = new Uint8Array(vfio_region_info.size);

/** Capabilities of a region without a chain: one frozen empty list for all. */
const NO_CAPS: readonly { readonly id: number; readonly version: number }[] = Object.freeze([]);

/** Asks the kernel with `buf`; rethrows the missing-VGA EINVAL as ENOENT. */
function query(h: DeviceHandle, buf: Uint8Array, index: number): void {
  try {
    deviceIoctl(h, 'VFIO_DEVICE_GET_REGION_INFO', buf);
  } catch (err) {
    if (err instanceof VfioError && err.code === 'EINVAL' && index === VFIO_PCI_VGA_REGION_INDEX) {
      throw new VfioError({
        code: 'ENOENT',
        syscall: 'ioctl',
        request: 'VFIO_DEVICE_GET_REGION_INFO',
        device: h.address,
        detail: 'the device has no VGA region',
        cause: err,
      });
    }
    throw err;
  }
}

/**
 * Region info for `index`, capability chain decoded.
 *
 * Errors: EINVAL `index` is not a region of this device; ENOENT the VGA
 * region of a device without VGA; ECLOSED the device is closed; EOVERFLOW a
 * size beyond 2^53; other codes as the kernel answered the ioctl.
 */
export function regionInfo(h: DeviceHandle, index: number): RegionInfo {
  h.assertOpen();
  const { numRegions } = h.info();
  if (!Number.isSafeInteger(index) || index < 0 || index >= numRegions) {
    throw usageError('EINVAL', `region index ${index} is out of range: the device has regions 0..${numRegions - 1}`, { device: h.address });
  }
  let buf: Uint8Array = firstArg;
  buf.fill(0);
  setField(ARGSZ, buf, vfio_region_info.size);
  setField(INDEX, buf, index);
  query(h, buf, index);
  // The chain did not fit: the kernel put the size it needs in argsz. It can
  // only grow if the device changed under us, so two more tries are plenty.
  for (let tries = 0; ; tries++) {
    const flags = getField(FLAGS, buf);
    const needed = getField(ARGSZ, buf);
    if ((flags & VFIO_REGION_INFO_FLAG_CAPS) === 0 || needed <= buf.byteLength) break;
    if (tries === 2) {
      throw new VfioError({
        code: 'EAGAIN',
        device: h.address,
        request: 'VFIO_DEVICE_GET_REGION_INFO',
        detail: 'the capability chain kept growing',
      });
    }
    buf = alloc(vfio_region_info, { argsz: needed, index }, needed - vfio_region_info.size);
    query(h, buf, index);
  }
  return decode(h, buf, index);
}

function decode(h: DeviceHandle, buf: Uint8Array, index: number): RegionInfo {
  const flags = getField(FLAGS, buf);
  const size = safeNumber(getFieldNumber(SIZE, buf), () => getField(SIZE, buf), 'region size', h);
  let sparseAreas: RegionArea[] | null = null;
  let type: RegionType | null = null;
  let msixMappable = false;
  let caps = NO_CAPS;
  const capOffset = (flags & VFIO_REGION_INFO_FLAG_CAPS) !== 0 ? getField(CAP_OFFSET, buf) : 0;
  // No chain (the common case: a BAR without sparse areas): nothing to walk.
  if (capOffset !== 0) {
    const list: { id: number; version: number }[] = [];
    caps = list;
    try {
      for (const cap of capabilities(buf, capOffset)) {
        list.push({ id: cap.id, version: cap.version });
        if (cap.id === VFIO_REGION_INFO_CAP_SPARSE_MMAP) {
          sparseAreas = sparse(h, buf, cap.offset, size);
        } else if (cap.id === VFIO_REGION_INFO_CAP_TYPE) {
          const t = read(vfio_region_info_cap_type, buf, cap.offset);
          const vendor = (t.type & VFIO_REGION_TYPE_PCI_VENDOR_TYPE) !== 0;
          type = { type: t.type, subtype: t.subtype, vendorId: vendor ? t.type & VFIO_REGION_TYPE_PCI_VENDOR_MASK : null };
        } else if (cap.id === VFIO_REGION_INFO_CAP_MSIX_MAPPABLE) {
          msixMappable = true;
        }
      }
    } catch (err) {
      // The codec throws RangeError for a chain that points outside the buffer
      // or backwards: that is the kernel's (or fake's) answer being malformed.
      if (err instanceof RangeError) {
        throw new VfioError({
          code: 'EIO',
          device: h.address,
          request: 'VFIO_DEVICE_GET_REGION_INFO',
          detail: `malformed capability chain: ${err.message}`,
          cause: err,
        });
      }
      throw err;
    }
  }
  return {
    index,
    name: regionName(index),
    size,
    fdOffset: getField(FD_OFFSET, buf),
    flags,
    readable: (flags & VFIO_REGION_INFO_FLAG_READ) !== 0,
    writable: (flags & VFIO_REGION_INFO_FLAG_WRITE) !== 0,
    mappable: (flags & VFIO_REGION_INFO_FLAG_MMAP) !== 0,
    sparseAreas,
    type,
    msixMappable,
    capabilities: caps,
  };
}

function sparse(h: DeviceHandle, buf: Uint8Array, at: number, regionSize: number): RegionArea[] {
  const nr = get(vfio_region_info_cap_sparse_mmap, buf, 'nr_areas', at);
  const areas: RegionArea[] = [];
  for (let i = 0; i < nr; i++) {
    const where = at + elementOffset(vfio_region_info_cap_sparse_mmap, 'areas', i);
    // read() bounds-checks against the buffer: a count larger than the
    // capability really holds is a RangeError, turned into EIO by decode().
    const a = read(vfio_region_sparse_mmap_area, buf, where);
    const offset = safeNumber(Number(a.offset), () => a.offset, 'sparse area offset', h);
    const size = safeNumber(Number(a.size), () => a.size, 'sparse area size', h);
    if (offset + size > regionSize) {
      throw new VfioError({
        code: 'EIO',
        device: h.address,
        request: 'VFIO_DEVICE_GET_REGION_INFO',
        detail: `sparse mmap area [${offset}, ${offset + size}) lies outside the ${regionSize}-byte region`,
      });
    }
    if (size > 0) areas.push({ offset, size });
  }
  return areas.sort((x, y) => x.offset - y.offset);
}

/**
 * Info for every region index of the device. A region the device lacks
 * (VGA without VGA) is left out rather than failing the whole list; BARs of
 * size 0 are listed with `size: 0`.
 */
export function allRegionInfo(h: DeviceHandle): RegionInfo[] {
  const out: RegionInfo[] = [];
  const { numRegions } = h.info();
  for (let i = 0; i < numRegions; i++) {
    try {
      out.push(regionInfo(h, i));
    } catch (err) {
      if (err instanceof VfioError && err.code === 'ENOENT') continue;
      throw err;
    }
  }
  return out;
}
