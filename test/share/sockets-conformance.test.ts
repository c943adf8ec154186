// The fake kernel's AF_UNIX sockets (lib/testing/socket.ts) against the real
// kernel: one sequence of socket calls runs on koffiSys and on the fake, and
// every outcome (byte counts, flags, poll masks, errno names) must be the
// same. This pins the fake to what lib/share relies on.
import t from 'tap';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { VfioError } from '../../lib/base/errors.js';
import { koffiSys } from '../../lib/libc/koffi-sys.js';
import {
  AF_UNIX,
  EFD_CLOEXEC,
  MFD_CLOEXEC,
  MSG_CMSG_CLOEXEC,
  MSG_CTRUNC,
  MSG_DONTWAIT,
  MSG_NOSIGNAL,
  MSG_TRUNC,
  POLLHUP,
  POLLIN,
  POLLOUT,
  SOCK_CLOEXEC,
  SOCK_NONBLOCK,
  SOCK_SEQPACKET,
  type Fd,
  type Sys,
} from '../../lib/libc/sys.js';
import { FakeKernel } from '../../lib/testing/index.js';

const SEQ = SOCK_SEQPACKET | SOCK_NONBLOCK | SOCK_CLOEXEC;

/** The outcomes of the sequence, in order. */
function sequence(sys: Sys, dir: string): unknown[] {
  const out: unknown[] = [];
  const opened: Fd[] = [];
  const fd = (f: Fd): Fd => (opened.push(f), f);
  const outcome = (what: string, fn: () => unknown): void => {
    try {
      out.push([what, fn()]);
    } catch (err) {
      out.push([what, err instanceof VfioError ? err.code : `not a VfioError: ${String(err)}`]);
    }
  };
  const path = join(dir, 'conformance.sock');
  try {
    const l = fd(sys.socket(AF_UNIX, SEQ, 0));
    outcome('bind', () => sys.bind(l, path));
    outcome('bind the same path again', () => sys.bind(fd(sys.socket(AF_UNIX, SEQ, 0)), path));
    outcome('bind in a missing directory', () => sys.bind(fd(sys.socket(AF_UNIX, SEQ, 0)), join(dir, 'nope', 's.sock')));
    outcome('bind a path too long', () => sys.bind(fd(sys.socket(AF_UNIX, SEQ, 0)), join(dir, 'x'.repeat(120))));
    outcome('connect before listen', () => sys.connect(fd(sys.socket(AF_UNIX, SEQ, 0)), path));
    outcome('connect to no node', () => sys.connect(fd(sys.socket(AF_UNIX, SEQ, 0)), join(dir, 'missing.sock')));
    outcome('listen', () => sys.listen(l, 1));
    outcome('poll the listener, nothing pending', () => sys.poll([{ fd: l, events: POLLIN }], 0));
    const c = fd(sys.socket(AF_UNIX, SEQ, 0));
    outcome('connect', () => sys.connect(c, path));
    outcome('poll the listener, one pending', () => sys.poll([{ fd: l, events: POLLIN }], 0));
    const a = fd(sys.accept(l, SOCK_NONBLOCK | SOCK_CLOEXEC));
    outcome('accept with nothing pending', () => sys.accept(l, SOCK_NONBLOCK | SOCK_CLOEXEC));
    outcome('poll the client', () => sys.poll([{ fd: c, events: POLLIN | POLLOUT }], 0));
    outcome('recvmsg with nothing queued', () => sys.recvmsg(a, Buffer.alloc(8), 4, MSG_DONTWAIT).bytes);

    const memfd = fd(sys.memfdCreate('conformance', MFD_CLOEXEC));
    sys.write(memfd, Buffer.from('memfd!'));
    const efd = fd(sys.eventfd(0, EFD_CLOEXEC));
    outcome('sendmsg with two fds', () => sys.sendmsg(c, Buffer.from('hello'), [memfd, efd], MSG_NOSIGNAL));
    outcome('poll the server end', () => sys.poll([{ fd: a, events: POLLIN | POLLOUT }], 0));
    outcome('recvmsg into less room than sent', () => {
      const buf = Buffer.alloc(3);
      const got = sys.recvmsg(a, buf, 1, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
      got.fds.forEach((f) => opened.push(f));
      const first = got.fds[0];
      const content = Buffer.alloc(6);
      if (first !== undefined) sys.pread(first, content, 0n);
      return {
        bytes: got.bytes,
        data: buf.toString(),
        truncated: (got.flags & MSG_TRUNC) !== 0,
        fdsCut: (got.flags & MSG_CTRUNC) !== 0,
        fds: got.fds.length,
        newNumber: first !== undefined && first !== memfd,
        sameFile: content.toString(),
      };
    });
    outcome('sendmsg a closed fd', () => sys.sendmsg(c, Buffer.from('x'), [9999], MSG_NOSIGNAL));
    outcome('two messages keep their boundaries', () => {
      sys.sendmsg(c, Buffer.from('one'), [], MSG_NOSIGNAL);
      sys.sendmsg(c, Buffer.from('three'), [], MSG_NOSIGNAL);
      const buf = Buffer.alloc(64);
      const first = sys.recvmsg(a, buf, 0, MSG_DONTWAIT);
      const one = buf.toString('utf8', 0, first.bytes);
      const second = sys.recvmsg(a, buf, 0, MSG_DONTWAIT);
      return [one, buf.toString('utf8', 0, second.bytes)];
    });
    outcome('close the server end', () => sys.close(opened.splice(opened.indexOf(a), 1)[0]!));
    outcome('poll after the peer closed', () => (sys.poll([{ fd: c, events: POLLIN }], 0)[0] ?? 0) & (POLLIN | POLLHUP));
    outcome('recvmsg after the peer closed', () => sys.recvmsg(c, Buffer.alloc(8), 4, MSG_DONTWAIT).bytes);
    outcome('sendmsg after the peer closed', () => sys.sendmsg(c, Buffer.from('x'), [], MSG_NOSIGNAL));
    outcome('dup', () => {
      const d = fd(sys.dup(memfd));
      const b = Buffer.alloc(6);
      sys.pread(d, b, 0n);
      return [d !== memfd, b.toString()];
    });
  } finally {
    for (const f of opened.reverse()) {
      try {
        sys.close(f);
      } catch {
        // Closed by the sequence.
      }
    }
  }
  return out;
}

t.test('the fake answers the socket calls lib/share makes as Linux does', async (t) => {
  const realDir = mkdtempSync(join(tmpdir(), 'vfio-sock-real-'));
  const fakeDir = mkdtempSync(join(tmpdir(), 'vfio-sock-fake-'));
  const kernel = new FakeKernel({ mode: 'cdev' });
  t.teardown(() => {
    kernel.dispose();
    rmSync(realDir, { recursive: true, force: true });
    rmSync(fakeDir, { recursive: true, force: true });
  });
  const real = sequence(koffiSys, realDir);
  const fake = sequence(kernel.sys, fakeDir);
  t.same(fake, real, 'same outcomes, step by step');
  t.same(kernel.leaks(), { fds: 0, mappings: 0, pinned: 0 }, 'and the fake frees every fd, in flight or not');
  t.comment(JSON.stringify(real));
});
