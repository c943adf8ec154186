// `vfio bar <address> <n>`: maps BAR n of a device and dumps it, or reads and
// writes registers in it at a chosen width — lspci/setpci's reach, for
// device memory, through VFIO.
import { nonNegativeInt, pciAddress, registerValue, stringOption, UsageError, width, flag, type Width } from './args.js';
import type { Command } from './command.js';
import { EXIT } from './command.js';
import { hex, json } from './format.js';

interface Access {
  readonly op: 'read' | 'write';
  readonly offset: number;
  readonly width: Width;
  /** Written value (write), or the value read once done (read). */
  value: bigint;
}

/** `off[:width]` of --read. */
function parseRead(text: string, defaultWidth: Width): Access {
  const m = /^([^:=]+)(?::([^:=]+))?$/.exec(text);
  if (m === null) throw new UsageError(`--read takes offset[:width], got ${JSON.stringify(text)}`);
  return {
    op: 'read',
    offset: nonNegativeInt(m[1] as string, '--read offset'),
    width: m[2] === undefined ? defaultWidth : width(m[2]),
    value: 0n,
  };
}

/** `off=value[:width]` of --write. */
function parseWrite(text: string, defaultWidth: Width): Access {
  const m = /^([^:=]+)=([^:=]+)(?::([^:=]+))?$/.exec(text);
  if (m === null) throw new UsageError(`--write takes offset=value[:width], got ${JSON.stringify(text)}`);
  const w = m[3] === undefined ? defaultWidth : width(m[3]);
  return { op: 'write', offset: nonNegativeInt(m[1] as string, '--write offset'), width: w, value: registerValue(m[2] as string, w) };
}

/** Offsets must be aligned to the access width: a device sees one access, never two halves. */
function checkAligned(what: string, offset: number, w: Width): void {
  if (offset % (w / 8) !== 0) throw new UsageError(`${what} ${hex(offset)} is not aligned to its ${w}-bit width`);
}

const DEFAULT_DUMP = 256;

export const bar: Command = {
  name: 'bar',
  summary: 'dump a BAR, or read and write its registers',
  usage: 'bar <address> <n> [--read off[:width]]... [--write off=value[:width]]... [--width bits] [--offset off] [--length n] [--json]',
  help: `Maps BAR <n> (0-5) of a device bound to vfio-pci (memory decoding is turned
on if it was off) and either dumps it or accesses registers in it.

Without --read or --write: a hex + ASCII dump of --length bytes (default 256,
or the whole BAR if smaller) from --offset (default 0), read in --width-bit
words.

With --read / --write: each access runs once, in the order given, as exactly
one access of its width. A read prints "offset/width = value"; a write prints
"offset/width <- value". Offsets and values are decimal or 0x-hex; width is
8, 16, 32 or 64 bits (default --width, itself 32) and offsets must be aligned
to it.

Options:
  --read off[:width]          read a register (repeatable)
  --write off=value[:width]   write a register (repeatable)
  --width bits                default access width (8, 16, 32, 64; default 32)
  --offset off                dump start (default 0)
  --length n                  dump length in bytes (default 256)
  --json                      reads and writes as [{ op, offset, width, value }]
                              (value a 0x hex string), or the dump as
                              { offset, length, width, words: ["0x..."] }

Examples:
  vfio bar 0000:00:03.0 0 --read 0                 # edu: 0x00000000/32 = 0x010000ed
  vfio bar 0000:00:03.0 0 --write 4=0x12345678 --read 4
  vfio bar 0000:00:03.0 0 --length 0x80`,
  options: {
    read: { type: 'string', multiple: true },
    write: { type: 'string', multiple: true },
    width: { type: 'string' },
    offset: { type: 'string' },
    length: { type: 'string' },
    json: { type: 'boolean' },
  },
  positionals: { min: 2, max: 2, names: '<address> <n>' },
  run(args, env) {
    const address = pciAddress(args.positionals[0] as string);
    const barText = args.positionals[1] as string;
    if (!/^[0-5]$/.test(barText)) throw new UsageError(`BAR index must be 0 to 5, got ${JSON.stringify(barText)}`);
    const widthText = stringOption(args, 'width');
    const defaultWidth = widthText === undefined ? 32 : width(widthText);
    const accesses = args.order.flatMap((o) =>
      o.name === 'read' ? [parseRead(o.value ?? '', defaultWidth)] : o.name === 'write' ? [parseWrite(o.value ?? '', defaultWidth)] : [],
    );
    const offsetText = stringOption(args, 'offset');
    const lengthText = stringOption(args, 'length');
    if (accesses.length > 0 && (offsetText !== undefined || lengthText !== undefined)) {
      throw new UsageError('--offset and --length choose what to dump; they do not go with --read or --write');
    }
    for (const a of accesses) checkAligned(`--${a.op} offset`, a.offset, a.width);
    const dumpOffset = offsetText === undefined ? 0 : nonNegativeInt(offsetText, '--offset');
    const dumpLength = lengthText === undefined ? undefined : nonNegativeInt(lengthText, '--length');
    if (accesses.length === 0) {
      checkAligned('--offset', dumpOffset, defaultWidth);
      if (dumpLength !== undefined && (dumpLength === 0 || dumpLength % (defaultWidth / 8) !== 0)) {
        throw new UsageError(`--length must be a positive multiple of ${defaultWidth / 8} (the ${defaultWidth}-bit width)`);
      }
    }

    const v = env.vfio();
    using dev = v.openDevice(address);
    using region = dev.mapBar(Number(barText));
    if (accesses.length === 0) {
      if (dumpOffset >= region.size)
        throw new UsageError(`--offset ${hex(dumpOffset)} is past the end of the ${region.size}-byte BAR ${barText}`);
      const length = Math.min(dumpLength ?? DEFAULT_DUMP, region.size - dumpOffset);
      if (flag(args, 'json')) {
        const words: string[] = [];
        for (let at = dumpOffset; at < dumpOffset + length; at += defaultWidth / 8)
          words.push(hex(region.read(at, defaultWidth), defaultWidth / 4));
        env.out(json({ offset: dumpOffset, length, width: defaultWidth, words }));
      } else {
        env.out(region.hexdump(dumpOffset, length, defaultWidth));
      }
      return EXIT.ok;
    }
    // Past the end is a usage error (exit 2), as --offset past the end is, and is caught before any access runs.
    for (const a of accesses) {
      if (a.offset + a.width / 8 > region.size)
        throw new UsageError(`--${a.op} offset ${hex(a.offset)} is past the end of the ${region.size}-byte BAR ${barText}`);
    }
    const lines: string[] = [];
    for (const a of accesses) {
      if (a.op === 'read') a.value = region.read(a.offset, a.width);
      else region.write(a.offset, a.width, a.value);
      lines.push(`${hex(a.offset, 8)}/${a.width} ${a.op === 'read' ? '=' : '<-'} ${hex(a.value, a.width / 4)}`);
    }
    env.out(flag(args, 'json') ? json(accesses) : lines.join('\n') + '\n');
    return EXIT.ok;
  },
};
