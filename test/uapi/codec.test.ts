// The struct codec: scalars, nesting, arrays, flexible arrays, capability
// chains, and that bad values and short buffers are refused.
import t from 'tap';
import {
  alloc,
  capabilities,
  elementOffset,
  fieldRef,
  get,
  getField,
  getFieldNumber,
  read,
  set,
  setField,
  write,
  type Scalar,
  type StructLayout,
} from '../../lib/uapi/codec.js';
import { vfio_info_cap_header, vfio_region_info } from '../../lib/uapi/vfio.js';

const inner = {
  name: 'inner',
  union: false,
  size: 16,
  align: 8,
  fields: {
    tag: { offset: 0, type: 'u16' },
    value: { offset: 8, type: 's64' },
  },
} as const satisfies StructLayout;

// A hand-made layout with every kind of field.
const outer = {
  name: 'outer',
  union: false,
  size: 64,
  align: 8,
  fields: {
    argsz: { offset: 0, type: 'u32' },
    small: { offset: 4, type: 's8', count: 4 },
    nested: { offset: 8, type: inner },
    pair: { offset: 24, type: inner, count: 2 },
    big: { offset: 56, type: 'u64' },
    tail: { offset: 64, type: 'u32', flexible: true },
  },
} as const satisfies StructLayout;

const LIMITS: Record<Scalar, { min: bigint; max: bigint; bytes: number }> = {
  u8: { min: 0n, max: 0xffn, bytes: 1 },
  s8: { min: -0x80n, max: 0x7fn, bytes: 1 },
  u16: { min: 0n, max: 0xffffn, bytes: 2 },
  s16: { min: -0x8000n, max: 0x7fffn, bytes: 2 },
  u32: { min: 0n, max: 0xffffffffn, bytes: 4 },
  s32: { min: -0x80000000n, max: 0x7fffffffn, bytes: 4 },
  u64: { min: 0n, max: 0xffffffffffffffffn, bytes: 8 },
  s64: { min: -0x8000000000000000n, max: 0x7fffffffffffffffn, bytes: 8 },
};

function oneField(type: Scalar): StructLayout {
  return { name: `one_${type}`, union: false, size: 8, align: 8, fields: { v: { offset: 0, type } } };
}

const u32Cell = {
  name: 'cell',
  union: false,
  size: 4,
  align: 4,
  fields: { v: { offset: 0, type: 'u32' } },
} as const satisfies StructLayout;

t.test('every scalar width and signedness round-trips at its limits, little-endian', async (t) => {
  for (const [type, { min, max, bytes }] of Object.entries(LIMITS) as [Scalar, (typeof LIMITS)[Scalar]][]) {
    const layout = oneField(type);
    const wide = bytes === 8;
    for (const v of [min, max, 0n, 1n]) {
      const buf = alloc(layout);
      set(layout, buf, 'v', wide ? v : Number(v));
      const got = get(layout, buf, 'v');
      t.equal(typeof got, wide ? 'bigint' : 'number', `${type} reads as ${wide ? 'bigint' : 'number'}`);
      t.equal(BigInt(got), v, `${type} ${v}`);
      t.same(read(layout, buf), { v: wide ? v : Number(v) });
    }
    // Byte order: the low byte comes first.
    const buf = alloc(layout);
    set(layout, buf, 'v', 1n);
    t.equal(buf[0], 1, `${type} is little-endian`);
    // Two's complement: -1 fills the field's bytes, and no more.
    if (min < 0n) {
      set(layout, buf, 'v', -1n);
      t.same([...buf.subarray(0, bytes)], new Array<number>(bytes).fill(0xff));
      t.same([...buf.subarray(bytes)], new Array<number>(8 - bytes).fill(0));
    }
  }
});

t.test('values that do not fit are refused with a RangeError and nothing is written', async (t) => {
  const cases: [Scalar, number | bigint][] = [
    ['u32', -1],
    ['u32', 2 ** 33],
    ['u32', 0x100000000n],
    ['u8', 256],
    ['s8', -129],
    ['s8', 128],
    ['s16', 0x8000],
    ['s32', -0x80000001],
    ['u64', -1n],
    ['u64', 1n << 64n],
    ['s64', 1n << 63n],
    ['u32', 1.5],
    ['u32', Number.NaN],
    ['u64', 2 ** 60], // not a safe integer: refusing it beats storing a rounded value
  ];
  for (const [type, v] of cases) {
    const layout = oneField(type);
    const buf = alloc(layout);
    t.throws(() => set(layout, buf, 'v', v), RangeError, `${type} refuses ${String(v)}`);
    t.throws(() => write(layout, buf, { v }), RangeError);
    t.same([...buf], new Array<number>(8).fill(0), 'buffer untouched');
  }
  // A number is fine for a 64-bit field, a bigint for a narrow one.
  const u64 = oneField('u64');
  const b = alloc(u64, { v: 5 });
  t.equal(get(u64, b, 'v'), 5n);
  const u16 = oneField('u16');
  t.equal(get(u16, alloc(u16, { v: 7n }), 'v'), 7);

  // A failing field anywhere in a write leaves every other field unwritten.
  const buf = alloc(outer);
  t.throws(() => write(outer, buf, { argsz: 9, nested: { tag: 1, value: 2n }, big: -1n }), RangeError);
  t.ok(
    buf.every((x) => x === 0),
    'no partial write',
  );
});

t.test('nested structs, fixed arrays and flexible arrays', async (t) => {
  const buf = alloc(
    outer,
    {
      argsz: 64,
      small: [-1, 2, -3],
      nested: { tag: 0xbeef, value: -5n },
      pair: [{ tag: 1 }, { tag: 2, value: 3n }],
      big: 0xfedcba9876543210n,
    },
    4 * 3,
  );
  t.equal(buf.length, 64 + 12, 'extra bytes for the flexible tail');
  const v = read(outer, buf);
  t.same(v, {
    argsz: 64,
    small: [-1, 2, -3, 0],
    nested: { tag: 0xbeef, value: -5n },
    pair: [
      { tag: 1, value: 0n },
      { tag: 2, value: 3n },
    ],
    big: 0xfedcba9876543210n,
  });
  t.notOk('tail' in v, 'flexible arrays are not read');
  t.equal(buf.readUInt16LE(8), 0xbeef, 'nested field at its offset');
  t.equal(buf.readBigInt64LE(40 + 8), 3n, 'pair[1].value at 24 + 16 + 8');

  // Flexible array: element i at offset 64 + 4i.
  t.equal(elementOffset(outer, 'tail', 0), 64);
  t.equal(elementOffset(outer, 'tail', 2), 72);
  for (let i = 0; i < 3; i++) write(u32Cell, buf, { v: 100 + i }, elementOffset(outer, 'tail', i));
  t.same([buf.readUInt32LE(64), buf.readUInt32LE(68), buf.readUInt32LE(72)], [100, 101, 102]);
  t.throws(() => write(outer, buf, { tail: [1] } as never), RangeError, 'flexible arrays are written through elementOffset');

  // Fixed arrays: bounded by their count.
  t.equal(elementOffset(outer, 'pair', 1), 40);
  t.throws(() => elementOffset(outer, 'pair', 2), RangeError);
  t.throws(() => elementOffset(outer, 'small', -1), RangeError);
  t.throws(() => write(outer, buf, { small: [1, 2, 3, 4, 5] }), RangeError, 'too many elements');
  t.throws(() => elementOffset(outer, 'argsz' as never, 0), RangeError, 'not an array');
  t.throws(() => get(outer, buf, 'nested' as never), RangeError, 'get is for scalars');
  t.throws(() => set(outer, buf, 'nope' as never, 1), RangeError, 'unknown field');
});

t.test('any Uint8Array at any byteOffset, bounds always checked', async (t) => {
  const backing = new ArrayBuffer(100);
  const view = new Uint8Array(backing, 3, 90); // odd offset: no alignment assumptions
  write(outer, view, { argsz: 0x01020304, big: 1n }, 10);
  t.equal(new DataView(backing).getUint32(3 + 10, true), 0x01020304);
  t.equal(get(outer, view, 'big', 10), 1n);
  t.equal(read(outer, view, 10).argsz, 0x01020304);

  t.throws(() => read(outer, view, 27), RangeError, 'struct past the end');
  t.throws(() => read(outer, new Uint8Array(63)), RangeError, 'buffer one byte short');
  t.throws(() => write(outer, new Uint8Array(10), { argsz: 1 }), RangeError, 'write checks the whole struct');
  t.throws(() => get(outer, view, 'big', 83), RangeError);
  t.throws(() => set(outer, view, 'argsz', 1, 87), RangeError);
  t.throws(() => read(outer, view, -1), RangeError, 'negative offset');
  t.throws(() => alloc(outer, {}, -1), RangeError);
  t.equal(get(outer, view, 'argsz', 86), 0, 'last byte in range is fine');
});

/** Writes a capability header at `at`. */
function cap(buf: Uint8Array, at: number, id: number, version: number, next: number): void {
  write(vfio_info_cap_header, buf, { id, version, next }, at);
}

t.test('capability chains are walked by next offsets', async (t) => {
  const buf = alloc(vfio_region_info, { argsz: 96, cap_offset: 32 }, 64);
  cap(buf, 32, 1, 1, 48);
  cap(buf, 48, 3, 2, 80);
  cap(buf, 80, 5, 1, 0);
  t.same(
    [...capabilities(buf, get(vfio_region_info, buf, 'cap_offset'))],
    [
      { id: 1, version: 1, offset: 32 },
      { id: 3, version: 2, offset: 48 },
      { id: 5, version: 1, offset: 80 },
    ],
  );
  t.same([...capabilities(buf, 0)], [], 'cap_offset 0: no capabilities');
});

t.test('malicious capability chains end in an error, never a loop', async (t) => {
  const buf = new Uint8Array(128);
  cap(buf, 32, 1, 1, 32); // points at itself
  t.throws(() => [...capabilities(buf, 32)], RangeError, 'self loop');

  cap(buf, 32, 1, 1, 48);
  cap(buf, 48, 2, 1, 32); // points back
  t.throws(() => [...capabilities(buf, 32)], RangeError, 'backwards loop');

  cap(buf, 48, 2, 1, 36); // overlaps the header before it
  t.throws(() => [...capabilities(buf, 32)], RangeError, 'overlapping header');

  cap(buf, 48, 2, 1, 4096);
  t.throws(() => [...capabilities(buf, 32)], RangeError, 'next outside the buffer');

  cap(buf, 48, 2, 1, 124); // header would straddle the end
  t.throws(() => [...capabilities(buf, 32)], RangeError, 'header straddles the end');

  t.throws(() => [...capabilities(buf, 200)], RangeError, 'first offset outside');

  // The walk yields what it validated before failing, so callers see progress.
  cap(buf, 48, 2, 1, 4096);
  const seen: number[] = [];
  t.throws(() => {
    for (const c of capabilities(buf, 32)) seen.push(c.id);
  });
  t.same(seen, [1, 2]);
});

t.test('field names and value types are checked by the compiler', async (t) => {
  const buf = alloc(vfio_region_info);
  // The assertions below are compile-time (tsc); at runtime they are RangeErrors.
  // @ts-expect-error: not a field of vfio_region_info
  t.throws(() => get(vfio_region_info, buf, 'sizee'));
  const size: bigint = get(vfio_region_info, buf, 'size');
  const flags: number = get(vfio_region_info, buf, 'flags');
  t.equal(size, 0n);
  t.equal(flags, 0);
  // @ts-expect-error: not a field (write)
  t.throws(() => write(vfio_region_info, buf, { argz: 1 }));
});

t.test('field refs: get and set without the name lookup, with the same checks', async (t) => {
  for (const [type, { min, max, bytes }] of Object.entries(LIMITS) as [Scalar, (typeof LIMITS)[Scalar]][]) {
    const layout = oneField(type);
    const ref = fieldRef(layout, 'v');
    const wide = bytes === 8;
    for (const v of [min, max, 0n, 1n, (1n << 53n) - 1n, 1n << 53n, 0xfedcba98n]) {
      if (v < min || v > max) continue;
      const byRef = alloc(layout);
      const byName = alloc(layout);
      setField(ref, byRef, wide ? v : Number(v));
      set(layout, byName, 'v', wide ? v : Number(v));
      t.same([...byRef], [...byName], `${type} ${v}: the same bytes as set`);
      t.equal(getField(ref, byRef), get(layout, byName, 'v'), `${type} ${v}: the same value as get`);
      const n = getFieldNumber(ref, byRef);
      if (v >= -(1n << 53n) + 1n && v <= (1n << 53n) - 1n) t.equal(n, Number(v), `${type} ${v} as an exact number`);
      else t.notOk(Number.isSafeInteger(n), `${type} ${v} beyond 2^53 is not a safe number`);
    }
    // A number is fine for a 64-bit field, a bigint for a narrow one.
    const buf = alloc(layout);
    setField(ref, buf, wide ? 5 : 5n);
    t.equal(BigInt(getField(ref, buf)), 5n);
  }
  // Range: refused, nothing written (the fast paths included).
  const cases: [Scalar, number | bigint][] = [
    ['u32', -1],
    ['u32', 2 ** 32],
    ['u32', 1.5],
    ['u32', Number.NaN],
    ['u32', 0x100000000n],
    ['u64', -1n],
    ['u64', 1n << 64n],
    ['s64', 1n << 63n],
    ['u64', 2 ** 60],
    ['s8', 128],
  ];
  for (const [type, v] of cases) {
    const layout = oneField(type);
    const buf = alloc(layout);
    t.throws(() => setField(fieldRef(layout, 'v'), buf, v), RangeError, `${type} refuses ${String(v)}`);
    t.ok(
      buf.every((x) => x === 0),
      'buffer untouched',
    );
  }
  // Bounds: every access checked, at any offset.
  const ref = fieldRef(outer, 'big');
  const view = new Uint8Array(new ArrayBuffer(100), 3, 90);
  setField(ref, view, 7n, 26);
  t.equal(getField(ref, view, 26), 7n, 'the last offset that fits');
  t.equal(get(outer, view, 'big', 26), 7n);
  t.throws(() => getField(ref, view, 27), RangeError, 'past the end');
  t.throws(() => setField(ref, view, 1n, 27), RangeError);
  t.throws(() => getFieldNumber(ref, view, -57), RangeError, 'before the start');
  t.throws(() => getField(ref, view, 0.5), RangeError, 'a fractional offset');
  t.throws(() => getField(fieldRef(outer, 'argsz'), new Uint8Array(3)), /outer\.argsz/, 'the error names the field');
  // Only scalar fields have refs.
  t.throws(() => fieldRef(outer, 'nested' as never), RangeError);
  t.throws(() => fieldRef(outer, 'small' as never), RangeError);
  t.throws(() => fieldRef(outer, 'nope' as never), RangeError);
  // Typed like get: bigint for 64-bit fields, number otherwise.
  const size: bigint = getField(fieldRef(vfio_region_info, 'size'), alloc(vfio_region_info));
  const flags: number = getField(fieldRef(vfio_region_info, 'flags'), alloc(vfio_region_info));
  t.same([size, flags], [0n, 0]);
});
