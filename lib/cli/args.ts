// Argument handling for the `vfio` command: node:util parseArgs with strict
// options, and the parsers for the values the commands take (PCI addresses,
// offsets, register widths, values). Every bad argument becomes a UsageError,
// which the dispatcher (./main.ts) prints as one line and exits with 2.
import { parseArgs, type ParseArgsConfig } from 'node:util';
import { canonicalPciAddress } from '../host/pci-address.js';
import { VfioError } from '../base/errors.js';
import type { AccessWidth } from '../device/hexdump.js';

/** A mistake in how the command was called: exit code 2. */
export class UsageError extends Error {
  override name = 'UsageError';
}

/** The command ran and could not do what was asked: exit code 1. */
export class CliFailure extends Error {
  override name = 'CliFailure';
}

export type OptionSpec = NonNullable<ParseArgsConfig['options']>;

export interface Parsed {
  readonly values: Readonly<Record<string, string | boolean | (string | boolean)[] | undefined>>;
  readonly positionals: readonly string[];
  /** Options in command-line order (for commands whose options act in sequence). */
  readonly order: readonly { readonly name: string; readonly value: string | undefined }[];
}

/**
 * Parses `argv` against `options` (strict: unknown options and missing values
 * are errors) and checks the positional count.
 * @throws UsageError with parseArgs' own words for what was wrong.
 */
export function parse(argv: readonly string[], options: OptionSpec, positionals: { min: number; max: number; names: string }): Parsed {
  let result;
  try {
    result = parseArgs({ args: [...argv], options, allowPositionals: true, strict: true, tokens: true });
  } catch (err) {
    // parseArgs throws TypeErrors with ERR_PARSE_ARGS_* codes and a sentence.
    throw new UsageError(err instanceof Error ? err.message : String(err));
  }
  const n = result.positionals.length;
  if (n < positionals.min) throw new UsageError(`missing argument: expected ${positionals.names}`);
  if (n > positionals.max) throw new UsageError(`unexpected argument ${JSON.stringify(result.positionals[positionals.max])}`);
  const order = result.tokens.flatMap((t) => (t.kind === 'option' ? [{ name: t.name, value: t.value }] : []));
  return { values: result.values, positionals: result.positionals, order };
}

/** A string option's value (the last one given), or undefined. */
export function stringOption(p: Parsed, name: string): string | undefined {
  const v = p.values[name];
  if (Array.isArray(v)) return v.length === 0 ? undefined : String(v[v.length - 1]);
  return typeof v === 'string' ? v : undefined;
}

export function flag(p: Parsed, name: string): boolean {
  return p.values[name] === true;
}

/**
 * A PCI address in canonical form (`00:03.0` → `0000:00:03.0`).
 * @throws UsageError when it is not one.
 */
export function pciAddress(text: string): string {
  try {
    return canonicalPciAddress(text);
  } catch (err) {
    if (err instanceof VfioError) throw new UsageError(`not a PCI address: ${JSON.stringify(text)} (expected 0000:00:03.0 or 00:03.0)`);
    throw err;
  }
}

/**
 * A non-negative integer written in decimal or 0x-hex (`4096`, `0x1000`).
 * @throws UsageError otherwise, naming `what`.
 */
export function nonNegativeInt(text: string, what: string): number {
  const n = /^0x[0-9a-f]+$/i.test(text) ? parseInt(text, 16) : /^[0-9]+$/.test(text) ? Number(text) : NaN;
  if (!Number.isSafeInteger(n))
    throw new UsageError(`${what} must be a non-negative integer (decimal or 0x-hex), got ${JSON.stringify(text)}`);
  return n;
}

/** Register access widths, in bits. */
/** A register access width in bits (the Region's own type). */
export type Width = AccessWidth;
const WIDTHS: readonly number[] = [8, 16, 32, 64];

/** @throws UsageError unless `text` is 8, 16, 32 or 64. */
export function width(text: string): Width {
  const n = Number(text);
  if (!/^[0-9]+$/.test(text) || !WIDTHS.includes(n))
    throw new UsageError(`width must be 8, 16, 32 or 64 (bits), got ${JSON.stringify(text)}`);
  return n as Width;
}

/**
 * A register value that fits `bits` (decimal or 0x-hex), as a bigint.
 * @throws UsageError when it is not a number or does not fit.
 */
export function registerValue(text: string, bits: Width): bigint {
  let v: bigint;
  if (/^0x[0-9a-f]+$/i.test(text) || /^[0-9]+$/.test(text)) v = BigInt(text);
  else throw new UsageError(`value must be a non-negative integer (decimal or 0x-hex), got ${JSON.stringify(text)}`);
  if (v >= 1n << BigInt(bits)) throw new UsageError(`value ${text} does not fit in ${bits} bits`);
  return v;
}
