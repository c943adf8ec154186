// The `vfio` executable as npm installs it: package.json "bin" points at the
// compiled entry, which is inside "files", starts with a shebang, and runs
// as a separate process with the documented exit codes. The library's own
// entry (lib/index.ts) must not pull the command line in.
import t from 'tap';
import { spawnSync } from 'node:child_process';
import { copyFileSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, relative, resolve } from 'node:path';

const root = resolve(import.meta.dirname, '../..');
const tsc = join(root, 'node_modules', 'typescript', 'bin', 'tsc');
const pkg = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')) as { bin?: Record<string, string>; files?: string[] };

t.test('package.json: bin is the compiled entry, shipped in files', async (t) => {
  t.same(pkg.bin, { vfio: 'dist/lib/cli/vfio.js' });
  t.ok(
    pkg.files?.some((f) => 'dist/lib/cli/vfio.js'.startsWith(f.replace(/\/?$/, '/'))),
    'dist/lib is published',
  );
  t.match(readFileSync(join(root, 'lib', 'cli', 'vfio.ts'), 'utf8'), /^#!\/usr\/bin\/env node\n/, 'the source starts with a shebang');
});

t.test('lib/index.ts does not import the command line', async (t) => {
  const r = spawnSync(
    process.execPath,
    [
      tsc,
      '--listFilesOnly',
      '--module',
      'nodenext',
      '--moduleResolution',
      'nodenext',
      '--target',
      'es2022',
      '--types',
      'node',
      join(root, 'lib', 'index.ts'),
    ],
    { encoding: 'utf8' },
  );
  t.equal(r.status, 0, r.stderr);
  const files = r.stdout.split('\n').filter((f) => f.startsWith(join(root, 'lib')));
  t.ok(files.length > 10, 'the library files are listed');
  t.same(
    files.filter((f) => relative(join(root, 'lib'), f).startsWith('cli')),
    [],
    'no lib/cli file',
  );
});

t.test('the compiled command runs as a process', { timeout: 120_000 }, async (t) => {
  const out = mkdtempSync(join(tmpdir(), 'vfio-cli-bin-'));
  t.teardown(() => rmSync(out, { recursive: true, force: true }));
  const build = spawnSync(
    process.execPath,
    [tsc, '-p', join(root, 'tsconfig.build.json'), '--outDir', out, '--declaration', 'false', '--sourceMap', 'false'],
    { encoding: 'utf8' },
  );
  t.equal(build.status, 0, build.stdout + build.stderr);
  // Installed, the entry sits in node_modules/vfio/dist/lib/cli below the package's package.json.
  copyFileSync(join(root, 'package.json'), join(out, 'package.json'));
  const entry = join(out, 'lib', 'cli', 'vfio.js');
  t.match(readFileSync(entry, 'utf8'), /^#!\/usr\/bin\/env node\n/, 'the shebang survives compilation');
  const run = (...args: string[]) =>
    spawnSync(process.execPath, [entry, ...args], { encoding: 'utf8', env: { ...process.env, VFIO_MODE: '' } });

  const help = run('help');
  t.equal(help.status, 0);
  t.match(help.stdout, /^vfio: PCI devices through VFIO/);
  // This machine's real sysfs: whatever it holds, the JSON is an array of devices.
  const ls = run('ls', '--json');
  t.equal(ls.status, 0, ls.stderr);
  const list = JSON.parse(ls.stdout) as { address: string }[];
  t.ok(Array.isArray(list));
  for (const d of list) t.match(d.address, /^[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$/);
  const bad = run('info', 'nope');
  t.equal(bad.status, 2);
  t.equal(bad.stderr, 'vfio info: not a PCI address: "nope" (expected 0000:00:03.0 or 00:03.0) (see `vfio info --help`)\n');
  t.equal(bad.stdout, '');
  const missing = run('info', '0000:7f:1f.7');
  t.equal(missing.status, 1);
  t.match(missing.stderr, /^vfio info: ENODEV \(device 0000:7f:1f\.7: no such PCI device in \/sys\/bus\/pci\/devices\)\n$/);
  t.equal(
    run('--version').stdout,
    `${(JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')) as { version: string }).version}\n`,
    'the version from package.json',
  );
});
