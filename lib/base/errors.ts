// The one error type of the library. Shaped like Node's own system errors
// (`code`, `errno`, `syscall`, `path`) so that callers can handle it the way
// they handle an fs error, plus the VFIO context (`device`, `request`).
import { getSystemErrorName } from 'node:util';
import { constants } from 'node:os';

/** Codes that are not kernel errnos but describe a library-level state. */
export type LibraryCode = 'ECLOSED';

export interface VfioErrorInit {
  /** errno as a positive number (EINVAL = 22). Omit for library-level codes. */
  errno?: number;
  /** Symbolic code; derived from errno when omitted. */
  code?: string;
  syscall?: string;
  path?: string;
  /** PCI address (`0000:00:03.0`) the failure concerned. */
  device?: string;
  /** ioctl request name (`VFIO_DEVICE_GET_INFO`) when syscall is `ioctl`. */
  request?: string;
  /** Human explanation appended in parentheses: what went wrong, what to fix. */
  detail?: string;
  cause?: unknown;
}

/**
 * Linux errnos that neither libuv nor os.constants.errno names (VFIO and
 * IOMMUFD do return them).
 */
const LINUX_ONLY: Readonly<Record<string, number>> = { EBADFD: 77, ELIBACC: 79, ENOTSUPP: 524 };

/** Positive errno number for a symbolic name (`'EINVAL'` → 22). */
export function errnoOf(code: string): number {
  // Own properties only: 'toString' or '__proto__' (say, from a peer's
  // message) must not find Object.prototype's members.
  const table = constants.errno as Record<string, number | undefined>;
  const n = Object.hasOwn(table, code) ? table[code] : Object.hasOwn(LINUX_ONLY, code) ? LINUX_ONLY[code] : undefined;
  if (n === undefined) throw new TypeError(`unknown errno name ${code}`);
  return n;
}

/** Symbolic name for a positive errno (22 → `'EINVAL'`, 95 → `'ENOTSUP'`, as Node names them). */
export function errnoName(errno: number): string {
  // libuv's name first, so codes match what Node's own errors say; it answers
  // "Unknown system error -N" for the few it lacks (EDEADLK, EBADFD, ...).
  const name = getSystemErrorName(-errno);
  if (name.startsWith('E')) return name;
  const known = Object.entries({ ...constants.errno, ...LINUX_ONLY }).find(([, n]) => n === errno);
  return known?.[0] ?? `E${errno}`;
}

export class VfioError extends Error {
  override name = 'VfioError';
  readonly code: string;
  /** Positive errno, or 0 for library-level codes such as ECLOSED. */
  readonly errno: number;
  syscall: string | undefined;
  path: string | undefined;
  device: string | undefined;
  request: string | undefined;
  detail: string | undefined;

  constructor(init: VfioErrorInit) {
    const errno = init.errno ?? (init.code !== undefined && init.code !== 'ECLOSED' ? errnoOf(init.code) : 0);
    const code = init.code ?? errnoName(errno);
    super('', init.cause === undefined ? undefined : { cause: init.cause });
    this.code = code;
    this.errno = errno;
    this.syscall = init.syscall;
    this.path = init.path;
    this.device = init.device;
    this.request = init.request;
    this.detail = init.detail;
    this.message = this.format();
  }

  /**
   * Adds context that only a caller knows (which device, which ioctl, what to
   * fix) and returns the same error, so `throw annotate(err, {...})` keeps the
   * original stack. Fields already set are kept.
   */
  annotate(ctx: Pick<VfioErrorInit, 'device' | 'path' | 'request' | 'detail'>): this {
    this.device ??= ctx.device;
    this.path ??= ctx.path;
    this.request ??= ctx.request;
    this.detail ??= ctx.detail;
    this.message = this.format();
    return this;
  }

  private format(): string {
    const what = [this.syscall, this.request, this.path].filter((s) => s !== undefined).join(' ');
    const ctx = [this.device !== undefined ? `device ${this.device}` : undefined, this.detail].filter((s) => s !== undefined);
    return `${what === '' ? '' : what + ': '}${this.code}${ctx.length ? ` (${ctx.join(': ')})` : ''}`;
  }
}

/** Throws a VfioError for a failed system call. */
export function sysError(
  syscall: string,
  errnoOrCode: number | string,
  init: Omit<VfioErrorInit, 'syscall' | 'errno' | 'code'> = {},
): VfioError {
  const errno = typeof errnoOrCode === 'number' ? errnoOrCode : errnoOf(errnoOrCode);
  return new VfioError({ ...init, syscall, errno });
}

/** Error for a library-level misuse: bad argument (EINVAL), wrong mode (ENOTSUP), ... */
export function usageError(code: string, detail: string, init: Omit<VfioErrorInit, 'code' | 'detail'> = {}): VfioError {
  return new VfioError({ ...init, code, detail });
}

/** Error for a handle used after it was closed. */
export function closedError(what: string, init: Omit<VfioErrorInit, 'code' | 'detail'> = {}): VfioError {
  return new VfioError({ ...init, code: 'ECLOSED', detail: `${what} is closed` });
}
