// What the `vfio` command reaches outside itself, in one object: the
// filesystem roots, a VFIO context on them, where output goes, how sysfs
// control files are written, where bind state is kept, and who the user is.
// The real command uses realEnv(); the tests build one on the fake kernel
// (its sysfs/dev/proc roots and Sys) and capture the output.
import { writeFileSync } from 'node:fs';
import type { Vfio } from '../core/context.js';
import { DEFAULT_ROOTS, type Roots } from '../host/paths.js';

export interface CliEnv {
  /** Where /sys, /dev and /proc are. */
  readonly roots: Roots;
  /** The VFIO context on those roots; called only by commands that need the kernel. */
  readonly vfio: () => Vfio;
  /** Standard output and error (text as given: the callers add newlines). */
  readonly out: (text: string) => void;
  readonly err: (text: string) => void;
  /**
   * Writes a sysfs control file (driver_override, unbind, drivers_probe, a
   * driver's bind). The kernel acts on the write before it returns.
   */
  readonly writeSysfs: (path: string, value: string) => void;
  /** Directory for what `vfio bind` remembers (VFIO_STATE_DIR, default /run/vfio). */
  readonly stateDir: string;
  /** The caller's identity, for the permission checks of `vfio doctor`. */
  readonly uid: number;
  readonly gids: readonly number[];
}

/** The environment of the installed command: the real machine. */
export function realEnv(vfio: () => Vfio): CliEnv {
  const gids = new Set<number>([process.getgid?.() ?? 0, ...(process.getgroups?.() ?? [])]);
  return {
    roots: DEFAULT_ROOTS,
    vfio,
    out: (text) => process.stdout.write(text),
    err: (text) => process.stderr.write(text),
    writeSysfs: (path, value) => writeFileSync(path, value),
    stateDir: process.env['VFIO_STATE_DIR'] || '/run/vfio',
    uid: process.getuid?.() ?? 0,
    gids: [...gids],
  };
}
