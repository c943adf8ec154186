// What gcc itself says about the headers, for `npm run uapi:check`.
//
// Two independent sources of truth, neither using the generator's parser:
// - `discover()` preprocesses the headers with `gcc -E -dD` and lists, from
//   gcc's output, every object-like macro, struct/union tag and enumeration
//   constant the two headers define (so a name the generator missed is
//   noticed, not only a wrong value);
// - `runProbe()` compiles a C program that prints sizeof/alignof of each
//   struct, offsetof/size/signedness/type of each field, and the value and C
//   type of each constant, then parses what it prints.
//
// The probe's C source is written into a fresh temporary directory that is
// removed afterwards; nothing of it is kept in the repository.
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { HeaderSource } from './headers.js';

export class GccError extends Error {
  override name = 'GccError';
}

function includeArgs(source: HeaderSource): string[] {
  return [source.includeDir, ...source.extraIncludeDirs].flatMap((d) => ['-I', d]);
}

export interface Discovered {
  /** Object-like, non-empty macros (name and body as gcc prints it) by header short name. */
  readonly macros: ReadonlyMap<string, readonly { readonly name: string; readonly body: string }[]>;
  /** Struct and union tags defined, by header. */
  readonly records: ReadonlyMap<string, readonly { readonly tag: string; readonly union: boolean }[]>;
  /** Enumeration constants, by header. */
  readonly enumerators: ReadonlyMap<string, readonly string[]>;
}

/** Lists what `headers` define, as gcc's preprocessor sees them. */
export function discover(source: HeaderSource, headers: readonly string[]): Discovered {
  const dir = mkdtempSync(join(tmpdir(), 'uapi-discover-'));
  try {
    const file = join(dir, 'discover.c');
    writeFileSync(file, headers.map((h) => `#include <linux/${h}.h>\n`).join(''));
    let out: string;
    try {
      out = execFileSync('gcc', ['-E', '-dD', ...includeArgs(source), file], { encoding: 'utf8', maxBuffer: 64 << 20 });
    } catch (err) {
      throw new GccError(`gcc -E failed: ${(err as { stderr?: string }).stderr ?? String(err)}`);
    }
    const macros = new Map<string, { name: string; body: string }[]>(headers.map((h) => [h, []]));
    const text = new Map<string, string[]>(headers.map((h) => [h, []]));
    let current: string | undefined;
    for (const line of out.split('\n')) {
      const marker = /^# \d+ "([^"]*)"/.exec(line);
      if (marker) {
        const m = /\/linux\/([a-z0-9_]+)\.h$/.exec(marker[1]!);
        current = m !== null && headers.includes(m[1]!) ? m[1] : undefined;
        continue;
      }
      if (current === undefined) continue;
      const def = /^#define ([A-Za-z_][A-Za-z0-9_]*)(.*)$/.exec(line);
      if (def) {
        const rest = def[2]!;
        // `NAME(` is function-like; an empty body is an include guard.
        if (!rest.startsWith('(') && rest.trim() !== '') macros.get(current)!.push({ name: def[1]!, body: rest.trim() });
        continue;
      }
      if (line.startsWith('#')) continue;
      text.get(current)!.push(line);
    }
    const records = new Map<string, { tag: string; union: boolean }[]>();
    const enumerators = new Map<string, string[]>();
    for (const [h, lines] of text) {
      const body = lines.join('\n');
      records.set(
        h,
        [...body.matchAll(/\b(struct|union)\s+([A-Za-z_]\w*)\s*(?:__attribute__\s*\(\(.*?\)\)\s*)?\{/g)].map((m) => ({
          tag: m[2]!,
          union: m[1] === 'union',
        })),
      );
      const names: string[] = [];
      for (const m of body.matchAll(/\benum\s*(?:[A-Za-z_]\w*\s*)?\{([^}]*)\}/g)) {
        for (const item of m[1]!.split(',')) {
          const name = /^\s*([A-Za-z_]\w*)/.exec(item)?.[1];
          if (name !== undefined) names.push(name);
        }
      }
      enumerators.set(h, names);
    }
    return { macros, records, enumerators };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

export interface ProbeField {
  readonly struct: string;
  readonly field: string;
}

/** What the probe is asked about: names only, all taken from the generated modules. */
export interface ProbeRequest {
  readonly records: readonly {
    readonly name: string;
    readonly union: boolean;
    readonly fields: readonly {
      readonly name: string;
      /** Generated element type: a scalar, or the tag of a struct/union (with its keyword). */
      readonly record?: { readonly tag: string; readonly union: boolean };
      readonly array: 'no' | 'fixed' | 'flexible';
    }[];
  }[];
  readonly numbers: readonly string[];
  readonly strings: readonly string[];
}

export interface ProbeResult {
  readonly records: ReadonlyMap<string, { size: number; align: number }>;
  /** Keyed `struct.field`. */
  readonly fields: ReadonlyMap<
    string,
    {
      offset: number;
      /** sizeof one element. */
      elementSize: number;
      /** Element count for a fixed array, 1 for a plain member, -1 for a flexible array. */
      count: number;
      signed: boolean;
      /** For a struct/union-typed field: whether C's type is the generated one. */
      sameRecord: boolean;
    }
  >;
  readonly numbers: ReadonlyMap<string, { value: bigint; ctype: string }>;
  readonly strings: ReadonlyMap<string, string>;
  /**
   * Every member name of every struct/union tag, as the DWARF debug info gcc
   * wrote for the probe lists them (anonymous members flattened, with their
   * offsets): an enumeration of fields that does not come from the generator.
   */
  readonly members: ReadonlyMap<string, ReadonlyMap<string, number>>;
}

/** The probe's C source. Every printed line starts with a tag letter. */
export function probeSource(headers: readonly string[], req: ProbeRequest): string {
  const lines: string[] = [
    '/* uapi:check probe (generated; compiled in a temporary directory and deleted). */',
    '#include <stddef.h>',
    '#include <stdio.h>',
    ...headers.map((h) => `#include <linux/${h}.h>`),
    '',
    '#define SIGNED_T(e) ((__typeof__(e))-1 < (__typeof__(e))0)',
    '#define CTYPE(x) _Generic((x), int: "int", unsigned int: "uint", long: "long", unsigned long: "ulong", \\',
    '  long long: "long", unsigned long long: "ulong", default: "other")',
    '#define NUM(x) do { if ((x) < 0) printf("N %s %lld %s\\n", #x, (long long)(x), CTYPE(x)); \\',
    '  else printf("N %s %llu %s\\n", #x, (unsigned long long)(x), CTYPE(x)); } while (0)',
    '',
    ...req.records.map((r, i) => `${r.union ? 'union' : 'struct'} ${r.name} *uapi_probe_${i}; /* makes gcc describe it in DWARF */`),
    '',
    'int main(void) {',
  ];
  for (const r of req.records) {
    const t = `${r.union ? 'union' : 'struct'} ${r.name}`;
    lines.push(`  printf("S ${r.name} %zu %zu\\n", sizeof(${t}), _Alignof(${t}));`);
    for (const f of r.fields) {
      const m = `((${t} *)0)->${f.name}`;
      const el = f.array === 'no' ? m : `${m}[0]`;
      const count = f.array === 'fixed' ? `(long)(sizeof(${m}) / sizeof(${el}))` : f.array === 'flexible' ? '-1L' : '1L';
      const same =
        f.record === undefined
          ? '0'
          : `__builtin_types_compatible_p(__typeof__(${el}), ${f.record.union ? 'union' : 'struct'} ${f.record.tag})`;
      lines.push(
        `  /* ${r.name}.${f.name} */ printf("F ${r.name}.${f.name} %zu %zu %ld %d %d\\n", ` +
          `offsetof(${t}, ${f.name}), sizeof(${el}), ${count}, ${f.record === undefined ? `(int)SIGNED_T(${el})` : '0'}, ${same});`,
      );
    }
  }
  for (const n of req.numbers) lines.push(`  NUM(${n});`);
  for (const s of req.strings) lines.push(`  printf("T ${s} %s\\n", ${s});`);
  lines.push('  return 0;', '}', '');
  return lines.join('\n');
}

/** Compiles and runs the probe; returns what it printed, parsed. */
export function runProbe(source: HeaderSource, headers: readonly string[], req: ProbeRequest): ProbeResult {
  if (process.arch !== 'x64') throw new GccError(`the probe must run on x86-64 (the layouts are x86-64's); this is ${process.arch}`);
  const dir = mkdtempSync(join(tmpdir(), 'uapi-probe-'));
  try {
    const c = join(dir, 'probe.c');
    const exe = join(dir, 'probe');
    writeFileSync(c, probeSource(headers, req));
    try {
      // -w: the probe compares unsigned values with 0 on purpose (NUM).
      execFileSync('gcc', ['-std=gnu11', '-O0', '-g', '-w', ...includeArgs(source), c, '-o', exe], {
        encoding: 'utf8',
        stdio: ['ignore', 'pipe', 'pipe'],
      });
    } catch (err) {
      const stderr = (err as { stderr?: string }).stderr ?? String(err);
      throw new GccError(`the probe does not compile, so the generated names disagree with the headers:\n${stderr}`);
    }
    const out = execFileSync(exe, { encoding: 'utf8', maxBuffer: 64 << 20 });
    let dwarf: string;
    try {
      dwarf = execFileSync('readelf', ['--debug-dump=info', exe], { encoding: 'utf8', maxBuffer: 256 << 20 });
    } catch (err) {
      throw new GccError(`readelf failed (binutils is needed): ${(err as { stderr?: string }).stderr ?? String(err)}`);
    }
    return { ...parseProbeOutput(out), members: dwarfMembers(dwarf) };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

function parseProbeOutput(out: string): Omit<ProbeResult, 'members'> {
  const records = new Map<string, { size: number; align: number }>();
  const fields = new Map<string, { offset: number; elementSize: number; count: number; signed: boolean; sameRecord: boolean }>();
  const numbers = new Map<string, { value: bigint; ctype: string }>();
  const strings = new Map<string, string>();
  for (const line of out.split('\n')) {
    if (line === '') continue;
    const [tag, name, ...rest] = line.split(' ');
    if (name === undefined) throw new GccError(`unexpected probe output: ${line}`);
    switch (tag) {
      case 'S':
        records.set(name, { size: Number(rest[0]), align: Number(rest[1]) });
        break;
      case 'F':
        fields.set(name, {
          offset: Number(rest[0]),
          elementSize: Number(rest[1]),
          count: Number(rest[2]),
          signed: rest[3] === '1',
          sameRecord: rest[4] === '1',
        });
        break;
      case 'N':
        numbers.set(name, { value: BigInt(rest[0]!), ctype: rest[1]! });
        break;
      case 'T':
        strings.set(name, rest.join(' '));
        break;
      default:
        throw new GccError(`unexpected probe output: ${line}`);
    }
  }
  return { records, fields, numbers, strings };
}

interface Die {
  readonly tag: string;
  readonly attrs: Map<string, string>;
  readonly children: Die[];
}

/** Parses `readelf --debug-dump=info` into DIEs by offset. */
function parseDies(text: string): Map<string, Die> {
  const byOffset = new Map<string, Die>();
  const stack: Die[] = [];
  let current: Die | undefined;
  for (const line of text.split('\n')) {
    const head = /^\s*<(\d+)><([0-9a-f]+)>: Abbrev Number: \d+(?: \((DW_TAG_\w+)\))?/.exec(line);
    if (head) {
      const depth = Number(head[1]);
      if (head[3] === undefined) {
        // A null entry closes the children of the DIE at depth - 1.
        current = undefined;
        continue;
      }
      const die: Die = { tag: head[3], attrs: new Map(), children: [] };
      byOffset.set(head[2]!, die);
      stack.length = depth;
      if (depth > 0) stack[depth - 1]?.children.push(die);
      stack[depth] = die;
      current = die;
      continue;
    }
    const attr = /^\s*<[0-9a-f]+>\s+(DW_AT_\w+)\s*: (.*)$/.exec(line);
    if (attr && current !== undefined) {
      let value = attr[2]!.trim();
      // `(indirect string, offset: 0x69): name` -> `name`
      const indirect = /^\(indirect [^)]*\): (.*)$/.exec(value);
      if (indirect) value = indirect[1]!;
      current.attrs.set(attr[1]!, value);
    }
  }
  return byOffset;
}

function dwarfMembers(text: string): Map<string, Map<string, number>> {
  const dies = parseDies(text);
  const resolve = (ref: string | undefined): Die | undefined => {
    let die = ref === undefined ? undefined : dies.get(/<0x([0-9a-f]+)>/.exec(ref)?.[1] ?? '');
    while (die !== undefined && ['DW_TAG_typedef', 'DW_TAG_const_type', 'DW_TAG_volatile_type'].includes(die.tag)) {
      die = dies.get(/<0x([0-9a-f]+)>/.exec(die.attrs.get('DW_AT_type') ?? '')?.[1] ?? '');
    }
    return die;
  };
  const flatten = (record: Die, base: number, out: Map<string, number>): void => {
    for (const m of record.children) {
      if (m.tag !== 'DW_TAG_member') continue;
      const offset = base + Number(m.attrs.get('DW_AT_data_member_location') ?? '0');
      const name = m.attrs.get('DW_AT_name');
      if (name !== undefined) {
        out.set(name, offset);
        continue;
      }
      const inner = resolve(m.attrs.get('DW_AT_type'));
      if (inner === undefined) throw new GccError('DWARF: anonymous member without a type');
      flatten(inner, offset, out);
    }
  };
  const result = new Map<string, Map<string, number>>();
  for (const die of dies.values()) {
    if (die.tag !== 'DW_TAG_structure_type' && die.tag !== 'DW_TAG_union_type') continue;
    const name = die.attrs.get('DW_AT_name');
    if (name === undefined || die.attrs.has('DW_AT_declaration')) continue;
    const members = new Map<string, number>();
    flatten(die, 0, members);
    result.set(name, members);
  }
  return result;
}
