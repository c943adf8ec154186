// PCI addresses as the user types them, checked before they go anywhere near
// a path. Every sysfs and /dev path the library builds from a device name
// starts here, so a string like `../../etc` or `0000:00:03.0/../x` can never
// reach the filesystem.
//
// Guarantees:
// - `parsePciAddress` accepts exactly `DDDD:BB:SS.F` (domain of 4 to 8 hex
//   digits, as Linux prints domains with %04x) and the short `BB:SS.F`
//   (domain 0), hex in either case, slot 0..1f, function 0..7. Anything else
//   — extra parts, whitespace, path separators, an empty string, a non-string
//   — is a VfioError with code EINVAL, thrown before any I/O.
// - The canonical form is what sysfs uses: lowercase, domain zero-padded to
//   at least 4 digits (`0000:00:03.0`).
import { usageError } from '../base/errors.js';

/** A validated PCI address. `canonical` is the sysfs spelling. */
export interface PciAddress {
  readonly domain: number;
  readonly bus: number;
  readonly slot: number;
  readonly fn: number;
  readonly canonical: string;
}

const FULL = /^([0-9a-fA-F]{4,8}):([0-9a-fA-F]{2}):([0-9a-fA-F]{2})\.([0-7])$/;
const SHORT = /^([0-9a-fA-F]{2}):([0-9a-fA-F]{2})\.([0-7])$/;

/**
 * Parses and validates a PCI address.
 * @throws VfioError EINVAL when `input` is not a PCI address.
 */
export function parsePciAddress(input: unknown): PciAddress {
  if (typeof input !== 'string') {
    throw usageError('EINVAL', `a PCI address must be a string like 0000:00:03.0, got ${typeof input}`);
  }
  const full = FULL.exec(input);
  const short = full === null ? SHORT.exec(input) : null;
  const parts = full !== null ? full.slice(1) : short !== null ? ['0', ...short.slice(1)] : null;
  if (parts === null) {
    throw usageError('EINVAL', `not a PCI address: ${JSON.stringify(input)} (expected 0000:00:03.0 or 00:03.0)`);
  }
  const [domain, bus, slot, fn] = parts.map((p) => parseInt(p, 16)) as [number, number, number, number];
  if (slot > 0x1f) {
    throw usageError('EINVAL', `not a PCI address: ${JSON.stringify(input)} (slot ${slot.toString(16)} is above 1f)`);
  }
  const hex = (n: number, width: number): string => n.toString(16).padStart(width, '0');
  const canonical = `${hex(domain, 4)}:${hex(bus, 2)}:${hex(slot, 2)}.${fn}`;
  return { domain, bus, slot, fn, canonical };
}

/**
 * The canonical spelling of a PCI address (`00:03.0` → `0000:00:03.0`).
 * @throws VfioError EINVAL when `input` is not a PCI address.
 */
export function canonicalPciAddress(input: unknown): string {
  return parsePciAddress(input).canonical;
}
