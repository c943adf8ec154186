// The operations a container needs from the kernel, one implementation per
// kernel interface: ./group.ts (legacy container + groups, also no-IOMMU) and
// ./cdev.ts (IOMMUFD). The Container (./container.ts) owns the policy —
// which devices it holds, its DMA mappings, the order of teardown — and calls
// these for the kernel work.
//
// Each backend keeps its own state in its own typed fields (the group
// backend: container fd, IOMMU type, group memberships; the cdev backend:
// iommufd and IOAS id). Nothing is shared or reinterpreted between them.
import type { Unwind } from '../../base/cleanup.js';
import { VfioError } from '../../base/errors.js';
import type { Fd } from '../../libc/sys.js';
import type { IovaRange } from '../iova-allocator.js';
import type { VfToken } from '../vf-token.js';
import type { VfioMode } from '../../host/mode.js';
import type { PciDeviceLocation } from '../../host/sysfs.js';

/** A device the backend has set up: its fd is ready for device ioctls. */
export interface AttachedDevice {
  readonly address: string;
  /** The device fd (0 is valid). */
  readonly fd: Fd;
  /** IOMMU group number from sysfs. */
  readonly group: number;
}

/** A memfd and the offset in it where a buffer's memory starts. */
export interface MappedFile {
  readonly fd: Fd;
  readonly offset: bigint;
}

/** What the IOMMU allows: where mappings may go and at what granularity. */
export interface IommuInfo {
  /** Usable IOVA ranges (inclusive ends). */
  readonly ranges: readonly IovaRange[];
  /** Smallest IOVA alignment and mapping granularity, in bytes. */
  readonly granule: bigint;
  /**
   * Bitmap of the IOMMU page sizes (bit n set: 2^n bytes), as Type1 reports
   * it. IOMMUFD does not report one: null there.
   */
  readonly pageSizes: bigint | null;
}

export interface ContainerBackend {
  readonly mode: VfioMode;
  /** 'iommu': DMA goes through IOMMU mappings. 'identity': no IOMMU, the IOVA is the physical address. */
  readonly dmaMode: 'iommu' | 'identity';
  /**
   * True while the kernel holds this container's mappings. Always for cdev
   * (the IOAS exists from creation); in group mode only while at least one
   * group is attached and the IOMMU type is set.
   */
  readonly iommuLive: boolean;

  /**
   * Sets up a device (and its group, if new): on failure nothing stays open.
   * `vfToken` goes to vfio-pci with the open (SR-IOV VFs, and PFs whose VFs
   * are open); its refusals come back explained (./vf-token.ts).
   */
  attach(desc: PciDeviceLocation, vfToken?: VfToken | null): AttachedDevice;
  /** Tears a device down (cdev: detach + close; group: close its fd). Runs every step, throws the first error. */
  detach(dev: AttachedDevice): void;
  /** True when pruneGroups() would take the IOMMU down (group mode: every attached group is empty). */
  pruneDropsIommu(): boolean;
  /** Groups without devices leave the container (group mode; a no-op for cdev). */
  pruneGroups(): void;

  /**
   * Ranges and page sizes; only while iommuLive and dmaMode is 'iommu'.
   * Anything the query sets up to keep (cdev: its result page) is undone by
   * `u` when the caller's operation fails.
   */
  iommuInfo(device?: string, u?: Unwind): IommuInfo;
  /**
   * Maps [vaddr, vaddr + size) at `iova` (read + write for the device).
   * `file`: the same memory is [offset, offset + size) of this memfd (a
   * shareable buffer); a backend that can map by file does (cdev,
   * IOMMU_IOAS_MAP_FILE), so that the pin follows the file, not this
   * process's mapping. Others map by address.
   */
  map(vaddr: bigint, iova: bigint, size: bigint, file?: MappedFile): void;
  /**
   * Unmaps exactly [iova, iova + size).
   * @throws VfioError EIO when the kernel did not hold exactly that mapping
   *   (Type1 reports a different size; IOMMUFD says ENOENT or a different
   *   length): the same answer in both modes.
   */
  unmap(iova: bigint, size: bigint): void;
  /** Closes the backend's own fds. Devices are detached and groups pruned first. */
  close(): void;
}

/**
 * The error for an unmap whose reported size is not the size asked: a mapping
 * the library's books and the kernel disagree on. Never passed over silently
 * (SPDK once corrupted I/O by ignoring a 0-byte unmap).
 */
export function unmapMismatch(request: string, node: string, iova: bigint, size: bigint, unmapped: bigint, cause?: unknown): VfioError {
  return new VfioError({
    code: 'EIO',
    syscall: 'ioctl',
    request,
    path: node,
    detail: `asked to unmap ${size} bytes at IOVA 0x${iova.toString(16)}, the kernel unmapped ${unmapped}`,
    cause,
  });
}
