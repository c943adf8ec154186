// Identifies an NVMe controller through VFIO: model, serial, firmware,
// version, largest transfer, and namespace 1's size.
//
//   npm run examples:nvme-identify -- 0000:00:04.0      (bound to vfio-pci, as root)
//
// In your own project, import from 'vfio' instead of '../../lib/index.js'.
import { pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import { vfio, type Vfio } from '../../lib/index.js';
import { Nvme } from './driver.js';

const USAGE = `usage: nvme-identify <address>

Brings up the NVMe controller at <address> (bound to vfio-pci), prints what
Identify Controller and Identify Namespace say, and shuts it down.`;

/** Formats a byte count in binary units (16 MiB, 512 KiB). */
export function sizeText(bytes: bigint | number): string {
  let n = Number(bytes);
  for (const unit of ['bytes', 'KiB', 'MiB', 'GiB', 'TiB']) {
    if (n < 1024 || unit === 'TiB') return `${Number.isInteger(n) ? n : n.toFixed(1)} ${unit}`;
    n /= 1024;
  }
  return `${n}`;
}

/** Runs the example; returns the exit code. `ctx` is the VFIO context (the real kernel unless a test gives another). */
export async function main(argv: readonly string[], ctx: Vfio = vfio, log: (line: string) => void = console.log): Promise<number> {
  let args;
  try {
    args = parseArgs({ args: [...argv], allowPositionals: true, options: { help: { type: 'boolean', short: 'h' } } });
  } catch (err) {
    console.error(`nvme-identify: ${(err as Error).message}\n${USAGE}`);
    return 2;
  }
  if (args.values.help === true) {
    log(USAGE);
    return 0;
  }
  if (args.positionals.length !== 1) {
    console.error(`nvme-identify: bad arguments\n${USAGE}`);
    return 2;
  }
  try {
    await using nvme = await Nvme.open(ctx, args.positionals[0]!, { ioQueues: 1 });
    const c = nvme.controller;
    const ns = nvme.namespace;
    log(`nvme ${nvme.address}, ${nvme.mode} mode, NVMe ${c.version}`);
    log(`  model      ${c.model}`);
    log(`  serial     ${c.serial}`);
    log(`  firmware   ${c.firmware}`);
    log(`  max I/O    ${sizeText(c.maxTransfer)} (MDTS)`);
    log(`  namespace  ${ns.id}: ${ns.blocks} blocks of ${ns.blockSize} bytes (${sizeText(ns.blocks * BigInt(ns.blockSize))})`);
    return 0;
  } catch (err) {
    console.error(`nvme-identify: ${err instanceof Error ? err.message : String(err)}`);
    return 1;
  }
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  process.exitCode = await main(process.argv.slice(2));
}
