import { errnoOf } from '../base/errors.js';

// How the fake kernel refuses a call: a KernelError carries the errno name the
// real kernel would return and, for the test author, why (it goes to the fake's
// dmesg, never into the VfioError the library sees, so the library cannot tell
// the fake's errors from the real kernel's).
export class KernelError extends Error {
  override name = 'KernelError';
  constructor(
    readonly code: string,
    readonly why: string,
  ) {
    super(`${code}: ${why}`);
  }
}

/** Refuses the current system call with `code` (an errno name such as 'EINVAL'). */
export function fail(code: string, why: string): never {
  throw new KernelError(code, why);
}

/** Linux errno numbers Node's os.constants.errno lacks. */
const EXTRA_ERRNOS: Readonly<Record<string, number>> = { EBADFD: 77 };

/**
 * The Linux errno number of an errno name, including the few Node does not
 * list (EBADFD). A VfioError built from this number carries the same `code`
 * the real Sys would give it.
 */
export function errnoNumber(code: string): number {
  return EXTRA_ERRNOS[code] ?? errnoOf(code);
}
