// A hex + ASCII dump of device memory read at one access width. Device
// registers may only answer accesses of their own width (edu answers 4-byte
// reads below 0x80 and nothing else), so the dump never reads bytewise: it
// reads whole `width`-bit words and lays out their bytes little-endian, as
// PCI stores them. Region.hexdump is its user (the `vfio bar` command and the
// map-bar example print it).

/** The width of one register access, in bits. */
export type AccessWidth = 8 | 16 | 32 | 64;

/** Reads one `width`-bit word at a byte offset. */
export type WordReader = (offset: number, width: AccessWidth) => bigint;

/**
 * `length` bytes from `offset` (both multiples of width/8), 16 bytes a line:
 * `00000000  ed 00 00 01 ...  |................|`.
 */
export function hexdump(read: WordReader, offset: number, length: number, width: AccessWidth): string {
  const step = width / 8;
  const lines: string[] = [];
  for (let line = offset; line < offset + length; line += 16) {
    const end = Math.min(line + 16, offset + length);
    const data: number[] = [];
    for (let at = line; at < end; at += step) {
      const word = read(at, width);
      for (let b = 0; b < step; b++) data.push(Number((word >> BigInt(8 * b)) & 0xffn));
    }
    const hexPart = data.map((b) => b.toString(16).padStart(2, '0')).join(' ');
    const ascii = data.map((b) => (b >= 0x20 && b < 0x7f ? String.fromCharCode(b) : '.')).join('');
    lines.push(`${line.toString(16).padStart(8, '0')}  ${hexPart.padEnd(47)}  |${ascii}|`);
  }
  return lines.join('\n') + '\n';
}
