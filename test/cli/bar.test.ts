// `vfio bar` in every mode: register reads and writes at each width, dumps,
// and every bad argument. Widths are checked on plain device memory, where
// every access is what it says; edu is used only for registers it has, with
// the answers QEMU's edu gives (hw/misc/edu.c). It takes 4 and 8-byte accesses
// only, and the fake cannot see the width of an access through a mapping (the
// CLI's way in), so a narrow access to edu would show the fake's limits, not
// the CLI's behaviour.
import t from 'tap';
import { until } from '../testing/harness.js';
import { edu, pciDevice } from '../../lib/testing/index.js';
import { cliMachine } from './harness.js';

const MODES = ['cdev', 'group', 'noiommu'] as const;
const EDU = '0000:00:03.0';
const PLAIN = '0000:00:05.0';
/**
 * A device whose BAR 0 is plain memory (no model): what is stored is what
 * loads give back. No reset method, so its memory outlives the run (vfio-pci
 * resets a device at its last close when it can).
 */
const plain = (): ReturnType<typeof pciDevice> =>
  pciDevice({ address: PLAIN, group: 5, vendor: 0x1af4, device: 0x10f0, class: 0x050000, bars: [{ index: 0, size: 4096 }], reset: false });
const NO_LEAKS = { fds: 0, mappings: 0, pinned: 0 };

for (const mode of MODES) {
  t.test(`${mode}: read and write at every width`, async (t) => {
    const m = cliMachine({ mode, devices: [plain()] });
    t.teardown(() => m.dispose());
    const r = m.run(
      'bar',
      '00:05.0',
      '0',
      '--write',
      '0x80=0x1122334455667788:64',
      '--read',
      '0x80:64',
      '--read',
      '0x80:32',
      '--read',
      '0x84',
      '--read',
      '0x86:16',
      '--read',
      '0x87:8',
      '--write',
      '0x80=0xaa:8',
      '--write',
      '0x82=0xbbcc:16',
      '--write',
      '0x84=0xdeadbeef',
      '--read',
      '0x80:64',
    );
    t.equal(r.code, 0, r.err);
    t.equal(
      r.out,
      [
        '0x00000080/64 <- 0x1122334455667788',
        '0x00000080/64 = 0x1122334455667788',
        '0x00000080/32 = 0x55667788',
        '0x00000084/32 = 0x11223344',
        '0x00000086/16 = 0x1122',
        '0x00000087/8 = 0x11',
        '0x00000080/8 <- 0xaa',
        '0x00000082/16 <- 0xbbcc',
        '0x00000084/32 <- 0xdeadbeef',
        '0x00000080/64 = 0xdeadbeefbbcc77aa',
        '',
      ].join('\n'),
      'accesses run in command-line order, each at its width: a write changes exactly its bytes (little-endian)',
    );
    t.same(
      [...m.kernel.device(PLAIN).bar(0).subarray(0x80, 0x88)],
      [0xaa, 0x77, 0xcc, 0xbb, 0xef, 0xbe, 0xad, 0xde],
      'after the run, the device memory holds exactly those bytes',
    );
    const w = m.run('bar', PLAIN, '0', '--width', '16', '--write', '0x88=0xbeef', '--read', '0x88', '--read', '0x89:8', '--json');
    t.equal(w.code, 0, w.err);
    t.same(JSON.parse(w.out), [
      { op: 'write', offset: 0x88, width: 16, value: '0xbeef' },
      { op: 'read', offset: 0x88, width: 16, value: '0xbeef' },
      { op: 'read', offset: 0x89, width: 8, value: '0xbe' },
    ]);
    t.same(m.kernel.leaks(), NO_LEAKS, 'the BAR and the device are released');
  });

  t.test(`${mode}: edu's registers, as QEMU's edu answers`, async (t) => {
    const m = cliMachine({ mode, devices: [edu()] });
    t.teardown(() => m.dispose());
    const bar = (...args: string[]): string => {
      const r = m.run('bar', EDU, '0', ...args);
      t.equal(r.code, 0, r.err);
      return r.out;
    };
    t.equal(bar('--read', '0'), '0x00000000/32 = 0x010000ed\n', 'edu identifies itself');
    // Side effects of a store through the mapping show at the fake edu's next
    // tick (a system call: the end of the run), on QEMU at once; a later run
    // sees them either way.
    t.equal(bar('--write', '4=0x12345678'), '0x00000004/32 <- 0x12345678\n');
    t.equal(bar('--read', '4'), '0x00000004/32 = 0xedcba987\n', 'liveness: the inverse of what was written');
    t.equal(bar('--write', '8=5'), '0x00000008/32 <- 0x00000005\n', 'factorial of 5');
    // The factorial runs on the device's own time: poll the status register's "computing" bit, as a driver does.
    await until('the factorial', () => bar('--read', '0x20') === '0x00000020/32 = 0x00000000\n');
    t.equal(bar('--read', '8'), '0x00000008/32 = 0x00000078\n', '5! = 120');
    // The DMA registers take 8-byte accesses; a 4-byte read gives the low half.
    t.equal(
      bar('--write', '0x80=0x1122334455667788:64', '--read', '0x80:64', '--read', '0x80:32'),
      ['0x00000080/64 <- 0x1122334455667788', '0x00000080/64 = 0x1122334455667788', '0x00000080/32 = 0x55667788', ''].join('\n'),
      'DMA source: what is written reads back',
    );
    t.equal(
      bar('--read', '0x80:64', '--read', '0x88:64', '--read', '0x98:64'),
      ['0x00000080/64 = 0x1122334455667788', '0x00000088/64 = 0x0000000000000000', '0x00000098/64 = 0x0000000000000000', ''].join('\n'),
      'the source kept by the device; destination and command untouched (a command without the start bit)',
    );
    t.same(m.kernel.leaks(), NO_LEAKS, 'the BAR and the device are released');
  });

  t.test(`${mode}: dump`, async (t) => {
    const m = cliMachine({ mode, devices: [edu()] });
    t.teardown(() => m.dispose());
    const d = m.run('bar', EDU, '0', '--length', '32');
    t.equal(d.code, 0, d.err);
    // id, liveness, factorial; what is not a register reads all ones, as on QEMU.
    t.equal(
      d.out,
      '00000000  ed 00 00 01 00 00 00 00 00 00 00 00 ff ff ff ff  |................|\n' +
        '00000010  ff ff ff ff ff ff ff ff ff ff ff ff ff ff ff ff  |................|\n',
    );
    t.equal(m.run('bar', EDU, '0').out.split('\n').length, 17, 'default: 256 bytes, 16 lines');
    // 64-bit words where edu takes 64-bit accesses: its DMA registers from 0x80.
    t.equal(m.run('bar', EDU, '0', '--write', '0x80=0x1122334455667788:64').code, 0);
    const j = m.run('bar', EDU, '0', '--offset', '0x80', '--length', '16', '--width', '64', '--json');
    t.same(JSON.parse(j.out), { offset: 0x80, length: 16, width: 64, words: ['0x1122334455667788', '0x0000000000000000'] });
    const tail = m.run('bar', EDU, '0', '--offset', '0xffff0', '--length', '64');
    t.equal(tail.out.split('\n').length, 2, 'a dump stops at the end of the BAR');
    t.same(m.kernel.leaks(), NO_LEAKS);
  });
}

t.test('bad arguments: one line, exit 2', async (t) => {
  const m = cliMachine({ mode: 'cdev', devices: [edu()] });
  t.teardown(() => m.dispose());
  const cases: [string[], string][] = [
    [['bar', EDU], 'missing argument: expected <address> <n>'],
    [['bar', EDU, '6'], 'BAR index must be 0 to 5, got "6"'],
    [['bar', EDU, 'x'], 'BAR index must be 0 to 5, got "x"'],
    [['bar', 'nope', '0'], 'not a PCI address: "nope" (expected 0000:00:03.0 or 00:03.0)'],
    [['bar', EDU, '0', '--read', '2'], '--read offset 0x2 is not aligned to its 32-bit width'],
    [['bar', EDU, '0', '--read', '0:12'], 'width must be 8, 16, 32 or 64 (bits), got "12"'],
    [['bar', EDU, '0', '--read', 'zero'], '--read offset must be a non-negative integer (decimal or 0x-hex), got "zero"'],
    [['bar', EDU, '0', '--read', '0:32:8'], '--read takes offset[:width], got "0:32:8"'],
    [['bar', EDU, '0', '--write', '4'], '--write takes offset=value[:width], got "4"'],
    [['bar', EDU, '0', '--write', '4=0x100000000'], 'value 0x100000000 does not fit in 32 bits'],
    [['bar', EDU, '0', '--write', '4=-1'], 'value must be a non-negative integer (decimal or 0x-hex), got "-1"'],
    [['bar', EDU, '0', '--width', '7'], 'width must be 8, 16, 32 or 64 (bits), got "7"'],
    [['bar', EDU, '0', '--read', '0', '--length', '4'], '--offset and --length choose what to dump; they do not go with --read or --write'],
    [['bar', EDU, '0', '--length', '0'], '--length must be a positive multiple of 4 (the 32-bit width)'],
    [['bar', EDU, '0', '--offset', '2'], '--offset 0x2 is not aligned to its 32-bit width'],
    [['bar', EDU, '0', '--offset', '0x100000'], '--offset 0x100000 is past the end of the 1048576-byte BAR 0'],
    [['bar', EDU, '0', '--read'], "Option '--read <value>' argument missing"],
    [['bar', EDU, '0', '--read', '0x100000'], '--read offset 0x100000 is past the end of the 1048576-byte BAR 0'],
    [['bar', EDU, '0', '--read', '0', '--write', '0x100000=1:8'], '--write offset 0x100000 is past the end of the 1048576-byte BAR 0'],
  ];
  for (const [args, message] of cases) {
    const r = m.run(...args);
    t.equal(r.code, 2, args.join(' '));
    t.equal(r.err, `vfio bar: ${message} (see \`vfio bar --help\`)\n`, args.join(' '));
    t.equal(r.out, '');
  }
  t.same(m.kernel.leaks(), NO_LEAKS);
});

t.test('runtime failures: one line, exit 1', async (t) => {
  const m = cliMachine({ mode: 'cdev', devices: [edu()] });
  t.teardown(() => m.dispose());
  const absent = m.run('bar', EDU, '1', '--read', '0');
  t.equal(absent.code, 1);
  t.equal(
    absent.err,
    'vfio bar: ENOENT (device 0000:00:03.0: BAR 1 is not implemented (size 0; the upper half of a 64-bit BAR also reads so))\n',
  );
  t.match(m.run('bar', '0000:00:09.0', '0', '--read', '0'), { code: 1, err: /^vfio bar: ENODEV/ });
  t.same(m.kernel.leaks(), NO_LEAKS);
});
