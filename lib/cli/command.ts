// The shape of one `vfio` subcommand. The dispatcher (./main.ts) handles
// `--help`, parses the options with `options` and `positionals`, and turns
// what `run` throws into a one-line message and an exit code.
import type { OptionSpec, Parsed } from './args.js';
import type { CliEnv } from './env.js';

/** Exit codes, documented in `vfio help`: scripts may rely on them. */
export const EXIT = {
  /** The command did what was asked (doctor: nothing to fix). */
  ok: 0,
  /** It could not: the device, the kernel or the system refused (doctor: something to fix). */
  failure: 1,
  /** It was called wrongly: unknown command or option, bad or missing argument. */
  usage: 2,
} as const;

export interface Command {
  readonly name: string;
  /** One line for the command list of `vfio help`. */
  readonly summary: string;
  /** The usage line(s), without the program name: `info <address> [--json]`. */
  readonly usage: string;
  /** The rest of `vfio <command> --help`: what it does, options, examples. */
  readonly help: string;
  readonly options: OptionSpec;
  readonly positionals: { readonly min: number; readonly max: number; readonly names: string };
  /** Does the work; returns the exit code. Throws UsageError / CliFailure / VfioError. */
  run(args: Parsed, env: CliEnv): number;
}
