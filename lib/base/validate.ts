// The one place that checks arguments of public calls (as Node core keeps
// lib/internal/validators.js). Every check throws the same kind of error,
// VfioError EINVAL, worded the same way:
//
//   <name> must be <what is accepted>, got <what was given>
//
// so a bad argument never reaches a TypedArray, BigInt() or a system call as
// a RangeError/TypeError, and callers read one style of message. Checks are
// assertion functions: after `validateInteger(x, 'offset')` TypeScript knows
// `x` is a number. Nothing here calls a method of the value it checks (a
// hostile object's toString or a Proxy trap cannot run or throw).
import { usageError, type VfioErrorInit } from './errors.js';

/** Context for the error: the device (PCI address) or path the call concerned. */
export type Where = Pick<VfioErrorInit, 'device' | 'path'>;

const NO_WHERE: Where = Object.freeze({});

/** What a value is, for a message: `1.5`, `-1n`, `the string "2"`, `null`, `an object`. Never calls into the value. */
export function describe(value: unknown): string {
  switch (typeof value) {
    case 'number':
      return Object.is(value, -0) ? '-0' : String(value);
    case 'bigint':
      return `${value}n`;
    case 'string': {
      const s = JSON.stringify(value.length > 40 ? `${value.slice(0, 40)}…` : value);
      return `the string ${s}`;
    }
    case 'boolean':
      return String(value);
    case 'undefined':
      return 'undefined';
    case 'symbol':
      return 'a symbol';
    case 'function':
      return 'a function';
    default:
      return value === null ? 'null' : Array.isArray(value) ? 'an array' : 'an object';
  }
}

function fail(name: string, expected: string, value: unknown, where: Where): never {
  throw usageError('EINVAL', `${name} must be ${expected}, got ${describe(value)}`, where);
}

function rangeText(min: number | bigint, max: number | bigint | undefined, kind: string): string {
  if (max === undefined || max === Number.MAX_SAFE_INTEGER) {
    if (min === 0 || min === 0n) return `a non-negative ${kind}`;
    if (min === 1 || min === 1n) return `a positive ${kind}`;
    return `${kind === 'integer' ? 'an' : 'a'} ${kind} >= ${min}`;
  }
  return `${kind === 'integer' ? 'an' : 'a'} ${kind} from ${min} to ${max}`;
}

/**
 * A safe integer (a JavaScript number, not a numeric string or a bigint)
 * from `min` to `max` inclusive.
 * @throws VfioError EINVAL otherwise.
 */
export function validateInteger(
  value: unknown,
  name: string,
  min = 0,
  max: number = Number.MAX_SAFE_INTEGER,
  where: Where = NO_WHERE,
): asserts value is number {
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < min || value > max) {
    fail(name, rangeText(min, max, 'integer'), value, where);
  }
}

/**
 * A bigint from `min` (default 0n) to `max` inclusive (no upper bound when
 * omitted). Device addresses and sizes in the IOVA space are bigints.
 * @throws VfioError EINVAL otherwise.
 */
export function validateBigInt(value: unknown, name: string, min = 0n, max?: bigint, where: Where = NO_WHERE): asserts value is bigint {
  if (typeof value !== 'bigint' || value < min || (max !== undefined && value > max))
    fail(name, rangeText(min, max, 'bigint'), value, where);
}

/** @throws VfioError EINVAL unless `value` is a string (`nonEmpty`: and not ''). */
export function validateString(value: unknown, name: string, where: Where = NO_WHERE, nonEmpty = false): asserts value is string {
  if (typeof value !== 'string' || (nonEmpty && value === '')) fail(name, nonEmpty ? 'a non-empty string' : 'a string', value, where);
}

/** @throws VfioError EINVAL unless `value` is a Uint8Array (a Buffer is one). */
export function validateBytes(value: unknown, name: string, where: Where = NO_WHERE): asserts value is Uint8Array {
  if (!(value instanceof Uint8Array)) fail(name, 'a Uint8Array', value, where);
}

/** @throws VfioError EINVAL unless `value` is true or false. */
export function validateBoolean(value: unknown, name: string, where: Where = NO_WHERE): asserts value is boolean {
  if (typeof value !== 'boolean') fail(name, 'true or false', value, where);
}

/** @throws VfioError EINVAL unless `value` is a function. */
// biome-ignore lint/complexity/noBannedTypes: the check is exactly "callable"; callers narrow the signature.
export function validateFunction(value: unknown, name: string, where: Where = NO_WHERE): asserts value is Function {
  if (typeof value !== 'function') fail(name, 'a function', value, where);
}

/**
 * An options bag: `undefined` (all defaults) or a plain object, never null,
 * an array or a primitive. Returns the object to read options from.
 * @throws VfioError EINVAL otherwise.
 */
export function validateOptions<T extends object>(value: T | undefined, name = 'options', where: Where = NO_WHERE): T | Partial<T> {
  if (value === undefined) return {};
  if (typeof value !== 'object' || value === null || Array.isArray(value)) fail(name, 'an object or undefined', value, where);
  return value;
}

/**
 * One of a fixed set of values (compared with ===).
 * @throws VfioError EINVAL otherwise, listing the accepted values.
 */
export function validateOneOf<T extends string | number>(
  value: unknown,
  name: string,
  choices: readonly T[],
  where: Where = NO_WHERE,
): asserts value is T {
  if (!choices.includes(value as T)) fail(name, `one of ${choices.map((c) => JSON.stringify(c)).join(', ')}`, value, where);
}

/**
 * The value a table holds for `key` as its OWN property, or undefined: a
 * lookup by a caller's string that cannot answer with Object.prototype's
 * `toString`, `constructor` or `__proto__`.
 */
export function ownEntry<V>(table: Readonly<Record<string, V>>, key: unknown): V | undefined {
  return typeof key === 'string' && Object.hasOwn(table, key) ? table[key] : undefined;
}

/**
 * `offset` and `length` are non-negative integers and [offset, offset+length)
 * lies inside `size` bytes of `what`.
 * @throws VfioError EINVAL otherwise.
 */
export function validateSpan(
  offset: unknown,
  length: unknown,
  size: number,
  what: string,
  where: Where = NO_WHERE,
): asserts offset is number {
  validateInteger(offset, 'offset', 0, Number.MAX_SAFE_INTEGER, where);
  validateInteger(length, 'length', 0, Number.MAX_SAFE_INTEGER, where);
  if (offset + length > size) {
    throw usageError('EINVAL', `[${offset}, ${offset}+${length}) is outside the ${size}-byte ${what}`, where);
  }
}
