// lib/share over real sockets between real processes (the real kernel
// through koffiSys; no VFIO device needed): fds passed with SCM_RIGHTS work
// on the other side (a memfd maps the same pages, an eventfd signals the
// sender), a primary that dies mid-request is ECONNRESET, a primary of
// another version EPROTONOSUPPORT. The test spawns this same file as the
// other process (VFIO_SHARE_CHILD says which part it plays).
import t from 'tap';
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createVfio } from '../../lib/core/context.js';
import { VfioError } from '../../lib/base/errors.js';
import { koffiSys as sys } from '../../lib/libc/koffi-sys.js';
import {
  AF_UNIX,
  EFD_CLOEXEC,
  EFD_NONBLOCK,
  MAP_SHARED,
  MFD_CLOEXEC,
  MSG_NOSIGNAL,
  POLLIN,
  PROT_READ,
  PROT_WRITE,
  SOCK_CLOEXEC,
  SOCK_NONBLOCK,
  SOCK_SEQPACKET,
  type Fd,
} from '../../lib/libc/sys.js';
import { Channel } from '../../lib/share/channel.js';
import { connectPrimary } from '../../lib/share/index.js';

const PAGE = 4096;
const role = process.env['VFIO_SHARE_CHILD'];
const socketPath = process.env['VFIO_SHARE_PATH'] ?? '';

/** A listening SEQPACKET socket at `path`. */
function listenAt(path: string): Fd {
  const fd = sys.socket(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  sys.bind(fd, path);
  sys.listen(fd, 4);
  return fd;
}

async function acceptOne(listener: Fd, timeoutMs = 20_000): Promise<Fd> {
  await sys.pollAsync([{ fd: listener, events: POLLIN }], timeoutMs);
  return sys.accept(listener, SOCK_NONBLOCK | SOCK_CLOEXEC);
}

function connectTo(path: string): Channel {
  const fd = sys.socket(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  sys.connect(fd, path);
  return new Channel(sys, fd, 'the test');
}

// --- the other process --------------------------------------------------------

async function child(): Promise<void> {
  if (role === 'receiver') {
    // Gets a memfd and an eventfd, checks the memfd's pages, writes into
    // them, signals the eventfd, says which fd numbers it got.
    const ch = connectTo(socketPath);
    const { msg, fds } = await ch.next(Date.now() + 20_000, 'waiting for the fds');
    const memfd = fds.fd(0, 'memfd');
    const efd = fds.fd(1, 'eventfd');
    fds.adopt(0);
    fds.adopt(1);
    const addr = sys.mmap(PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, memfd, 0n);
    const view = sys.view(addr, PAGE);
    const seen = view[0] === msg['first'];
    view.set([0xde, 0xad, 0xbe, 0xef], 100);
    sys.write(efd, Buffer.from([7, 0, 0, 0, 0, 0, 0, 0]));
    ch.send({ op: 'done', seen, memfd, efd });
    sys.munmap(addr, PAGE);
    sys.close(memfd);
    sys.close(efd);
    // Wait for the parent to hang up, then leave.
    await ch.next(Date.now() + 20_000, 'waiting for the end').catch(() => undefined);
    ch.close();
    return;
  }
  if (role === 'primaries') {
    // Two primaries in turn on one socket: the first answers hello in a
    // version this library does not speak; the second answers hello, then
    // dies in the middle of the next request.
    const listener = listenAt(socketPath);
    const result = { pid: process.pid, containers: [], buffers: [] };
    {
      const conn = new Channel(sys, await acceptOne(listener), 'the first secondary');
      const hello = await conn.next(Date.now() + 20_000, 'waiting for hello');
      // Channel always writes its own version: this message is made by hand.
      const bytes = Buffer.from(JSON.stringify({ protocol: 'vfio-share', version: 2, id: hello.msg['id'], ok: true, result }));
      sys.sendmsg(conn.fd, bytes, [], MSG_NOSIGNAL);
      await conn.next(Date.now() + 20_000, 'waiting for the end').catch(() => undefined);
      conn.close();
    }
    const conn = new Channel(sys, await acceptOne(listener), 'the second secondary');
    const hello = await conn.next(Date.now() + 20_000, 'waiting for hello');
    conn.send({ id: hello.msg['id'], ok: true, result });
    await conn.next(Date.now() + 20_000, 'waiting for a request');
    process.kill(process.pid, 'SIGKILL');
  }
  throw new Error(`unknown VFIO_SHARE_CHILD=${role}`);
}

// --- the tests -------------------------------------------------------------------

function spawnChild(part: string, path: string): { exited: Promise<{ code: number | null; signal: string | null; stderr: string }> } {
  const self = fileURLToPath(import.meta.url);
  // Only the TypeScript loader tap runs us with (coverage and mock hooks
  // would only slow the child down).
  const loader = process.execArgv.filter((a) => a.includes('typescript'));
  const proc = spawn(process.execPath, [...loader, self], {
    env: { ...process.env, VFIO_SHARE_CHILD: part, VFIO_SHARE_PATH: path },
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let stderr = '';
  proc.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  return { exited: new Promise((resolve) => proc.on('exit', (code, signal) => resolve({ code, signal, stderr }))) };
}

async function rejection(p: Promise<unknown>): Promise<VfioError | string> {
  try {
    await p;
  } catch (err) {
    return err instanceof VfioError ? err : `not a VfioError: ${String(err)}`;
  }
  return 'did not reject';
}

if (role !== undefined) {
  await child();
} else {
  const dir = mkdtempSync(join(tmpdir(), 'vfio-share-socket-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));

  t.test('a memfd and an eventfd passed to another process work there', async (t) => {
    const path = join(dir, 'fds.sock');
    const listener = listenAt(path);
    const memfd = sys.memfdCreate('share-test', MFD_CLOEXEC);
    sys.ftruncate(memfd, BigInt(PAGE));
    const addr = sys.mmap(PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, memfd, 0n);
    const view = sys.view(addr, PAGE);
    view[0] = 0x42;
    const efd = sys.eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    const other = spawnChild('receiver', path);
    const ch = new Channel(sys, await acceptOne(listener), 'the child');
    ch.send({ op: 'take', first: 0x42 }, [memfd, efd]);
    const { msg, fds } = await ch.next(Date.now() + 20_000, 'waiting for the child');
    fds.closeRest();
    t.equal(msg['seen'], true, 'the child read the page the parent wrote');
    t.type(msg['memfd'], 'number', `the child got its own fd numbers (memfd ${String(msg['memfd'])}, eventfd ${String(msg['efd'])})`);
    t.same([...view.subarray(100, 104)], [0xde, 0xad, 0xbe, 0xef], 'the parent sees what the child wrote through its mapping');
    const counter = Buffer.alloc(8);
    sys.read(efd, counter);
    t.equal(counter.readBigUInt64LE(0), 7n, "the child's eventfd write reached the parent's eventfd");
    ch.close();
    const end = await other.exited;
    t.equal(end.code, 0, `the child exited cleanly ${end.stderr}`);
    sys.munmap(addr, PAGE);
    sys.close(memfd);
    sys.close(efd);
    sys.close(listener);
  });

  t.test('primaries that fail: another protocol version, then death mid-request', async (t) => {
    const path = join(dir, 'primaries.sock');
    const other = spawnChild('primaries', path);
    const v = createVfio({ sys });

    const err = await rejection(connectWhenListening(v, path));
    t.match(err, { code: 'EPROTONOSUPPORT' }, 'a primary of another version');
    t.match(String(err), /version 2/);

    const sec = await connectWhenListening(v, path);
    t.type(sec.primaryPid, 'number');
    const started = Date.now();
    t.match(await rejection(sec.importBuffer('anything')), { code: 'ECONNRESET' }, 'the request in flight fails when the primary dies');
    t.ok(Date.now() - started < 10_000, 'well before the request timeout');
    // (A request with arguments valid on their own: attachContainer(0) is now
    // refused before it travels, since this primary serves no container.)
    t.match(await rejection(sec.importBuffer('again')), { code: 'ECONNRESET' }, 'and so does the next one');
    sec.close();
    const end = await other.exited;
    t.equal(end.signal, 'SIGKILL', `the primary was killed ${end.stderr}`);
    v.close();
  });
}

/** connectPrimary, retried while the child has not bound its socket yet. */
async function connectWhenListening(v: ReturnType<typeof createVfio>, path: string): ReturnType<typeof connectPrimary> {
  const end = Date.now() + 20_000;
  for (;;) {
    try {
      return await connectPrimary(v, path, { timeoutMs: 20_000 });
    } catch (err) {
      if (!(err instanceof VfioError) || (err.code !== 'ENOENT' && err.code !== 'ECONNREFUSED') || Date.now() > end) throw err;
      await new Promise((r) => setTimeout(r, 20));
    }
  }
}
