// The NVMe example driver on the fake NVMe model (lib/testing/nvme.ts), in
// every mode: bring-up, identify, I/O through PRP1/PRP2 and PRP lists on
// several queues (by interrupt and polled), the status errors, the
// controller's failures, and that nothing is left open.
import t from 'tap';
import { createVfio } from '../../lib/core/context.js';
import { FakeKernel, nvme, type FakeMode, type NvmeOptions } from '../../lib/testing/index.js';
import { Nvme, NvmeControllerError, NvmeStatusError } from '../../examples/nvme/driver.js';
import { main as identifyMain } from '../../examples/nvme/identify.js';
import { main as ioMain } from '../../examples/nvme/io.js';

const MODES: readonly FakeMode[] = ['cdev', 'group', 'noiommu'];
const NVME = '0000:00:04.0';
const NO_LEAKS = { fds: 0, mappings: 0, pinned: 0 };

function machine(mode: FakeMode, opts: NvmeOptions = {}) {
  const kernel = new FakeKernel({ mode, devices: [nvme({ serial: 'vfio-nvme-1', ...opts })] });
  const ctx = createVfio({ sys: kernel.sys, sysfs: kernel.sysfsRoot, dev: kernel.devRoot, proc: kernel.procRoot, env: {} });
  const lines: string[] = [];
  return { kernel, ctx, lines, log: (l: string) => void lines.push(l) };
}

for (const mode of MODES) {
  t.test(`${mode}: identify and io examples`, async (t) => {
    const { kernel, ctx, lines, log } = machine(mode);
    t.teardown(() => kernel.dispose());
    t.equal(await identifyMain([NVME], ctx, log), 0, lines.join('\n'));
    t.same(lines.slice(0, 6), [
      `nvme ${NVME}, ${mode} mode, NVMe 1.4.0`,
      '  model      QEMU NVMe Ctrl',
      '  serial     vfio-nvme-1',
      '  firmware   7.2.0',
      '  max I/O    512 KiB (MDTS)',
      '  namespace  1: 32768 blocks of 512 bytes (16 MiB)',
    ]);
    lines.length = 0;
    t.equal(await ioMain([NVME, '--queues', '3'], ctx, log), 0, lines.join('\n'));
    t.equal(lines[0], `nvme ${NVME}, ${mode} mode: QEMU NVMe Ctrl (serial vfio-nvme-1), 16 MiB`);
    t.equal(lines[1], '  write/read 512 bytes, 8 KiB, 64 KiB on 3 queue(s), by MSI-X: 217.5 KiB verified');
    lines.length = 0;
    t.equal(await ioMain([NVME, '--poll'], ctx, log), 0, lines.join('\n'));
    t.match(lines[1], /polled: .* verified$/);
    t.equal(kernel.device(NVME).openCount, 0);
    ctx.close();
    t.same(kernel.leaks(), NO_LEAKS);
  });
}

t.test('driver: NVMe status codes are typed errors naming the command; bad arguments; queues on their own vectors', async (t) => {
  const { kernel, ctx } = machine('cdev', { blocks: 1024 });
  t.teardown(() => kernel.dispose());
  const nvme = await Nvme.open(ctx, NVME, { ioQueues: 3 });
  t.same(nvme.ioQueues, [1, 2, 3]);
  const buf = nvme.allocBuffer(8192);
  const err = await nvme.read(1020, 8, buf).then(
    () => null,
    (e: unknown) => e,
  );
  t.type(err, NvmeStatusError);
  t.match(err, {
    command: 'Read (queue 1)',
    sct: 0,
    sc: 0x80,
    dnr: true,
    message: 'NVMe Read (queue 1) failed: LBA Out of Range (SCT 0, SC 0x80)',
  });
  await t.rejects(nvme.write(0, 0, buf), RangeError, 'zero blocks');
  await t.rejects(nvme.write(0, 2048, buf), /is not 1\.\.1024 \(MDTS\)/, 'past MDTS');
  await t.rejects(nvme.write(0, 17, buf), /not a dword-aligned range of the 8192-byte buffer/, 'past the buffer');
  await t.rejects(nvme.write(0, 1, buf, 2), /dword-aligned/);
  await t.rejects(nvme.read(0, 1, buf, 0, 4), /no I\/O queue 4/);
  // Each queue interrupts on its own vector: count MSI-X deliveries per vector in the fake's log of raised eventfds.
  const before = kernel.kernelLog.length;
  for (const q of nvme.ioQueues) await nvme.read(q, 1, buf, 0, q);
  t.equal(kernel.kernelLog.slice(before).filter((l) => /not in use|dropped/.test(l)).length, 0, 'no dropped notifications');
  await nvme.close();
  await t.rejects(nvme.read(0, 1, buf), /closed/, 'closed');
  t.equal(kernel.device(NVME).openCount, 0);
  ctx.close();
  t.same(kernel.leaks(), NO_LEAKS);
});

t.test('driver: a controller that never becomes ready is a timeout after CAP.TO, and everything is released', async (t) => {
  const { kernel, ctx } = machine('group', { readyMs: Number.POSITIVE_INFINITY, timeout: 1 });
  t.teardown(() => kernel.dispose());
  const started = performance.now();
  await t.rejects(Nvme.open(ctx, NVME), {
    name: 'NvmeControllerError',
    message: `${NVME}: the controller did not become ready (CSTS.RDY = 1) within CAP.TO (500 ms)`,
  });
  t.ok(performance.now() - started >= 500, 'waited CAP.TO');
  t.type(new NvmeControllerError('x'), Error);
  t.equal(kernel.device(NVME).openCount, 0, 'the device was released');
  ctx.close();
  t.same(kernel.leaks(), NO_LEAKS);
});

t.test('driver: polled completions on several queues at queue depth 32', async (t) => {
  const { kernel, ctx } = machine('noiommu');
  t.teardown(() => kernel.dispose());
  await using nvme = await Nvme.open(ctx, NVME, { ioQueues: 2, completions: 'poll' });
  using buf = nvme.allocBuffer(64 * 4096);
  for (let i = 0; i < buf.size; i++) buf.bytes[i] = (i * 7) & 0xff;
  const ios: Promise<void>[] = [];
  for (let i = 0; i < 64; i++) ios.push(nvme.write(i * 8, 8, buf, i * 4096, 1 + (i % 2)));
  await Promise.all(ios);
  buf.bytes.fill(0);
  await Promise.all(Array.from({ length: 64 }, (_, i) => nvme.read(i * 8, 8, buf, i * 4096, 1 + (i % 2))));
  t.ok(
    buf.bytes.every((b, i) => b === ((i * 7) & 0xff)),
    'verified',
  );
});
