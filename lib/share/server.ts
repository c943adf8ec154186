// The primary's side: serves some of its containers to secondary processes
// over an AF_UNIX socket (the vfio-share protocol, ./protocol.ts). Each
// connection is a Lease (./lease.ts): what the secondary borrows is given
// back when it releases it or when the connection ends (the secondary closed
// it, or exited: the kernel closes its socket with its other fds).
//
// Guarantees:
// - Never blocks the event loop: one poll(2) over the listening socket and
//   every connection runs on a libuv pool thread (sys.pollAsync), and each
//   request is answered synchronously from the loop (a few ioctls).
// - Access: the socket node is created private (mode 0600 through the umask
//   at bind(2), never a chmod through a path that a neighbour could swap for
//   a symlink), and every accepted connection's peer credentials
//   (SO_PEERCRED, the kernel's word, not the hello's) must name an allowed
//   uid (default: the primary's own), else it is closed at once.
// - Limits: connections at once, request size, time to say hello, idle time
//   of a connection that borrows nothing, and per-secondary IOVA
//   reservations (windows and bytes). A bad argument is refused (EINVAL)
//   without ending the connection; only a message that breaks the protocol
//   does.
// - A malformed message, a version this primary does not speak, or a
//   secondary that does not read its answers ends that connection (after an
//   error answer when one can be sent); other connections go on.
// - While it serves, the pending poll keeps the process alive; close() ends
//   every lease, closes every socket and removes the socket node.
import { rmSync } from 'node:fs';
import { resolve } from 'node:path';
import { teardown, withUnwind } from '../base/cleanup.js';
import { Container } from '../core/container/container.js';
import { DmaBuffer } from '../core/dma.js';
import { usageError, VfioError } from '../base/errors.js';
import { AF_UNIX, EFD_CLOEXEC, EFD_NONBLOCK, POLLIN, SOCK_CLOEXEC, SOCK_NONBLOCK, SOCK_SEQPACKET, type Fd, type Sys } from '../libc/sys.js';
import { canonicalPciAddress } from '../host/pci-address.js';
import { Channel, type Incoming } from './channel.js';
import { encodeBuffer, encodeContainer, encodeDevice, encodeWindow } from './grants.js';
import { Lease, type IovaQuota } from './lease.js';
import { PROTOCOL_VERSION, OutgoingFds, big, bigOrUndefined, int, protocolError, str, wireError, type Json } from './protocol.js';

export interface ShareServerOptions {
  /** The containers secondaries may use; a secondary names them by index (0, 1, ...). */
  readonly containers: readonly Container[];
  /** listen(2) backlog (default 16). */
  readonly backlog?: number;
  /**
   * The uids whose processes may connect (checked with SO_PEERCRED; default:
   * this process's own uid only). Root is not implied. With another uid
   * listed the socket node is made 0666, so that the kernel lets them
   * connect; the credential check then decides.
   */
  readonly allowUids?: readonly number[];
  /** Secondaries connected at once (default 32); more are closed as they come. */
  readonly maxConnections?: number;
  /** Time a new connection has to say hello, in ms (default 5000). */
  readonly helloTimeoutMs?: number;
  /**
   * Time a connection that borrows nothing (no device, no IOVA window) may
   * stay silent, in ms (default 60000); then it is closed. A connection that
   * borrows something is never timed out: its lease ends with it.
   */
  readonly idleTimeoutMs?: number;
  /** Largest request a secondary may send, in bytes (default 4096); a longer one ends its connection. */
  readonly maxRequestBytes?: number;
  /** IOVA reservations one secondary may hold at once (default 16 windows, 1 GiB). */
  readonly iovaQuota?: { readonly windows?: number; readonly bytes?: bigint };
}

interface Connection {
  readonly channel: Channel;
  /** Who connected, as the kernel says (SO_PEERCRED). */
  readonly pid: number;
  /** Made by hello. */
  lease: Lease | null;
  /** When it last sent something (Date.now()). */
  lastActive: number;
}

/** The limits a server runs with (ShareServerOptions, defaults filled in). */
interface Limits {
  readonly allowUids: readonly number[];
  readonly maxConnections: number;
  readonly helloTimeoutMs: number;
  readonly idleTimeoutMs: number;
  readonly maxRequestBytes: number;
  readonly iovaQuota: IovaQuota;
}

function positiveInt(opts: Record<string, unknown>, key: string, fallback: number): number {
  const v = opts[key] ?? fallback;
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 1)
    throw usageError('EINVAL', `ShareServer ${key} ${String(v)} is not a positive integer`);
  return v;
}

/** The options' limits, checked. */
function limitsOf(opts: ShareServerOptions, ownUid: number): Limits {
  const o = opts as unknown as Record<string, unknown>;
  const uids = opts.allowUids ?? [ownUid];
  if (
    !Array.isArray(uids) ||
    uids.length === 0 ||
    !uids.every((u) => typeof u === 'number' && Number.isSafeInteger(u) && u >= 0 && u < 2 ** 32 - 1)
  ) {
    throw usageError('EINVAL', 'ShareServer allowUids must be a non-empty array of uids');
  }
  const quota: unknown = opts.iovaQuota ?? {};
  if (typeof quota !== 'object' || quota === null) throw usageError('EINVAL', 'ShareServer iovaQuota must be { windows?, bytes? }');
  const bytes = (quota as { bytes?: unknown }).bytes ?? 1n << 30n;
  if (typeof bytes !== 'bigint' || bytes < 0n) throw usageError('EINVAL', 'ShareServer iovaQuota.bytes must be a non-negative bigint');
  return {
    allowUids: [...uids],
    maxConnections: positiveInt(o, 'maxConnections', 32),
    helloTimeoutMs: positiveInt(o, 'helloTimeoutMs', 5000),
    idleTimeoutMs: positiveInt(o, 'idleTimeoutMs', 60_000),
    maxRequestBytes: positiveInt(o, 'maxRequestBytes', 4096),
    iovaQuota: { windows: positiveInt(quota as Record<string, unknown>, 'windows', 16), bytes },
  };
}

/** A refusal that ends the connection (the peer does not follow the protocol). */
class Hangup extends Error {
  constructor(readonly reason: VfioError) {
    super(reason.message);
  }
}

let nextConnection = 1;

/** The requests after hello (./protocol.ts). */
const REQUESTS: readonly string[] = ['attach-container', 'open-device', 'reserve-iova', 'import-buffer'];

/**
 * bind(2) under a umask that makes the node `mode` from its creation: no
 * window in which it is more open, and no chmod through a path afterwards.
 * JavaScript runs one thing at a time on this thread, so nothing else of
 * ours sees the brief umask. A worker thread cannot set the umask
 * (process.umask throws there): the node then has the process umask's mode.
 */
function bindWithMode(sys: Sys, fd: Fd, path: string, mode: number): void {
  let previous: number | null = null;
  try {
    previous = process.umask(0o777 & ~mode);
  } catch {
    previous = null;
  }
  try {
    sys.bind(fd, path);
  } finally {
    if (previous !== null) process.umask(previous);
  }
}

export class ShareServer implements AsyncDisposable {
  /** The socket's path (absolute). */
  readonly path: string;
  private readonly conns = new Set<Connection>();
  private readonly shared = new Map<string, DmaBuffer>();
  private closing = false;
  private readonly running: Promise<void>;
  private failure: { err: unknown } | null = null;
  /** accept(2) failed for a reason other than "none pending": wait a little before polling again. */
  private acceptBackoff = false;

  private constructor(
    private readonly sys: Sys,
    path: string,
    private readonly listenFd: Fd,
    private readonly stopFd: Fd,
    private readonly containers: readonly Container[],
    private readonly limits: Limits,
  ) {
    this.path = path;
    this.running = this.run();
  }

  /**
   * Serves `opts.containers` on a new socket at `path` (which must not
   * exist: a stale one from a primary that died must be removed first). The
   * node is created private (0600, or 0666 when `allowUids` lists another
   * uid) through the umask at bind(2), never by a chmod after it; in a
   * worker thread, which cannot set the umask, it gets the process umask's
   * mode, and the credential check alone decides who is served.
   * @throws VfioError EINVAL no options, a path that is not a string, no
   *   containers, a closed or borrowed one, containers of different
   *   contexts, a bad limit; EADDRINUSE `path` exists; ENOENT its directory
   *   does not; ENAMETOOLONG path over 107 bytes; any errno of
   *   socket/bind/listen/eventfd. Nothing is left behind after a failure.
   */
  static listen(path: string, opts: ShareServerOptions): ShareServer {
    if (typeof path !== 'string' || path.length === 0) throw usageError('EINVAL', `the socket path ${String(path)} is not a string`);
    if (typeof opts !== 'object' || opts === null) throw usageError('EINVAL', 'ShareServer.listen needs options: { containers }');
    if (!Array.isArray(opts.containers)) throw usageError('EINVAL', 'ShareServer.listen options.containers must be an array of Containers');
    const containers: Container[] = [...opts.containers];
    const first = containers[0];
    if (first === undefined) throw usageError('EINVAL', 'ShareServer.listen needs at least one container to serve');
    if (!containers.every((c) => c instanceof Container)) throw usageError('EINVAL', 'ShareServer.listen serves Containers only');
    const sys = first.kernelEnv.sys;
    for (const c of containers) {
      if (c.closed || c.borrowed)
        throw usageError('EINVAL', `${c.label} is ${c.closed ? 'closed' : 'borrowed'}: only a container of this process can be served`);
      if (c.kernelEnv.sys !== sys) throw usageError('EINVAL', 'the containers served together must come from one Vfio context');
    }
    if (new Set(containers).size !== containers.length) throw usageError('EINVAL', 'a container is listed twice');
    const backlog = opts.backlog ?? 16;
    if (!Number.isSafeInteger(backlog) || backlog < 1) throw usageError('EINVAL', `backlog ${backlog} is not a positive integer`);
    const own = sys.getuid();
    const limits = limitsOf(opts, own);
    const mode = limits.allowUids.every((u) => u === own) ? 0o600 : 0o666;
    const where = resolve(path);
    return withUnwind((u) => {
      const fd = sys.socket(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
      u.defer(() => sys.close(fd));
      try {
        bindWithMode(sys, fd, where, mode);
      } catch (err) {
        if (err instanceof VfioError && err.code === 'EADDRINUSE') {
          err.annotate({ detail: `${where} exists: another primary serves there, or one died and left it (remove it)` });
        }
        throw err;
      }
      u.defer(() => rmSync(where, { force: true }));
      sys.listen(fd, backlog);
      const stop = sys.eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
      return new ShareServer(sys, where, fd, stop, containers, limits);
    });
  }

  /** Connected secondaries. */
  get connections(): number {
    return this.conns.size;
  }

  get closed(): boolean {
    return this.closing;
  }

  /**
   * Lets secondaries import `buf` (allocated `{ shareable: true }` in a
   * served container) under `name`. The buffer must stay allocated and
   * mapped while secondaries use it: they hold its pages, but its IOVA is
   * this process's mapping.
   * @throws VfioError EINVAL not shareable, not mapped, not in a served
   *   container, or a bad name; EEXIST the name is taken; ECLOSED.
   */
  shareBuffer(name: string, buf: DmaBuffer): void {
    if (this.closing) throw usageError('ECLOSED', `the share server at ${this.path} is closed`);
    if (typeof name !== 'string' || name.length === 0 || name.length > 255)
      throw usageError('EINVAL', 'a shared buffer name is 1 to 255 characters');
    if (!(buf instanceof DmaBuffer)) throw usageError('EINVAL', `shareBuffer("${name}") needs a DmaBuffer, not ${String(buf)}`);
    const existing = this.shared.get(name);
    if (existing?.live) throw usageError('EEXIST', `a buffer is already shared as "${name}"`);
    if (!buf.shareable) throw usageError('EINVAL', `buffer "${name}" is not shareable: allocate it with { shareable: true }`);
    buf.iova; // EINVAL when not mapped, ECLOSED when freed
    if (!this.containers.some((c) => c.ownsBuffer(buf)))
      throw usageError('EINVAL', `buffer "${name}" is not in a container this server serves`);
    this.shared.set(name, buf);
  }

  /**
   * Stops serving: no new connections, every secondary's lease ends (its
   * devices come back, its IOVA blocks are cleared), every socket closes and
   * the socket node is removed. Secondaries see ECONNRESET at their next
   * request; what they hold stays usable until they close it (the kernel
   * objects are shared files). Idempotent.
   * @throws the first error of that teardown (each step still runs).
   */
  async close(): Promise<void> {
    if (!this.closing) {
      this.closing = true;
      this.kick();
    }
    await this.running;
    const failure = this.failure;
    this.failure = null;
    if (failure !== null) throw failure.err;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }

  // --- the loop ---------------------------------------------------------------

  private kick(): void {
    try {
      this.sys.write(this.stopFd, Buffer.from([1, 0, 0, 0, 0, 0, 0, 0]));
    } catch {
      // EAGAIN: the counter is saturated, so the poll is woken anyway.
    }
  }

  private async run(): Promise<void> {
    // Let the constructor finish before anything can reach `finally`.
    await undefined;
    try {
      while (!this.closing) {
        const conns = [...this.conns];
        const revents = await this.sys.pollAsync(
          [
            { fd: this.stopFd, events: POLLIN },
            { fd: this.listenFd, events: POLLIN },
            ...conns.map((c) => ({ fd: c.channel.fd, events: POLLIN })),
          ],
          this.nextTimeout(),
        );
        if (this.closing) break;
        this.expire();
        if ((revents[0] ?? 0) !== 0) this.drainStop();
        if ((revents[1] ?? 0) !== 0) this.acceptAll();
        conns.forEach((c, i) => {
          if ((revents[i + 2] ?? 0) !== 0 && this.conns.has(c)) this.service(c);
        });
        if (this.acceptBackoff) {
          // EMFILE and the like leave the connection pending: polling again
          // at once would spin.
          this.acceptBackoff = false;
          await new Promise<void>((r) => setTimeout(r, 100));
        }
      }
    } catch (err) {
      this.failure ??= { err };
    } finally {
      this.closing = true;
      try {
        this.teardown();
      } catch (err) {
        this.failure ??= { err };
      }
    }
  }

  /** When a connection must have said something by (Date.now() ms), or null: never for one that borrows something. */
  private deadlineOf(c: Connection): number | null {
    if (c.lease === null) return c.lastActive + this.limits.helloTimeoutMs;
    if (c.lease.holdsAnything) return null;
    return c.lastActive + this.limits.idleTimeoutMs;
  }

  /** The poll's timeout: until the earliest connection deadline (-1: none). */
  private nextTimeout(): number {
    let next: number | null = null;
    for (const c of this.conns) {
      const d = this.deadlineOf(c);
      if (d !== null && (next === null || d < next)) next = d;
    }
    return next === null ? -1 : Math.min(Math.max(0, next - Date.now()), 2 ** 31 - 1);
  }

  /** Closes the connections past their deadline (no hello in time, or idle borrowing nothing). */
  private expire(): void {
    const now = Date.now();
    for (const c of [...this.conns]) {
      const d = this.deadlineOf(c);
      if (d !== null && d <= now) this.drop(c);
    }
  }

  private drainStop(): void {
    try {
      this.sys.read(this.stopFd, Buffer.alloc(8));
    } catch {
      // EAGAIN: already drained.
    }
  }

  private acceptAll(): void {
    for (;;) {
      let fd: Fd;
      try {
        fd = this.sys.accept(this.listenFd, SOCK_NONBLOCK | SOCK_CLOEXEC);
      } catch (err) {
        // EAGAIN: none left. Anything else (ECONNABORTED, EMFILE) concerns
        // one would-be secondary, not the server: it is tried again later.
        if (!(err instanceof VfioError)) throw err;
        if (err.code !== 'EAGAIN') this.acceptBackoff = true;
        return;
      }
      this.admit(fd);
    }
  }

  /**
   * A new connection: kept only if the kernel says its process runs as an
   * allowed uid and the server has room; else closed at once (the secondary
   * sees the connection closed at its hello).
   */
  private admit(fd: Fd): void {
    let pid: number;
    try {
      const creds = this.sys.peerCredentials(fd);
      if (!this.limits.allowUids.includes(creds.uid) || this.conns.size >= this.limits.maxConnections) {
        this.sys.close(fd);
        return;
      }
      pid = creds.pid;
    } catch {
      try {
        this.sys.close(fd);
      } catch {
        // close(2) frees the fd even when it reports an error.
      }
      return;
    }
    const name = `secondary #${nextConnection++} (pid ${pid})`;
    this.conns.add({ channel: new Channel(this.sys, fd, name, this.limits.maxRequestBytes), pid, lease: null, lastActive: Date.now() });
  }

  /** Reads and answers every queued message of `c`; ends it on end of file or a protocol error. */
  private service(c: Connection): void {
    for (;;) {
      let got: Incoming | 'empty' | 'eof';
      try {
        got = c.channel.receive();
      } catch {
        return this.drop(c);
      }
      if (got === 'empty') return;
      if (got === 'eof') return this.drop(c);
      c.lastActive = Date.now();
      try {
        this.answer(c, got.msg);
      } catch {
        // Hangup (a protocol error, already answered if it could be), or the
        // answer could not be sent (the secondary is gone or not reading).
        return this.drop(c);
      } finally {
        // Secondaries send no fds; any that came are closed.
        got.fds.closeRest();
      }
    }
  }

  /**
   * Ends a connection: its lease ends, its socket closes. An error giving
   * back what it borrowed does not stop the server: close() reports it.
   */
  private drop(c: Connection): void {
    this.conns.delete(c);
    try {
      teardown([() => c.lease?.end(), () => c.channel.close()]);
    } catch (err) {
      this.failure ??= { err };
    }
  }

  private teardown(): void {
    const steps: (() => void)[] = [];
    for (const c of [...this.conns]) steps.push(() => this.drop(c));
    steps.push(() => this.sys.close(this.listenFd));
    steps.push(() => rmSync(this.path, { force: true }));
    steps.push(() => this.sys.close(this.stopFd));
    teardown(steps);
  }

  // --- requests ---------------------------------------------------------------

  /**
   * Answers one message. Throws Hangup when the connection must end, or the
   * send error when the answer could not be sent.
   */
  private answer(c: Connection, msg: Json): void {
    const id = typeof msg['id'] === 'number' && Number.isSafeInteger(msg['id']) ? msg['id'] : null;
    const refuse = (err: VfioError): void => {
      if (id !== null) c.channel.send({ id, ok: false, error: wireError(err) });
    };
    if (msg['version'] !== PROTOCOL_VERSION) {
      const err = usageError(
        'EPROTONOSUPPORT',
        `this primary speaks vfio-share version ${PROTOCOL_VERSION}, the secondary version ${String(msg['version'])}`,
      );
      refuse(err);
      throw new Hangup(err);
    }
    const op = msg['op'];
    if (id === null) {
      if (op === 'release-device' && c.lease !== null) {
        try {
          c.lease.giveBack(typeof msg['address'] === 'string' ? msg['address'] : '');
        } catch (err) {
          // The device is back either way; close() reports what went wrong.
          this.failure ??= { err };
        }
        return;
      }
      throw new Hangup(protocolError(`unknown notification ${JSON.stringify(op)}`));
    }
    if ((c.lease === null) !== (op === 'hello')) {
      const err = protocolError(c.lease === null ? 'the first request must be hello' : 'hello twice');
      refuse(err);
      throw new Hangup(err);
    }
    if (op !== 'hello' && !REQUESTS.includes(op as string)) {
      const err = protocolError(`unknown request ${JSON.stringify(op)}`);
      refuse(err);
      throw new Hangup(err);
    }
    let result: { json: Json; fds: readonly Fd[] };
    try {
      result = op === 'hello' ? { json: this.hello(c, msg), fds: [] } : this.dispatch(c.lease!, String(op), msg);
    } catch (err) {
      const e = err instanceof VfioError ? err : usageError('EIO', `the primary failed: ${String(err)}`);
      // A malformed hello is a peer that does not speak the protocol; a
      // known request with a bad argument is one failed call, answered as
      // such (EINVAL): the session goes on.
      if (e.code === 'EPROTO' && op === 'hello') {
        refuse(e);
        throw new Hangup(e);
      }
      refuse(e.code === 'EPROTO' ? usageError('EINVAL', e.message.replace(/^vfio-share: /, '')) : e);
      return;
    }
    c.channel.send({ id, ok: true, result: result.json }, result.fds);
  }

  private dispatch(lease: Lease, op: string, msg: Json): { json: Json; fds: readonly Fd[] } {
    const out = new OutgoingFds();
    switch (op) {
      case 'attach-container':
        return { json: this.attachContainer(lease, msg, out), fds: out.fds };
      case 'open-device':
        return { json: this.openDevice(lease, msg, out), fds: out.fds };
      case 'reserve-iova':
        return { json: this.reserveIova(lease, msg), fds: [] };
      case 'import-buffer':
        return { json: this.importBuffer(lease, msg, out), fds: out.fds };
      default:
        throw protocolError(`unknown request ${JSON.stringify(op)}`);
    }
  }

  private hello(c: Connection, msg: Json): Json {
    // The hello's pid is what the secondary says of itself; the lease is
    // named by the one the kernel recorded (SO_PEERCRED).
    int(msg, 'pid', 'hello');
    c.lease = new Lease(`secondary pid ${c.pid}`, this.limits.iovaQuota);
    return {
      pid: process.pid,
      containers: this.containers.map((k, index) => ({ index, mode: k.mode, devices: k.closed ? [] : [...k.devices] })),
      buffers: [...this.shared].filter(([, b]) => b.live).map(([name, b]) => ({ name, container: this.indexOfBuffer(b), size: b.size })),
    };
  }

  private served(index: number): Container {
    const k = this.containers[index];
    if (k === undefined) throw usageError('EINVAL', `no container ${index}: this primary serves ${this.containers.length}`);
    return k;
  }

  private indexOfBuffer(buf: DmaBuffer): number {
    return this.containers.findIndex((k) => k.ownsBuffer(buf));
  }

  // Each handler encodes everything first and records what the lease
  // granted last, so a refusal half-way leaves the lease as it was.

  private attachContainer(lease: Lease, msg: Json, out: OutgoingFds): Json {
    const index = int(msg, 'container', 'attach-container');
    const k = this.served(index);
    if (lease.holds(k)) throw usageError('EEXIST', `container ${index} is already attached`);
    const { wire, groups } = encodeContainer(k, out);
    lease.granting(k, groups);
    return { container: wire };
  }

  private openDevice(lease: Lease, msg: Json, out: OutgoingFds): Json {
    const address = canonicalPciAddress(str(msg, 'address', 'open-device'));
    const k = this.containers.find((x) => !x.closed && x.devices.includes(address));
    if (k === undefined) throw usageError('ENODEV', 'not assigned to a container this primary serves', { device: address });
    return withUnwind((u) => {
      const lent = lease.lend(k, address);
      u.defer(() => lease.giveBack(address));
      const granted = lease.holds(k) ? null : encodeContainer(k, out);
      const needGroup = k.mode !== 'cdev' && !(granted !== null ? granted.groups.includes(lent.group) : lease.holdsGroup(k, lent.group));
      const device = encodeDevice(lent, needGroup ? groupFdOf(k, lent.group) : null, out);
      if (granted !== null) lease.granting(k, granted.groups);
      if (needGroup) lease.grantingGroup(k, lent.group);
      return { container: this.containers.indexOf(k), grant: granted?.wire ?? null, device };
    });
  }

  private reserveIova(lease: Lease, msg: Json): Json {
    const index = int(msg, 'container', 'reserve-iova');
    const k = this.served(index);
    if (!lease.holds(k)) throw usageError('EINVAL', `container ${index} is not attached: attach it first`);
    const size = big(msg, 'size', 'reserve-iova');
    const dmaLimit = bigOrUndefined(msg, 'dmaLimit', 'reserve-iova');
    const align = bigOrUndefined(msg, 'align', 'reserve-iova');
    const got = lease.reserve(k, size, { ...(dmaLimit === undefined ? {} : { dmaLimit }), ...(align === undefined ? {} : { align }) });
    return { window: encodeWindow(got.iova, size, got.granule) };
  }

  private importBuffer(lease: Lease, msg: Json, out: OutgoingFds): Json {
    const name = str(msg, 'name', 'import-buffer');
    const buf = this.shared.get(name);
    if (buf === undefined || !buf.live) {
      this.shared.delete(name);
      throw usageError('ENOENT', `no buffer is shared as "${name}"`);
    }
    const index = this.indexOfBuffer(buf);
    const k = this.served(index);
    const buffer = encodeBuffer(name, buf, out);
    const granted = lease.holds(k) ? null : encodeContainer(k, out);
    if (granted !== null) lease.granting(k, granted.groups);
    return { container: index, grant: granted?.wire ?? null, buffer };
  }
}

/** The fd of IOMMU group `group` of group-mode container `k`. */
function groupFdOf(k: Container, group: number): Fd {
  const state = k.kernelState;
  const fd = state.mode === 'cdev' ? undefined : state.groups.find((g) => g.group === group)?.fd;
  if (fd === undefined) throw usageError('EIO', `IOMMU group ${group} of a lent device is not in ${k.label}`);
  return fd;
}
