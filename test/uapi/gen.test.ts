// The uapi generator on synthetic headers (layout rules, expression
// evaluation, refusals), checked both against hand-computed values and, where
// gcc is installed, against gcc itself through the uapi:check machinery.
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import { compare, type GeneratedModule } from '../../uapi-gen/check.js';
import { parseHeader } from '../../uapi-gen/cparse.js';
import { emitModule } from '../../uapi-gen/emit.js';
import { generate } from '../../uapi-gen/gen.js';
import { cachedSource, directorySource } from '../../uapi-gen/headers.js';
import { buildModel, type LaidRecord } from '../../uapi-gen/model.js';
import * as realIommufd from '../../lib/uapi/iommufd.js';
import * as realVfio from '../../lib/uapi/vfio.js';

const SYNTHETIC_VFIO = `
#ifndef SYNTH_H
#define SYNTH_H
#include <linux/types.h>
#include <linux/ioctl.h>

#define T_TYPE (';')
#define T_BASE 100
#define T_SUM 1 + 2
#define T_TEXTUAL (T_SUM * 3)          /* 7, not 9: macros expand textually */
#define T_HIGH (1 << 31)               /* an int in C: -2147483648 */
#define T_HIGH_U (1U << 31)
#define T_MASK (T_HIGH_U | 0x7f)
#define T_BIG 0x123456789abcdef0ULL
#define T_NEG -1
#define T_STR "synthetic"
#define T_N 3
#define T_FN(x) ((x) + 1)

enum t_enum {
\tT_A,
\tT_B = 5,
\tT_C,
\tT_D = T_C + T_BASE,
};

struct t_inner {
\t__u16 tag;
\t__u8 kind;
};

struct t_packed {
\t__u8 a;
\t__u32 b;
\t__u64 c;
} __attribute__((packed));

struct t_aligned {
\t__u8 a;
\t__u32 b __attribute__((aligned(16)));
\t__u8 c;
};

struct t_big_align {
\t__u8 a;
} __attribute__((aligned(32)));

struct t_all {
\t__u32 argsz;
#define T_ALL_FLAG (1 << 3)
\t__s8 small[T_N];
\t__aligned_u64 wide;
\tunion {
\t\t__u32 as_u32;
\t\tstruct {
\t\t\t__u16 lo;
\t\t\t__u16 hi;
\t\t};
\t};
\tstruct t_inner inner;
\tstruct t_inner pair[2];
\t__u64 *ptr;
\t__s64 s;
\tunsigned char uc;
\tint i;
\tstruct t_inner tail[];
};

union t_union {
\t__u8 bytes[5];
\t__u32 word;
};

#define T_IO _IO(T_TYPE, T_BASE + 1)
#define T_IOR _IOR(T_TYPE, T_BASE + 2, struct t_all)
#define T_IOW _IOW(T_TYPE, 3, __u32)
#define T_IOWR _IOWR('X', 0x10, struct t_packed)
#define T_SIZE sizeof(struct t_all)
#endif
`;

const SYNTHETIC_IOMMUFD = `
#ifndef SYNTH2_H
#define SYNTH2_H
#include <linux/types.h>
struct t2 {
\t__u32 size;
\t__aligned_le64 v[2];
};
#define T2_X (sizeof(struct t2) / 8)
#endif
`;

function build() {
  return buildModel([parseHeader(SYNTHETIC_VFIO, 'vfio'), parseHeader(SYNTHETIC_IOMMUFD, 'iommufd')]);
}
const synthetic = build();
const model = () => synthetic;

function record(name: string): LaidRecord {
  const r = synthetic.records.find((x) => x.name === name);
  if (r === undefined) throw new Error(`no ${name}`);
  return r;
}

const fieldsOf = (r: LaidRecord): [string, number][] => r.fields.map((f) => [f.name, f.offset]);

t.test('constant expressions evaluate with C semantics', async (t) => {
  const c = new Map(model().constants.map((x) => [x.name, x]));
  const v = (n: string): bigint | undefined => c.get(n)?.value;
  t.equal(v('T_TYPE'), 0x3bn, 'character literal');
  t.equal(v('T_TEXTUAL'), 7n, 'textual expansion');
  t.equal(v('T_HIGH'), -2147483648n, '(1 << 31) is a negative int');
  t.equal(c.get('T_HIGH')?.ctype, 'int');
  t.equal(v('T_HIGH_U'), 0x80000000n);
  t.equal(c.get('T_HIGH_U')?.ctype, 'uint');
  t.equal(v('T_MASK'), 0x8000007fn);
  t.equal(v('T_BIG'), 0x123456789abcdef0n);
  t.equal(v('T_NEG'), -1n);
  t.same([v('T_A'), v('T_B'), v('T_C'), v('T_D')], [0n, 5n, 6n, 106n], 'enum values, implicit and referring');
  t.equal(v('T_ALL_FLAG'), 8n, 'a #define inside a struct body');
  // _IO(type, nr): type << 8 | nr.
  t.equal(v('T_IO'), (0x3bn << 8n) | 101n);
  t.equal(c.get('T_IO')?.ioctl, true);
  t.equal(c.get('T_BASE')?.ioctl, false);
  const allSize = BigInt(record('t_all').size);
  // _IOR: read (2) << 30 | size << 16 | type << 8 | nr.
  t.equal(v('T_IOR'), (2n << 30n) | (allSize << 16n) | (0x3bn << 8n) | 102n);
  t.equal(v('T_IOW'), (1n << 30n) | (4n << 16n) | (0x3bn << 8n) | 3n);
  t.equal(v('T_IOWR'), (3n << 30n) | (13n << 16n) | (0x58n << 8n) | 0x10n, 'packed struct: 13 bytes');
  t.equal(v('T_SIZE'), allSize);
  t.equal(v('T2_X'), 3n, 'sizeof in the other header');
  t.same(
    model().strings.map((s) => [s.name, s.value]),
    [['T_STR', 'synthetic']],
  );
  t.same(
    model().skipped.map((s) => s.name),
    ['SYNTH_H', 'T_FN', 'SYNTH2_H'],
    'include guards and function-like macros are not constants',
  );
});

t.test('x86-64 layout rules', async (t) => {
  const packed = record('t_packed');
  t.same(
    [packed.size, packed.align, fieldsOf(packed)],
    [
      13,
      1,
      [
        ['a', 0],
        ['b', 1],
        ['c', 5],
      ],
    ],
    'packed',
  );
  const aligned = record('t_aligned');
  t.same(
    [aligned.size, aligned.align, fieldsOf(aligned)],
    [
      32,
      16,
      [
        ['a', 0],
        ['b', 16],
        ['c', 20],
      ],
    ],
    'aligned member',
  );
  t.same([record('t_big_align').size, record('t_big_align').align], [32, 32], 'aligned struct');
  const all = record('t_all');
  t.same(fieldsOf(all), [
    ['argsz', 0],
    ['small', 4],
    ['wide', 8],
    ['as_u32', 16],
    ['lo', 16],
    ['hi', 18],
    ['inner', 20],
    ['pair', 24],
    ['ptr', 32],
    ['s', 40],
    ['uc', 48],
    ['i', 52],
    ['tail', 56],
  ]);
  t.equal(all.size, 56, 'the flexible array adds no size');
  t.equal(all.align, 8);
  const f = (n: string) => all.fields.find((x) => x.name === n)!;
  t.equal(f('small').count, 3);
  t.equal(f('small').type, 's8');
  t.equal(f('ptr').type, 'u64', 'a pointer is a u64 address');
  t.equal(f('uc').type, 'u8');
  t.equal(f('i').type, 's32');
  t.equal(f('tail').flexible, true);
  t.equal(f('inner').type, record('t_inner'), 'nested struct by reference');
  const u = record('t_union');
  t.same([u.union, u.size, u.align], [true, 8, 4]);
  const t2 = record('t2');
  t.same(
    [t2.size, t2.align, fieldsOf(t2)],
    [
      24,
      8,
      [
        ['size', 0],
        ['v', 8],
      ],
    ],
  );
});

t.test('what the generator refuses, it refuses by name', async (t) => {
  const bad = (body: string) => () => buildModel([parseHeader(body, 'vfio')]);
  t.throws(bad('struct s { __u32 a : 3; };'), /bitfield a/);
  t.throws(bad('struct s { __be32 a; };'), /big-endian/);
  t.throws(bad('struct s { float a; };'), /unknown type float/);
  t.throws(bad('struct s { enum e a; };'), /enum-typed/);
  t.throws(bad('struct s { __u32 a[2][3]; };'), /multi-dimensional/);
  t.throws(bad('struct s { __u32 a[]; __u32 b; };'), /last member/);
  t.throws(bad('struct s { struct missing m; };'), /struct missing is not defined/);
  t.throws(bad('#if 1\n#endif\n'), /unsupported directive #if/);
  t.throws(bad('#define X (1 / 0)\n'), /division by zero/);
  t.throws(bad('#define X (1 << 40)\n'), /shift by 40/);
  t.throws(bad('#define X (Y + 1)\n'), /Y is not a constant/);
  t.throws(bad('typedef int x;'), /unsupported top-level/);
  t.throws(bad('struct s { __u32 a; __u32 a; };'), /duplicate member a/);
  t.throws(bad('#define X _IOR(1, 2, struct big)\nstruct big { __u8 b[20000]; };'), /does not fit 14 bits/);
});

t.test('emitted modules are deterministic and in header order', async (t) => {
  const a = emitModule(model(), 'vfio', 'test 1');
  const b = emitModule(build(), 'vfio', 'test 1');
  t.equal(a, b);
  t.match(a, /^\/\/ GENERATED .* DO NOT EDIT\./);
  t.ok(a.indexOf('export const t_inner =') < a.indexOf('export const t_all ='), 'dependencies first');
  t.ok(a.indexOf('export const T_ALL_FLAG') > a.indexOf('export const t_all ='), 'flag after its struct');
  t.match(a, /export const T_IO = 0x3b65;/);
  t.match(a, /export const T_HIGH = -2147483648;/);
  t.match(a, /export const T_BIG = 0x123456789abcdef0n;/, 'beyond 2^53: a bigint');
  t.match(a, /small: \{ offset: 4, type: 's8', count: 3 \}/);
  t.match(a, /tail: \{ offset: 56, type: t_inner, flexible: true \}/);
});

function hasGcc(): boolean {
  // The synthetic headers include the machine's own linux/types.h and linux/ioctl.h.
  if (!existsSync('/usr/include/linux/ioctl.h')) return false;
  try {
    execFileSync('gcc', ['--version'], { stdio: 'ignore' });
    return process.arch === 'x64';
  } catch {
    return false;
  }
}

/** Loads emitted module text through the test runner's TypeScript loader. */
async function loadEmitted(dir: string, name: string, text: string): Promise<GeneratedModule> {
  // .mts: an ES module whatever package.json (there is none in the temp dir) says.
  const file = join(dir, `${name}.mts`);
  writeFileSync(file, text);
  return (await import(file)) as GeneratedModule;
}

t.test('gcc agrees with the generator on the synthetic headers', { skip: hasGcc() ? false : 'needs gcc on x86-64' }, async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'uapi-gen-test-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  mkdirSync(join(dir, 'include', 'linux'), { recursive: true });
  writeFileSync(join(dir, 'include', 'linux', 'vfio.h'), SYNTHETIC_VFIO);
  writeFileSync(join(dir, 'include', 'linux', 'iommufd.h'), SYNTHETIC_IOMMUFD);
  // linux/types.h and linux/ioctl.h come from the machine's own headers.
  const source = directorySource(join(dir, 'include'));
  const { modules } = generate(source);
  const loaded = new Map<string, GeneratedModule>();
  for (const [name, text] of modules) loaded.set(name, await loadEmitted(dir, name, text));
  const r = compare(source, loaded);
  t.same(r.mismatches, []);
  t.same([r.structs, r.ioctls], [7, 4]);
  t.equal(r.fields, 2 + 3 + 3 + 1 + 13 + 2 + 2);

  // And it notices when they disagree.
  const broken = structuredClone({ ...loaded.get('vfio')! });
  (broken.layouts['t_packed']!.fields['b'] as { offset: number }).offset = 4;
  const r2 = compare(source, new Map([...loaded, ['vfio', broken]]));
  t.same(r2.mismatches, ['t_packed.b: offset 4, DWARF says 1', 't_packed.b: offset 4, gcc says 1']);
});

const real = cachedSource(realVfio.UAPI_SOURCE.replace(/^linux-libc-dev /, ''));
t.test(
  'the committed modules against the real headers',
  { skip: real !== undefined && hasGcc() ? false : 'needs the cached headers (npm run uapi:gen) and gcc' },
  async (t) => {
    const source = real!;
    const mods = new Map<string, GeneratedModule>([
      ['vfio', realVfio],
      ['iommufd', realIommufd],
    ]);
    const ok = compare(source, mods);
    t.same(ok.mismatches, []);
    t.ok(ok.structs + ok.fields + ok.ioctls + ok.constants >= 150, 'compares at least 150 items');

    // Mutations of every kind are each reported.
    const v = structuredClone({ ...realVfio }) as unknown as { -readonly [K in keyof GeneratedModule]: GeneratedModule[K] };
    const i = structuredClone({ ...realIommufd }) as unknown as { -readonly [K in keyof GeneratedModule]: GeneratedModule[K] };
    const layouts = v.layouts as Record<string, { size: number; fields: Record<string, unknown> }>;
    layouts['vfio_region_info']!.size = 40;
    delete layouts['vfio_region_info']!.fields['cap_offset'];
    (v.ioctls as Record<string, number>)['VFIO_GET_API_VERSION'] = 1;
    delete (i.constants as Record<string, number>)['IOMMU_HWPT_DATA_NONE'];
    (i.constants as Record<string, number>)['BOGUS'] = 3;
    delete (i.layouts as Record<string, unknown>)['iommu_ioas_map'];
    const bad = compare(
      source,
      new Map([
        ['vfio', v],
        ['iommufd', i],
      ]),
    );
    t.same([...bad.mismatches].sort(), [
      'iommufd: BOGUS is not a numeric constant of linux/iommufd.h',
      'iommufd: IOMMU_HWPT_DATA_NONE is missing',
      'iommufd: struct/union iommu_ioas_map is missing from lib/uapi/iommufd.ts',
      'vfio: VFIO_GET_API_VERSION = 1, gcc says 15204',
      'vfio_region_info.cap_offset: member is missing',
      'vfio_region_info: size 40, gcc says 32',
    ]);
  },
);
