// The package as a user gets it: packed with `npm pack`, installed into an
// empty project, loaded with both require() and import().
import t from 'tap';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync, readdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';

const root = resolve(import.meta.dirname, '../..');
const run = (cmd: string, args: string[], cwd: string): string =>
  execFileSync(cmd, args, { cwd, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });

t.test('packed tarball installs and loads from CommonJS and ESM', { timeout: 240_000 }, async (t) => {
  const work = mkdtempSync(join(tmpdir(), 'vfio-pack-'));
  t.teardown(() => rmSync(work, { recursive: true, force: true }));
  // `npm pack` runs `prepare`, which builds dist/ from lib/.
  run('npm', ['pack', '--silent', '--pack-destination', work], root);
  const tarball = readdirSync(work).find((f) => f.endsWith('.tgz'));
  t.ok(tarball, 'npm pack wrote a tarball');
  const app = join(work, 'app');
  run('mkdir', ['-p', app], work);
  writeFileSync(join(app, 'package.json'), JSON.stringify({ name: 'app', version: '1.0.0', private: true }));
  run('npm', ['install', '--prefer-offline', '--no-audit', '--no-fund', join(work, tarball!)], app);

  const cjs = run('node', ['-e', "const v = require('vfio'); console.log(typeof v.VfioError, typeof v.createVfio)"], app);
  t.equal(cjs.trim(), 'function function', 'require() gives the API');
  const esm = run(
    'node',
    ['--input-type=module', '-e', "const v = await import('vfio'); console.log(typeof v.VfioError, typeof v.createVfio)"],
    app,
  );
  t.equal(esm.trim(), 'function function', 'import() gives the API');
  const dts = run('node', ['-e', "console.log(require('fs').existsSync(require.resolve('vfio').replace(/\\.js$/, '.d.ts')))"], app);
  t.equal(dts.trim(), 'true', 'type declarations ship beside the code');
});
