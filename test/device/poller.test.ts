// The shared eventfd poller on the real kernel: one poll over many eventfds
// on a pool thread, re-armed when the set changes, gone when nothing listens.
import t from 'tap';
import { readdirSync } from 'node:fs';
import { koffiSys as sys } from '../../lib/libc/koffi-sys.js';
import { EFD_CLOEXEC, EFD_NONBLOCK } from '../../lib/libc/sys.js';
import { EventfdPoller } from '../../lib/libc/eventfd-poller.js';

const openFds = (): number => readdirSync('/proc/self/fd').length;

function signal(fd: number, n: bigint): void {
  const b = Buffer.alloc(8);
  b.writeBigUInt64LE(n);
  sys.write(fd, b);
}

function nextCount(p: EventfdPoller, fd: number): { promise: Promise<number>; off: () => void } {
  let off = (): void => {};
  const promise = new Promise<number>((resolve, reject) => {
    off = p.watch(fd, {
      onCount: (n) => {
        off();
        resolve(n);
      },
      onError: reject,
    });
  });
  return { promise, off };
}

t.test('many eventfds, one poll; counts are summed; stops when unwatched', async (t) => {
  const before = openFds();
  const p = EventfdPoller.of(sys);
  t.equal(EventfdPoller.of(sys), p, 'one poller per Sys');
  const fds = Array.from({ length: 16 }, () => sys.eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  t.teardown(() => fds.forEach((fd) => sys.close(fd)));
  const got: number[] = [];
  const offs = fds.map((fd, i) => p.watch(fd, { onCount: (n) => got.push(i * 1000 + n), onError: (e) => t.fail(String(e)) }));
  t.equal(p.size, 16);
  // Two writes before the poller wakes are delivered as one summed count.
  signal(fds[5]!, 2n);
  signal(fds[5]!, 3n);
  signal(fds[11]!, 1n);
  const deadline = Date.now() + 2000;
  while (got.length < 2 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 5));
  t.same(
    got.sort((a, b) => a - b),
    [5005, 11001],
  );
  for (const off of offs) off();
  t.equal(p.size, 0);
  await p.idle();
  t.equal(openFds(), before + 16, 'the stop eventfd is closed once idle');
});

t.test('a watch added while a poll is in flight is picked up', async (t) => {
  const p = EventfdPoller.of(sys);
  const a = sys.eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  const b = sys.eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  t.teardown(() => {
    sys.close(a);
    sys.close(b);
  });
  const first = nextCount(p, a);
  await new Promise((r) => setTimeout(r, 20)); // the poll over [stop, a] is now blocked
  const second = nextCount(p, b);
  signal(b, 7n);
  t.equal(await second.promise, 7);
  signal(a, 1n);
  t.equal(await first.promise, 1);
  await p.idle();
  t.equal(p.size, 0);
});

t.test('counts that arrive while nobody listens stay for the next listener', async (t) => {
  const p = EventfdPoller.of(sys);
  const fd = sys.eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  t.teardown(() => sys.close(fd));
  signal(fd, 4n);
  t.equal(await nextCount(p, fd).promise, 4);
  await p.idle();
});

t.test('watching the same fd twice is refused', async (t) => {
  const p = EventfdPoller.of(sys);
  const fd = sys.eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  t.teardown(() => sys.close(fd));
  const off = p.watch(fd, { onCount: () => {}, onError: () => {} });
  t.throws(() => p.watch(fd, { onCount: () => {}, onError: () => {} }), { code: 'EEXIST' });
  off();
  off();
  await p.idle();
});
