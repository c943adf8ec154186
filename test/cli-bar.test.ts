// `vfio bar` on the fake edu, in every mode: register reads and writes at
// each width, dumps, and every bad argument.
import t from 'tap';
import { edu } from './fake/index.js';
import { cliMachine } from './cli-harness.js';

const MODES = ['cdev', 'group', 'noiommu'] as const;
const EDU = '0000:00:03.0';
const NO_LEAKS = { fds: 0, mappings: 0, pinned: 0 };

for (const mode of MODES) {
  t.test(`${mode}: read and write registers`, async (t) => {
    const m = cliMachine({ mode, devices: [edu()] });
    t.teardown(() => m.dispose());
    t.same(m.run('bar', EDU, '0', '--read', '0'), { code: 0, out: '0x00000000/32 = 0x010000ed\n', err: '' }, 'edu identifies itself');
    // 0x80 (DMA source) is plain storage: what is written reads back, at every width.
    const r = m.run('bar', '00:03.0', '0', '--write', '0x80=0x1122334455667788:64', '--read', '0x80:64', '--read', '0x80:32', '--read', '0x84', '--read', '0x86:16', '--read', '0x87:8');
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
        '',
      ].join('\n'),
      'accesses run in command-line order, each at its width',
    );
    const w = m.run('bar', EDU, '0', '--width', '16', '--write', '0x88=0xbeef', '--read', '0x88', '--json');
    t.equal(w.code, 0, w.err);
    t.same(JSON.parse(w.out), [
      { op: 'write', offset: 0x88, width: 16, value: '0xbeef' },
      { op: 'read', offset: 0x88, width: 16, value: '0xbeef' },
    ]);
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
  t.equal(absent.err, 'vfio bar: ENOENT (device 0000:00:03.0: BAR 1 is not implemented (size 0; the upper half of a 64-bit BAR also reads so))\n');
  const past = m.run('bar', EDU, '0', '--read', '0x100000');
  t.equal(past.code, 1);
  t.match(past.err, /^vfio bar: EINVAL \(device 0000:00:03\.0: .*\)\n$/);
  t.match(m.run('bar', '0000:00:09.0', '0', '--read', '0'), { code: 1, err: /^vfio bar: ENODEV/ });
  t.same(m.kernel.leaks(), NO_LEAKS);
});
