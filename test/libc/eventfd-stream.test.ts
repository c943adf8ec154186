// Watching an eventfd on the event loop itself (lib/libc/eventfd-stream.ts),
// on the real kernel: what Sys.watchEventfd uses when Node allows it.
import t from 'tap';
import { spawnSync } from 'node:child_process';
import { readdirSync } from 'node:fs';
import { VfioError } from '../../lib/base/errors.js';
import { EventfdPoller } from '../../lib/libc/eventfd-poller.js';
import { available, watchOnEventLoop } from '../../lib/libc/eventfd-stream.js';
import { koffiSys as sys } from '../../lib/libc/koffi-sys.js';
import { EFD_CLOEXEC, EFD_NONBLOCK } from '../../lib/libc/sys.js';

const openFds = (): number => readdirSync('/proc/self/fd').length;
const tick = (): Promise<void> => new Promise((r) => setTimeout(r, 20));

function signal(fd: number, n: bigint): void {
  const b = Buffer.alloc(8);
  b.writeBigUInt64LE(n);
  sys.write(fd, b);
}

t.test('Node 20 offers the event-loop watch', async (t) => {
  t.ok(available());
});

t.test('started: counts arrive summed; stopped: they stay in the eventfd; close releases the dup at once', async (t) => {
  const fd = sys.eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  t.teardown(() => sys.close(fd));
  const before = openFds();
  const got: number[] = [];
  const w = watchOnEventLoop(sys, fd, { onCount: (n) => got.push(n), onError: (e) => t.fail(String(e)) });
  t.ok(w !== null);
  t.equal(openFds(), before + 1, 'one dup for libuv');
  signal(fd, 2n);
  await tick();
  t.same(got, [], 'made stopped: nothing read');
  w!.start();
  w!.start();
  // Two signals before the loop runs: one read, one summed count.
  signal(fd, 3n);
  while (got.length === 0) await tick();
  t.same(got, [5]);
  w!.stop();
  signal(fd, 4n);
  await tick();
  t.same(got, [5], 'nothing while stopped');
  w!.start();
  while (got.length === 1) await tick();
  t.same(got, [5, 4], 'what came while stopped, after start');
  w!.stop();
  signal(fd, 1n);
  w!.close();
  t.equal(openFds(), before, 'the dup is closed when close returns');
  w!.start();
  await tick();
  t.same(got, [5, 4], 'a closed watcher does not start again');
  // The caller's fd is still the caller's, with the count left unread.
  const b = Buffer.alloc(8);
  sys.read(fd, b);
  t.equal(b.readBigUInt64LE(0), 1n);
  w!.close();
});

t.test('Sys.watchEventfd takes the event loop, not the poll thread', async (t) => {
  const fd = sys.eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  t.teardown(() => sys.close(fd));
  let w: ReturnType<typeof sys.watchEventfd> | undefined;
  const count = new Promise<number>((resolve, reject) => {
    w = sys.watchEventfd(fd, {
      onCount: (n) => {
        w!.close();
        resolve(n);
      },
      onError: reject,
    });
    w.start();
  });
  t.equal(EventfdPoller.of(sys).size, 0, 'the poll thread watches nothing');
  signal(fd, 9n);
  t.equal(await count, 9);
});

t.test('a stopped watcher does not keep the process alive; a started one does', async (t) => {
  const script = (startIt: boolean): string => `
    import { koffiSys as sys } from ${JSON.stringify(new URL('../../lib/libc/koffi-sys.ts', import.meta.url).href)};
    const fd = sys.eventfd(0, 0o4000);
    const w = sys.watchEventfd(fd, { onCount: () => {}, onError: () => {} });
    ${startIt ? 'w.start(); setTimeout(() => { console.log("still alive"); w.close(); }, 300);' : ''}
  `;
  const run = (startIt: boolean) =>
    spawnSync(process.execPath, [...process.execArgv, '--input-type=module', '-e', script(startIt)], { encoding: 'utf8', timeout: 20_000 });
  const stopped = run(false);
  t.equal(stopped.status, 0, stopped.stderr);
  t.equal(stopped.stdout, '', 'exited at once');
  const started = run(true);
  t.equal(started.status, 0, started.stderr);
  t.equal(started.stdout.trim(), 'still alive', 'kept alive until closed');
});

t.test('a bad fd is EBADF and leaves nothing open', async (t) => {
  const before = openFds();
  const err = (() => {
    try {
      watchOnEventLoop(sys, 999_999, { onCount: () => {}, onError: () => {} });
    } catch (e) {
      return e;
    }
    return undefined;
  })();
  t.ok(err instanceof VfioError);
  t.equal((err as VfioError).code, 'EBADF');
  t.equal(openFds(), before);
});

t.test('many watchers at once, each with its own counts', async (t) => {
  const fds = Array.from({ length: 32 }, () => sys.eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  t.teardown(() => fds.forEach((fd) => sys.close(fd)));
  const got = new Map<number, number>();
  const ws = fds.map((fd, i) =>
    sys.watchEventfd(fd, { onCount: (n) => got.set(i, (got.get(i) ?? 0) + n), onError: (e) => t.fail(String(e)) }),
  );
  ws.forEach((w) => w.start());
  fds.forEach((fd, i) => signal(fd, BigInt(i + 1)));
  while (got.size < fds.length) await tick();
  t.same(
    [...got.entries()].sort((a, b) => a[0] - b[0]).map(([, n]) => n),
    fds.map((_, i) => i + 1),
  );
  ws.forEach((w) => w.close());
});
