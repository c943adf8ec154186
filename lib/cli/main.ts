// The `vfio` command: dispatch to a subcommand, help on every level, and one
// rule for errors — a single line on stderr, `vfio <command>: <what>`, and an
// exit code scripts can test (EXIT in ./command.ts).
//
// Guarantees:
// - main() never throws and never exits the process: it returns the exit
//   code, so tests run it in-process against the fake kernel.
// - Every VFIO resource a command opened is released before main() returns:
//   the context it was given is closed.
import { readFileSync } from 'node:fs';
import { CliFailure, parse, UsageError } from './args.js';
import { bar } from './bar.js';
import { bind, unbind } from './bind.js';
import { EXIT, type Command } from './command.js';
import { doctor } from './doctor.js';
import type { CliEnv } from './env.js';
import { oneLine } from './format.js';
import { info } from './info.js';
import { ls } from './ls.js';
import { sriov } from './sriov.js';
import type { Vfio } from '../core/context.js';
import { VfioError } from '../base/errors.js';

export const COMMANDS: readonly Command[] = [ls, info, bind, unbind, sriov, bar, doctor];

/** The package's version: the nearest package.json named "vfio" above this file (lib/ or dist/lib/). */
function version(): string {
  for (let dir = new URL('.', import.meta.url); ; dir = new URL('..', dir)) {
    try {
      const pkg = JSON.parse(readFileSync(new URL('package.json', dir), 'utf8')) as { name?: unknown; version?: unknown };
      if (pkg.name === 'vfio' && typeof pkg.version === 'string') return pkg.version;
    } catch {
      // No package.json here: look further up.
    }
    if (dir.pathname === '/') return 'unknown';
  }
}

function overview(): string {
  const width = Math.max(...COMMANDS.map((c) => c.name.length));
  return `vfio: PCI devices through VFIO, from the command line

Usage: vfio <command> [options]

Commands:
${COMMANDS.map((c) => `  ${c.name.padEnd(width)}  ${c.summary}`).join('\n')}
  ${'help'.padEnd(width)}  this text, or \`vfio help <command>\`

Addresses are PCI addresses as sysfs spells them (0000:00:03.0) or short
(00:03.0). VFIO_MODE=cdev|group|noiommu forces the VFIO mode of info and bar.

Exit codes:
  0  done (doctor: nothing to fix)
  1  failed: the device, the kernel or the system refused (doctor: something
     to fix); the one-line message on stderr says why
  2  usage error: unknown command or option, bad or missing argument

Run \`vfio <command> --help\` for a command's options.
`;
}

function commandHelp(c: Command): string {
  return `Usage: vfio ${c.usage}\n\n${c.help}\n`;
}

/** True when `--help`/`-h` comes before any `--` end-of-options marker. */
function wantsHelp(argv: readonly string[]): boolean {
  const end = argv.indexOf('--');
  return (end === -1 ? argv : argv.slice(0, end)).some((a) => a === '--help' || a === '-h');
}

/**
 * Runs `vfio <argv...>` in `env`; returns the exit code.
 */
export function main(argv: readonly string[], env: CliEnv): number {
  const [name, ...rest] = argv;
  if (name === undefined || name === 'help' || name === '--help' || name === '-h') {
    if (name === 'help' && rest.length > 0) {
      if (rest.length > 1) return usage(env, 'help', `unexpected argument ${JSON.stringify(rest[1])}: help takes one command name`);
      const c = COMMANDS.find((x) => x.name === rest[0]);
      if (c === undefined) return usage(env, 'help', `unknown command ${JSON.stringify(rest[0])}`);
      env.out(commandHelp(c));
      return EXIT.ok;
    }
    // A bare `vfio` is a usage error (scripts that forgot the command must not pass).
    if (name === undefined) {
      env.err(overview());
      return EXIT.usage;
    }
    env.out(overview());
    return EXIT.ok;
  }
  if (name === '--version' || name === '-V') {
    env.out(`${version()}\n`);
    return EXIT.ok;
  }
  const command = COMMANDS.find((c) => c.name === name);
  if (command === undefined) return usage(env, undefined, `unknown command ${JSON.stringify(name)}`);
  if (wantsHelp(rest)) {
    env.out(commandHelp(command));
    return EXIT.ok;
  }

  // The context is made only if the command asks for it, and closed after.
  const opened: { context?: Vfio } = {};
  const scoped: CliEnv = { ...env, vfio: () => (opened.context ??= env.vfio()) };
  let code: number;
  try {
    code = command.run(parse(rest, command.options, command.positionals), scoped);
  } catch (err) {
    code = report(env, command.name, err);
  }
  if (opened.context !== undefined) {
    try {
      opened.context.close();
    } catch (err) {
      code = Math.max(code, report(env, command.name, err));
    }
  }
  return code;
}

function usage(env: CliEnv, command: string | undefined, message: string): number {
  const where = command === undefined ? 'vfio' : `vfio ${command}`;
  env.err(`${where}: ${oneLine(message)} (see \`${command === undefined ? 'vfio help' : `vfio ${command} --help`}\`)\n`);
  return EXIT.usage;
}

/** One line on stderr; the exit code for the error's kind. */
function report(env: CliEnv, command: string, err: unknown): number {
  if (err instanceof UsageError) return usage(env, command, err.message);
  // A VfioError's message is already "syscall path: CODE (device ...: what to do)".
  const message =
    err instanceof CliFailure || err instanceof VfioError
      ? err.message
      : err instanceof Error
        ? `${err.name}: ${err.message}`
        : String(err);
  env.err(`vfio ${command}: ${oneLine(message)}\n`);
  return EXIT.failure;
}
