// What a failure to load the native binding (koffi's .node file, libc) is
// told as: a VfioError with the errno behind it, like every other failure of
// the library. The loaders report it two ways: Node's module loader as a
// system error with an errno `code` (EMFILE reading the module file), and
// dlopen as ERR_DLOPEN_FAILED whose message ends with strerror's text.
import { VfioError, errnoOf } from '../base/errors.js';

/** strerror texts of the errnos dlopen reports for a library it cannot open. */
const DLOPEN_STRERROR: readonly (readonly [string, string])[] = [
  ['Too many open files in system', 'ENFILE'],
  ['Too many open files', 'EMFILE'],
  ['Cannot allocate memory', 'ENOMEM'],
  ['Permission denied', 'EACCES'],
  ['No such file or directory', 'ENOENT'],
];

/** The VfioError for a failed load of the native binding (`err` is what the loader threw). */
export function nativeLoadError(err: unknown): VfioError {
  if (err instanceof VfioError) return err;
  const code = (err as { code?: unknown } | null)?.code;
  const message = err instanceof Error ? err.message : String(err);
  let name: string | undefined;
  if (typeof code === 'string' && /^E[A-Z0-9]+$/.test(code)) name = code;
  else name = DLOPEN_STRERROR.find(([text]) => message.includes(text))?.[1];
  let errno: number | undefined;
  try {
    errno = name === undefined ? undefined : errnoOf(name);
  } catch {
    errno = undefined;
  }
  return new VfioError({
    // ELIBACC: "cannot access a needed shared library", when the loader gave no errno.
    errno: errno ?? errnoOf('ELIBACC'),
    syscall: typeof (err as { syscall?: unknown } | null)?.syscall === 'string' ? (err as { syscall: string }).syscall : 'dlopen',
    detail: `cannot load the native binding (koffi, libc): ${message}`,
    cause: err,
  });
}
