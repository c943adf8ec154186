// AF_UNIX SOCK_SEQPACKET sockets, as far as lib/share uses them: bind to a
// filesystem path, listen, accept, connect, and messages that carry open
// files (SCM_RIGHTS). The fake has one process, so "another process" is
// another user of the same fd table: a passed fd arrives as a new fd number
// for the same FakeFile (a reference taken at send, as the kernel's
// scm_fp_dup does), exactly the dup semantics a real receiver sees.
//
// Kernel facts modelled (net/unix/af_unix.c):
// - bind creates the socket's node on the filesystem: EADDRINUSE when the
//   path exists, ENOENT when its directory does not. The node outlives the
//   socket (the program unlinks it); connecting to a node nobody listens on
//   is ECONNREFUSED, to no node ENOENT.
// - One message per sendmsg/recvmsg; a receive buffer too small cuts the
//   message (MSG_TRUNC); room for fewer fds than sent closes the rest
//   (MSG_CTRUNC). Files in flight are held by the message until received or
//   until the receiving socket goes away.
// - When the peer is gone: recvmsg returns 0 once the queue is empty, poll
//   reports POLLIN | POLLHUP, sendmsg fails EPIPE (with MSG_NOSIGNAL; the
//   fake never raises SIGPIPE).
// - A call that would block forever in a single-threaded test (blocking
//   accept or recvmsg with nothing queued) is EDEADLK, as for eventfds.
// - SO_PEERCRED: each end knows who the other was when the connection was
//   made (the connecting side's credentials at connect(), the listener's at
//   bind()), whatever the peer later says of itself; a listener answers its
//   own, a socket never connected pid 0 and uid/gid -1.
// Not modelled: SOCK_STREAM/SOCK_DGRAM (ESOCKTNOSUPPORT), abstract names,
// socketpair, shutdown, SCM_CREDENTIALS, unix garbage collection of cycles.
import { existsSync, writeFileSync } from 'node:fs';
import { dirname } from 'node:path';
import {
  MSG_CTRUNC,
  MSG_TRUNC,
  O_RDWR,
  POLLHUP,
  POLLIN,
  POLLOUT,
  SCM_MAX_FD,
  UNIX_PATH_MAX,
  type PeerCredentials,
  type RecvResult,
} from '../libc/sys.js';
import { fail, KernelError } from './errors.js';
import { FakeFile, type FdTable } from './files.js';

/** sk_sndbuf's default: the largest message one sendmsg takes. */
export const MAX_MESSAGE = 212992;

interface Message {
  readonly data: Uint8Array;
  /** References taken at send; given to the receiver's fd table or put. */
  readonly files: FakeFile[];
}

/** The machine's AF_UNIX namespace: bound paths to their sockets. */
export class UnixNamespace {
  private readonly bound = new Map<string, UnixSocketFile>();

  bind(sock: UnixSocketFile, path: string, creds: PeerCredentials): void {
    checkPath(path);
    if (sock.state !== 'new') fail('EINVAL', 'the socket is already bound or connected');
    if (existsSync(path) || this.bound.has(path)) fail('EADDRINUSE', `${path} exists`);
    if (!existsSync(dirname(path))) fail('ENOENT', `no directory ${dirname(path)}`);
    // The kernel makes a socket inode, mode 0777 less the process umask; a
    // plain file stands for it here (writeFileSync applies the umask too).
    writeFileSync(path, '', { flag: 'wx', mode: 0o777 });
    this.bound.set(path, sock);
    sock.credentials = creds;
    sock.bindTo(() => {
      if (this.bound.get(path) === sock) this.bound.delete(path);
    });
  }

  connect(sock: UnixSocketFile, path: string, creds: PeerCredentials): void {
    checkPath(path);
    if (sock.state === 'connected') fail('EISCONN', 'already connected');
    if (sock.state !== 'new') fail('EINVAL', 'a bound or listening socket cannot connect');
    const listener = this.bound.get(path);
    if (listener === undefined) fail(existsSync(path) ? 'ECONNREFUSED' : 'ENOENT', `nothing listens on ${path}`);
    sock.credentials = creds;
    listener.enqueue(sock);
  }
}

function checkPath(path: string): void {
  const n = Buffer.byteLength(path);
  if (n === 0) fail('EINVAL', 'empty socket path');
  if (n > UNIX_PATH_MAX) fail('ENAMETOOLONG', `socket path of ${n} bytes (sun_path holds ${UNIX_PATH_MAX})`);
}

export class UnixSocketFile extends FakeFile {
  readonly kind = 'socket';
  state: 'new' | 'bound' | 'listening' | 'connected' = 'new';
  private unbind: (() => void) | null = null;
  private backlog = 0;
  /** Listening: connections waiting for accept (their server-side ends). */
  private readonly pending: UnixSocketFile[] = [];
  /** Connected: the other end, while it exists. */
  private peer: UnixSocketFile | null = null;
  private peerGone = false;
  private readonly queue: Message[] = [];
  /** Whose socket this is: set at bind (a listener) or connect (a client); an accepted end takes its listener's. */
  credentials: PeerCredentials | null = null;
  /** The peer's credentials, kept once the peer is gone (the kernel keeps them with the socket). */
  private peerCreds: PeerCredentials | null = null;

  constructor(nonblock: boolean) {
    super(null, O_RDWR, nonblock);
  }

  /** bind() succeeded: `unbind` frees the name when the socket goes away. */
  bindTo(unbind: () => void): void {
    this.state = 'bound';
    this.unbind = unbind;
  }

  listen(backlog: number): void {
    if (this.state !== 'bound' && this.state !== 'listening') fail('EINVAL', 'listen on a socket that is not bound');
    this.state = 'listening';
    this.backlog = Math.max(0, Math.min(backlog, 4096));
  }

  /** connect(): `client` joins this listener's queue, connected to a new server-side end. */
  enqueue(client: UnixSocketFile): void {
    if (this.state !== 'listening') fail('ECONNREFUSED', 'the socket is bound but not listening');
    // The kernel allows backlog + 1 queued connections.
    if (this.pending.length > this.backlog) {
      if (client.nonblock) fail('EAGAIN', 'the listen backlog is full');
      fail('EDEADLK', 'blocking connect to a full backlog: the real call would wait for an accept that cannot come');
    }
    const server = new UnixSocketFile(false);
    server.credentials = this.credentials;
    server.state = 'connected';
    client.state = 'connected';
    server.peer = client;
    client.peer = server;
    this.pending.push(server);
    this.notify();
  }

  /** accept(): the oldest pending connection (the caller installs it). */
  accept(): UnixSocketFile {
    if (this.state !== 'listening') fail('EINVAL', 'accept on a socket that is not listening');
    const next = this.pending.shift();
    if (next === undefined) {
      if (this.nonblock) fail('EAGAIN', 'no pending connection');
      fail('EDEADLK', 'blocking accept with no pending connection: the real call would never return in this test');
    }
    this.notify();
    return next;
  }

  /** sendmsg(): queues `data` and references to `files` at the peer. */
  send(data: Uint8Array, files: FakeFile[]): number {
    if (this.state !== 'connected') fail('ENOTCONN', 'the socket is not connected');
    const peer = this.peer;
    if (peer === null || this.peerGone) fail('EPIPE', 'the peer closed its end');
    if (files.length > SCM_MAX_FD) fail('EINVAL', `more than ${SCM_MAX_FD} fds in one message`);
    if (data.byteLength > MAX_MESSAGE) fail('EMSGSIZE', `a ${data.byteLength}-byte message exceeds the socket buffer`);
    peer.queue.push({ data: Uint8Array.from(data), files: files.map((f) => f.get()) });
    peer.notify();
    return data.byteLength;
  }

  /** recvmsg(): the next message into `buf`, its files installed in `fds` (at most `maxFds`). */
  receive(buf: Uint8Array, maxFds: number, fds: FdTable, dontWait: boolean): RecvResult {
    if (this.state !== 'connected') fail('ENOTCONN', 'the socket is not connected');
    const msg = this.queue.shift();
    if (msg === undefined) {
      if (this.peerGone) return { bytes: 0, fds: [], flags: 0 };
      if (this.nonblock || dontWait) fail('EAGAIN', 'no message queued');
      fail('EDEADLK', 'blocking recvmsg with nothing queued: the real call would never return in this test');
    }
    let flags = 0;
    const n = Math.min(buf.byteLength, msg.data.byteLength);
    buf.set(msg.data.subarray(0, n));
    if (n < msg.data.byteLength) flags |= MSG_TRUNC;
    const installed: number[] = [];
    msg.files.forEach((file, i) => {
      if (i >= maxFds || (flags & MSG_CTRUNC) !== 0) {
        flags |= MSG_CTRUNC;
        file.put();
        return;
      }
      try {
        installed.push(fds.install(file));
      } catch (e) {
        // EMFILE: the kernel stops installing and says the fds were cut.
        if (!(e instanceof KernelError)) throw e;
        flags |= MSG_CTRUNC;
      }
    });
    this.notify();
    return { bytes: n, fds: installed, flags };
  }

  /**
   * SO_PEERCRED: the other end's credentials as recorded when it connected
   * or bound; a listener's are its own (listen() records them); a socket
   * that never connected has none (pid 0, uid and gid -1, as Linux answers).
   */
  peerCredentials(): PeerCredentials {
    const creds = this.state === 'connected' ? (this.peer?.credentials ?? this.peerCreds) : this.state === 'new' ? null : this.credentials;
    return creds ?? { pid: 0, uid: 0xffffffff, gid: 0xffffffff };
  }

  override poll(): number {
    if (this.state === 'listening') return this.pending.length > 0 ? POLLIN : 0;
    if (this.state !== 'connected') return POLLOUT | POLLHUP;
    let mask = 0;
    if (this.queue.length > 0) mask |= POLLIN;
    if (this.peerGone) mask |= POLLIN | POLLHUP;
    else mask |= POLLOUT;
    return mask;
  }

  /** The peer's file was released: wake readers with end of file. */
  private peerClosed(): void {
    this.peerCreds = this.peer?.credentials ?? null;
    this.peer = null;
    this.peerGone = true;
    this.notify();
  }

  protected override release(): void {
    this.unbind?.();
    this.unbind = null;
    for (const msg of this.queue.splice(0)) for (const f of msg.files) f.put();
    for (const conn of this.pending.splice(0)) conn.put();
    const peer = this.peer;
    this.peer = null;
    peer?.peerClosed();
  }
}
