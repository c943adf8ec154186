// Text formatting shared by the `vfio` commands: aligned tables, hex numbers,
// byte sizes, PCI class names, and JSON that can carry bigints.

/** `0x` + lowercase hex, zero-padded to `digits`. */
export function hex(n: number | bigint, digits = 0): string {
  return `0x${n.toString(16).padStart(digits, '0')}`;
}

/** Columns padded to their widest cell; the last column is not padded. */
export function table(header: readonly string[], rows: readonly (readonly string[])[]): string {
  const all = [header, ...rows];
  const widths = header.map((_, i) => Math.max(...all.map((r) => (r[i] ?? '').length)));
  return (
    all
      .map((r) =>
        r
          .map((cell, i) => (i === r.length - 1 ? cell : cell.padEnd(widths[i] ?? 0)))
          .join('  ')
          .trimEnd(),
      )
      .join('\n') + '\n'
  );
}

/** 1048576 → `1 MiB`; sizes that are not a whole unit stay in bytes (`4100 B`). */
export function bytes(n: number): string {
  if (n === 0) return '0';
  for (const [unit, size] of [
    ['GiB', 2 ** 30],
    ['MiB', 2 ** 20],
    ['KiB', 2 ** 10],
  ] as const) {
    if (n >= size && n % size === 0) return `${n / size} ${unit}`;
  }
  return `${n} B`;
}

/** JSON with bigints as `0x` hex strings (addresses, IOVAs), two-space indented. */
export function json(value: unknown): string {
  return JSON.stringify(value, (_key, v: unknown) => (typeof v === 'bigint' ? hex(v) : v), 2) + '\n';
}

/** PCI base class names (PCI Code and Assignment Specification), as lspci shows them. */
const CLASS_NAMES: Readonly<Record<number, string>> = {
  0x00: 'Unclassified device',
  0x01: 'Mass storage controller',
  0x02: 'Network controller',
  0x03: 'Display controller',
  0x04: 'Multimedia controller',
  0x05: 'Memory controller',
  0x06: 'Bridge',
  0x07: 'Communication controller',
  0x08: 'Generic system peripheral',
  0x09: 'Input device controller',
  0x0a: 'Docking station',
  0x0b: 'Processor',
  0x0c: 'Serial bus controller',
  0x0d: 'Wireless controller',
  0x0e: 'Intelligent controller',
  0x0f: 'Satellite communications controller',
  0x10: 'Encryption controller',
  0x11: 'Signal processing controller',
  0x12: 'Processing accelerators',
  0x13: 'Non-Essential Instrumentation',
  0x40: 'Coprocessor',
  0xff: 'Unassigned class',
};

/** The name of a 24-bit class code's base class. */
export function className(classCode: number): string {
  return CLASS_NAMES[classCode >>> 16] ?? `class ${hex(classCode >>> 16, 2)}`;
}

/** Names of the bits set in `flags` (`names[bit value]`), unknown bits as hex. */
export function flagNames(flags: number, names: Readonly<Record<number, string>>): string[] {
  const out: string[] = [];
  let rest = flags >>> 0;
  for (const [bit, name] of Object.entries(names)) {
    const b = Number(bit);
    if ((rest & b) !== 0) {
      out.push(name);
      rest &= ~b;
    }
  }
  if (rest !== 0) out.push(hex(rest));
  return out;
}

/** A message on one line: newlines become `; `. */
export function oneLine(text: string): string {
  return text.replace(/\s*\n\s*/g, '; ').trim();
}
