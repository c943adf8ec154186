// Turns a uapi header into tokens, with its preprocessor directives set aside.
//
// The uapi headers are plain C with a few `#define`s sprinkled anywhere (even
// inside struct bodies), so the lexer first joins continued lines, removes
// comments, pulls every directive line out (keeping its line number, so the
// output can keep header order), and tokenizes what is left.
//
// Guarantees: every token carries the line it came from; anything the lexer
// does not recognise is an error naming file and line, never silently skipped.

export type TokenKind = 'ident' | 'number' | 'char' | 'string' | 'punct';

export interface Token {
  readonly kind: TokenKind;
  readonly text: string;
  readonly line: number;
}

export interface Directive {
  /** The directive name: `define`, `include`, `ifndef`, ... */
  readonly name: string;
  /** Tokens after the directive name. */
  readonly tokens: Token[];
  /** Raw text after the name (needed to tell `F(x)` from `F (x)`). */
  readonly rest: string;
  readonly line: number;
}

export interface LexedHeader {
  readonly file: string;
  readonly tokens: Token[];
  readonly directives: Directive[];
}

// Longest first, so that `<<=` wins over `<<` over `<`.
const PUNCTUATORS = [
  '<<=',
  '>>=',
  '...',
  '->',
  '++',
  '--',
  '<<',
  '>>',
  '<=',
  '>=',
  '==',
  '!=',
  '&&',
  '||',
  '*=',
  '/=',
  '%=',
  '+=',
  '-=',
  '&=',
  '^=',
  '|=',
  '##',
  '[',
  ']',
  '(',
  ')',
  '{',
  '}',
  '.',
  '&',
  '*',
  '+',
  '-',
  '~',
  '!',
  '/',
  '%',
  '<',
  '>',
  '^',
  '|',
  '?',
  ':',
  ';',
  '=',
  ',',
  '#',
];

export class HeaderSyntaxError extends Error {
  override name = 'HeaderSyntaxError';
  constructor(file: string, line: number, message: string) {
    super(`${file}:${line}: ${message}`);
  }
}

/**
 * Replaces comments with spaces (keeping newlines, so line numbers stay true)
 * and leaves string and character literals untouched.
 */
function stripComments(src: string, file: string): string {
  let out = '';
  let i = 0;
  let line = 1;
  while (i < src.length) {
    const c = src[i]!;
    const next = src[i + 1];
    if (c === '/' && next === '*') {
      const end = src.indexOf('*/', i + 2);
      if (end < 0) throw new HeaderSyntaxError(file, line, 'unterminated comment');
      const body = src.slice(i, end + 2);
      for (const ch of body) {
        if (ch === '\n') line++;
      }
      out += ' ' + body.replace(/[^\n]/g, '');
      i = end + 2;
    } else if (c === '/' && next === '/') {
      while (i < src.length && src[i] !== '\n') i++;
      out += ' ';
    } else if (c === '"' || c === "'") {
      let j = i + 1;
      while (j < src.length && src[j] !== c) {
        if (src[j] === '\\') j++;
        if (src[j] === '\n') throw new HeaderSyntaxError(file, line, 'newline in literal');
        j++;
      }
      out += src.slice(i, j + 1);
      i = j + 1;
    } else {
      if (c === '\n') line++;
      out += c;
      i++;
    }
  }
  return out;
}

/** Tokenizes one line (or the text of a directive). */
export function tokenize(text: string, file: string, line: number): Token[] {
  const tokens: Token[] = [];
  let i = 0;
  while (i < text.length) {
    const c = text[i]!;
    if (/\s/.test(c)) {
      i++;
      continue;
    }
    const rest = text.slice(i);
    const ident = /^[A-Za-z_][A-Za-z0-9_]*/.exec(rest);
    if (ident) {
      tokens.push({ kind: 'ident', text: ident[0], line });
      i += ident[0].length;
      continue;
    }
    // A C preprocessing number: digits, letters, dots (suffixes and hex digits).
    const num = /^\.?[0-9](?:[eEpP][+-]|[A-Za-z0-9_.])*/.exec(rest);
    if (num) {
      tokens.push({ kind: 'number', text: num[0], line });
      i += num[0].length;
      continue;
    }
    if (c === "'" || c === '"') {
      let j = i + 1;
      while (j < text.length && text[j] !== c) j += text[j] === '\\' ? 2 : 1;
      if (j >= text.length) throw new HeaderSyntaxError(file, line, 'unterminated literal');
      tokens.push({ kind: c === "'" ? 'char' : 'string', text: text.slice(i, j + 1), line });
      i = j + 1;
      continue;
    }
    const p = PUNCTUATORS.find((q) => text.startsWith(q, i));
    if (p === undefined) throw new HeaderSyntaxError(file, line, `unexpected character ${JSON.stringify(c)}`);
    tokens.push({ kind: 'punct', text: p, line });
    i += p.length;
  }
  return tokens;
}

/** Lexes a whole header: tokens of the C text, and directives apart. */
export function lexHeader(src: string, file: string): LexedHeader {
  const lines = stripComments(src.replace(/\r\n/g, '\n'), file).split('\n');
  const tokens: Token[] = [];
  const directives: Directive[] = [];
  for (let i = 0; i < lines.length; i++) {
    const lineNo = i + 1;
    let text = lines[i]!;
    // Join backslash-continued lines; the joined text keeps the first line's number.
    while (text.endsWith('\\') && i + 1 < lines.length) {
      text = text.slice(0, -1) + ' ' + lines[++i]!;
    }
    const m = /^\s*#\s*([A-Za-z_]+)?(.*)$/.exec(text);
    if (m) {
      const rest = m[2] ?? '';
      directives.push({ name: m[1] ?? '', tokens: tokenize(rest, file, lineNo), rest, line: lineNo });
    } else {
      tokens.push(...tokenize(text, file, lineNo));
    }
  }
  return { file, tokens, directives };
}
