// What every part of the fake kernel reaches: the process's memory and fd
// table, the machine's configuration, accounting and the kernel log. The
// FakeKernel (kernel.ts) implements it; subsystems depend on this interface
// only, so there is no import cycle.
import type { FdTable } from './files.js';
import type { AddressSpace, PhysicalMemory } from './memory.js';

export type FakeMode = 'cdev' | 'group' | 'noiommu';

/** The machine's IOMMU as the fake models it (one IOMMU for every device). */
export interface IommuModel {
  /** Supported IOMMU page sizes (bitmap): 4 KiB | 2 MiB | 1 GiB by default. */
  readonly pageSizes: bigint;
  /** DMA aperture: the IOVAs the IOMMU can translate (inclusive). */
  readonly aperture: { readonly start: bigint; readonly end: bigint };
  /** Reserved IOVA ranges (inclusive), e.g. the x86 MSI window 0xfee00000-0xfeefffff. */
  readonly reserved: readonly { readonly start: bigint; readonly end: bigint }[];
}

export interface KernelConfig {
  readonly mode: FakeMode;
  /** vfio's enable_unsafe_noiommu_mode. */
  readonly noiommuParam: boolean;
  /** Whether vfio_iommu_type1 is loaded (it answers CHECK_EXTENSION and SET_IOMMU). */
  readonly type1: boolean;
  /**
   * Whether vfio_iommu_type1 offers VFIO_TYPE1v2_IOMMU (every driver since
   * Linux 3.15 does); false: it offers Type1 (v1) only (the `type1: 'v1'` option).
   */
  readonly type1v2: boolean;
  /** /dev/vfio/vfio and the group nodes exist. */
  readonly groupInterface: boolean;
  /** /dev/iommu and /dev/vfio/devices/vfioN exist. */
  readonly cdevInterface: boolean;
  readonly iommu: IommuModel;
  /** vfio_iommu_type1's dma_entry_limit module parameter. */
  readonly dmaEntryLimit: number;
  /** RLIMIT_MEMLOCK in bytes; root (uid 0, CAP_IPC_LOCK) is not limited. */
  readonly memlockLimit: number;
  /** Free 2 MiB huge pages. */
  readonly hugepages: number;
  readonly pageSize: number;
  /** The kernel release (/proc/sys/kernel/osrelease), e.g. '6.12.0': decides which uapi the fake answers. */
  readonly release: string;
  /** [major, minor] of `release`. */
  readonly version: readonly [number, number];
  /**
   * Who serves /dev/vfio/vfio: 'legacy' (vfio's container.c with
   * vfio_iommu_type1) or 'iommufd-compat' (CONFIG_IOMMUFD_VFIO_CONTAINER:
   * iommufd's emulation of Type1v2; no vfio_iommu_type1 module).
   */
  readonly containerKind: 'legacy' | 'iommufd-compat';
}

/** Whether the fake kernel's release is at least major.minor. */
export function kernelAtLeast(config: KernelConfig, major: number, minor: number): boolean {
  const [a, b] = config.version;
  return a > major || (a === major && b >= minor);
}

export interface KernelCore {
  readonly space: AddressSpace;
  readonly phys: PhysicalMemory;
  readonly fds: FdTable;
  readonly config: KernelConfig;
  uid(): number;
  /** Appends to the fake's kernel log (what a test reads to learn why a call failed). */
  dmesg(line: string): void;
  /** Charges `pages` against RLIMIT_MEMLOCK (mlock and DMA pins share it); ENOMEM over the limit. */
  chargeLocked(pages: number): void;
  unchargeLocked(pages: number): void;
  /** Pages currently pinned for DMA (type1 mappings, IOAS areas attached to a domain). */
  pinnedPages: number;
  /** Free huge pages right now; mappings take them. */
  hugepagesFree: number;
}
