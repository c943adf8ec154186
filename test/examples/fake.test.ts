// The examples, run as their main() on the fake kernel in every mode: what
// they print, their exit codes, and that they leave nothing open.
import t from 'tap';
import { createVfio } from '../../lib/core/context.js';
import { edu, FakeKernel, pciDevice, type FakeMode } from '../../lib/testing/index.js';
import { Edu, main as eduMain } from '../../examples/edu-driver.js';
import { main as mapBarMain } from '../../examples/map-bar.js';
import { main as listMain } from '../../examples/list-devices.js';

const MODES: readonly FakeMode[] = ['cdev', 'group', 'noiommu'];
const EDU = '0000:00:03.0';
const NIC = '0000:00:05.0';
const NO_LEAKS = { fds: 0, mappings: 0, pinned: 0 };

function machine(mode: FakeMode, devices = [edu()]) {
  const kernel = new FakeKernel({ mode, devices });
  const ctx = createVfio({ sys: kernel.sys, sysfs: kernel.sysfsRoot, dev: kernel.devRoot, proc: kernel.procRoot, env: {} });
  const lines: string[] = [];
  return { kernel, ctx, lines, log: (l: string) => void lines.push(l) };
}

for (const mode of MODES) {
  t.test(`${mode}: edu-driver, BAR through pread/pwrite (each access at its width, as QEMU sees it)`, async (t) => {
    const { kernel, ctx, lines, log } = machine(mode);
    t.teardown(() => kernel.dispose());
    const code = await eduMain([EDU, '--no-mmap', '--factorial', '12'], ctx, log);
    t.equal(code, 0, lines.join('\n'));
    t.equal(lines[0], `edu ${EDU}, ${mode} mode, BAR0 through pread/pwrite`);
    t.equal(lines[1], '  identification  0x010000ed (edu version 1.0)');
    t.equal(lines[2], '  liveness        wrote 0x12345678, read back 0xedcba987: alive');
    t.match(
      lines[3],
      new RegExp(
        `^  DMA round trip  2048 bytes RAM -> edu -> RAM at ${mode === 'noiommu' ? 'physical address' : 'IOVA'} 0x[0-9a-f]+: verified$`,
      ),
    );
    t.equal(lines[4], '  factorial       12! = 479001600 (completion signalled by MSI)');
    ctx.close();
    t.same(kernel.leaks(), NO_LEAKS);
  });

  t.test(`${mode}: the Edu class on a mapped BAR`, async (t) => {
    const { kernel, ctx } = machine(mode);
    t.teardown(() => kernel.dispose());
    {
      using dev = Edu.open(ctx, EDU);
      t.ok(dev.mapped, "BAR0 is mmap'd");
      t.same(dev.identify(), { id: 0x010000ed, major: 1, minor: 0 });
      const dma = await dev.dmaRoundTrip();
      t.equal(dma.verified, true, 'DMA round trip through the container');
      t.ok(dma.iova + 4096n <= 2n ** 28n, "below edu's 28-bit DMA limit");
      t.equal(await dev.factorial(10), 3628800);
      t.equal(kernel.device(EDU).irqType, 1, 'MSI (VFIO IRQ index 1) is wired');
    }
    t.equal(kernel.device(EDU).openCount, 0, 'dispose released the device');
    ctx.close();
    t.same(kernel.leaks(), NO_LEAKS);
  });
}

t.test('edu-driver: not an edu, not bound, bad arguments', async (t) => {
  const nic = pciDevice({ address: NIC, group: 5, vendor: 0x8086, device: 0x10d3, class: 0x020000, bars: [{ index: 0, size: 131072 }] });
  const { kernel, ctx, log } = machine('cdev', [edu(), nic]);
  t.teardown(() => kernel.dispose());
  const errors = t.capture(console, 'error');
  t.throws(() => Edu.open(ctx, NIC), /0000:00:05\.0 is not an edu device \(identification 0x0\)/);
  t.same(kernel.leaks(), { ...NO_LEAKS, fds: kernel.leaks().fds }, 'the failed open released the device');
  t.equal(kernel.device(NIC).openCount, 0);
  t.equal(await eduMain([NIC], ctx, log), 1);
  t.equal(await eduMain([], ctx, log), 2);
  t.equal(await eduMain([EDU, '--dma-bits', 'x'], ctx, log), 2);
  t.equal(await eduMain([EDU, '--factorial', '13'], ctx, log), 2, '13! does not fit the register');
  t.equal(await eduMain([EDU, '--frob'], ctx, log), 2);
  const messages = errors().map((c) => String(c.args[0]));
  t.match(messages[0], /^edu-driver: 0000:00:05\.0 is not an edu device/);
  t.match(messages[1], /^edu-driver: bad arguments\nusage: edu-driver/);
  ctx.close();
  t.same(kernel.leaks(), NO_LEAKS);
});

t.test('edu-driver: a DMA limit the buffer cannot meet is a clear error', async (t) => {
  const { kernel, ctx, log } = machine('cdev');
  t.teardown(() => kernel.dispose());
  const errors = t.capture(console, 'error');
  // 12 bits: one page below 4 KiB, where the IOVA allocator has nothing (page 0 is never handed out).
  t.equal(await eduMain([EDU, '--no-mmap', '--dma-bits', '12'], ctx, log), 1);
  t.match(String(errors()[0]?.args[0]), /^edu-driver: .*ENOSPC/);
  ctx.close();
  t.same(kernel.leaks(), NO_LEAKS);
});

for (const mode of MODES) {
  t.test(`${mode}: map-bar`, async (t) => {
    const { kernel, ctx, lines, log } = machine(mode);
    t.teardown(() => kernel.dispose());
    t.equal(mapBarMain([EDU, '0', '--length', '0x20'], ctx, log), 0);
    // id, liveness, factorial; what is not a register reads all ones, as on QEMU.
    t.same(lines, [
      `BAR0 of ${EDU} (${mode} mode): 1048576 bytes, mmap'd (0x0+0x100000)`,
      '00000000  ed 00 00 01 00 00 00 00 00 00 00 00 ff ff ff ff  |................|',
      '00000010  ff ff ff ff ff ff ff ff ff ff ff ff ff ff ff ff  |................|',
    ]);
    lines.length = 0;
    t.equal(mapBarMain([EDU, '0', '--no-mmap', '--poke', '4=0x12345678', '--peek', '4'], ctx, log), 0);
    t.same(lines, [
      `BAR0 of ${EDU} (${mode} mode): 1048576 bytes, through pread/pwrite`,
      'poke 0x00000004 (32-bit) <- 0x12345678',
      'peek 0x00000004 (32-bit) = 0xedcba987',
    ]);
    lines.length = 0;
    // 64-bit accesses: edu takes them from 0x80 on (its DMA registers)...
    t.equal(
      mapBarMain(
        [EDU, '0', '--poke', '0x80=0x123456789abcdef0', '--peek', '0x80', '--width', '64', '--offset', '0x80', '--length', '16'],
        ctx,
        log,
      ),
      0,
    );
    t.same(lines.slice(1), [
      'poke 0x00000080 (64-bit) <- 0x123456789abcdef0',
      'peek 0x00000080 (64-bit) = 0x123456789abcdef0',
      '00000080  f0 de bc 9a 78 56 34 12 00 00 00 00 00 00 00 00  |....xV4.........|',
    ]);
    lines.length = 0;
    // ...and refuses them below 0x80: all ones (exact through pread, where the fake sees each access's width).
    t.equal(mapBarMain([EDU, '0', '--no-mmap', '--peek', '0', '--width', '64'], ctx, log), 0);
    t.same(lines.slice(1), ['peek 0x00000000 (64-bit) = 0xffffffffffffffff']);
    ctx.close();
    t.same(kernel.leaks(), NO_LEAKS);
  });
}

t.test('map-bar: bad arguments and failures', async (t) => {
  const { kernel, ctx, log } = machine('group');
  t.teardown(() => kernel.dispose());
  const errors = t.capture(console, 'error');
  for (const args of [
    [EDU],
    [EDU, '6'],
    [EDU, '0', '--width', '12'],
    [EDU, '0', '--offset', '2'],
    [EDU, '0', '--length', '0'],
    [EDU, '0', '--peek', '1'],
    [EDU, '0', '--poke', '4'],
    [EDU, '0', '--poke', '4=0x100000000'],
    [EDU, '0', '--offset', '0x100000'],
    [EDU, '0', '--x'],
  ]) {
    t.equal(mapBarMain(args, ctx, log), 2, args.join(' '));
  }
  t.equal(mapBarMain([EDU, '1'], ctx, log), 1, 'an absent BAR');
  t.match(String(errors().at(-1)?.args[0]), /^map-bar: ENOENT \(device 0000:00:03\.0: BAR 1 is not implemented/);
  t.equal(mapBarMain(['0000:00:09.0', '0'], ctx, log), 1, 'no such device');
  ctx.close();
  t.same(kernel.leaks(), NO_LEAKS);
});

t.test('list-devices', async (t) => {
  const nic = pciDevice({ address: NIC, group: 3, vendor: 0x8086, device: 0x10d3, class: 0x020000, driver: 'e1000e' });
  const other = edu({ address: '0000:00:04.0', group: 6 });
  const { kernel, ctx, lines, log } = machine('cdev', [edu(), other, nic]);
  t.teardown(() => kernel.dispose());
  t.equal(listMain([], ctx, kernel.sysfsRoot, log), 0);
  t.same(lines, [
    'ADDRESS       ID         DRIVER    IOMMU GROUP  VFIO MODE  GROUP VIABLE',
    '0000:00:03.0  1234:11e8  vfio-pci  3            cdev       no',
    '0000:00:04.0  1234:11e8  vfio-pci  6            cdev       yes',
    '0000:00:05.0  8086:10d3  e1000e    3            -          no',
  ]);
  lines.length = 0;
  t.equal(listMain(['--json'], ctx, kernel.sysfsRoot, log), 0);
  t.same(JSON.parse(lines.join('\n'))[1], {
    address: '0000:00:04.0',
    id: '1234:11e8',
    driver: 'vfio-pci',
    iommuGroup: 6,
    mode: 'cdev',
    viable: true,
  });
  const errors = t.capture(console, 'error');
  t.equal(listMain(['--all'], ctx, kernel.sysfsRoot, log), 2);
  t.match(String(errors()[0]?.args[0]), /^list-devices: Unknown option '--all'/);
  ctx.close();
  t.same(kernel.leaks(), NO_LEAKS, 'reads sysfs only');
});
