// SR-IOV in the fake kernel: the VF token vfio-pci keeps for a physical
// function, and the checks it makes when a PF or a VF is opened
// (drivers/vfio/pci/vfio_pci_core.c: vfio_pci_vf_init, the PCI_VF_TOKEN
// device feature, vfio_pci_core_match and match_token_uuid).
//
// The rules, as Linux 6.12 and 7.2 implement them:
// - A PF bound to vfio-pci gets a token, a random UUID at probe time, so that
//   no VF can be opened before a user sets one (VFIO_DEVICE_FEATURE with
//   PCI_VF_TOKEN | SET on the PF: SET only, GET would leak the previous
//   user's token; ENOTTY on a device that is not such a PF).
// - A VF whose PF is bound to vfio-pci (and created it) opens only with the
//   PF's token: none or a wrong one is EACCES.
// - A VF whose PF is not vfio-pci's opens without one; giving one is EINVAL.
// - A PF whose VFs are open (users > 0) opens only with the current token
//   (EACCES otherwise); with no VF open, a token given for the PF sets it.
// - Any other device given a token: EINVAL.
// - `users` counts VFs open through vfio-pci: the first open of a VF counts
//   it, the last close uncounts it (finish_enable / close_device). Closing
//   the PF changes nothing for its VFs: they stay open and usable, and the
//   token stays what it was.
// - In group mode the token comes in the name given to
//   VFIO_GROUP_GET_DEVICE_FD: "<address> vf_token=<uuid>". In cdev mode it
//   comes with VFIO_DEVICE_BIND_FLAG_TOKEN (6.17+); before 6.17 the cdev
//   bind checks no token at all.
import { randomBytes } from 'node:crypto';
import { fail } from './errors.js';

/** A PF's token state (struct vfio_pci_vf_token). */
export class VfToken {
  /** Random until a user sets it: no VF can be opened before that. */
  uuid: Uint8Array = randomBytes(16);
  /** VFs open through vfio-pci. */
  users = 0;
}

/** What the token checks need to know about a device. */
export interface TokenDevice {
  readonly address: string;
  /** Set for a PF bound to vfio-pci. */
  readonly vfToken: VfToken | null;
  /** For a VF: its PF, when the PF is bound to vfio-pci (sriov_pf_core_dev). */
  readonly sriovPf: { readonly vfToken: VfToken | null } | null;
  readonly desc: { readonly physfn: string | null };
}

const UUID = /^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}/;
const UUID_STRING_LEN = 36;

/** uuid_parse(): the 36-character form to 16 bytes; EINVAL otherwise. */
export function parseUuid(text: string): Uint8Array {
  if (!UUID.test(text)) fail('EINVAL', `${JSON.stringify(text.slice(0, UUID_STRING_LEN))} is not a UUID`);
  return Uint8Array.from(Buffer.from(text.slice(0, UUID_STRING_LEN).replaceAll('-', ''), 'hex'));
}

function equal(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}

/** vfio_pci_core_match_token_uuid(): may this device be opened with `uuid` (null: none given)? */
export function matchTokenUuid(dev: TokenDevice, uuid: Uint8Array | null): void {
  if (dev.desc.physfn !== null) {
    const pf = dev.sriovPf;
    if (pf === null || pf.vfToken === null) {
      if (uuid === null) return;
      fail('EINVAL', `${dev.address}: VF token incorrectly provided, PF not bound to vfio-pci`);
    }
    if (uuid === null) fail('EACCES', `${dev.address}: VF token required to access device`);
    if (!equal(uuid, pf.vfToken.uuid)) fail('EACCES', `${dev.address}: Incorrect VF token provided for device`);
    return;
  }
  const token = dev.vfToken;
  if (token !== null) {
    if (token.users > 0) {
      if (uuid === null) fail('EACCES', `${dev.address}: VF token required to access device`);
      if (!equal(uuid, token.uuid)) fail('EACCES', `${dev.address}: Incorrect VF token provided for device`);
    } else if (uuid !== null) {
      token.uuid = uuid.slice();
    }
    return;
  }
  if (uuid !== null) fail('EINVAL', `${dev.address}: VF token incorrectly provided, not a PF or VF`);
}

/**
 * vfio_pci_core_match(): does the name given to VFIO_GROUP_GET_DEVICE_FD
 * select `dev`? false: no match; true: match and the token checks passed;
 * throws EINVAL for a malformed option and EACCES/EINVAL from the checks.
 */
export function matchDeviceName(dev: TokenDevice, name: string): boolean {
  if (!name.startsWith(dev.address)) return false;
  let rest = name.slice(dev.address.length);
  let uuid: Uint8Array | null = null;
  if (rest.length > 0) {
    if (rest[0] !== ' ') return false;
    while (rest.length > 0) {
      if (rest[0] === ' ') {
        rest = rest.slice(1);
        continue;
      }
      if (uuid === null && rest.startsWith('vf_token=')) {
        rest = rest.slice('vf_token='.length);
        if (rest.length < UUID_STRING_LEN) fail('EINVAL', 'vf_token= needs a 36-character UUID');
        uuid = parseUuid(rest);
        rest = rest.slice(UUID_STRING_LEN);
      } else {
        fail('EINVAL', `unknown or repeated option in ${JSON.stringify(name)}`);
      }
    }
  }
  matchTokenUuid(dev, uuid);
  return true;
}
