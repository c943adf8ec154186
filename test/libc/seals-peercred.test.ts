// Memfd seals and SO_PEERCRED on real fds (koffiSys), and why the sharing
// layer needs them: a borrower that truncates a shared memfd makes the next
// touch of the lender's mapping a SIGBUS, which kills the process (shown in a
// child process); with F_SEAL_SHRINK the truncate is EPERM and the mapping
// stays good. The test spawns this same file as the child (VFIO_SEAL_CHILD
// says what it does).
import t from 'tap';
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { koffiSys as sys } from '../../lib/libc/koffi-sys.js';
import {
  AF_UNIX,
  F_SEAL_GROW,
  F_SEAL_SEAL,
  F_SEAL_SHRINK,
  MAP_SHARED,
  MFD_ALLOW_SEALING,
  MFD_CLOEXEC,
  PROT_READ,
  PROT_WRITE,
  SOCK_CLOEXEC,
  SOCK_SEQPACKET,
} from '../../lib/libc/sys.js';

const role = process.env['VFIO_SEAL_CHILD'];

/** Maps a 2-page memfd, has "a borrower" (a dup) truncate it to 0, then touches the mapping. */
function child(sealed: boolean): void {
  const page = sys.pageSize();
  const fd = sys.memfdCreate('vfio-seal-child', MFD_CLOEXEC | MFD_ALLOW_SEALING);
  sys.ftruncate(fd, BigInt(2 * page));
  if (sealed) sys.addSeals(fd, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL);
  const addr = sys.mmap(2 * page, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0n);
  const borrower = sys.dup(fd);
  try {
    sys.ftruncate(borrower, 0n);
    process.stderr.write('truncated\n');
  } catch (err) {
    process.stderr.write(`truncate refused: ${(err as { code?: string }).code}\n`);
  }
  // SAFETY (or rather the point): after a truncate this access is past the
  // end of the file, and the kernel answers with SIGBUS.
  sys.view(addr, 2 * page)[page] = 1;
  process.stderr.write('touched\n');
}

function run(part: string): Promise<{ code: number | null; signal: string | null; stderr: string }> {
  const self = fileURLToPath(import.meta.url);
  const loader = process.execArgv.filter((a) => a.includes('typescript'));
  const proc = spawn(process.execPath, [...loader, self], {
    env: { ...process.env, VFIO_SEAL_CHILD: part },
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let stderr = '';
  proc.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  return new Promise((resolve) => proc.on('exit', (code, signal) => resolve({ code, signal, stderr })));
}

if (role !== undefined) {
  child(role === 'sealed');
} else {
  t.test('a memfd made without MFD_ALLOW_SEALING takes no seals', async (t) => {
    const fd = sys.memfdCreate('vfio-seal', MFD_CLOEXEC);
    t.teardown(() => sys.close(fd));
    t.equal(sys.getSeals(fd), F_SEAL_SEAL);
    t.throws(() => sys.addSeals(fd, F_SEAL_SHRINK), { code: 'EPERM', syscall: 'fcntl' });
  });

  t.test('seals: shrink and grow are EPERM for every fd of the file, and F_SEAL_SEAL freezes the set', async (t) => {
    const page = sys.pageSize();
    const fd = sys.memfdCreate('vfio-seal', MFD_CLOEXEC | MFD_ALLOW_SEALING);
    const other = sys.dup(fd);
    t.teardown(() => {
      sys.close(fd);
      sys.close(other);
    });
    sys.ftruncate(fd, BigInt(page));
    t.equal(sys.getSeals(fd), 0);
    sys.addSeals(fd, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL);
    t.equal(sys.getSeals(other), F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL, 'the seals are the file’s, seen through any fd');
    t.throws(() => sys.ftruncate(other, 0n), { code: 'EPERM' });
    t.throws(() => sys.ftruncate(other, BigInt(2 * page)), { code: 'EPERM' });
    t.throws(() => sys.pwrite(other, new Uint8Array(1), BigInt(page)), { code: 'EPERM' }, 'a write past the end would grow it');
    t.equal(sys.pwrite(other, new Uint8Array([7]), 0n), 1, 'writing inside is still allowed');
    t.throws(() => sys.addSeals(fd, 0x8), { code: 'EPERM' });
  });

  t.test('getSeals of a file that is not a memfd is EINVAL', async (t) => {
    const fd = sys.open('/dev/null', 2);
    t.teardown(() => sys.close(fd));
    t.throws(() => sys.getSeals(fd), { code: 'EINVAL', syscall: 'fcntl' });
  });

  t.test('a truncated shared memfd kills the process that touches its mapping (SIGBUS); a sealed one cannot be truncated', async (t) => {
    const open = await run('open');
    t.equal(open.signal, 'SIGBUS', `unsealed: the touch after the truncate is a SIGBUS (${open.stderr.trim()})`);
    t.match(open.stderr, /truncated/);
    t.notMatch(open.stderr, /touched/);
    const sealed = await run('sealed');
    t.equal(sealed.code, 0, `sealed: the process lives (${sealed.stderr.trim()})`);
    t.match(sealed.stderr, /truncate refused: EPERM/);
    t.match(sealed.stderr, /touched/);
  });

  t.test('SO_PEERCRED: each end learns the other’s pid and uid from the kernel', async (t) => {
    const dir = mkdtempSync(join(tmpdir(), 'vfio-peercred-'));
    const path = join(dir, 's.sock');
    const listener = sys.socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    const client = sys.socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    let accepted = -1;
    t.teardown(() => {
      for (const fd of [listener, client, accepted]) if (fd !== -1) sys.close(fd);
      rmSync(dir, { recursive: true, force: true });
    });
    sys.bind(listener, path);
    sys.listen(listener, 1);
    sys.connect(client, path);
    accepted = sys.accept(listener, SOCK_CLOEXEC);
    const me = { pid: process.pid, uid: sys.getuid(), gid: process.getgid?.() ?? -1 };
    t.same(sys.peerCredentials(accepted), me, 'the server end sees the client');
    t.same(sys.peerCredentials(client), me, 'the client end sees the listener');
    t.same(sys.peerCredentials(listener), me, 'a listener answers its own');
    const lone = sys.socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    t.teardown(() => sys.close(lone));
    t.same(sys.peerCredentials(lone), { pid: 0, uid: 0xffffffff, gid: 0xffffffff }, 'a socket never connected has no peer');
  });
}
