// Evaluates C integer constant expressions the way gcc does on x86-64: macro
// expansion first (textual, so `#define A 1 + 2` then `A * 3` is 7, as in C),
// then arithmetic with C's integer types (int, unsigned int, long, unsigned
// long; LP64), their promotions and wrap-around. Keeping the C types matters:
// `(1 << 31)` is the int -2147483648 in C, and the check compares against
// what gcc prints.
//
// The ioctl encoders `_IO`, `_IOR`, `_IOW`, `_IOWR` and `_IOC` are built in
// (x86-64 uses the asm-generic encoding: nr bits 0-7, type 8-15, size 16-29,
// direction 30-31; none = 0U, write = 1U, read = 2U) because the generator
// does not read asm/ioctl.h; `npm run uapi:check` compares every result with
// gcc's own expansion.
//
// Guarantees: an expression that is not a constant (unknown name, division
// by zero, a shift C leaves undefined) throws an EvalError; nothing is guessed.
import type { MacroDef, TypeSpec } from './cparse.js';
import type { Token } from './lexer.js';

export type CType = 'int' | 'uint' | 'long' | 'ulong';

export interface CValue {
  readonly v: bigint;
  readonly type: CType;
}

export class EvalError extends Error {
  override name = 'EvalError';
}

const BITS: Record<CType, number> = { int: 32, uint: 32, long: 64, ulong: 64 };
const SIGNED: Record<CType, boolean> = { int: true, uint: false, long: true, ulong: false };
const RANK: Record<CType, number> = { int: 1, uint: 1, long: 2, ulong: 2 };

/** Converts to a C type with C's modular semantics (gcc's for signed). */
export function convert(v: bigint, type: CType): CValue {
  const bits = BITS[type];
  return { v: SIGNED[type] ? BigInt.asIntN(bits, v) : BigInt.asUintN(bits, v), type };
}

/** Whether `v` is representable in `type`. */
export function fits(v: bigint, type: CType): boolean {
  return convert(v, type).v === v;
}

/** C's usual arithmetic conversions for two promoted integer types. */
function common(a: CType, b: CType): CType {
  if (a === b) return a;
  if (SIGNED[a] === SIGNED[b]) return RANK[a] >= RANK[b] ? a : b;
  const [u, s] = SIGNED[a] ? [b, a] : [a, b];
  if (RANK[u] >= RANK[s]) return u;
  // The signed type is wider and can hold every value of the unsigned one.
  return s;
}

/** Parses an integer literal and gives it the type C11 6.4.4.1 gives it. */
export function parseIntegerLiteral(text: string): CValue {
  const m = /^(0[xX][0-9a-fA-F]+|0[bB][01]+|0[0-7]*|[1-9][0-9]*)([uU]?(?:ll|LL|l|L)?|(?:ll|LL|l|L)[uU])$/.exec(text);
  if (!m) throw new EvalError(`not an integer literal: ${text}`);
  const digits = m[1]!;
  const suffix = m[2]!.toLowerCase();
  const v = /^0[0-7]+$/.test(digits) ? BigInt('0o' + digits.slice(1)) : BigInt(digits);
  const decimal = /^[1-9]/.test(digits) || digits === '0';
  const unsigned = suffix.includes('u');
  const long = suffix.includes('l');
  let candidates: CType[];
  if (unsigned) candidates = long ? ['ulong'] : ['uint', 'ulong'];
  else if (decimal) candidates = long ? ['long'] : ['int', 'long'];
  else candidates = long ? ['long', 'ulong'] : ['int', 'uint', 'long', 'ulong'];
  const type = candidates.find((t) => fits(v, t));
  if (type === undefined) throw new EvalError(`integer literal ${text} does not fit any type`);
  return { v, type };
}

/** A character constant: type int, plain char is signed on x86-64. */
function parseCharLiteral(text: string): CValue {
  const body = text.slice(1, -1);
  const escapes: Record<string, number> = { n: 10, t: 9, r: 13, '0': 0, '\\': 92, "'": 39, '"': 34, a: 7, b: 8, f: 12, v: 11 };
  let code: number;
  if (body.length === 1) code = body.charCodeAt(0);
  else if (body.startsWith('\\x')) code = parseInt(body.slice(2), 16);
  else if (body.length === 2 && body[0] === '\\' && escapes[body[1]!] !== undefined) code = escapes[body[1]!]!;
  else throw new EvalError(`unsupported character literal ${text}`);
  if (!(code >= 0 && code < 256)) throw new EvalError(`character literal ${text} is not one byte`);
  return { v: BigInt(code >= 128 ? code - 256 : code), type: 'int' };
}

/** What the evaluator needs to know about the headers. */
export interface EvalEnv {
  macro(name: string): MacroDef | undefined;
  /** Value of an enumeration constant (type int), or undefined. */
  enumConstant(name: string): CValue | undefined;
  /** sizeof a type named in an expression (`struct X`, `__u32`, ...). */
  sizeofType(spec: TypeSpec): number;
  /** Parses a type name at `tokens[pos]`; returns it and the position after, or undefined. */
  typeName(tokens: readonly Token[], pos: number): { spec: TypeSpec; end: number } | undefined;
}

/** A token that carries an already computed value (the result of a builtin). */
interface ValueToken extends Token {
  readonly value?: CValue;
}

export interface Evaluation {
  readonly value: CValue;
  /** True when an `_IO*` encoder produced the value: the macro is an ioctl number. */
  readonly ioctl: boolean;
}

const IOC_BUILTINS = new Set(['_IOC', '_IO', '_IOR', '_IOW', '_IOWR']);
const IOC_NONE: CValue = { v: 0n, type: 'uint' };
const IOC_WRITE: CValue = { v: 1n, type: 'uint' };
const IOC_READ: CValue = { v: 2n, type: 'uint' };

/** Splits a macro call's argument tokens on top-level commas. */
function splitArgs(tokens: readonly Token[], start: number): { args: Token[][]; end: number } {
  const args: Token[][] = [[]];
  let depth = 0;
  for (let i = start; i < tokens.length; i++) {
    const t = tokens[i]!;
    if (t.text === '(') depth++;
    else if (t.text === ')') {
      if (depth === 0) return { args: args.length === 1 && args[0]!.length === 0 ? [] : args, end: i + 1 };
      depth--;
    } else if (t.text === ',' && depth === 0) {
      args.push([]);
      continue;
    }
    args[args.length - 1]!.push(t);
  }
  throw new EvalError('unterminated macro call');
}

export class Evaluator {
  private ioctlSeen = false;

  constructor(private readonly env: EvalEnv) {}

  /** Evaluates a token list (a macro body, an array length, an enum value). */
  evaluate(tokens: readonly Token[]): Evaluation {
    this.ioctlSeen = false;
    const expanded = this.expand(tokens, new Set());
    if (expanded.length === 0) throw new EvalError('empty expression');
    const parser = new ExprParser(expanded, this.env);
    const value = parser.parseFull();
    return { value, ioctl: this.ioctlSeen };
  }

  private expand(tokens: readonly Token[], hide: ReadonlySet<string>): ValueToken[] {
    const out: ValueToken[] = [];
    for (let i = 0; i < tokens.length; i++) {
      const t = tokens[i]!;
      if (t.kind !== 'ident' || hide.has(t.text)) {
        out.push(t);
        continue;
      }
      // `sizeof(T)`: T is a type name, never macro-expanded as an expression.
      if (t.text === 'sizeof') {
        out.push(t);
        continue;
      }
      const callable = tokens[i + 1]?.text === '(';
      if (IOC_BUILTINS.has(t.text) && callable) {
        const { args, end } = splitArgs(tokens, i + 2);
        out.push({ kind: 'number', text: t.text, line: t.line, value: this.ioc(t.text, args, hide) });
        i = end - 1;
        continue;
      }
      const m = this.env.macro(t.text);
      if (m === undefined) {
        out.push(t);
        continue;
      }
      const inner = new Set(hide).add(t.text);
      if (m.params === undefined) {
        out.push(...this.expand(m.body, inner));
        continue;
      }
      if (!callable) {
        out.push(t);
        continue;
      }
      const { args, end } = splitArgs(tokens, i + 2);
      if (args.length !== m.params.length) throw new EvalError(`${m.name} takes ${m.params.length} arguments, got ${args.length}`);
      if (m.body.some((b) => b.text === '#' || b.text === '##')) throw new EvalError(`${m.name} uses # or ##`);
      const expandedArgs = args.map((a) => this.expand(a, hide));
      const substituted: ValueToken[] = [];
      for (const b of m.body) {
        const k = b.kind === 'ident' ? m.params.indexOf(b.text) : -1;
        if (k >= 0) substituted.push(...expandedArgs[k]!);
        else substituted.push(b);
      }
      out.push(...this.expand(substituted, inner));
      i = end - 1;
    }
    return out;
  }

  /** The x86-64 (asm-generic) ioctl encoding. */
  private ioc(name: string, args: Token[][], hide: ReadonlySet<string>): CValue {
    const expr = (a: Token[]): CValue => new ExprParser(this.expand(a, hide), this.env).parseFull();
    const sizeofArg = (a: Token[]): CValue => {
      const tn = this.env.typeName(a, 0);
      if (tn === undefined || tn.end !== a.length) throw new EvalError(`${name}: size argument is not a type`);
      return { v: BigInt(this.env.sizeofType(tn.spec)), type: 'ulong' };
    };
    const want = name === '_IOC' ? 4 : name === '_IO' ? 2 : 3;
    if (args.length !== want) throw new EvalError(`${name} takes ${want} arguments, got ${args.length}`);
    this.ioctlSeen = true;
    if (name === '_IOC') return encode(expr(args[0]!), expr(args[1]!), expr(args[2]!), expr(args[3]!));
    const type = expr(args[0]!);
    const nr = expr(args[1]!);
    let dir: CValue;
    let size: CValue;
    switch (name) {
      case '_IO':
        dir = IOC_NONE;
        size = { v: 0n, type: 'int' };
        break;
      case '_IOR':
        dir = IOC_READ;
        size = sizeofArg(args[2]!);
        break;
      case '_IOW':
        dir = IOC_WRITE;
        size = sizeofArg(args[2]!);
        break;
      default:
        dir = binary('|', IOC_READ, IOC_WRITE);
        size = sizeofArg(args[2]!);
    }
    return encode(dir, type, nr, size);
  }
}

function encode(dir: CValue, type: CValue, nr: CValue, size: CValue): CValue {
  if (type.v < 0n || type.v > 0xffn) throw new EvalError(`ioctl type ${type.v} does not fit 8 bits`);
  if (nr.v < 0n || nr.v > 0xffn) throw new EvalError(`ioctl number ${nr.v} does not fit 8 bits`);
  if (size.v < 0n || size.v >= 1n << 14n) throw new EvalError(`ioctl size ${size.v} does not fit 14 bits`);
  const sh = (a: CValue, n: bigint): CValue => binary('<<', a, { v: n, type: 'int' });
  return binary('|', binary('|', binary('|', sh(dir, 30n), sh(type, 8n)), nr), sh(size, 16n));
}

const truth = (b: boolean): CValue => ({ v: b ? 1n : 0n, type: 'int' });

export function binary(op: string, a: CValue, b: CValue): CValue {
  if (op === '<<' || op === '>>') {
    const bits = BigInt(BITS[a.type]);
    if (b.v < 0n || b.v >= bits) throw new EvalError(`shift by ${b.v} is undefined for ${a.type}`);
    if (op === '<<') {
      if (SIGNED[a.type] && a.v < 0n) throw new EvalError('left shift of a negative value is undefined');
      return convert(a.v << b.v, a.type);
    }
    return convert(a.v >> b.v, a.type);
  }
  if (op === '&&') return truth(a.v !== 0n && b.v !== 0n);
  if (op === '||') return truth(a.v !== 0n || b.v !== 0n);
  const t = common(a.type, b.type);
  const x = convert(a.v, t).v;
  const y = convert(b.v, t).v;
  switch (op) {
    case '*':
      return convert(x * y, t);
    case '/':
    case '%':
      if (y === 0n) throw new EvalError('division by zero');
      return convert(op === '/' ? x / y : x % y, t);
    case '+':
      return convert(x + y, t);
    case '-':
      return convert(x - y, t);
    case '&':
      return convert(x & y, t);
    case '^':
      return convert(x ^ y, t);
    case '|':
      return convert(x | y, t);
    case '<':
      return truth(x < y);
    case '>':
      return truth(x > y);
    case '<=':
      return truth(x <= y);
    case '>=':
      return truth(x >= y);
    case '==':
      return truth(x === y);
    case '!=':
      return truth(x !== y);
  }
  throw new EvalError(`unsupported operator ${op}`);
}

// Binding powers of C's binary operators (higher binds tighter).
const PRECEDENCE: Readonly<Record<string, number>> = {
  '||': 1,
  '&&': 2,
  '|': 3,
  '^': 4,
  '&': 5,
  '==': 6,
  '!=': 6,
  '<': 7,
  '>': 7,
  '<=': 7,
  '>=': 7,
  '<<': 8,
  '>>': 8,
  '+': 9,
  '-': 9,
  '*': 10,
  '/': 10,
  '%': 10,
};

/** The scalar type names a cast may name, and their C types. */
function castType(spec: TypeSpec): CType {
  if (spec.kind !== 'scalar') throw new EvalError('cast to a non-integer type');
  const s = spec.scalar;
  if (s === 'u64') return 'ulong';
  if (s === 's64') return 'long';
  // Narrower types are promoted to int right after the cast.
  return s === 'u32' ? 'uint' : 'int';
}

function castValue(v: CValue, spec: TypeSpec): CValue {
  if (spec.kind !== 'scalar') throw new EvalError('cast to a non-integer type');
  const bits = Number(spec.scalar.slice(1));
  const narrowed = spec.scalar.startsWith('u') ? BigInt.asUintN(bits, v.v) : BigInt.asIntN(bits, v.v);
  return convert(narrowed, castType(spec));
}

class ExprParser {
  private pos = 0;
  constructor(
    private readonly tokens: readonly ValueToken[],
    private readonly env: EvalEnv,
  ) {}

  parseFull(): CValue {
    const v = this.conditional();
    if (this.pos !== this.tokens.length) throw new EvalError(`unexpected '${this.tokens[this.pos]!.text}'`);
    return v;
  }

  private peek(): ValueToken | undefined {
    return this.tokens[this.pos];
  }

  private expect(text: string): void {
    const t = this.tokens[this.pos++];
    if (t?.text !== text) throw new EvalError(`expected '${text}', found '${t?.text ?? 'end'}'`);
  }

  private conditional(): CValue {
    const c = this.binaryExpr(1);
    if (this.peek()?.text !== '?') return c;
    this.pos++;
    const a = this.conditional();
    this.expect(':');
    const b = this.conditional();
    const t = common(a.type, b.type);
    return convert(c.v !== 0n ? a.v : b.v, t);
  }

  private binaryExpr(minPrec: number): CValue {
    let left = this.unary();
    for (;;) {
      const t = this.peek();
      const prec = t?.kind === 'punct' ? PRECEDENCE[t.text] : undefined;
      if (t === undefined || prec === undefined || prec < minPrec) return left;
      this.pos++;
      const right = this.binaryExpr(prec + 1);
      left = binary(t.text, left, right);
    }
  }

  private unary(): CValue {
    const t = this.peek();
    if (t === undefined) throw new EvalError('unexpected end of expression');
    if (t.kind === 'punct' && ['-', '+', '~', '!'].includes(t.text)) {
      this.pos++;
      const v = this.unary();
      if (t.text === '-') return convert(-v.v, v.type);
      if (t.text === '+') return v;
      if (t.text === '~') return convert(~v.v, v.type);
      return truth(v.v === 0n);
    }
    if (t.text === '(') {
      const cast = this.env.typeName(this.tokens, this.pos + 1);
      if (cast !== undefined && this.tokens[cast.end]?.text === ')') {
        this.pos = cast.end + 1;
        return castValue(this.unary(), cast.spec);
      }
    }
    if (t.kind === 'ident' && t.text === 'sizeof') {
      this.pos++;
      this.expect('(');
      const tn = this.env.typeName(this.tokens, this.pos);
      if (tn === undefined) throw new EvalError('sizeof of an expression is not supported');
      this.pos = tn.end;
      this.expect(')');
      return { v: BigInt(this.env.sizeofType(tn.spec)), type: 'ulong' };
    }
    return this.primary();
  }

  private primary(): CValue {
    const t = this.tokens[this.pos++];
    if (t === undefined) throw new EvalError('unexpected end of expression');
    if (t.value !== undefined) return t.value;
    if (t.text === '(') {
      const v = this.conditional();
      this.expect(')');
      return v;
    }
    if (t.kind === 'number') return parseIntegerLiteral(t.text);
    if (t.kind === 'char') return parseCharLiteral(t.text);
    if (t.kind === 'ident') {
      const e = this.env.enumConstant(t.text);
      if (e !== undefined) return e;
      throw new EvalError(`${t.text} is not a constant`);
    }
    throw new EvalError(`unexpected '${t.text}'`);
  }
}
