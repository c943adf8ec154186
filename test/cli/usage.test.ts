// The `vfio` command's surface: help on every level, bad arguments to every
// command (one line on stderr, exit 2), and the documented exit codes.
import t from 'tap';
import { edu } from '../../lib/testing/index.js';
import { COMMANDS } from '../../lib/cli/main.js';
import { VFIO_DEVICE_GET_REGION_INFO } from '../../lib/uapi/vfio.js';
import { cliMachine } from './harness.js';

const EDU = '0000:00:03.0';

t.test('help: overview, per command, and its errors', async (t) => {
  const m = cliMachine({ mode: 'cdev', devices: [edu()] });
  t.teardown(() => m.dispose());
  const names = COMMANDS.map((c) => c.name);
  t.same(names, ['ls', 'info', 'bind', 'unbind', 'sriov', 'bar', 'doctor']);
  for (const args of [['help'], ['--help'], ['-h']]) {
    const r = m.run(...args);
    t.equal(r.code, 0, args.join(' '));
    t.match(r.out, /^vfio: PCI devices through VFIO, from the command line\n\nUsage: vfio <command> \[options\]\n/);
    for (const n of names) t.match(r.out, new RegExp(`\\n  ${n} +\\S`), `lists ${n}`);
    t.match(r.out, /Exit codes:\n  0  done .*\n  1  failed: .*\n(.*\n)*  2  usage error: /);
  }
  for (const n of names) {
    const viaFlag = m.run(n, '--help');
    t.equal(viaFlag.code, 0);
    t.match(viaFlag.out, new RegExp(`^Usage: vfio ${n}( |\\n)`), `${n} --help`);
    t.equal(viaFlag.err, '');
    t.same(m.run('help', n), viaFlag, `vfio help ${n} is ${n} --help`);
    t.same(m.run(n, '-h'), viaFlag);
    t.same(m.run(n, 'whatever', '--help'), viaFlag, '--help wins over other arguments');
  }
  t.same(m.run('help', 'frob'), { code: 2, out: '', err: 'vfio help: unknown command "frob" (see `vfio help --help`)\n' });
  t.same(m.run('help', 'ls', 'info'), {
    code: 2,
    out: '',
    err: 'vfio help: unexpected argument "info": help takes one command name (see `vfio help --help`)\n',
  });
  const bare = m.run();
  t.equal(bare.code, 2, 'no command is a usage error');
  t.match(bare.err, /^vfio: PCI devices through VFIO/);
  t.match(m.run('--version'), { code: 0, out: /^\d+\.\d+\.\d+\n$/ });
});

t.test('every command: bad arguments give one line and exit 2', async (t) => {
  const m = cliMachine({ mode: 'cdev', devices: [edu()] });
  t.teardown(() => m.dispose());
  const cases: string[][] = [
    ['frob'],
    ['--frob'],
    ['ls', 'extra'],
    ['ls', '--jsn'],
    ['info'],
    ['info', 'x'],
    ['info', EDU, '--json=yes'],
    ['bind'],
    ['bind', '0000:00:03'],
    ['bind', EDU, '--all'],
    ['unbind'],
    ['unbind', '0000:0:03.0'],
    ['unbind', EDU, EDU],
    ['bar'],
    ['bar', EDU, '9'],
    ['bar', EDU, '0', '--read', '0x3'],
    ['doctor', 'x'],
    ['doctor', '--verbose'],
    ['info', '--', '--help'],
  ];
  for (const args of cases) {
    const r = m.run(...args);
    t.equal(r.code, 2, `vfio ${args.join(' ')}: exit 2`);
    t.equal(r.out, '', 'nothing on stdout');
    t.match(r.err, /^vfio( [a-z]+)?: [^\n]+ \(see `vfio( [a-z]+)? ?(--)?help`\)\n$/, `one line: ${r.err.trim()}`);
  }
  t.same(m.kernel.leaks(), { fds: 0, mappings: 0, pinned: 0 });
});

t.test('exit 1 for runtime failures of every device command', async (t) => {
  const m = cliMachine({ mode: 'cdev', devices: [edu()] });
  t.teardown(() => m.dispose());
  const missing = '0000:00:1f.7';
  for (const args of [
    ['info', missing],
    ['bind', missing],
    ['unbind', missing],
    ['bar', missing, '0'],
  ]) {
    const r = m.run(...args);
    t.equal(r.code, 1, `vfio ${args.join(' ')}`);
    t.match(r.err, new RegExp(`^vfio ${args[0]}: ENODEV \\(device ${missing}: no such PCI device in [^\\n]+\\)\\n$`));
  }
  // Fails after the device is open and bound: the command must still release it.
  m.kernel.failWhen({ syscall: 'ioctl', request: VFIO_DEVICE_GET_REGION_INFO }, 'EIO');
  const r = m.run('info', EDU);
  t.equal(r.code, 1);
  t.match(
    r.err,
    /^vfio info: ioctl VFIO_DEVICE_GET_REGION_INFO: EIO \(device 0000:00:03\.0\)\n$/,
    'a kernel error, as the library reports it',
  );
  m.kernel.clearFaults();
  t.same(m.kernel.leaks(), { fds: 0, mappings: 0, pinned: 0 }, 'a failed command leaves nothing open');
});
