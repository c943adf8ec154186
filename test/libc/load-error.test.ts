// A failed load of the native binding is a VfioError with the errno behind
// it: unit cases for each way the loaders report it, and the real thing, the
// first call of the library in a process whose fd table is full.
import t from 'tap';
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { VfioError } from '../../lib/base/errors.js';
import { nativeLoadError } from '../../lib/libc/load-error.js';

t.test('each loader report becomes a VfioError with an errno', async (t) => {
  const fromNode = Object.assign(new Error("EMFILE: too many open files, open '/x/koffi-sys.js'"), {
    code: 'EMFILE',
    errno: -24,
    syscall: 'open',
  });
  t.match(nativeLoadError(fromNode), { name: 'VfioError', code: 'EMFILE', errno: 24, syscall: 'open' });
  const dlopen = Object.assign(new Error('/x/koffi.node: cannot open shared object file: Too many open files'), {
    code: 'ERR_DLOPEN_FAILED',
  });
  t.match(nativeLoadError(dlopen), { code: 'EMFILE', errno: 24, syscall: 'dlopen' });
  const nfile = Object.assign(new Error('libc.so.6: Too many open files in system'), { code: 'ERR_DLOPEN_FAILED' });
  t.match(nativeLoadError(nfile), { code: 'ENFILE' });
  const other = Object.assign(new Error('undefined symbol: foo'), { code: 'ERR_DLOPEN_FAILED' });
  const e = nativeLoadError(other);
  t.match(e, { code: 'ELIBACC', errno: 79 });
  t.match(e.message, /cannot load the native binding.*undefined symbol: foo/);
  t.equal(e.cause, other, 'the loader error is the cause');
  t.match(nativeLoadError('weird'), { code: 'ELIBACC' });
  t.match(nativeLoadError(null), { code: 'ELIBACC' });
  const already = new VfioError({ code: 'EIO' });
  t.equal(nativeLoadError(already), already);
});

t.test('the first load failing for want of an fd is VfioError EMFILE, and the next call loads', { timeout: 400_000 }, async (t) => {
  // The lazy load is a require() of the compiled module, so this runs on a
  // build of lib/ (in .tap/, beside node_modules so that koffi resolves).
  const root = resolve(import.meta.dirname, '../..');
  mkdirSync(join(root, '.tap'), { recursive: true });
  const out = mkdtempSync(join(root, '.tap', 'load-error-'));
  t.teardown(() => rmSync(out, { recursive: true, force: true }));
  const tsc = join(root, 'node_modules/typescript/bin/tsc');
  execFileSync(process.execPath, [
    tsc,
    '-p',
    join(root, 'tsconfig.build.json'),
    '--outDir',
    out,
    '--declaration',
    'false',
    '--sourceMap',
    'false',
  ]);
  // The library is imported (nothing native loaded yet), then every free fd
  // is taken, then a call makes the library load koffi.
  const entry = JSON.stringify(pathToFileURL(join(out, 'lib/index.js')).href);
  const script = `
    import { openSync, closeSync } from 'node:fs';
    const { vfio } = await import(${entry});
    const held = [];
    try { for (;;) held.push(openSync('/dev/null', 'r')); } catch {}
    let first;
    try { vfio.kernel.pageSize(); first = { name: 'no error' }; } catch (e) { first = e; }
    for (const fd of held) closeSync(fd);
    let second;
    try { second = vfio.kernel.pageSize(); } catch (e) { second = e; }
    console.log(JSON.stringify({
      name: first.name, code: first.code, message: first.message,
      second: typeof second === 'number' ? 'ok' : String(second),
    }));
  `;
  const r = spawnSync(process.execPath, ['--input-type=module', '-e', script], { encoding: 'utf8', timeout: 120_000 });
  t.equal(r.status, 0, r.stderr);
  const res = JSON.parse(r.stdout.trim().split('\n').at(-1) ?? '{}');
  t.equal(res.name, 'VfioError', res.message);
  t.equal(res.code, 'EMFILE');
  t.equal(res.second, 'ok', 'the next call loads the binding');
});
