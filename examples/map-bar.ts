// Maps BAR N of a device bound to vfio-pci and looks inside: a hex + ASCII
// dump of a range, and a peek or poke of one register at a chosen width.
//
//   npm run examples:map-bar -- 0000:00:03.0 0 --length 0x40
//   npm run examples:map-bar -- 0000:00:03.0 0 --poke 0x4=0x12345678 --peek 0x4
//
// In your own project, import from 'vfio' instead of '../lib/index.js'.
import { pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import { vfio, type AccessWidth, type Vfio } from '../lib/index.js';

const USAGE = `usage: map-bar <address> <bar> [--offset N] [--length N] [--width 8|16|32|64]
                                [--poke OFF=VALUE] [--peek OFF] [--no-mmap]

Maps BAR <bar> (0-5) of the device at <address> (bound to vfio-pci).
Without --peek/--poke: dumps --length bytes (default 256) from --offset
(default 0). --poke writes one register, then --peek reads one (both at
--width bits, default 32; offsets aligned to it). Numbers: decimal or 0x-hex.
--no-mmap reaches the BAR with pread/pwrite instead of a mapping.`;

/** A decimal or 0x-hex number; NaN when it is neither. */
function num(text: string): number {
  return /^0x[0-9a-f]+$/i.test(text) ? parseInt(text, 16) : /^[0-9]+$/.test(text) ? Number(text) : NaN;
}

const hex = (n: number | bigint, digits: number): string => `0x${n.toString(16).padStart(digits, '0')}`;

/** Runs the example; returns the exit code. `ctx` is the VFIO context (the real kernel unless a test gives another). */
export function main(argv: readonly string[], ctx: Vfio = vfio, log: (line: string) => void = console.log): number {
  let args;
  try {
    args = parseArgs({
      args: [...argv],
      allowPositionals: true,
      options: {
        offset: { type: 'string' },
        length: { type: 'string' },
        width: { type: 'string' },
        peek: { type: 'string' },
        poke: { type: 'string' },
        'no-mmap': { type: 'boolean' },
        help: { type: 'boolean', short: 'h' },
      },
    });
  } catch (err) {
    console.error(`map-bar: ${(err as Error).message}\n${USAGE}`);
    return 2;
  }
  const { values, positionals } = args;
  if (values.help === true) {
    log(USAGE);
    return 0;
  }
  const bad = (why: string): number => {
    console.error(`map-bar: ${why}\n${USAGE}`);
    return 2;
  };
  if (positionals.length !== 2) return bad('expected <address> <bar>');
  const [address, barText] = positionals as [string, string];
  const barIndex = num(barText);
  const width = Number(values.width ?? '32') as AccessWidth;
  const offset = num(values.offset ?? '0');
  const length = num(values.length ?? '256');
  if (!(barIndex >= 0 && barIndex <= 5)) return bad(`<bar> must be 0 to 5, got ${barText}`);
  if (![8, 16, 32, 64].includes(width)) return bad(`--width must be 8, 16, 32 or 64, got ${values.width}`);
  const step = width / 8;
  if (!(offset % step === 0) || !(length > 0 && length % step === 0))
    return bad(`--offset and --length must be multiples of ${step} (the ${width}-bit width)`);
  let pokeAt: { offset: number; value: bigint } | null = null;
  if (values.poke !== undefined) {
    const m = /^([^=]+)=(0x[0-9a-f]+|[0-9]+)$/i.exec(values.poke);
    const at = m === null ? NaN : num(m[1] as string);
    if (m === null || !(at % step === 0)) return bad(`--poke takes OFF=VALUE with OFF aligned to ${step} bytes, got ${values.poke}`);
    const value = BigInt(m[2] as string);
    if (value >= 1n << BigInt(width)) return bad(`--poke value ${m[2]} does not fit in ${width} bits`);
    pokeAt = { offset: at, value };
  }
  const peekAt = values.peek === undefined ? null : num(values.peek);
  if (peekAt !== null && !(peekAt % step === 0)) return bad(`--peek takes an offset aligned to ${step} bytes, got ${values.peek}`);

  try {
    // The device and its BAR are released when this block ends, whatever happens.
    using dev = ctx.openDevice(address);
    using bar = dev.mapBar(barIndex, { noMmap: values['no-mmap'] === true });
    const how =
      bar.mappedAreas.length > 0
        ? `mmap'd (${bar.mappedAreas.map((a) => `${hex(a.offset, 1)}+${hex(a.size, 1)}`).join(', ')})`
        : 'through pread/pwrite';
    log(`BAR${barIndex} of ${dev.address} (${dev.mode} mode): ${bar.size} bytes, ${how}`);
    if (pokeAt !== null) {
      // One store of exactly `width` bits: devices answer only the accesses
      // they implement (edu: 32-bit below 0x80), so never bytewise.
      bar.write(pokeAt.offset, width, pokeAt.value);
      log(`poke ${hex(pokeAt.offset, 8)} (${width}-bit) <- ${hex(pokeAt.value, width / 4)}`);
    }
    if (peekAt !== null) log(`peek ${hex(peekAt, 8)} (${width}-bit) = ${hex(bar.read(peekAt, width), width / 4)}`);
    if ((pokeAt === null && peekAt === null) || values.length !== undefined) {
      if (offset >= bar.size) return bad(`--offset ${hex(offset, 1)} is past the end of the ${bar.size}-byte BAR`);
      for (const line of bar
        .hexdump(offset, Math.min(length, bar.size - offset), width)
        .trimEnd()
        .split('\n'))
        log(line);
    }
    return 0;
  } catch (err) {
    // A VfioError's message says which call failed, with what errno, and what to do.
    console.error(`map-bar: ${err instanceof Error ? err.message : String(err)}`);
    return 1;
  }
}

// Run when executed directly (node dist/examples/map-bar.js), not when imported.
if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  process.exitCode = main(process.argv.slice(2));
}
