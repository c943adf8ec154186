// Writes and reads back data on an NVMe namespace through VFIO: transfers
// of several sizes (one block, two pages through PRP1 + PRP2, many pages
// through a PRP list), spread over the I/O queues, each queue completing on
// its own MSI-X vector (or polled with --poll), every byte verified.
//
//   npm run examples:nvme-io -- 0000:00:04.0 [--queues 2] [--poll]      (as root)
//
// It overwrites the start of namespace 1.
//
// In your own project, import from 'vfio' instead of '../../lib/index.js'.
import { pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import { vfio, type Vfio } from '../../lib/index.js';
import { Nvme } from './driver.js';
import { sizeText } from './identify.js';

const USAGE = `usage: nvme-io <address> [--queues N] [--poll]

Brings up the NVMe controller at <address> (bound to vfio-pci), writes a
pattern to the start of namespace 1 in transfers of 1 block, 8 KiB and
64 KiB (PRP list), on each I/O queue, reads it back and compares.

  --queues N   I/O queue pairs, each on its own MSI-X vector (default 2)
  --poll       poll the completion queues instead of waiting for interrupts`;

/** Runs the example; returns the exit code. */
export async function main(argv: readonly string[], ctx: Vfio = vfio, log: (line: string) => void = console.log): Promise<number> {
  let args;
  try {
    args = parseArgs({
      args: [...argv],
      allowPositionals: true,
      options: { queues: { type: 'string' }, poll: { type: 'boolean' }, help: { type: 'boolean', short: 'h' } },
    });
  } catch (err) {
    console.error(`nvme-io: ${(err as Error).message}\n${USAGE}`);
    return 2;
  }
  if (args.values.help === true) {
    log(USAGE);
    return 0;
  }
  const queues = Number(args.values.queues ?? '2');
  if (args.positionals.length !== 1 || !Number.isInteger(queues) || queues < 1 || queues > 16) {
    console.error(`nvme-io: bad arguments\n${USAGE}`);
    return 2;
  }
  try {
    const completions = args.values.poll === true ? 'poll' : 'interrupt';
    await using nvme = await Nvme.open(ctx, args.positionals[0]!, { ioQueues: queues, completions });
    const { model, serial } = nvme.controller;
    const bs = nvme.namespace.blockSize;
    log(`nvme ${nvme.address}, ${nvme.mode} mode: ${model} (serial ${serial}), ${sizeText(nvme.namespace.blocks * BigInt(bs))}`);
    const sizes = [bs, 8192, 65536].filter((s) => s <= nvme.controller.maxTransfer);
    const total = sizes.reduce((a, b) => a + b, 0) * queues;
    if (BigInt(total / bs) > nvme.namespace.blocks) throw new Error(`namespace 1 is smaller than the ${total} bytes this test writes`);
    // One buffer out, one back, each mapped once for the device.
    using out = nvme.allocBuffer(total);
    using back = nvme.allocBuffer(total);
    for (let i = 0; i < total; i++) out.bytes[i] = (i * 31 + (i >>> 9)) & 0xff;
    back.bytes.fill(0);
    let offset = 0;
    const writes: Promise<void>[] = [];
    const spans: [number, number, number][] = [];
    for (const q of nvme.ioQueues) {
      for (const size of sizes) {
        spans.push([offset, size, q]);
        writes.push(nvme.write(offset / bs, size / bs, out, offset, q));
        offset += size;
      }
    }
    await Promise.all(writes);
    await Promise.all(spans.map(([at, size, q]) => nvme.read(at / bs, size / bs, back, at, q)));
    const ok = Buffer.compare(Buffer.from(out.bytes.subarray(0, total)), Buffer.from(back.bytes.subarray(0, total))) === 0;
    const what = sizes.map((s) => sizeText(s)).join(', ');
    log(
      `  write/read ${what} on ${queues} queue(s), ${completions === 'poll' ? 'polled' : 'by MSI-X'}: ` +
        `${sizeText(total)} ${ok ? 'verified' : 'MISMATCH'}`,
    );
    return ok ? 0 : 1;
  } catch (err) {
    console.error(`nvme-io: ${err instanceof Error ? err.message : String(err)}`);
    return 1;
  }
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  process.exitCode = await main(process.argv.slice(2));
}
