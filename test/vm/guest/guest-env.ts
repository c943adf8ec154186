// What the VM tier tells a guest test (set by test/vm/init): the VFIO mode
// this boot was made for, the kernel it runs, and the PCI addresses of its
// devices (see run.sh for the machine, test/vm/README.md for the tables).
import { VfioError } from '../../../lib/index.js';

export type VmMode = 'group' | 'cdev' | 'noiommu';
const MODES: readonly string[] = ['group', 'cdev', 'noiommu'];
/** What serves `/dev/vfio/vfio` in the boot: VFIO's own container, or iommufd's compat one. */
export type VmContainer = 'legacy' | 'iommufd-compat';
const CONTAINERS: readonly string[] = ['legacy', 'iommufd-compat'];

export interface GuestEnv {
  readonly mode: VmMode;
  /** PCI address of the main edu, on the root bus (e.g. `0000:00:01.0`), bound to vfio-pci. */
  readonly edu: string;
  /**
   * The second edu, behind a conventional PCI bridge, bound to vfio-pci. With
   * an IOMMU its group also holds `rng`, so the group is not viable; in
   * no-IOMMU mode every device has a group of its own.
   */
  readonly edu2: string;
  /** A virtio-rng behind the same bridge, bound to the host driver virtio-pci. */
  readonly rng: string;
  /** The guest kernel's `uname -r` (e.g. `6.12.118`, `7.2.13`). */
  readonly kernel: string;
  /** What serves `/dev/vfio/vfio` in this boot (group mode's container; per kernel). */
  readonly container: VmContainer;
  /** QEMU's nvme behind a PCIe root port, bound to vfio-pci; namespace 1 on a sparse image. */
  readonly nvme: string;
  /** The serial set on QEMU's command line for `nvme` (Identify Controller's SN). */
  readonly nvmeSerial: string;
  /**
   * An SR-IOV capable nvme (physical function, up to 2 VFs), behind its own
   * PCIe root port, bound to vfio-pci with no VF created (tests create them
   * through sriov_numvfs and remove them again).
   */
  readonly nvmePf: string;
  /** The serial set on QEMU's command line for `nvmePf`. */
  readonly nvmePfSerial: string;
}

const PCI_ADDRESS = /^[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$/;

function address(name: string): string {
  const value = process.env[name];
  if (value === undefined || !PCI_ADDRESS.test(value)) throw new Error(`${name}=${value}: expected a PCI address`);
  return value;
}

function nonEmpty(name: string): string {
  const value = process.env[name];
  if (value === undefined || value === '') throw new Error(`${name} is not set`);
  return value;
}

/**
 * The guest's environment, or null outside the VM (a host-side `tap` run that
 * picked up a guest file): the caller then skips the whole file. Inside the VM
 * a missing or unknown value throws, so a broken runner cannot pass.
 */
export function guestEnv(): GuestEnv | null {
  const mode = process.env.VFIO_MODE;
  if (mode === undefined) return null;
  if (!MODES.includes(mode)) throw new Error(`VFIO_MODE=${mode}: expected one of ${MODES.join(', ')}`);
  const container = process.env.VFIO_VM_CONTAINER;
  if (container === undefined || !CONTAINERS.includes(container)) {
    throw new Error(`VFIO_VM_CONTAINER=${container}: expected one of ${CONTAINERS.join(', ')}`);
  }
  return {
    mode: mode as VmMode,
    edu: address('VFIO_VM_EDU'),
    edu2: address('VFIO_VM_EDU2'),
    rng: address('VFIO_VM_RNG'),
    kernel: nonEmpty('VFIO_VM_KERNEL'),
    container: container as VmContainer,
    nvme: address('VFIO_VM_NVME'),
    nvmeSerial: nonEmpty('VFIO_VM_NVME_SERIAL'),
    nvmePf: address('VFIO_VM_NVME_PF'),
    nvmePfSerial: nonEmpty('VFIO_VM_NVME_PF_SERIAL'),
  };
}

/** The VfioError `fn` throws, or a string saying what happened instead (for t.match). */
export function errorOf(fn: () => unknown): VfioError | string {
  try {
    fn();
  } catch (err) {
    return err instanceof VfioError ? err : `not a VfioError: ${String(err)}`;
  }
  return 'did not throw';
}

/** edu decodes 28 DMA address bits by default; the noiommu VM gives it 64 (run.sh). */
export function eduDmaLimit(mode: VmMode): bigint | undefined {
  return mode === 'noiommu' ? undefined : 2n ** 28n;
}
