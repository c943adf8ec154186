// Builds the facts the generator emits from parsed headers: every struct and
// union laid out with the x86-64 System V rules, every enum value and every
// numeric object-like macro evaluated (./ceval.ts), each tagged with the
// header it came from and its line, so the output keeps header order.
//
// Layout rules (x86-64 SysV, as gcc applies them):
// - a scalar's alignment is its size (u64 included); `__aligned_u64` is 8;
// - a member starts at the next multiple of its alignment (1 if the struct
//   or member is packed, raised by an `aligned(N)` attribute);
// - a struct's alignment is its largest member's (or its `aligned(N)`), its
//   size is rounded up to it; a union's members all start at 0;
// - a flexible array member `x[]` sits at the aligned end, adds no size but
//   does add its alignment;
// - anonymous struct/union members are flattened into the parent, at their
//   offset, as C lets code name them.
import { typeNameAt, type MemberDecl, type ParsedHeader, type RecordDecl, type TypeSpec } from './cparse.js';
import { EvalError, Evaluator, fits, type CType, type CValue, type EvalEnv } from './ceval.js';
import type { Token } from './lexer.js';
import type { MacroDef } from './cparse.js';
import type { Scalar } from '../lib/uapi/codec.js';

export interface LaidField {
  readonly name: string;
  readonly offset: number;
  readonly type: Scalar | LaidRecord;
  readonly count?: number;
  readonly flexible?: true;
}

export interface LaidRecord {
  /** The C tag (`vfio_region_info`). */
  readonly name: string;
  readonly union: boolean;
  readonly size: number;
  readonly align: number;
  readonly fields: readonly LaidField[];
  readonly file: string;
  readonly line: number;
}

export interface Constant {
  readonly name: string;
  readonly value: bigint;
  readonly ctype: CType;
  /** Produced by an `_IO*` encoder. */
  readonly ioctl: boolean;
  readonly kind: 'macro' | 'enum';
  readonly file: string;
  readonly line: number;
}

/** A macro whose body is one plain string literal (`"vfio-pci"`). */
export interface StringConstant {
  readonly name: string;
  readonly value: string;
  readonly file: string;
  readonly line: number;
}

export interface UapiModel {
  readonly records: readonly LaidRecord[];
  readonly constants: readonly Constant[];
  readonly strings: readonly StringConstant[];
  /** Object-like macros that are not numbers (the include guard, ...), with why. */
  readonly skipped: readonly { readonly name: string; readonly file: string; readonly reason: string }[];
}

export class ModelError extends Error {
  override name = 'ModelError';
}

const SCALAR_SIZE: Readonly<Record<Scalar, number>> = { u8: 1, s8: 1, u16: 2, s16: 2, u32: 4, s32: 4, u64: 8, s64: 8 };

const alignUp = (n: number, a: number): number => Math.ceil(n / a) * a;

interface Sized {
  readonly size: number;
  readonly align: number;
}

export function buildModel(headers: readonly ParsedHeader[]): UapiModel {
  const macros = new Map<string, MacroDef>();
  for (const h of headers) {
    for (const m of h.macros) {
      if (macros.has(m.name)) throw new ModelError(`${m.file}.h:${m.line}: macro ${m.name} defined twice`);
      macros.set(m.name, m);
    }
  }
  const recordDecls = new Map<string, RecordDecl>();
  for (const h of headers) {
    for (const r of h.records) {
      const key = `${r.keyword} ${r.tag!}`;
      if (recordDecls.has(key)) throw new ModelError(`${r.file}.h:${r.line}: ${key} defined twice`);
      recordDecls.set(key, r);
    }
  }
  const enumValues = new Map<string, CValue>();
  const laid = new Map<string, LaidRecord>();
  const inProgress = new Set<string>();

  const env: EvalEnv = {
    macro: (name) => macros.get(name),
    enumConstant: (name) => enumValues.get(name),
    sizeofType: (spec) => sizeOf(spec).size,
    typeName: (tokens, pos) => typeNameAt(tokens, pos),
  };
  const evaluator = new Evaluator(env);

  const evalNumber = (tokens: Token[], what: string): number => {
    const { value } = evaluator.evaluate(tokens);
    if (value.v < 0n || value.v > BigInt(Number.MAX_SAFE_INTEGER)) throw new ModelError(`${what}: ${value.v} is not a size`);
    return Number(value.v);
  };

  function sizeOf(spec: TypeSpec): Sized {
    if (spec.kind === 'scalar') return { size: SCALAR_SIZE[spec.scalar], align: spec.aligned ?? SCALAR_SIZE[spec.scalar] };
    if (spec.kind === 'record') return layoutTagged(spec.keyword, spec.tag);
    return layoutBody(spec.record, '(anonymous)');
  }

  function layoutTagged(keyword: 'struct' | 'union', tag: string): LaidRecord {
    const key = `${keyword} ${tag}`;
    const done = laid.get(key);
    if (done !== undefined) return done;
    const decl = recordDecls.get(key);
    if (decl === undefined) throw new ModelError(`${key} is not defined in the headers read`);
    if (inProgress.has(key)) throw new ModelError(`${key} contains itself`);
    inProgress.add(key);
    const body = layoutBody(decl, tag);
    inProgress.delete(key);
    const rec: LaidRecord = { name: tag, ...body, file: decl.file, line: decl.line };
    laid.set(key, rec);
    return rec;
  }

  /** A member's element type, or for an anonymous struct/union the fields it lends its parent. */
  type MemberType =
    | { readonly type: Scalar | LaidRecord; readonly sized: Sized; readonly flatten?: undefined }
    | { readonly type?: undefined; readonly sized: Sized; readonly flatten: readonly LaidField[] };

  function memberType(m: MemberDecl, where: string): MemberType {
    const t = m.type;
    if (t.kind === 'scalar') return { type: t.scalar, sized: sizeOf(t) };
    if (t.kind === 'record') {
      const rec = layoutTagged(t.keyword, t.tag);
      return { type: rec, sized: rec };
    }
    if (m.name !== undefined) {
      throw new ModelError(`${where}.${m.name}: a named member of an unnamed struct/union type is not supported`);
    }
    const body = layoutBody(t.record, where);
    return { sized: body, flatten: body.fields };
  }

  function layoutBody(decl: RecordDecl, where: string): Sized & { union: boolean; fields: LaidField[] } {
    const union = decl.keyword === 'union';
    const fields: LaidField[] = [];
    const names = new Set<string>();
    let end = 0;
    let align = 1;
    decl.members.forEach((m, index) => {
      const at = `${decl.file}.h:${m.line}: ${where}.${m.name ?? '(anonymous)'}`;
      const mt = memberType(m, where);
      const sized = mt.sized;
      let memberAlign = sized.align;
      const explicit = m.attrs.aligned !== undefined ? evalNumber(m.attrs.aligned, `${at} aligned`) : undefined;
      if (decl.attrs.packed || m.attrs.packed) memberAlign = explicit ?? 1;
      else if (explicit !== undefined) memberAlign = Math.max(memberAlign, explicit);
      let count = 1;
      let flexible = false;
      if (m.array !== undefined) {
        if ('flexible' in m.array) {
          flexible = true;
          if (union || index !== decl.members.length - 1) throw new ModelError(`${at}: a flexible array must be a struct's last member`);
        } else {
          count = evalNumber(m.array.count, `${at} array length`);
        }
      }
      const size = flexible ? 0 : sized.size * count;
      const offset = union ? 0 : alignUp(end, memberAlign);
      end = union ? Math.max(end, size) : offset + size;
      align = Math.max(align, memberAlign);
      const add = (f: LaidField): void => {
        if (names.has(f.name)) throw new ModelError(`${at}: duplicate member ${f.name}`);
        names.add(f.name);
        fields.push(f);
      };
      if (mt.flatten !== undefined) {
        for (const f of mt.flatten) add({ ...f, offset: offset + f.offset });
      } else {
        add({
          name: m.name!,
          offset,
          type: mt.type,
          ...(m.array !== undefined && !flexible ? { count } : {}),
          ...(flexible ? { flexible: true as const } : {}),
        });
      }
    });
    if (decl.attrs.aligned !== undefined) align = Math.max(align, evalNumber(decl.attrs.aligned, `${where} aligned`));
    return { union, size: alignUp(end, align), align, fields };
  }

  // Enum constants, in order (later ones may refer to earlier ones and to macros).
  const constants: Constant[] = [];
  for (const h of headers) {
    for (const e of h.enums) {
      let next = 0n;
      for (const m of e.members) {
        let v: bigint;
        if (m.value !== undefined) {
          try {
            v = evaluator.evaluate(m.value).value.v;
          } catch (err) {
            throw new ModelError(`${e.file}.h:${m.line}: enum value ${m.name}: ${(err as Error).message}`);
          }
        } else {
          v = next;
        }
        // An enumeration constant is an int when its value fits one (C11 6.7.2.2).
        const ctype = (['int', 'uint', 'long', 'ulong'] as const).find((t) => fits(v, t));
        if (ctype === undefined) throw new ModelError(`${e.file}.h:${m.line}: enum value ${m.name} = ${v} does not fit 64 bits`);
        if (enumValues.has(m.name) || macros.has(m.name)) throw new ModelError(`${e.file}.h:${m.line}: ${m.name} defined twice`);
        enumValues.set(m.name, { v, type: ctype });
        constants.push({ name: m.name, value: v, ctype, ioctl: false, kind: 'enum', file: e.file, line: m.line });
        next = v + 1n;
      }
    }
  }

  // Every struct and union, tagged ones only (anonymous ones live in their parent).
  const records: LaidRecord[] = [];
  for (const h of headers) {
    for (const r of h.records) records.push(layoutTagged(r.keyword, r.tag!));
  }

  const skipped: { name: string; file: string; reason: string }[] = [];
  const strings: StringConstant[] = [];
  for (const m of macros.values()) {
    if (m.params !== undefined) {
      skipped.push({ name: m.name, file: m.file, reason: 'function-like macro' });
      continue;
    }
    if (m.body.length === 0) {
      skipped.push({ name: m.name, file: m.file, reason: 'empty (include guard)' });
      continue;
    }
    const only = m.body.length === 1 ? m.body[0]! : undefined;
    if (only?.kind === 'string') {
      // Only escape-free literals: their C and JavaScript spellings agree.
      if (!/^"[^"\\]*"$/.test(only.text)) throw new ModelError(`${m.file}.h:${m.line}: string macro ${m.name} has escapes`);
      strings.push({ name: m.name, value: only.text.slice(1, -1), file: m.file, line: m.line });
      continue;
    }
    try {
      const { value, ioctl } = evaluator.evaluate(m.body);
      constants.push({ name: m.name, value: value.v, ctype: value.type, ioctl, kind: 'macro', file: m.file, line: m.line });
    } catch (err) {
      if (!(err instanceof EvalError)) throw err;
      // A numeric-looking macro that fails is a generator bug: fail loudly.
      throw new ModelError(`${m.file}.h:${m.line}: macro ${m.name}: ${err.message}`);
    }
  }
  return { records, constants, strings, skipped };
}
