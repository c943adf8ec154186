// Parses the declarations of a uapi header: struct/union definitions, enums
// and `#define`s. It understands the subset of C that uapi headers use and
// rejects the rest by name (bitfields, big-endian types, typedefs,
// functions) instead of guessing, because a wrong layout here would become a
// wrong ioctl argument at runtime.
//
// Nothing is evaluated here: array lengths, enum values and macro bodies stay
// token lists, evaluated later by ./ceval.ts once every header is known.
import { HeaderSyntaxError, lexHeader, type Token } from './lexer.js';
import type { Scalar } from '../lib/uapi/codec.js';

export interface Attrs {
  packed: boolean;
  /** `__attribute__((aligned(N)))`: the expression N, unevaluated. */
  aligned?: Token[];
}

export type TypeSpec =
  | { readonly kind: 'scalar'; readonly scalar: Scalar; readonly aligned?: number }
  | { readonly kind: 'record'; readonly keyword: 'struct' | 'union'; readonly tag: string }
  | { readonly kind: 'inline'; readonly record: RecordDecl };

export interface MemberDecl {
  /** Undefined for an anonymous struct/union member (flattened into the parent). */
  readonly name: string | undefined;
  readonly type: TypeSpec;
  /** `x[N]` (count tokens) or `x[]` (flexible). */
  readonly array?: { readonly count: Token[] } | { readonly flexible: true };
  readonly attrs: Attrs;
  readonly line: number;
}

export interface RecordDecl {
  readonly keyword: 'struct' | 'union';
  readonly tag: string | undefined;
  readonly members: MemberDecl[];
  readonly attrs: Attrs;
  readonly file: string;
  readonly line: number;
}

export interface EnumDecl {
  readonly tag: string | undefined;
  readonly members: { readonly name: string; readonly value: Token[] | undefined; readonly line: number }[];
  readonly file: string;
  readonly line: number;
}

export interface MacroDef {
  readonly name: string;
  /** Parameter names of a function-like macro; undefined for object-like. */
  readonly params: string[] | undefined;
  readonly body: Token[];
  readonly file: string;
  readonly line: number;
}

export interface ParsedHeader {
  /** Short name of the header (`vfio`, `iommufd`). */
  readonly file: string;
  readonly records: RecordDecl[];
  readonly enums: EnumDecl[];
  readonly macros: MacroDef[];
  readonly includes: string[];
}

/** The fixed-width kernel types and what they are on little-endian x86-64. */
const KERNEL_SCALARS: Readonly<Record<string, { scalar: Scalar; aligned?: number }>> = {
  __u8: { scalar: 'u8' },
  __s8: { scalar: 's8' },
  __u16: { scalar: 'u16' },
  __s16: { scalar: 's16' },
  __u32: { scalar: 'u32' },
  __s32: { scalar: 's32' },
  __u64: { scalar: 'u64' },
  __s64: { scalar: 's64' },
  // Little-endian types are plain integers on a little-endian machine.
  __le16: { scalar: 'u16' },
  __le32: { scalar: 'u32' },
  __le64: { scalar: 'u64' },
  // linux/types.h: `__u64 __attribute__((aligned(8)))`, so that 32-bit and
  // 64-bit userspace agree on the layout.
  __aligned_u64: { scalar: 'u64', aligned: 8 },
  __aligned_le64: { scalar: 'u64', aligned: 8 },
};

/** Big-endian kernel types: the codec has no big-endian scalars, so refuse them. */
const BIG_ENDIAN = new Set(['__be16', '__be32', '__be64', '__aligned_be64']);

/** Annotations that expand to nothing in uapi headers (some take an argument). */
const NO_OP_ANNOTATIONS = new Set([
  '__counted_by',
  '__counted_by_le',
  '__counted_by_be',
  '__counted_by_ptr',
  '__user',
  '__force',
  '__bitwise',
  '__kernel',
  'const',
  'volatile',
]);

const BASIC_WORDS = new Set(['unsigned', 'signed', 'char', 'short', 'int', 'long']);

/** C basic integer types on x86-64 (LP64). */
function basicScalar(words: string[]): Scalar {
  const unsigned = words.includes('unsigned');
  const longs = words.filter((w) => w === 'long').length;
  let bits: number;
  if (words.includes('char')) bits = 8;
  else if (words.includes('short')) bits = 16;
  else if (longs > 0) bits = 64;
  else bits = 32;
  // Plain `char` is signed on x86-64.
  return `${unsigned ? 'u' : 's'}${bits}` as Scalar;
}

class Cursor {
  pos = 0;
  constructor(
    readonly tokens: Token[],
    readonly file: string,
  ) {}

  peek(ahead = 0): Token | undefined {
    return this.tokens[this.pos + ahead];
  }
  at(text: string): boolean {
    return this.peek()?.text === text;
  }
  line(): number {
    return this.peek()?.line ?? this.tokens[this.tokens.length - 1]?.line ?? 0;
  }
  fail(message: string): never {
    throw new HeaderSyntaxError(this.file, this.line(), message);
  }
  next(): Token {
    const t = this.tokens[this.pos++];
    if (t === undefined) this.fail('unexpected end of header');
    return t;
  }
  expect(text: string): Token {
    const t = this.next();
    if (t.text !== text) {
      this.pos--;
      this.fail(`expected '${text}', found '${t.text}'`);
    }
    return t;
  }
  ident(): string {
    const t = this.next();
    if (t.kind !== 'ident') {
      this.pos--;
      this.fail(`expected a name, found '${t.text}'`);
    }
    return t.text;
  }
  /** Tokens up to (not including) the `close` that balances the already-consumed `open`. */
  balanced(open: string, close: string): Token[] {
    const out: Token[] = [];
    let depth = 1;
    for (;;) {
      const t = this.next();
      if (t.text === open) depth++;
      else if (t.text === close && --depth === 0) return out;
      out.push(t);
    }
  }
}

/** Parses `__attribute__((...))` lists and no-op annotations at the cursor. */
function parseAttrs(c: Cursor, attrs: Attrs): void {
  for (;;) {
    const t = c.peek();
    if (t === undefined || t.kind !== 'ident') return;
    if (t.text === '__attribute__' || t.text === '__attribute') {
      c.next();
      c.expect('(');
      c.expect('(');
      const inner = c.balanced('(', ')');
      c.expect(')');
      parseAttributeList(c, inner, attrs);
    } else if (NO_OP_ANNOTATIONS.has(t.text)) {
      c.next();
      if (c.at('(')) {
        c.next();
        c.balanced('(', ')');
      }
    } else {
      return;
    }
  }
}

function parseAttributeList(c: Cursor, inner: Token[], attrs: Attrs): void {
  const sub = new Cursor(inner, c.file);
  while (sub.peek() !== undefined) {
    const name = sub.ident().replace(/^__(.*)__$/, '$1');
    let args: Token[] | undefined;
    if (sub.at('(')) {
      sub.next();
      args = sub.balanced('(', ')');
    }
    if (name === 'packed') attrs.packed = true;
    else if (name === 'aligned') {
      // A bare `aligned` means "the largest alignment": 16 on x86-64.
      attrs.aligned = args ?? [{ kind: 'number', text: '16', line: c.line() }];
    } else sub.fail(`unsupported attribute ${name}`);
    if (sub.at(',')) sub.next();
  }
}

function parseTypeSpec(c: Cursor, file: string): TypeSpec {
  const t = c.peek();
  if (t === undefined) c.fail('expected a type');
  if (t.text === 'struct' || t.text === 'union') {
    c.next();
    const keyword = t.text;
    const attrs: Attrs = { packed: false };
    parseAttrs(c, attrs);
    let tag: string | undefined;
    if (c.peek()?.kind === 'ident') tag = c.ident();
    if (c.at('{')) {
      const record = parseRecordBody(c, keyword, tag, attrs, file, t.line);
      if (tag !== undefined) c.fail(`nested definition of ${keyword} ${tag} (define it at top level)`);
      return { kind: 'inline', record };
    }
    if (tag === undefined) c.fail(`${keyword} without a name or a body`);
    return { kind: 'record', keyword, tag };
  }
  if (t.text === 'enum') c.fail('enum-typed members are not supported (their size is compiler-chosen; uapi uses __u32)');
  if (t.kind !== 'ident') c.fail(`expected a type, found '${t.text}'`);
  if (BIG_ENDIAN.has(t.text)) c.fail(`big-endian type ${t.text} is not supported by the codec`);
  const kernel = KERNEL_SCALARS[t.text];
  if (kernel !== undefined) {
    c.next();
    return { kind: 'scalar', ...kernel };
  }
  if (BASIC_WORDS.has(t.text)) {
    const words: string[] = [];
    while (c.peek() !== undefined && BASIC_WORDS.has(c.peek()!.text)) words.push(c.next().text);
    return { kind: 'scalar', scalar: basicScalar(words) };
  }
  return c.fail(`unknown type ${t.text}`);
}

function parseMembers(c: Cursor, file: string): MemberDecl[] {
  const members: MemberDecl[] = [];
  while (!c.at('}')) {
    const attrs: Attrs = { packed: false };
    parseAttrs(c, attrs);
    const line = c.line();
    const type = parseTypeSpec(c, file);
    parseAttrs(c, attrs);
    if (c.at(';')) {
      c.next();
      if (type.kind !== 'inline') c.fail('declaration declares nothing');
      members.push({ name: undefined, type, attrs, line });
      continue;
    }
    for (;;) {
      const mine: Attrs = { ...attrs };
      parseAttrs(c, mine);
      // A pointer member (rare: most uapi passes addresses as __u64) is an
      // address on LP64: 8 bytes, 8-aligned, held by the codec as a u64.
      let memberType = type;
      if (c.at('*')) {
        while (c.at('*')) c.next();
        memberType = { kind: 'scalar', scalar: 'u64' };
      }
      const name = c.ident();
      let array: MemberDecl['array'];
      if (c.at('[')) {
        c.next();
        const count = c.balanced('[', ']');
        array = count.length === 0 ? { flexible: true } : { count };
        if (c.at('[')) c.fail(`multi-dimensional array ${name} is not supported`);
      }
      if (c.at(':')) c.fail(`bitfield ${name} is not supported`);
      parseAttrs(c, mine);
      members.push({ name, type: memberType, ...(array ? { array } : {}), attrs: mine, line });
      if (c.at(',')) {
        c.next();
        continue;
      }
      c.expect(';');
      break;
    }
  }
  return members;
}

function parseRecordBody(
  c: Cursor,
  keyword: 'struct' | 'union',
  tag: string | undefined,
  attrs: Attrs,
  file: string,
  line: number,
): RecordDecl {
  c.expect('{');
  const members = parseMembers(c, file);
  c.expect('}');
  parseAttrs(c, attrs);
  return { keyword, tag, members, attrs, file, line };
}

function parseEnumBody(c: Cursor, tag: string | undefined, file: string, line: number): EnumDecl {
  c.expect('{');
  const members: EnumDecl['members'][number][] = [];
  while (!c.at('}')) {
    const mline = c.line();
    const name = c.ident();
    let value: Token[] | undefined;
    if (c.at('=')) {
      c.next();
      value = [];
      let depth = 0;
      while (!(depth === 0 && (c.at(',') || c.at('}')))) {
        const t = c.next();
        if (t.text === '(') depth++;
        if (t.text === ')') depth--;
        value.push(t);
      }
    }
    members.push({ name, value, line: mline });
    if (c.at(',')) c.next();
  }
  c.expect('}');
  return { tag, members, file, line };
}

function parseDefine(tokens: Token[], rest: string, file: string, line: number): MacroDef {
  const c = new Cursor(tokens, file);
  const name = c.ident();
  // Function-like only when `(` follows the name with no space in between.
  const afterName = rest.replace(/^\s*/, '').slice(name.length);
  if (afterName.startsWith('(')) {
    c.expect('(');
    const params: string[] = [];
    while (!c.at(')')) {
      params.push(c.ident());
      if (c.at(',')) c.next();
    }
    c.expect(')');
    return { name, params, body: tokens.slice(c.pos), file, line };
  }
  return { name, params: undefined, body: tokens.slice(c.pos), file, line };
}

/** Parses one header's text. `file` is its short name (`vfio`). */
export function parseHeader(src: string, file: string): ParsedHeader {
  const lexed = lexHeader(src, `${file}.h`);
  const records: RecordDecl[] = [];
  const enums: EnumDecl[] = [];
  const macros: MacroDef[] = [];
  const includes: string[] = [];
  for (const d of lexed.directives) {
    switch (d.name) {
      case 'define':
        macros.push(parseDefine(d.tokens, d.rest, file, d.line));
        break;
      case 'include':
        includes.push(d.rest.trim());
        break;
      // The include guard is the only conditional uapi headers of this kind use;
      // anything else would make the parse depend on configuration, so refuse it.
      case 'ifndef':
      case 'endif':
        break;
      default:
        throw new HeaderSyntaxError(`${file}.h`, d.line, `unsupported directive #${d.name}`);
    }
  }
  const c = new Cursor(lexed.tokens, `${file}.h`);
  while (c.peek() !== undefined) {
    const t = c.next();
    if (t.text === 'struct' || t.text === 'union') {
      const attrs: Attrs = { packed: false };
      parseAttrs(c, attrs);
      const tag = c.ident();
      if (c.at(';')) {
        c.next(); // forward declaration
        continue;
      }
      records.push(parseRecordBody(c, t.text, tag, attrs, file, t.line));
      c.expect(';');
    } else if (t.text === 'enum') {
      const tag = c.peek()?.kind === 'ident' ? c.ident() : undefined;
      enums.push(parseEnumBody(c, tag, file, t.line));
      c.expect(';');
    } else {
      c.pos--;
      c.fail(`unsupported top-level declaration starting with '${t.text}'`);
    }
  }
  return { file, records, enums, macros, includes };
}

/**
 * Recognises a type name (as in `sizeof(T)` or a cast) at `tokens[pos]`:
 * `struct X`, `union X`, a kernel scalar type or a basic C integer type.
 * Returns undefined when the tokens there do not start a type name.
 */
export function typeNameAt(tokens: readonly Token[], pos: number): { spec: TypeSpec; end: number } | undefined {
  const t = tokens[pos];
  if (t === undefined || t.kind !== 'ident') return undefined;
  if (t.text === 'struct' || t.text === 'union') {
    const tag = tokens[pos + 1];
    if (tag === undefined || tag.kind !== 'ident') return undefined;
    return { spec: { kind: 'record', keyword: t.text, tag: tag.text }, end: pos + 2 };
  }
  const kernel = KERNEL_SCALARS[t.text];
  if (kernel !== undefined) return { spec: { kind: 'scalar', ...kernel }, end: pos + 1 };
  let end = pos;
  const words: string[] = [];
  while (tokens[end] !== undefined && BASIC_WORDS.has(tokens[end]!.text)) words.push(tokens[end++]!.text);
  if (words.length === 0) return undefined;
  return { spec: { kind: 'scalar', scalar: basicScalar(words) }, end };
}
