// VF tokens (SR-IOV): the UUID a user of a physical function bound to
// vfio-pci shares with the users of its virtual functions. vfio-pci lets a VF
// be opened only with its PF's token (and a PF whose VFs are open only with
// it), so that a VF user knows the PF is driven by someone it trusts
// (drivers/vfio/pci/vfio_pci_core.c, vfio_pci_core_match_token_uuid).
//
// This module checks the option's form and explains the kernel's refusals;
// the backends pass the token on (group mode: in the device name given to
// VFIO_GROUP_GET_DEVICE_FD; cdev mode: VFIO_DEVICE_BIND_FLAG_TOKEN) and the
// Device sets it on a PF (VFIO_DEVICE_FEATURE_PCI_VF_TOKEN).
import { usageError, VfioError } from '../base/errors.js';
import { physfnOf } from '../host/sriov.js';
import type { Roots } from '../host/paths.js';

/** A checked VF token: its canonical text (lower case) and its 16 bytes, in the kernel's uuid_t order. */
export interface VfToken {
  readonly text: string;
  readonly bytes: Uint8Array;
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

/**
 * Checks a VF token: a UUID in its 36-character form
 * (`bd8d9d2b-5a5f-4f5a-a211-f591514ba1f3`), as the kernel's uuid_parse takes it.
 * @throws VfioError EINVAL anything else.
 */
export function parseVfToken(value: unknown, what = 'vfToken'): VfToken {
  if (typeof value !== 'string' || !UUID.test(value)) {
    const shown = typeof value === 'string' ? JSON.stringify(value) : typeof value;
    throw usageError('EINVAL', `${what} must be a UUID like bd8d9d2b-5a5f-4f5a-a211-f591514ba1f3, not ${shown}`);
  }
  const text = value.toLowerCase();
  return { text, bytes: Uint8Array.from(Buffer.from(text.replaceAll('-', ''), 'hex')) };
}

/**
 * The error for a device open that vfio-pci refused over the VF token, in
 * words that say what to do; other errors come back unchanged. vfio-pci
 * refuses with EACCES a VF opened without its PF's token or with another one,
 * and a PF whose VFs are open without the current token; with EINVAL a token
 * given for a device that takes none.
 */
export function explainTokenRefusal(err: unknown, roots: Roots, address: string, token: VfToken | null, request: string): unknown {
  if (!(err instanceof VfioError)) return err;
  let detail: string;
  const pf = err.code === 'EACCES' || (err.code === 'EINVAL' && token !== null) ? physfnOf(roots, address) : null;
  if (err.code === 'EACCES') {
    if (pf !== null) {
      detail =
        token === null
          ? `a VF token is needed: its PF ${pf} is bound to vfio-pci, which opens the PF's VFs only with the VF token set on the PF ` +
            '(Device.setVfToken on the PF, then open the VF with { vfToken })'
          : `a VF token is needed that matches the one set on its PF ${pf}: the one given was refused`;
    } else {
      detail =
        token === null
          ? 'a VF token is needed: VFs of this PF are open, and the PF then opens only with the current VF token ({ vfToken })'
          : 'a VF token is needed that matches the current one: VFs of this PF are open, and the token given was refused';
    }
  } else if (err.code === 'EINVAL' && token !== null) {
    detail =
      pf !== null
        ? `a VF token was given, but its PF ${pf} is not bound to vfio-pci: the VF takes none`
        : 'a VF token was given, but the device is neither an SR-IOV PF bound to vfio-pci nor one of its VFs';
  } else {
    return err;
  }
  return new VfioError({ code: err.code, syscall: 'ioctl', request, device: address, path: err.path, detail, cause: err });
}
