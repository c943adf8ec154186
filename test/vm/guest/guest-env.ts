// What the VM tier tells a guest test (set by test/vm/init): the VFIO mode
// this boot was made for and the PCI address of the edu device bound to
// vfio-pci.

export type VmMode = 'group' | 'cdev' | 'noiommu';
const MODES: readonly string[] = ['group', 'cdev', 'noiommu'];

export interface GuestEnv {
  readonly mode: VmMode;
  /** PCI address of edu, e.g. `0000:00:03.0`. */
  readonly edu: string;
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
  const edu = process.env.VFIO_VM_EDU;
  if (edu === undefined || !/^[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$/.test(edu)) {
    throw new Error(`VFIO_VM_EDU=${edu}: expected the PCI address of edu`);
  }
  return { mode: mode as VmMode, edu };
}
