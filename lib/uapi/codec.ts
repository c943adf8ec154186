// Reads and writes C structs (as laid out by the kernel's uapi headers) in
// plain byte buffers. The layouts come from the generated modules next to
// this file (./vfio.ts, ./iommufd.ts); this module knows nothing about VFIO
// except the shape of a capability-chain header.
//
// Guarantees:
// - Little-endian, at any byteOffset of any Uint8Array (not only Buffer).
// - Every access is bounds-checked against the buffer: reading or writing
//   past its end throws a RangeError before any byte is touched.
// - Writing a value that does not fit the field (a negative number into an
//   unsigned field, 2**33 into a u32, a fraction, NaN) throws a RangeError
//   naming the struct and field; nothing is written for that call. RangeError
//   (not VfioError) because it is a programming error in the caller, not a
//   kernel answer. A number is accepted for a 64-bit field and converted; a
//   bigint is accepted for a narrower field if it fits.
// - `capabilities()` walks a kernel-supplied chain, so it trusts nothing: a
//   `next` that points backwards, at itself, or outside the buffer throws a
//   RangeError instead of looping or reading out of bounds.
// - Flexible array members (`x[]`) are not part of `size`; `read` omits them
//   and callers reach them with `elementOffset`.
// - `fieldRef` resolves a field by name once, for the structs an ioctl passes
//   on every call; `getField`/`setField` through it make the same checks as
//   `get`/`set` (bounds, range), only without the name lookup.

// The generated module imports only a type from here, so this runtime import
// is not a cycle.
import { vfio_info_cap_header } from './vfio.js';

export type Scalar = 'u8' | 'u16' | 'u32' | 'u64' | 's8' | 's16' | 's32' | 's64';

export interface Field {
  readonly offset: number;
  readonly type: Scalar | StructLayout;
  /** Element count of a fixed array (`x[N]`). */
  readonly count?: number;
  /** A flexible array member (`x[]`): zero-size, past the end of the struct. */
  readonly flexible?: true;
}

export interface StructLayout {
  readonly name: string;
  readonly union: boolean;
  readonly size: number;
  readonly align: number;
  readonly fields: Readonly<Record<string, Field>>;
}

type ScalarValue<T extends Scalar> = T extends 'u64' | 's64' ? bigint : number;
type ElementValue<T> = T extends Scalar ? ScalarValue<T> : T extends StructLayout ? Values<T> : never;
type ElementPartial<T> = T extends Scalar ? number | bigint : T extends StructLayout ? PartialValues<T> : never;

/** Names of the fields that `read` returns (all but flexible arrays). */
type FixedKeys<L extends StructLayout> = {
  [K in keyof L['fields']]: L['fields'][K] extends { readonly flexible: true } ? never : K;
}[keyof L['fields']];

/** The decoded form of a struct: u64/s64 are bigint, other scalars number. */
export type Values<L extends StructLayout> = {
  -readonly [K in FixedKeys<L>]: L['fields'][K] extends { readonly count: number }
    ? ElementValue<L['fields'][K]['type']>[]
    : ElementValue<L['fields'][K]['type']>;
};

/** What `write`/`alloc` accept: every field optional, at every depth. */
export type PartialValues<L extends StructLayout> = {
  [K in FixedKeys<L>]?: L['fields'][K] extends { readonly count: number }
    ? readonly ElementPartial<L['fields'][K]['type']>[]
    : ElementPartial<L['fields'][K]['type']>;
};

/** True when L is the wide `StructLayout` type rather than a generated layout. */
type IsWide<L extends StructLayout> = string extends keyof L['fields'] ? true : false;

/**
 * Names of the scalar (non-array, non-struct) fields: what `get`/`set` take.
 * For a layout typed only as `StructLayout`, any string (checked at runtime).
 */
export type ScalarField<L extends StructLayout> =
  IsWide<L> extends true
    ? string
    : {
        [K in keyof L['fields'] & string]: L['fields'][K] extends { readonly count: number }
          ? never
          : L['fields'][K] extends { readonly flexible: true }
            ? never
            : L['fields'][K]['type'] extends Scalar
              ? K
              : never;
      }[keyof L['fields'] & string];

/** Names of the array fields (fixed or flexible): what `elementOffset` takes. */
export type ArrayField<L extends StructLayout> =
  IsWide<L> extends true
    ? string
    : {
        [K in keyof L['fields'] & string]: L['fields'][K] extends { readonly count: number }
          ? K
          : L['fields'][K] extends { readonly flexible: true }
            ? K
            : never;
      }[keyof L['fields'] & string];

// Distributes over a union of types, so a wide layout gives `number | bigint`.
type FieldValue<L extends StructLayout, K extends keyof L['fields']> = L['fields'][K]['type'] extends infer T
  ? T extends Scalar
    ? ScalarValue<T>
    : never
  : never;

interface ScalarInfo {
  readonly bytes: number;
  readonly signed: boolean;
  /** The range a value must be in, as bigints and (exact for <= 32 bits) as numbers. */
  readonly min: bigint;
  readonly max: bigint;
  readonly minNumber: number;
  readonly maxNumber: number;
}

function scalarInfo(bytes: number, signed: boolean): ScalarInfo {
  const bits = BigInt(bytes * 8);
  const min = signed ? -(1n << (bits - 1n)) : 0n;
  const max = signed ? (1n << (bits - 1n)) - 1n : (1n << bits) - 1n;
  return { bytes, signed, min, max, minNumber: Number(min), maxNumber: Number(max) };
}

// Ranges computed once: every struct an ioctl passes goes through here, so
// the per-value work is kept to comparisons (no BigInt arithmetic for the
// <= 32-bit fields, no DataView per access).
const SCALARS: Readonly<Record<Scalar, ScalarInfo>> = {
  u8: scalarInfo(1, false),
  u16: scalarInfo(2, false),
  u32: scalarInfo(4, false),
  u64: scalarInfo(8, false),
  s8: scalarInfo(1, true),
  s16: scalarInfo(2, true),
  s32: scalarInfo(4, true),
  s64: scalarInfo(8, true),
};

/** Size in bytes of one element of a field (scalar width or struct size). */
function elementSize(type: Scalar | StructLayout): number {
  return typeof type === 'string' ? SCALARS[type].bytes : type.size;
}

function checkBounds(buf: Uint8Array, offset: number, length: number, what: string): void {
  if (!Number.isSafeInteger(offset) || offset < 0 || offset + length > buf.byteLength) {
    throw new RangeError(`${what}: bytes [${offset}, ${offset + length}) are outside the ${buf.byteLength}-byte buffer`);
  }
}

function fieldOf(layout: StructLayout, name: string): Field {
  const f = Object.hasOwn(layout.fields, name) ? layout.fields[name] : undefined;
  if (f === undefined) throw new RangeError(`${layout.name} has no field ${name}`);
  return f;
}

/** A layout's fields as a list, made once per layout (read walks it for every struct it decodes). */
const fieldLists = new WeakMap<StructLayout, readonly (readonly [string, Field])[]>();

function fieldList(layout: StructLayout): readonly (readonly [string, Field])[] {
  let list = fieldLists.get(layout);
  if (list === undefined) {
    list = Object.entries(layout.fields);
    fieldLists.set(layout, list);
  }
  return list;
}

/**
 * Converts and range-checks `value` for a scalar: returns a number for the
 * fields of up to 32 bits, a bigint for the 64-bit ones (what writeScalar
 * stores).
 */
function toScalar(type: Scalar, value: number | bigint, path: string, name: string, index?: number): number | bigint {
  const info = SCALARS[type];
  if (typeof value === 'number') {
    if (!Number.isSafeInteger(value)) throw scalarError(false, type, value, path, name, index);
    // The bounds of a <= 32-bit type are exact as numbers; the 64-bit ones
    // are not, so those compare as bigints.
    if (info.bytes === 8) {
      const v = BigInt(value);
      if (v < info.min || v > info.max) throw scalarError(true, type, value, path, name, index);
      return v;
    }
    if (value < info.minNumber || value > info.maxNumber) throw scalarError(true, type, value, path, name, index);
    return value;
  }
  if (typeof value !== 'bigint') throw scalarError(false, type, value, path, name, index);
  if (value < info.min || value > info.max) throw scalarError(true, type, value, path, name, index);
  return info.bytes === 8 ? value : Number(value);
}

function scalarError(range: boolean, type: Scalar, value: unknown, path: string, name: string, index: number | undefined): RangeError {
  const info = SCALARS[type];
  const what = label(path, name, index);
  return new RangeError(
    range
      ? `${what}: ${String(value)} does not fit ${type} [${info.min}, ${info.max}]`
      : `${what}: ${String(value)} is not an integer (${type})`,
  );
}

// Little-endian scalar access on the bytes themselves. Callers have checked
// the bounds. Byte arithmetic rather than a DataView: making a DataView per
// access cost more than the access (it was the largest single item in the
// profile of an ioctl round trip).

function readU32(buf: Uint8Array, at: number): number {
  return (buf[at]! | (buf[at + 1]! << 8) | (buf[at + 2]! << 16) | (buf[at + 3]! << 24)) >>> 0;
}

function readScalar(buf: Uint8Array, type: Scalar, at: number): number | bigint {
  switch (type) {
    case 'u8':
      return buf[at]!;
    case 's8':
      return (buf[at]! << 24) >> 24;
    case 'u16':
      return buf[at]! | (buf[at + 1]! << 8);
    case 's16':
      return ((buf[at]! | (buf[at + 1]! << 8)) << 16) >> 16;
    case 'u32':
      return readU32(buf, at);
    case 's32':
      return readU32(buf, at) | 0;
    case 'u64':
    case 's64': {
      const lo = readU32(buf, at);
      const hi = type === 'u64' ? readU32(buf, at + 4) : readU32(buf, at + 4) | 0;
      // One BigInt conversion when the value is a safe integer (addresses
      // and sizes are), four operations otherwise.
      if (hi >= -0x200000 && hi < 0x200000) return BigInt(hi * 0x100000000 + lo);
      return (BigInt(hi) << 32n) | BigInt(lo);
    }
  }
}

const MAX_SAFE = BigInt(Number.MAX_SAFE_INTEGER);

function writeU32(buf: Uint8Array, at: number, v: number): void {
  buf[at] = v;
  buf[at + 1] = v >>> 8;
  buf[at + 2] = v >>> 16;
  buf[at + 3] = v >>> 24;
}

/** Stores a value toScalar returned (number up to 32 bits, bigint for 64) in two's complement. */
function writeScalar(buf: Uint8Array, type: Scalar, at: number, v: number | bigint): void {
  switch (type) {
    case 'u8':
    case 's8':
      buf[at] = Number(v);
      return;
    case 'u16':
    case 's16': {
      const n = Number(v);
      buf[at] = n;
      buf[at + 1] = n >>> 8;
      return;
    }
    case 'u32':
    case 's32':
      return writeU32(buf, at, Number(v));
    case 'u64':
    case 's64': {
      const b = typeof v === 'bigint' ? v : BigInt(v);
      if (b >= 0n && b <= MAX_SAFE) {
        // The common case (addresses, sizes): number arithmetic is exact here.
        writeSafeU64(buf, at, Number(b));
        return;
      }
      const u = BigInt.asUintN(64, b);
      writeU32(buf, at, Number(BigInt.asUintN(32, u)));
      writeU32(buf, at + 4, Number(u >> 32n));
      return;
    }
  }
}

/** A non-negative safe integer as a little-endian u64 (>>> 0 is exact modulo 2^32 below 2^53). */
function writeSafeU64(buf: Uint8Array, at: number, n: number): void {
  writeU32(buf, at, n >>> 0);
  writeU32(buf, at + 4, (n / 0x100000000) >>> 0);
}

/** One pending store: validation happens for all of them before any is done. */
interface Store {
  readonly type: Scalar;
  readonly at: number;
  readonly value: number | bigint;
}

/** `outer.nested.field[2]`: the name errors give a value; built only when one is thrown. */
function label(path: string, name: string, index?: number): string {
  return index === undefined ? `${path}.${name}` : `${path}.${name}[${index}]`;
}

function plan(layout: StructLayout, values: object, base: number, path: string, out: Store[]): void {
  // for-in over the caller's (small, literal) object: cheaper than
  // Object.entries, which allocates an array per field.
  for (const name in values) {
    if (!Object.hasOwn(values, name)) continue;
    const value: unknown = (values as Record<string, unknown>)[name];
    if (value === undefined) continue;
    const f = fieldOf(layout, name);
    if (f.flexible) throw new RangeError(`${label(path, name)} is a flexible array: write it through elementOffset`);
    const at = base + f.offset;
    if (f.count !== undefined) {
      if (!Array.isArray(value)) throw new RangeError(`${label(path, name)}: expected an array of at most ${f.count}`);
      if (value.length > f.count) throw new RangeError(`${label(path, name)}: ${value.length} elements do not fit ${f.count}`);
      const step = elementSize(f.type);
      for (let i = 0; i < value.length; i++) {
        const el: unknown = value[i];
        if (el !== undefined) planOne(f.type, el, at + i * step, path, name, i, out);
      }
    } else {
      planOne(f.type, value, at, path, name, undefined, out);
    }
  }
}

function planOne(
  type: Scalar | StructLayout,
  value: unknown,
  at: number,
  path: string,
  name: string,
  index: number | undefined,
  out: Store[],
): void {
  if (typeof type === 'string') {
    if (typeof value !== 'number' && typeof value !== 'bigint') {
      throw new RangeError(`${label(path, name, index)}: expected a number or bigint (${type})`);
    }
    out.push({ type, at, value: toScalar(type, value, path, name, index) });
  } else {
    const what = label(path, name, index);
    if (typeof value !== 'object' || value === null) throw new RangeError(`${what}: expected an object (${type.name})`);
    plan(type, value, at, what, out);
  }
}

/**
 * Writes `values` into `buf` at `offset` (default 0). Fields not named are
 * left as they are. All values are checked before any byte is written.
 */
export function write<L extends StructLayout>(layout: L, buf: Uint8Array, values: PartialValues<L>, offset = 0): void {
  checkBounds(buf, offset, layout.size, layout.name);
  const stores: Store[] = [];
  plan(layout, values, offset, layout.name, stores);
  for (const s of stores) writeScalar(buf, s.type, s.at, s.value);
}

/**
 * A zeroed Buffer of `layout.size + extra` bytes with `values` written.
 * `extra` leaves room for a flexible array or a kernel-filled tail.
 */
export function alloc<L extends StructLayout>(layout: L, values?: PartialValues<L>, extra = 0): Buffer {
  if (!Number.isSafeInteger(extra) || extra < 0) throw new RangeError(`${layout.name}: extra ${extra} is not a byte count`);
  const buf = Buffer.alloc(layout.size + extra);
  if (values !== undefined) write(layout, buf, values, 0);
  return buf;
}

function readOne(buf: Uint8Array, type: Scalar | StructLayout, at: number): unknown {
  return typeof type === 'string' ? readScalar(buf, type, at) : readAt(buf, type, at);
}

function readAt(buf: Uint8Array, layout: StructLayout, base: number): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [name, f] of fieldList(layout)) {
    if (f.flexible) continue;
    const at = base + f.offset;
    if (f.count !== undefined) {
      const step = elementSize(f.type);
      const arr: unknown[] = [];
      for (let i = 0; i < f.count; i++) arr.push(readOne(buf, f.type, at + i * step));
      out[name] = arr;
    } else {
      out[name] = readOne(buf, f.type, at);
    }
  }
  return out;
}

/** Decodes the struct at `offset` (default 0). Flexible arrays are omitted. */
export function read<L extends StructLayout>(layout: L, buf: Uint8Array, offset = 0): Values<L> {
  checkBounds(buf, offset, layout.size, layout.name);
  return readAt(buf, layout, offset) as Values<L>;
}

function scalarField(layout: StructLayout, field: string): { readonly offset: number; readonly type: Scalar } {
  const f = fieldOf(layout, field);
  if (typeof f.type !== 'string' || f.count !== undefined || f.flexible) {
    throw new RangeError(`${layout.name}.${field} is not a scalar field`);
  }
  return { offset: f.offset, type: f.type };
}

/** The untyped core of `get`, for callers that hold a plain StructLayout. */
function getScalar(layout: StructLayout, buf: Uint8Array, field: string, offset: number): number | bigint {
  const f = scalarField(layout, field);
  const at = offset + f.offset;
  checkBounds(buf, at, SCALARS[f.type].bytes, `${layout.name}.${field}`);
  return readScalar(buf, f.type, at);
}

/** Reads one scalar field: bigint for u64/s64, number otherwise. */
export function get<L extends StructLayout, K extends ScalarField<L>>(layout: L, buf: Uint8Array, field: K, offset = 0): FieldValue<L, K> {
  return getScalar(layout, buf, field, offset) as FieldValue<L, K>;
}

/** Writes one scalar field (range-checked like `write`). */
export function set<L extends StructLayout>(layout: L, buf: Uint8Array, field: ScalarField<L>, value: number | bigint, offset = 0): void {
  const f = scalarField(layout, field);
  const at = offset + f.offset;
  checkBounds(buf, at, SCALARS[f.type].bytes, label(layout.name, field));
  writeScalar(buf, f.type, at, toScalar(f.type, value, layout.name, field));
}

declare const fieldValue: unique symbol;

/**
 * One scalar field of a layout, looked up once (at module load) by
 * `fieldRef`: `getField`/`setField` then skip the name lookup that `get` and
 * `set` do per call, and keep every check they make (bounds, range). For the
 * structs an ioctl passes on every call (DMA map/unmap, region info).
 */
export interface FieldRef<V extends number | bigint> {
  /** `struct.field`, for errors. */
  readonly struct: string;
  readonly field: string;
  readonly offset: number;
  readonly type: Scalar;
  /** Width in bytes. */
  readonly bytes: number;
  /** Only carries the value type (bigint for u64/s64, number otherwise). */
  readonly [fieldValue]?: V;
}

/**
 * Resolves scalar field `field` of `layout` once.
 * @throws RangeError no such field, or not a scalar one.
 */
export function fieldRef<L extends StructLayout, K extends ScalarField<L>>(layout: L, field: K): FieldRef<FieldValue<L, K>> {
  const f = scalarField(layout, field);
  return Object.freeze({ struct: layout.name, field, offset: f.offset, type: f.type, bytes: SCALARS[f.type].bytes });
}

/** checkBounds for a FieldRef access: the common case (offset 0) in two comparisons; returns the byte index. */
function refBounds(ref: FieldRef<number | bigint>, buf: Uint8Array, offset: number): number {
  const at = offset + ref.offset;
  if (!((offset === 0 || Number.isSafeInteger(offset)) && at >= 0 && at + ref.bytes <= buf.byteLength)) {
    checkBounds(buf, at, ref.bytes, label(ref.struct, ref.field));
  }
  return at;
}

/** `get` through a FieldRef: the field of the struct at `offset` (default 0). */
export function getField<V extends number | bigint>(ref: FieldRef<V>, buf: Uint8Array, offset = 0): V {
  return readScalar(buf, ref.type, refBounds(ref, buf, offset)) as V;
}

/**
 * A field read as a number, without making a bigint for u64/s64: exact
 * whenever the value is a safe integer; a larger magnitude comes back as a
 * number that is not (callers that need exactness test Number.isSafeInteger).
 */
export function getFieldNumber(ref: FieldRef<number | bigint>, buf: Uint8Array, offset = 0): number {
  const at = refBounds(ref, buf, offset);
  switch (ref.type) {
    case 'u64':
      return readU32(buf, at + 4) * 0x100000000 + readU32(buf, at);
    case 's64':
      return (readU32(buf, at + 4) | 0) * 0x100000000 + readU32(buf, at);
    default:
      return readScalar(buf, ref.type, at) as number;
  }
}

/** `set` through a FieldRef (range-checked like `write`). */
export function setField<V extends number | bigint>(ref: FieldRef<V>, buf: Uint8Array, value: number | bigint, offset = 0): void {
  const at = refBounds(ref, buf, offset);
  // The two common cases straight to the bytes, with the same range checks:
  // an address or size (a non-negative bigint below 2^53) into a 64-bit
  // field, a u32 number. A bigint's Number() is a non-negative safe integer
  // exactly when the bigint is one (any larger magnitude converts to 2^53 or
  // more): one conversion instead of two bigint comparisons.
  const n = ref.bytes === 8 && typeof value === 'bigint' ? Number(value) : -1;
  if (n >= 0 && Number.isSafeInteger(n)) {
    writeSafeU64(buf, at, n);
  } else if (ref.type === 'u32' && typeof value === 'number' && value >= 0 && value <= 0xffffffff && Number.isInteger(value)) {
    writeU32(buf, at, value);
  } else {
    writeScalar(buf, ref.type, at, toScalar(ref.type, value, ref.struct, ref.field));
  }
}

/**
 * Offset (from the start of the struct) of element `index` of an array or
 * flexible-array field. For a fixed array the index must be below its count;
 * a flexible array has no bound here: the caller checks it against the
 * buffer it allocated (or against the count the kernel returned).
 */
export function elementOffset<L extends StructLayout>(layout: L, field: ArrayField<L>, index: number): number {
  const f = fieldOf(layout, field);
  if (f.count === undefined && !f.flexible) throw new RangeError(`${layout.name}.${field} is not an array`);
  const limit = f.count ?? Number.MAX_SAFE_INTEGER;
  if (!Number.isSafeInteger(index) || index < 0 || index >= limit) {
    throw new RangeError(`${layout.name}.${field}[${index}]: index out of range`);
  }
  return f.offset + index * elementSize(f.type);
}

/** A header layout that `capabilities` can walk: id, version, next. */
export type CapHeaderLayout = StructLayout & {
  readonly fields: {
    readonly id: Field & { readonly type: Scalar };
    readonly version: Field & { readonly type: Scalar };
    readonly next: Field & { readonly type: Scalar };
  };
};

/**
 * Walks a VFIO capability chain: `firstOffset` is the offset of the first
 * header in `buf` (the `cap_offset` the kernel returned; 0 means "no
 * capabilities" and yields nothing). Each header's `next` is an offset from
 * the start of `buf`, 0 ends the chain.
 *
 * Because the offsets come from the kernel (or a fake of it), every hop is
 * checked: the header must lie inside `buf`, and each `next` must point
 * strictly forward past the current header. Forward-only makes a loop
 * impossible, so the walk ends after at most buf.length / header.size steps.
 */
export function* capabilities(
  buf: Uint8Array,
  firstOffset: number,
  header: CapHeaderLayout = vfio_info_cap_header,
): Generator<{ id: number; version: number; offset: number }> {
  let at = firstOffset;
  let floor = 0;
  while (at !== 0) {
    if (!Number.isSafeInteger(at) || at < floor) {
      throw new RangeError(`capability chain: offset ${at} points backwards (must be >= ${floor})`);
    }
    checkBounds(buf, at, header.size, `capability chain: header at ${at}`);
    const id = Number(getScalar(header, buf, 'id', at));
    const version = Number(getScalar(header, buf, 'version', at));
    const next = Number(getScalar(header, buf, 'next', at));
    yield { id, version, offset: at };
    floor = at + header.size;
    at = next;
  }
}
