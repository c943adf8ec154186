// The secondary's side: connects to a primary's ShareServer and borrows its
// containers, devices and buffers as the library's own objects (borrowed
// Containers, Devices, DmaBuffers) in a Vfio context of this process.
//
// Guarantees:
// - Nothing blocks the event loop: every request waits for its answer with
//   a poll(2) on a libuv pool thread, bounded by `timeoutMs` (ETIMEDOUT).
//   Requests run one at a time, in call order.
// - The primary going away (it exited, or closed its server) fails the
//   request in flight and every later one with ECONNRESET; nothing hangs.
//   What was already received keeps working: the kernel objects are open
//   files this process holds too (the device stays bound and attached, the
//   IOAS or the Type1 container and its mappings stay), until close().
// - A primary of another protocol version: EPROTONOSUPPORT. A malformed
//   answer: EPROTO. Both end the connection.
// - Every fd received is either owned by an object handed out here or
//   closed, whatever fails.
import { Container } from '../core/container/container.js';
import { Vfio } from '../core/context.js';
import type { Device } from '../core/device.js';
import type { DmaBuffer } from '../core/dma.js';
import type { IovaRange } from '../core/iova-allocator.js';
import { usageError, VfioError } from '../base/errors.js';
import { AF_UNIX, SOCK_CLOEXEC, SOCK_NONBLOCK, SOCK_SEQPACKET, type Sys } from '../libc/sys.js';
import type { VfioMode } from '../host/mode.js';
import { canonicalPciAddress } from '../host/pci-address.js';
import { Borrower } from './borrower.js';
import { Channel, type Incoming } from './channel.js';
import { decodeBuffer, decodeContainer, decodeDevice, decodeWindow } from './grants.js';
import { PROTOCOL_VERSION, arr, errorFromWire, int, obj, protocolError, str, type FdSlots, type Json } from './protocol.js';

export interface ConnectOptions {
  /** How long to wait for the primary to accept and to answer each request, in ms (default 10000). */
  readonly timeoutMs?: number;
}

/** A container the primary serves (from its hello answer). */
export interface ServedContainer {
  readonly index: number;
  readonly mode: VfioMode;
  /** Devices assigned to it when the secondary connected. */
  readonly devices: readonly string[];
}

/** A buffer the primary shares (from its hello answer). */
export interface ServedBuffer {
  readonly name: string;
  /** Index of its container. */
  readonly container: number;
  readonly size: number;
}

const MODES: readonly string[] = ['cdev', 'group', 'noiommu'];

/**
 * Connects to the primary serving at `path` and says hello.
 * @throws VfioError ENOENT no socket there; ECONNREFUSED nobody listens
 *   there (a primary died and left it); EACCES not allowed (another user's
 *   primary); ETIMEDOUT the primary did not accept or answer in time;
 *   EPROTONOSUPPORT it speaks another protocol version; EPROTO a malformed
 *   answer; ECONNRESET it hung up; ECLOSED `v` is closed.
 */
export async function connectPrimary(v: Vfio, path: string, opts: ConnectOptions = {}): Promise<Secondary> {
  if (!(v instanceof Vfio)) throw usageError('EINVAL', 'connectPrimary needs a Vfio context');
  if (typeof path !== 'string' || path.length === 0)
    throw usageError('EINVAL', `the primary's socket path ${String(path)} is not a string`);
  if (typeof opts !== 'object' || opts === null) throw usageError('EINVAL', 'connectPrimary options must be an object');
  if (v.closed) throw usageError('ECLOSED', 'the Vfio context is closed');
  const timeoutMs = opts.timeoutMs ?? 10_000;
  if (!Number.isSafeInteger(timeoutMs) || timeoutMs <= 0) throw usageError('EINVAL', `timeoutMs ${timeoutMs} is not a positive integer`);
  const sys = v.kernel;
  const uid = sys.getuid();
  const deadline = Date.now() + timeoutMs;
  const fd = sys.socket(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  const channel = new Channel(sys, fd, `the primary at ${path}`);
  try {
    await connectBy(sys, fd, path, deadline);
    const s = new Secondary(v, channel, timeoutMs);
    try {
      await s.hello();
    } catch (err) {
      if (err instanceof VfioError && err.code === 'ECONNRESET') {
        throw usageError(
          'ECONNRESET',
          `the primary at ${path} closed the connection at hello: it serves only the uids it allows ` +
            `(this process runs as uid ${uid}), or it has all the connections it takes`,
          { path, cause: err },
        );
      }
      throw err;
    }
    return s;
  } catch (err) {
    channel.close();
    throw err;
  }
}

/** connect(2) on a non-blocking socket: EAGAIN (a full backlog) is retried until the deadline. */
async function connectBy(sys: Sys, fd: number, path: string, deadline: number): Promise<void> {
  for (;;) {
    try {
      sys.connect(fd, path);
      return;
    } catch (err) {
      if (!(err instanceof VfioError) || err.code !== 'EAGAIN') {
        if (err instanceof VfioError && err.code === 'ECONNREFUSED') {
          err.annotate({ detail: `nothing listens on ${path}: no primary runs there (a dead one may have left the socket)` });
        }
        throw err;
      }
      if (Date.now() >= deadline) throw usageError('ETIMEDOUT', `the primary at ${path} did not accept the connection in time`, { path });
      await new Promise<void>((r) => setTimeout(r, 10));
    }
  }
}

export class Secondary implements Disposable {
  /** The primary's process id. */
  primaryPid = 0;
  /** The containers the primary serves. */
  containers: readonly ServedContainer[] = [];
  /** The buffers the primary shared when this secondary connected. */
  buffers: readonly ServedBuffer[] = [];
  private readonly borrower: Borrower;
  private queue: Promise<unknown> = Promise.resolve();
  private nextId = 1;
  private inFlight = false;
  private closing = false;
  private broken: VfioError | null = null;

  /** @internal Made by connectPrimary. */
  constructor(
    v: Vfio,
    private readonly channel: Channel,
    private readonly timeoutMs: number,
  ) {
    this.borrower = new Borrower(v, channel.peer);
  }

  /** True while the primary can be asked for more (not closed, connection not lost). */
  get connected(): boolean {
    return !this.closing && this.broken === null;
  }

  /** @internal The handshake (connectPrimary). */
  async hello(): Promise<void> {
    await this.request('hello', { pid: process.pid }, (result) => {
      this.primaryPid = int(result, 'pid', 'hello');
      this.containers = arr(result, 'containers', 'hello').map((x, i) => {
        const o = obj(x, `hello.containers[${i}]`);
        const mode = str(o, 'mode', `hello.containers[${i}]`);
        if (!MODES.includes(mode)) throw protocolError(`hello.containers[${i}].mode ${mode}`);
        const devices = arr(o, 'devices', `hello.containers[${i}]`).map((d) => {
          if (typeof d !== 'string') throw protocolError(`hello.containers[${i}].devices holds a non-string`);
          return d;
        });
        return { index: int(o, 'index', `hello.containers[${i}]`), mode: mode as VfioMode, devices };
      });
      this.buffers = arr(result, 'buffers', 'hello').map((x, i) => {
        const o = obj(x, `hello.buffers[${i}]`);
        const what = `hello.buffers[${i}]`;
        return { name: str(o, 'name', what), container: int(o, 'container', what), size: int(o, 'size', what) };
      });
    });
  }

  /**
   * The primary's container `index` as a borrowed Container here (the same
   * one on later calls). It maps and unmaps in the primary's IOMMU space
   * (cdev: IOMMU_IOAS_MAP in the same IOAS, whose id equals the primary's;
   * group: VFIO_IOMMU_MAP_DMA on the same container, the IOMMU type already
   * set), allocating IOVAs only in windows from reserveIova().
   * @throws VfioError EINVAL no such container, or a group-mode container
   *   without devices; ECONNRESET/ETIMEDOUT/EPROTO (connection lost); ECLOSED.
   */
  attachContainer(index: number): Promise<Container> {
    const bad = this.checkIndex(index);
    if (bad !== null) return Promise.reject(bad);
    return this.serial(async () => {
      const have = this.borrower.container(index);
      if (have !== undefined) return have;
      return this.exchange('attach-container', { container: index }, (result, fds) =>
        this.borrower.adoptContainer(index, decodeContainer(result['container'], fds), fds),
      );
    });
  }

  /**
   * Borrows device `address`, which the primary assigned to one of its
   * served containers, and opens it here (its container is attached on the
   * way). The device is this process's to drive until its release(): BARs,
   * config space, and interrupts (its own eventfds, wired with SET_IRQS on
   * the lent fd). Releasing it gives it back to the primary.
   * @throws VfioError EINVAL not a PCI address; ENODEV not assigned to a
   *   served container; EBUSY open in the primary or lent to another
   *   secondary; EEXIST already borrowed here; ECONNRESET/ETIMEDOUT/EPROTO; ECLOSED.
   */
  openDevice(address: string): Promise<Device> {
    let canonical: string;
    try {
      canonical = canonicalPciAddress(address);
    } catch (err) {
      return Promise.reject(err);
    }
    return this.serial(() =>
      this.exchange('open-device', { address: canonical }, (result, fds) => {
        const index = int(result, 'container', 'open-device');
        const released = (): void => this.notify({ op: 'release-device', address: canonical });
        try {
          if (result['grant'] !== null) this.borrower.adoptContainer(index, decodeContainer(result['grant'], fds), fds);
          const c = this.borrower.container(index);
          if (c === undefined) throw protocolError(`the device came in container ${index}, which was not granted`);
          return this.borrower.adoptDevice(index, decodeDevice(result['device'], fds, c.mode), fds, released);
        } catch (err) {
          // The primary lent it: give it back.
          released();
          throw err;
        }
      }),
    );
  }

  /**
   * Asks the primary to reserve `size` bytes of IOVA space in `container`
   * (below `dmaLimit`, aligned to `align`) for this secondary; the
   * container's allocDma then allocates inside it. The block is cleared and
   * given back when this secondary disconnects.
   * @throws VfioError EINVAL not a container borrowed here, bad size;
   *   ENOTSUP no-IOMMU mode (DMA uses physical addresses, no window needed);
   *   ENOSPC no room; ECONNRESET/ETIMEDOUT/EPROTO; ECLOSED.
   */
  reserveIova(
    container: Container,
    size: number | bigint,
    opts: { readonly dmaLimit?: bigint; readonly align?: bigint } = {},
  ): Promise<IovaRange> {
    // Checked here, before anything travels: a bad argument is this call's
    // error (a rejected promise, never a synchronous throw), not the session's.
    const index = container instanceof Container ? this.borrower.indexOf(container) : undefined;
    if (index === undefined || container.closed)
      return Promise.reject(
        usageError('EINVAL', `${String((container as Container | undefined)?.label ?? container)} was not lent by ${this.channel.peer}`),
      );
    if (container.dmaMode === 'identity') {
      return Promise.reject(
        usageError('ENOTSUP', `${container.label} is in no-IOMMU mode: DMA uses physical addresses, there is no IOVA space to reserve`),
      );
    }
    const sizeOk = typeof size === 'bigint' ? size > 0n : typeof size === 'number' && Number.isSafeInteger(size) && size > 0;
    if (!sizeOk) return Promise.reject(usageError('EINVAL', `IOVA window size ${String(size)} is not a positive integer`));
    const bytes = BigInt(size);
    if (typeof opts !== 'object' || opts === null) return Promise.reject(usageError('EINVAL', 'reserveIova options must be an object'));
    const args: Json = { container: index, size: bytes.toString() };
    for (const key of ['dmaLimit', 'align'] as const) {
      const v: unknown = opts[key];
      if (v === undefined) continue;
      if (typeof v !== 'bigint' || v <= 0n || v >= 1n << 64n) {
        return Promise.reject(usageError('EINVAL', `reserveIova ${key} must be a positive bigint below 2^64`));
      }
      if (key === 'align' && (v & (v - 1n)) !== 0n)
        return Promise.reject(usageError('EINVAL', `reserveIova align ${v} is not a power of two`));
      args[key] = v.toString();
    }
    return this.serial(() =>
      this.exchange('reserve-iova', args, (result) => {
        const w = decodeWindow(result['window']);
        if (w.last - w.start + 1n !== bytes) throw protocolError(`the primary reserved ${w.last - w.start + 1n} bytes, not ${bytes}`);
        this.borrower.adoptWindow(index, w);
        return { start: w.start, last: w.last };
      }),
    );
  }

  /**
   * Maps the buffer the primary shared as `name`: the same pages, at the
   * primary's IOVA (`buf.iova`), which this process cannot change. free()
   * unmaps it here only.
   * @throws VfioError ENOENT no such buffer; ECONNRESET/ETIMEDOUT/EPROTO;
   *   ECLOSED; any errno of mapping it.
   */
  importBuffer(name: string): Promise<DmaBuffer> {
    if (typeof name !== 'string' || name.length === 0 || name.length > 255) {
      return Promise.reject(usageError('EINVAL', `a shared buffer name is 1 to 255 characters, not ${String(name)}`));
    }
    return this.serial(() =>
      this.exchange('import-buffer', { name }, (result, fds) => {
        const index = int(result, 'container', 'import-buffer');
        if (result['grant'] !== null) this.borrower.adoptContainer(index, decodeContainer(result['grant'], fds), fds);
        const c = this.borrower.container(index);
        if (c === undefined) throw protocolError(`buffer "${name}" came in container ${index}, which was not granted`);
        return this.borrower.adoptBuffer(index, decodeBuffer(result['buffer'], fds, c.kernelEnv.pageSize), fds);
      }),
    );
  }

  /**
   * Closes everything borrowed (devices, containers, buffers), then the
   * connection: the primary sees end of file after this process let go of
   * the kernel objects, and takes its devices and IOVA blocks back.
   * Idempotent. A request in flight fails.
   * @throws VfioError the first error of that teardown (each step still runs).
   */
  close(): void {
    if (this.closing) return;
    this.closing = true;
    try {
      this.borrower.close();
    } finally {
      // A poll in flight on the socket must not see its fd closed (and
      // maybe reused): the request closes it when it returns.
      if (!this.inFlight) this.channel.close();
    }
  }

  [Symbol.dispose](): void {
    this.close();
  }

  // --- requests -----------------------------------------------------------------

  /** Why `index` names no container the primary serves (checked before it travels), or null. */
  private checkIndex(index: unknown): VfioError | null {
    if (typeof index !== 'number' || !Number.isSafeInteger(index) || index < 0) {
      return usageError('EINVAL', `container index ${String(index)} is not a non-negative integer`);
    }
    if (!this.containers.some((c) => c.index === index)) {
      return usageError('EINVAL', `no container ${index}: the primary serves ${this.containers.length}`);
    }
    return null;
  }

  /** Runs `fn` after every request queued before it. */
  private serial<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.queue.then(fn, fn);
    this.queue = run.catch(() => undefined);
    return run;
  }

  private request<T>(op: string, args: Json, take: (result: Json, fds: FdSlots) => T): Promise<T> {
    return this.serial(() => this.exchange(op, args, take));
  }

  /**
   * One request and its answer; `take` adopts what it grants. Unadopted fds
   * are closed. A failure to send or to receive the answer (whatever its
   * errno), or an answer that does not match, ends the connection: a late
   * answer would be taken for the next request's. So does a malformed
   * grant (EPROTO). A refusal, or a local failure of `take`, does not.
   */
  private async exchange<T>(op: string, args: Json, take: (result: Json, fds: FdSlots) => T): Promise<T> {
    if (this.closing) throw usageError('ECLOSED', `the connection to ${this.channel.peer} is closed`);
    if (this.broken !== null) throw usageError(this.broken.code, `no longer connected to ${this.channel.peer}: ${this.broken.message}`);
    const id = this.nextId++;
    this.inFlight = true;
    try {
      let incoming: Incoming;
      try {
        try {
          this.channel.send({ id, op, ...args });
        } catch (err) {
          if (err instanceof VfioError && (err.code === 'EPIPE' || err.code === 'ECONNRESET')) {
            throw usageError('ECONNRESET', `${this.channel.peer} closed the connection (it exited or stopped serving)`);
          }
          throw err;
        }
        incoming = await this.channel.next(Date.now() + this.timeoutMs, `answering ${op}`);
      } catch (err) {
        this.broken ??= err instanceof VfioError ? err : usageError('EIO', String(err));
        throw err;
      }
      const { msg, fds } = incoming;
      try {
        const mismatch =
          msg['version'] !== PROTOCOL_VERSION
            ? usageError(
                'EPROTONOSUPPORT',
                `${this.channel.peer} speaks vfio-share version ${String(msg['version'])}, this secondary version ${PROTOCOL_VERSION}`,
              )
            : msg['id'] !== id
              ? protocolError(`answer ${String(msg['id'])} to request ${id}`)
              : msg['ok'] !== true && msg['ok'] !== false
                ? protocolError(`answer ${id} is neither ok nor a refusal`)
                : null;
        if (mismatch !== null) {
          this.broken ??= mismatch;
          throw mismatch;
        }
        if (msg['ok'] === false) throw errorFromWire(msg['error'], op);
        if (this.closing) throw usageError('ECLOSED', `the connection to ${this.channel.peer} was closed while ${op} was in flight`);
        try {
          return take(obj(msg['result'], `${op} result`), fds);
        } catch (err) {
          // A primary that sends malformed grants is not one to keep talking to.
          if (err instanceof VfioError && err.code === 'EPROTO') this.broken ??= err;
          throw err;
        }
      } finally {
        fds.closeRest();
      }
    } finally {
      this.inFlight = false;
      if (this.closing || this.broken !== null) this.channel.close();
    }
  }

  /** A notification (no answer); lost silently when the primary is gone (its lease ended anyway). */
  private notify(msg: Json): void {
    if (this.closing || this.broken !== null || this.channel.closed) return;
    try {
      this.channel.send(msg);
    } catch {
      // The primary is gone or not reading: it takes everything back when
      // the connection ends.
    }
  }
}
