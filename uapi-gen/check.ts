// `npm run uapi:check`: proves the committed lib/uapi/{vfio,iommufd}.ts say
// what gcc says about the same kernel headers, and that they are exactly what
// the generator produces today.
//
//   node dist/uapi-gen/uapi-gen/check.js [--headers DIR] [--offline]
//
// Headers: the version stamped in the committed files, from the cache (no
// network needed); else the newest from Debian sid (see ./headers.ts), in
// which case new names show up as mismatches until `npm run uapi:gen`.
//
// What is compared (every item from the generated modules, every name gcc's
// preprocessor finds in the headers):
// - each struct/union: it exists in both, struct vs union, sizeof, alignof;
// - each field: offsetof, element size, element count (plain / fixed array /
//   flexible), signedness of scalars, identity of struct-typed elements; and
//   the field list itself against the members gcc's DWARF debug info names
//   (so a member the generator dropped is noticed even where offsets agree).
//   Bitfields: the generator refuses them (there are none in these headers),
//   so none can reach this comparison;
// - each ioctl and constant: exists in both, value; a macro built with _IO*
//   must be listed under `ioctls`, any other under `constants`;
// - the committed files against a fresh generation, byte for byte, when the
//   headers are the stamped version.
// Exit status 1 on any mismatch, each listed.
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { StructLayout } from '../lib/uapi/codec.js';
import { discover, runProbe, type ProbeRequest } from './gcc.js';
import { generate, HEADERS, parseArgs } from './gen.js';
import { cachedSource, directorySource, newestSource, versionOfStamp, type HeaderSource } from './headers.js';
import { isMain, repoRoot } from './paths.js';

/** The parts of a generated module the check reads. */
export interface GeneratedModule {
  readonly UAPI_SOURCE: string;
  readonly ioctls: Readonly<Record<string, number | bigint>>;
  readonly constants: Readonly<Record<string, number | bigint>>;
  readonly strings: Readonly<Record<string, string>>;
  readonly layouts: Readonly<Record<string, StructLayout>>;
}

export interface CheckResult {
  readonly structs: number;
  readonly fields: number;
  readonly ioctls: number;
  readonly constants: number;
  readonly mismatches: readonly string[];
}

const SCALAR_SIZE: Readonly<Record<string, number>> = { u8: 1, s8: 1, u16: 2, s16: 2, u32: 4, s32: 4, u64: 8, s64: 8 };

/** Compares the generated modules (by header short name) with gcc's view of `source`. */
export function compare(source: HeaderSource, modules: ReadonlyMap<string, GeneratedModule>): CheckResult {
  const headers = [...modules.keys()];
  const mismatches: string[] = [];
  const found = discover(source, headers);
  const req: { records: ProbeRequest['records'][number][]; numbers: string[]; strings: string[] } = {
    records: [],
    numbers: [],
    strings: [],
  };
  // Names present on both sides go to the probe; the rest are mismatches already.
  for (const [h, mod] of modules) {
    const cRecords = new Map(found.records.get(h)!.map((r) => [r.tag, r]));
    for (const tag of cRecords.keys())
      if (!Object.hasOwn(mod.layouts, tag)) mismatches.push(`${h}: struct/union ${tag} is missing from lib/uapi/${h}.ts`);
    for (const [tag, layout] of Object.entries(mod.layouts)) {
      const c = cRecords.get(tag);
      if (c === undefined) {
        mismatches.push(`${h}: ${tag} is not a struct/union of linux/${h}.h`);
        continue;
      }
      if (c.union !== layout.union) mismatches.push(`${h}: ${tag} is a ${c.union ? 'union' : 'struct'} in C`);
      req.records.push({
        name: tag,
        union: c.union,
        fields: Object.entries(layout.fields).map(([name, f]) => ({
          name,
          ...(typeof f.type === 'string' ? {} : { record: { tag: f.type.name, union: f.type.union } }),
          array: f.flexible ? ('flexible' as const) : f.count !== undefined ? ('fixed' as const) : ('no' as const),
        })),
      });
    }
    const cNumbers = new Map<string, { ioctl: boolean }>();
    for (const m of found.macros.get(h)!) {
      if (/^"/.test(m.body)) {
        if (!Object.hasOwn(mod.strings, m.name)) mismatches.push(`${h}: string ${m.name} is missing`);
        else req.strings.push(m.name);
        continue;
      }
      cNumbers.set(m.name, { ioctl: /\b_IO(?:R|W|WR)?\s*\(/.test(m.body) });
    }
    for (const e of found.enumerators.get(h)!) cNumbers.set(e, { ioctl: false });
    for (const [name, { ioctl }] of cNumbers) {
      const inIoctls = Object.hasOwn(mod.ioctls, name);
      const inConstants = Object.hasOwn(mod.constants, name);
      if (!inIoctls && !inConstants) mismatches.push(`${h}: ${name} is missing`);
      else if (inIoctls !== ioctl) mismatches.push(`${h}: ${name} should be listed under ${ioctl ? 'ioctls' : 'constants'}`);
      else req.numbers.push(name);
    }
    for (const name of [...Object.keys(mod.ioctls), ...Object.keys(mod.constants)]) {
      if (!cNumbers.has(name)) mismatches.push(`${h}: ${name} is not a numeric constant of linux/${h}.h`);
    }
    for (const name of Object.keys(mod.strings)) {
      if (!found.macros.get(h)!.some((m) => m.name === name)) mismatches.push(`${h}: ${name} is not a string macro of linux/${h}.h`);
    }
  }

  const probe = runProbe(source, headers, req);
  let structs = 0;
  let fields = 0;
  let ioctls = 0;
  let constants = 0;
  const layoutByName = new Map<string, StructLayout>();
  for (const mod of modules.values()) for (const [k, v] of Object.entries(mod.layouts)) layoutByName.set(k, v);
  for (const r of req.records) {
    const layout = layoutByName.get(r.name)!;
    const c = probe.records.get(r.name);
    structs++;
    if (c === undefined) mismatches.push(`${r.name}: the probe printed nothing`);
    else {
      if (c.size !== layout.size) mismatches.push(`${r.name}: size ${layout.size}, gcc says ${c.size}`);
      if (c.align !== layout.align) mismatches.push(`${r.name}: align ${layout.align}, gcc says ${c.align}`);
    }
    const dwarf = probe.members.get(r.name);
    if (dwarf === undefined) mismatches.push(`${r.name}: not in gcc's debug info`);
    else {
      for (const name of dwarf.keys()) {
        if (!Object.hasOwn(layout.fields, name)) mismatches.push(`${r.name}.${name}: member is missing`);
      }
      for (const [name, f] of Object.entries(layout.fields)) {
        if (!dwarf.has(name)) mismatches.push(`${r.name}.${name}: not a member in C`);
        else if (dwarf.get(name) !== f.offset) mismatches.push(`${r.name}.${name}: offset ${f.offset}, DWARF says ${dwarf.get(name)}`);
      }
    }
    for (const [name, f] of Object.entries(layout.fields)) {
      const key = `${r.name}.${name}`;
      const cf = probe.fields.get(key);
      fields++;
      if (cf === undefined) {
        mismatches.push(`${key}: the probe printed nothing`);
        continue;
      }
      const elementSize = typeof f.type === 'string' ? SCALAR_SIZE[f.type]! : f.type.size;
      const count = f.flexible ? -1 : (f.count ?? 1);
      if (cf.offset !== f.offset) mismatches.push(`${key}: offset ${f.offset}, gcc says ${cf.offset}`);
      if (cf.elementSize !== elementSize) mismatches.push(`${key}: element size ${elementSize}, gcc says ${cf.elementSize}`);
      if (cf.count !== count) mismatches.push(`${key}: count ${count}, gcc says ${cf.count}`);
      if (typeof f.type === 'string') {
        if (cf.signed !== f.type.startsWith('s')) mismatches.push(`${key}: ${f.type}, but gcc says it is ${cf.signed ? '' : 'un'}signed`);
      } else if (!cf.sameRecord) {
        mismatches.push(`${key}: type ${f.type.name} is not the C member's type`);
      }
    }
  }
  for (const [h, mod] of modules) {
    for (const name of req.numbers) {
      const isIoctl = Object.hasOwn(mod.ioctls, name);
      const mine = isIoctl ? mod.ioctls[name] : Object.hasOwn(mod.constants, name) ? mod.constants[name] : undefined;
      if (mine === undefined) continue;
      const c = probe.numbers.get(name);
      if (isIoctl) ioctls++;
      else constants++;
      if (c === undefined) mismatches.push(`${h}: ${name}: the probe printed nothing`);
      else if (BigInt(mine) !== c.value) mismatches.push(`${h}: ${name} = ${String(mine)}, gcc says ${c.value}`);
    }
    for (const name of req.strings) {
      if (!Object.hasOwn(mod.strings, name)) continue;
      constants++;
      const c = probe.strings.get(name);
      if (c !== mod.strings[name]) mismatches.push(`${h}: ${name} = '${mod.strings[name]}', gcc says '${String(c)}'`);
    }
  }
  return { structs, fields, ioctls, constants, mismatches };
}

/** Regenerates into a temporary directory and lists the files that differ. */
export function regenerationDiff(source: HeaderSource, libDir: string): string[] {
  const out: string[] = [];
  const dir = mkdtempSync(join(tmpdir(), 'uapi-regen-'));
  try {
    const { modules } = generate(source);
    for (const [name, text] of modules) {
      writeFileSync(join(dir, `${name}.ts`), text);
      const fresh = readFileSync(join(dir, `${name}.ts`), 'utf8').split('\n');
      const committed = readFileSync(join(libDir, `${name}.ts`), 'utf8').split('\n');
      const at = fresh.findIndex((l, i) => l !== committed[i]);
      const line = at >= 0 ? at : fresh.length !== committed.length ? Math.min(fresh.length, committed.length) : -1;
      if (line >= 0) {
        out.push(
          `lib/uapi/${name}.ts differs from a fresh generation at line ${line + 1}: ` +
            `committed ${JSON.stringify(committed[line] ?? '<end>')}, generated ${JSON.stringify(fresh[line] ?? '<end>')} (run npm run uapi:gen)`,
        );
      }
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  return out;
}

async function loadModules(): Promise<Map<string, GeneratedModule>> {
  const modules = new Map<string, GeneratedModule>();
  for (const h of HEADERS) {
    modules.set(h, (await import(new URL(`../lib/uapi/${h}.js`, import.meta.url).href)) as GeneratedModule);
  }
  return modules;
}

async function main(): Promise<number> {
  const opts = parseArgs(process.argv.slice(2), ['--headers', '--offline']);
  const modules = await loadModules();
  const stamps = new Set([...modules.values()].map((m) => m.UAPI_SOURCE));
  const stamp = [...stamps][0]!;
  const mismatches: string[] = [];
  if (stamps.size !== 1) mismatches.push(`the generated modules have different stamps: ${[...stamps].join(', ')}`);
  let source: HeaderSource;
  if (opts.headers !== undefined) source = directorySource(opts.headers);
  else {
    const version = versionOfStamp(stamp);
    source = (version !== undefined ? cachedSource(version) : undefined) ?? newestSource({ offline: opts.offline });
  }
  process.stdout.write(`uapi:check: headers ${source.stamp} (${source.includeDir}); committed files: ${stamp}\n`);

  if (source.stamp === stamp) {
    const diff = regenerationDiff(source, join(repoRoot(), 'lib', 'uapi'));
    mismatches.push(...diff);
    process.stdout.write(
      `uapi:check: regenerated into a temporary directory: ${diff.length === 0 ? 'identical to the committed files' : 'DIFFERENT'}\n`,
    );
  } else {
    process.stdout.write('uapi:check: headers differ from the stamped version: regeneration diff skipped\n');
  }

  const r = compare(source, modules);
  mismatches.push(...r.mismatches);
  for (const m of mismatches) process.stdout.write(`MISMATCH ${m}\n`);
  const total = r.structs + r.fields + r.ioctls + r.constants;
  process.stdout.write(
    `uapi:check: compared ${total} items (${r.structs} structs, ${r.fields} fields, ${r.ioctls} ioctls, ${r.constants} constants), ` +
      `${mismatches.length} mismatches\n`,
  );
  return mismatches.length === 0 ? 0 : 1;
}

if (isMain(import.meta.url)) {
  main().then(
    (code) => {
      process.exitCode = code;
    },
    (err: unknown) => {
      process.stderr.write(`uapi:check: ${err instanceof Error ? err.message : String(err)}\n`);
      process.exitCode = 1;
    },
  );
}
