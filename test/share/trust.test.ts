// lib/share's trust boundary on the fake kernel (issue 16): one-shot thread
// tickets checked before any fd is taken, sealed shared memfds, the peer
// credential check, the server's limits (connections, request size, hello
// and idle time, per-secondary IOVA quota), arguments checked before they
// travel and refused without ending the session, and the errno contract of
// the sharing API. Each test here failed before its fix.
import t, { type Test } from 'tap';
import { mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createVfio, type Vfio } from '../../lib/core/context.js';
import type { Container } from '../../lib/core/container/container.js';
import { VfioError } from '../../lib/base/errors.js';
import {
  AF_UNIX,
  F_SEAL_GROW,
  F_SEAL_SEAL,
  F_SEAL_SHRINK,
  MFD_CLOEXEC,
  MSG_DONTWAIT,
  MSG_NOSIGNAL,
  SOCK_CLOEXEC,
  SOCK_SEQPACKET,
  type Fd,
} from '../../lib/libc/sys.js';
import { ShareServer, adoptFromThread, connectPrimary, lendToThread } from '../../lib/share/index.js';
import { EDU_ID, FakeKernel, edu } from '../../lib/testing/index.js';
import { until } from '../testing/harness.js';

const EDU = '0000:00:03.0';
const DMA_LIMIT = 2n ** 28n;
const NO_LEAKS = { fds: 0, mappings: 0, pinned: 0 };

interface World {
  readonly kernel: FakeKernel;
  readonly primary: Vfio;
  readonly secondary: Vfio;
  readonly path: string;
  readonly c: Container;
}

function world(t: Test): World {
  const kernel = new FakeKernel({ mode: 'cdev', devices: [edu()] });
  const roots = { sys: kernel.sys, sysfs: kernel.sysfsRoot, dev: kernel.devRoot, proc: kernel.procRoot, env: {} };
  const dir = mkdtempSync(join(tmpdir(), 'vfio-trust-'));
  t.teardown(() => {
    kernel.dispose();
    rmSync(dir, { recursive: true, force: true });
  });
  const primary = createVfio(roots);
  const c = primary.createContainer({ mode: 'cdev' });
  c.assignDevice(EDU);
  return { kernel, primary, secondary: createVfio(roots), path: join(dir, 'primary.sock'), c };
}

async function rejection(p: Promise<unknown>): Promise<VfioError | string> {
  try {
    await p;
  } catch (err) {
    return err instanceof VfioError ? err : `not a VfioError: ${String(err)}`;
  }
  return 'did not reject';
}

function isOpen(kernel: FakeKernel, fd: Fd): boolean {
  try {
    kernel.sys.close(kernel.sys.dup(fd));
  } catch {
    return false;
  }
  return true;
}

// --- thread tickets -------------------------------------------------------------

t.test('a forged or malformed ticket is refused before any fd is taken: none is closed', async (t) => {
  const { kernel, primary, secondary, c } = world(t);
  const lease = lendToThread(c, { devices: [EDU] });
  const before = kernel.leaks().fds;
  const fds = [...lease.ticket.fds];
  t.throws(() => adoptFromThread(secondary, { fds, protocol: 'x' }), { code: 'EPROTO' }, 'not a ticket');
  t.throws(() => adoptFromThread(secondary, { ...structuredClone(lease.ticket), claim: undefined }), { code: 'EPROTO' }, 'no claim word');
  t.throws(
    () => adoptFromThread(secondary, { ...structuredClone(lease.ticket), devices: [{ address: 'junk' }] }),
    { code: 'EPROTO' },
    'a bad device grant, after the container grant was read',
  );
  t.equal(kernel.leaks().fds, before, 'no fd was closed');
  for (const fd of fds) t.ok(isOpen(kernel, fd), `fd ${fd} is still open`);
  // The real ticket is still good.
  const borrow = adoptFromThread(secondary, structuredClone(lease.ticket));
  using bar = borrow.device(EDU).mapBar(0);
  t.equal(bar.read32(0), EDU_ID);
  bar.close();
  borrow.close();
  lease.end();
  primary.close();
  secondary.close();
  t.same(kernel.leaks(), NO_LEAKS);
});

t.test('a ticket is good for one adoption: a second one is EALREADY and leaves the first borrower working', async (t) => {
  const { kernel, primary, secondary, c } = world(t);
  const lease = lendToThread(c, { devices: [EDU] });
  const copy = structuredClone(lease.ticket);
  const borrow = adoptFromThread(secondary, lease.ticket);
  t.ok(lease.adopted);
  const before = kernel.leaks().fds;
  t.throws(() => adoptFromThread(secondary, copy), { code: 'EALREADY' });
  t.equal(kernel.leaks().fds, before, 'the refused adoption closed nothing');
  const bar = borrow.device(EDU).mapBar(0);
  t.equal(bar.read32(0), EDU_ID, 'the first borrower still drives the device');
  bar.close();
  t.throws(() => lease.end(), { code: 'EBUSY' }, 'the lender cannot clear what the thread still holds');
  borrow.close();
  t.throws(() => adoptFromThread(secondary, copy), { code: 'EALREADY' }, 'nor after the first thread closed');
  // A device the primary opens now may reuse those fd numbers: the stale ticket must not touch them.
  lease.end();
  const dev = primary.openDevice(EDU);
  t.throws(() => adoptFromThread(secondary, copy), { code: 'EALREADY' });
  t.ok(isOpen(kernel, dev.fd), "the primary's device fd survived");
  dev.release();
  primary.close();
  secondary.close();
  t.same(kernel.leaks(), NO_LEAKS);
});

t.test('ThreadLease: end() takes an unadopted ticket back, end({ force }) ends a lease whose thread died', async (t) => {
  const { kernel, primary, secondary, c } = world(t);
  const unadopted = lendToThread(c, { iova: { size: 4096 } });
  unadopted.end();
  t.throws(() => adoptFromThread(secondary, unadopted.ticket), { code: 'EALREADY' }, 'taken back: no thread can adopt it now');
  const lease = lendToThread(c, { iova: { size: 4096 } });
  const borrow = adoptFromThread(secondary, lease.ticket);
  t.throws(() => lease.end(), { code: 'EBUSY' });
  lease.end({ force: true });
  borrow.close();
  primary.close();
  secondary.close();
  t.same(kernel.leaks(), NO_LEAKS);
});

t.test('lendToThread and adoptFromThread check their arguments (EINVAL, never a TypeError)', async (t) => {
  const { kernel, primary, secondary, c } = world(t);
  for (const bad of [undefined, null, 1, {}]) {
    t.throws(() => lendToThread(bad as unknown as Container), { code: 'EINVAL' }, `container ${String(bad)}`);
  }
  for (const size of [1.5, 'abc', -1, 0, null]) {
    t.throws(() => lendToThread(c, { iova: { size: size as number } }), { code: 'EINVAL' }, `iova.size ${String(size)}`);
  }
  t.throws(() => lendToThread(c, { iova: { size: 4096, dmaLimit: 5 as unknown as bigint } }), { code: 'EINVAL' });
  t.throws(() => lendToThread(c, { devices: 'x' as unknown as string[] }), { code: 'EINVAL' });
  t.throws(() => lendToThread(c, { buffers: { x: undefined as never } }), { code: 'EINVAL' });
  t.throws(() => adoptFromThread(undefined as unknown as Vfio, {}), { code: 'EINVAL' });
  primary.openDevice(EDU).release();
  primary.close();
  secondary.close();
  t.same(kernel.leaks(), NO_LEAKS, 'nothing stays lent or reserved after a refused call');
});

// --- sealed memfds ------------------------------------------------------------------

t.test('a shareable buffer’s memfd is sealed: no holder can shrink or grow it under a mapping', async (t) => {
  const { kernel, primary, secondary, c, path } = world(t);
  const sys = kernel.sys;
  const buf = c.allocDma(8192, { shareable: true, dmaLimit: DMA_LIMIT });
  t.equal(sys.getSeals(buf.memfd), F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL);
  const server = ShareServer.listen(path, { containers: [c] });
  server.shareBuffer('ring', buf);
  const sec = await connectPrimary(secondary, path);
  const imported = await sec.importBuffer('ring');
  // What a hostile borrower would do with its copy of the memfd.
  const lease = lendToThread(c, { buffers: { ring: buf } });
  const theirs = lease.ticket.fds[lease.ticket.fds.length - 1]!;
  t.throws(() => sys.ftruncate(theirs, 0n), { code: 'EPERM' }, 'shrinking is refused');
  t.throws(() => sys.ftruncate(theirs, 1n << 20n), { code: 'EPERM' }, 'growing is refused');
  t.throws(() => sys.addSeals(theirs, 0), { code: 'EPERM' }, 'the seals are final');
  buf.bytes[8191] = 5;
  t.equal(imported.bytes[8191], 5, 'both mappings still work (on the real kernel, a truncate would have been SIGBUS)');
  lease.end();
  imported.free();
  sec.close();
  await server.close();
  primary.close();
  secondary.close();
  t.same(kernel.leaks(), NO_LEAKS);
});

t.test('a borrower refuses a memfd that is not sealed (EPROTO), and leaks nothing', async (t) => {
  const { kernel, primary, secondary, c } = world(t);
  const sys = kernel.sys;
  const buf = c.allocDma(4096, { shareable: true, dmaLimit: DMA_LIMIT });
  const lease = lendToThread(c, { buffers: { ring: buf } });
  // Swap the ticket's memfd for an unsealed one of the same size (a lender
  // of an older version, or a forged grant).
  const ticket = structuredClone(lease.ticket) as unknown as { fds: number[] };
  const slot = ticket.fds.length - 1;
  sys.close(ticket.fds[slot]!);
  const plain = sys.memfdCreate('unsealed', MFD_CLOEXEC);
  sys.ftruncate(plain, 4096n);
  ticket.fds[slot] = plain;
  t.throws(() => adoptFromThread(secondary, ticket), { code: 'EPROTO', message: /not sealed/ });
  t.notOk(isOpen(kernel, plain), 'claimed, then closed with the rest of the ticket');
  lease.end();
  primary.close();
  secondary.close();
  t.same(kernel.leaks(), NO_LEAKS);
});

// --- the server: credentials, limits, quotas ----------------------------------------

t.test('SO_PEERCRED: only allowed uids are served (default: the primary’s own)', async (t) => {
  const { kernel, primary, secondary, c, path } = world(t);
  const server = ShareServer.listen(path, { containers: [c] });
  t.equal(statSync(path).mode & 0o777, 0o600, 'the node is private from its creation');
  kernel.setUid(1000);
  const refused = await rejection(connectPrimary(secondary, path, { timeoutMs: 2000 }));
  kernel.setUid(0);
  t.match(refused, { code: 'ECONNRESET', message: /uid 1000/ }, 'another uid: closed at once, the message says why it may be');
  t.equal(server.connections, 0);
  const sec = await connectPrimary(secondary, path);
  t.equal(server.connections, 1, 'the primary’s own uid is served');
  sec.close();
  await server.close();

  const wide = ShareServer.listen(path, { containers: [c], allowUids: [0, 1000] });
  t.equal(statSync(path).mode & 0o777, 0o666, 'other uids allowed: the kernel must let them connect');
  kernel.setUid(1000);
  const other = connectPrimary(secondary, path, { timeoutMs: 2000 });
  kernel.setUid(0);
  (await other).close();
  await wide.close();
  t.throws(() => ShareServer.listen(path, { containers: [c], allowUids: [] }), { code: 'EINVAL' });
  primary.close();
  secondary.close();
  t.same(kernel.leaks(), NO_LEAKS);
});

t.test('limits: connections at once, time to say hello, idle time, request size', async (t) => {
  const { kernel, primary, secondary, c, path } = world(t);
  const sys = kernel.sys;
  const server = ShareServer.listen(path, { containers: [c], maxConnections: 2, helloTimeoutMs: 200, idleTimeoutMs: 300 });
  const a = await connectPrimary(secondary, path);
  const b = await connectPrimary(secondary, path);
  t.match(await rejection(connectPrimary(secondary, path, { timeoutMs: 2000 })), { code: 'ECONNRESET' }, 'a third is closed');
  // b borrows the device: never timed out. a borrows nothing: closed when idle.
  const dev = await b.openDevice(EDU);
  await until('the idle secondary is dropped', () => server.connections === 1, 3000);
  t.match(await rejection(a.attachContainer(0)), { code: 'ECONNRESET' }, 'the idle one was closed');
  t.ok(b.connected, 'the borrowing one stays');
  // A socket that never says hello.
  const mute = sys.socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
  sys.connect(mute, path);
  await until('the mute connection is accepted', () => server.connections === 2, 3000);
  await until('and dropped when it did not say hello in time', () => server.connections === 1, 3000);
  sys.close(mute);
  dev.release();
  b.close();
  a.close();
  await server.close();

  const small = ShareServer.listen(path, { containers: [c], maxRequestBytes: 256 });
  const s = await connectPrimary(secondary, path);
  t.match(await rejection(s.importBuffer('x'.repeat(255))), { code: 'ECONNRESET' }, 'a request over maxRequestBytes ends the connection');
  s.close();
  await small.close();
  for (const bad of [0, 1.5, 'x']) {
    t.throws(() => ShareServer.listen(path, { containers: [c], maxConnections: bad as number }), { code: 'EINVAL' });
  }
  primary.close();
  secondary.close();
  t.same(kernel.leaks(), NO_LEAKS);
});

t.test('IOVA quota per secondary: EDQUOT past it, and the primary keeps its own space', async (t) => {
  const { kernel, primary, secondary, c, path } = world(t);
  const server = ShareServer.listen(path, { containers: [c], iovaQuota: { windows: 2, bytes: 1n << 20n } });
  const sec = await connectPrimary(secondary, path);
  const k = await sec.attachContainer(0);
  await sec.reserveIova(k, 1 << 19);
  t.match(await rejection(sec.reserveIova(k, (1 << 19) + 4096)), { code: 'EDQUOT' }, 'over the bytes');
  await sec.reserveIova(k, 4096);
  t.match(await rejection(sec.reserveIova(k, 4096)), { code: 'EDQUOT' }, 'over the windows');
  t.ok(sec.connected, 'a refusal is not the end of the session');
  using own = c.allocDma(4096, { dmaLimit: DMA_LIMIT });
  t.ok(own.mapped, 'the primary still allocates');
  own.free();
  sec.close();
  await server.close();
  primary.close();
  secondary.close();
  t.same(kernel.leaks(), NO_LEAKS);
});

t.test('bad arguments: checked on the secondary before they travel, refused by the primary without a hang-up', async (t) => {
  const { kernel, primary, secondary, c, path } = world(t);
  const sys = kernel.sys;
  const server = ShareServer.listen(path, { containers: [c] });
  const sec = await connectPrimary(secondary, path);
  const k = await sec.attachContainer(0);
  const calls: [string, () => Promise<unknown>][] = [
    ['reserveIova size 1.5', () => sec.reserveIova(k, 1.5)],
    ["reserveIova size 'abc'", () => sec.reserveIova(k, 'abc' as unknown as number)],
    ['reserveIova dmaLimit 1.5', () => sec.reserveIova(k, 4096, { dmaLimit: 1.5 as unknown as bigint })],
    ['reserveIova align 3n', () => sec.reserveIova(k, 4096, { align: 3n })],
    ['reserveIova of no container', () => sec.reserveIova(undefined as unknown as Container, 4096)],
    ['attachContainer 99', () => sec.attachContainer(99)],
    ["attachContainer '0'", () => sec.attachContainer('0' as unknown as number)],
    ['openDevice junk', () => sec.openDevice('junk')],
    ['importBuffer 5', () => sec.importBuffer(5 as unknown as string)],
  ];
  for (const [what, call] of calls) {
    let p: Promise<unknown> | undefined;
    t.doesNotThrow(() => (p = call()), `${what}: no synchronous throw`);
    t.match(await rejection(p!), { code: 'EINVAL' }, what);
  }
  t.ok(sec.connected, 'still connected');
  t.equal(server.connections, 1);

  // The same mistakes sent raw: the primary answers EINVAL and keeps talking.
  const raw = sys.socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
  sys.connect(raw, path);
  const say = async (msg: Record<string, unknown>): Promise<Record<string, unknown>> => {
    sys.sendmsg(raw, Buffer.from(JSON.stringify({ protocol: 'vfio-share', version: 1, ...msg })), [], MSG_NOSIGNAL);
    const buf = Buffer.alloc(65536);
    await sys.pollAsync([{ fd: raw, events: 1 }], 2000);
    const got = sys.recvmsg(raw, buf, 8, MSG_DONTWAIT);
    return JSON.parse(buf.toString('utf8', 0, got.bytes)) as Record<string, unknown>;
  };
  t.match(await say({ id: 1, op: 'hello', pid: 1 }), { ok: true });
  t.match(await say({ id: 2, op: 'reserve-iova', container: 0, size: '1.5' }), { ok: false, error: { code: 'EINVAL' } });
  t.match(await say({ id: 3, op: 'attach-container', container: 'zero' }), { ok: false, error: { code: 'EINVAL' } });
  t.match(await say({ id: 4, op: 'import-buffer', name: 'none' }), { ok: false, error: { code: 'ENOENT' } }, 'the session goes on');
  sys.close(raw);
  sec.close();
  await server.close();
  primary.close();
  secondary.close();
  t.same(kernel.leaks(), NO_LEAKS);
});

t.test('the errno contract of the sharing API: EINVAL, never a TypeError or a synchronous throw from a promise', async (t) => {
  const { kernel, primary, secondary, c, path } = world(t);
  t.throws(() => ShareServer.listen(path, undefined as never), { code: 'EINVAL' }, 'listen() without options');
  t.throws(() => ShareServer.listen(123 as unknown as string, { containers: [c] }), { code: 'EINVAL' }, 'a path that is not a string');
  t.throws(() => ShareServer.listen(path, { containers: 'c' as never }), { code: 'EINVAL' });
  t.throws(() => ShareServer.listen(path, { containers: [{} as Container] }), { code: 'EINVAL' });
  const server = ShareServer.listen(path, { containers: [c] });
  t.throws(() => server.shareBuffer('n', undefined as never), { code: 'EINVAL' }, 'shareBuffer(n, undefined)');
  t.match(await rejection(connectPrimary(secondary, 123 as unknown as string)), { code: 'EINVAL' }, 'connectPrimary(v, 123)');
  t.match(await rejection(connectPrimary(undefined as unknown as Vfio, path)), { code: 'EINVAL' });
  await server.close();
  primary.close();
  secondary.close();
  t.same(kernel.leaks(), NO_LEAKS);
});

t.test('a primary answering with code "toString" gives a VfioError with a numeric errno', async (t) => {
  const { kernel, primary, secondary, path } = world(t);
  const sys = kernel.sys;
  const l = sys.socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
  sys.bind(l, path);
  sys.listen(l, 1);
  const connecting = rejection(connectPrimary(secondary, path, { timeoutMs: 2000 }));
  await until('the secondary connects', () => (sys.poll([{ fd: l, events: 1 }], 0)[0] ?? 0) !== 0, 2000);
  const conn = sys.accept(l, SOCK_CLOEXEC);
  const buf = Buffer.alloc(65536);
  await sys.pollAsync([{ fd: conn, events: 1 }], 2000);
  const hello = JSON.parse(buf.toString('utf8', 0, sys.recvmsg(conn, buf, 8, MSG_DONTWAIT).bytes)) as { id: number };
  const reply = { protocol: 'vfio-share', version: 1, id: hello.id, ok: false, error: { code: 'toString', detail: 'x' } };
  sys.sendmsg(conn, Buffer.from(JSON.stringify(reply)), [], MSG_NOSIGNAL);
  const err = await connecting;
  t.ok(err instanceof VfioError);
  t.match(err, { code: 'EIO', message: /"toString"/ });
  t.equal(typeof (err as VfioError).errno, 'number');
  sys.close(conn);
  sys.close(l);
  primary.close();
  secondary.close();
  t.same(kernel.leaks(), NO_LEAKS);
});
