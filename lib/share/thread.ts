// Sharing with worker_threads. Threads share the process's fd table and
// address space, but not JS objects: a Device, Region or DmaBuffer cannot be
// posted to a worker (its methods and liveness guards live in one isolate).
// What crosses is data: a ticket (plain numbers and strings, safe for
// postMessage) holding fd numbers the lender duplicated for the receiving
// thread, which rebuilds its own handles from them with adoptFromThread.
//
// What may be shared, and how:
// - fds: process-wide. The ticket's fds are dup(2)s: the adopting thread
//   owns them and closes them (close() of what it adopted), independently of
//   the lender's, so neither side can close an fd number the other uses.
// - memory: mappings are process-wide, but a view another thread made is
//   guarded by objects in that thread only. So a worker never uses the
//   lender's views: it maps BARs itself through its device fd, and maps each
//   shared DmaBuffer's memfd itself (the same pages, its own mapping, its own
//   lifetime). Nothing a worker touches can be unmapped by another thread.
// - devices: lent exactly as to a secondary process (./lease.ts): while
//   lent, the lender cannot open the device, and the worker owns its
//   interrupts (its own eventfds, its own poll thread).
// - IOVA space: a window reserved in the lender's container for the worker;
//   the worker's borrowed container allocates only inside it.
//
// Tickets are one-shot: a ticket carries a claim word in shared memory (an
// Int32Array on a SharedArrayBuffer, which postMessage shares rather than
// copies), and exactly one party takes its fds: the thread that adopts it
// (compare-and-swap unclaimed -> adopted) or the lender that takes it back
// unadopted (end/discard: unclaimed -> discarded, then it closes the fds). A
// ticket is checked whole before the claim, so a malformed or forged ticket
// (or a copy of one already adopted) is refused without closing any fd: fd
// numbers in a ticket that is not ours to take may be anyone's.
//
// Lifetimes: the lender ends the lease (ThreadLease.end) once the worker has
// closed what it adopted (ThreadBorrow.close marks the claim word closed):
// its devices come back with their interrupts off and its window is cleared.
// end() refuses (EBUSY) while the worker still holds what it adopted, since
// clearing the window would unmap DMA under it; `end({ force: true })` is
// for a worker that died without closing (its fds stay open in the process:
// no thread owns them any more, as any native resource a thread forgets).
import { withUnwind } from '../base/cleanup.js';
import { Container } from '../core/container/container.js';
import { Vfio } from '../core/context.js';
import type { Device } from '../core/device.js';
import { DmaBuffer } from '../core/dma.js';
import { closedError, usageError } from '../base/errors.js';
import type { Fd } from '../libc/sys.js';
import { canonicalPciAddress } from '../host/pci-address.js';
import { Borrower } from './borrower.js';
import {
  decodeBuffer,
  decodeContainer,
  decodeDevice,
  decodeWindow,
  encodeBuffer,
  encodeContainer,
  encodeDevice,
  encodeWindow,
  type BufferGrant,
  type ContainerGrant,
  type DeviceGrant,
  type WindowGrant,
} from './grants.js';
import { Lease } from './lease.js';
import {
  FdSlots,
  OutgoingFds,
  PROTOCOL,
  PROTOCOL_VERSION,
  arr,
  obj,
  protocolError,
  type WireBuffer,
  type WireContainer,
  type WireDevice,
  type WireWindow,
} from './protocol.js';

/** What a thread is lent. */
export interface ThreadLeaseOptions {
  /** Devices assigned to the container, lent to the thread. */
  readonly devices?: readonly string[];
  /** Shareable buffers of the container, by the name the thread will know them by. */
  readonly buffers?: Readonly<Record<string, DmaBuffer>>;
  /** An IOVA window reserved for the thread's own DMA buffers (not in no-IOMMU mode). */
  readonly iova?: { readonly size: number | bigint; readonly dmaLimit?: bigint; readonly align?: bigint };
}

/** The claim word of a ticket (see the file comment). */
const UNCLAIMED = 0;
const ADOPTED = 1;
const CLOSED = 2;
const DISCARDED = 3;

/**
 * Plain data for postMessage: the grants of ./protocol.ts, whose fd slots
 * index `fds`, the fd numbers the adopting thread takes over, and the claim
 * word (shared memory) that makes the ticket good for one adoption.
 */
export interface ThreadTicket {
  readonly protocol: typeof PROTOCOL;
  readonly version: number;
  /** One Int32 on a SharedArrayBuffer: unclaimed, adopted, closed or discarded. */
  readonly claim: Int32Array;
  readonly container: WireContainer;
  readonly devices: readonly WireDevice[];
  readonly buffers: readonly WireBuffer[];
  readonly windows: readonly WireWindow[];
  readonly fds: readonly Fd[];
}

/** The lender's handle on what it lent a thread. */
export class ThreadLease {
  private state: 'lent' | 'ended' = 'lent';

  /** @internal Made by lendToThread. */
  constructor(
    private readonly lease: Lease,
    /** Post this to the thread, which passes it to adoptFromThread. */
    readonly ticket: ThreadTicket,
    private readonly closeFd: (fd: Fd) => void,
  ) {}

  /** True once a thread adopted the ticket (and until it closed what it adopted). */
  get adopted(): boolean {
    return Atomics.load(this.ticket.claim, 0) === ADOPTED;
  }

  /**
   * The thread is done: devices come back with their interrupts off, the
   * IOVA window is cleared and freed. A ticket no thread adopted is taken
   * back (its fds closed here). Idempotent once it succeeded.
   * @throws VfioError EBUSY a thread adopted the ticket and has not closed
   *   what it adopted (clearing its window would unmap DMA under it); pass
   *   `{ force: true }` when that thread is gone. Else the first error of
   *   giving things back (each step still runs).
   */
  end(opts: { readonly force?: boolean } = {}): void {
    if (this.state === 'ended') return;
    if (this.takeBack() === ADOPTED && opts?.force !== true) {
      throw usageError(
        'EBUSY',
        'a thread adopted this ticket and still holds what it adopted: ' +
          'it closes its ThreadBorrow first (or end({ force: true }) once it is gone)',
      );
    }
    this.state = 'ended';
    this.lease.end();
  }

  /**
   * The ticket never reached a thread (postMessage failed, the worker never
   * started): closes its fds, then ends the lease.
   * @throws VfioError EBUSY a thread adopted it meanwhile (see end()).
   */
  discard(): void {
    this.end();
  }

  /** Claims an unadopted ticket back and closes its fds; returns the claim word as it was. */
  private takeBack(): number {
    const was = Atomics.compareExchange(this.ticket.claim, 0, UNCLAIMED, DISCARDED);
    if (was !== UNCLAIMED) return was;
    for (const fd of this.ticket.fds) {
      try {
        this.closeFd(fd);
      } catch {
        // close(2) frees the fd even when it reports an error.
      }
    }
    return DISCARDED;
  }
}

/**
 * Lends part of `container` to another thread: returns a ThreadLease whose
 * ticket the thread adopts with adoptFromThread.
 * @throws VfioError ENODEV a device not assigned to the container; EBUSY a
 *   device open here or lent already; EINVAL a buffer not shareable, not
 *   mapped or not in the container, group mode without devices, bad window;
 *   ENOTSUP a window in no-IOMMU mode; ENOSPC no IOVA room; EMFILE; ECLOSED.
 *   Nothing stays lent or open after a failure.
 */
export function lendToThread(container: Container, opts: ThreadLeaseOptions = {}): ThreadLease {
  if (!(container instanceof Container)) throw usageError('EINVAL', 'lendToThread needs a Container of this thread');
  if (typeof opts !== 'object' || opts === null) throw usageError('EINVAL', 'lendToThread options must be an object');
  if (container.closed) throw closedError(container.label);
  const { sys } = container.kernelEnv;
  if (container.borrowed) throw usageError('EINVAL', `${container.label} is borrowed: only its lender can lend it`);
  const devicesOpt = opts.devices ?? [];
  if (!Array.isArray(devicesOpt)) throw usageError('EINVAL', 'lendToThread devices must be an array of PCI addresses');
  const buffersOpt = opts.buffers ?? {};
  if (typeof buffersOpt !== 'object' || buffersOpt === null)
    throw usageError('EINVAL', 'lendToThread buffers must be an object of DmaBuffers by name');
  const window = opts.iova === undefined ? undefined : windowRequest(opts.iova);
  const lease = new Lease('a worker thread');
  return withUnwind((u) => {
    u.defer(() => lease.end());
    const out = new OutgoingFds();
    const granted = encodeContainer(container, out);
    lease.granting(container, granted.groups);
    const devices = devicesOpt.map((address) => {
      const lent = lease.lend(container, canonicalPciAddress(address));
      // Every group of the container came with its grant.
      return encodeDevice(lent, null, out);
    });
    const windows: WireWindow[] = [];
    if (window !== undefined) {
      const got = lease.reserve(container, window.size, window.opts);
      windows.push(encodeWindow(got.iova, window.size, got.granule));
    }
    const buffers = Object.entries(buffersOpt).map(([name, buf]) => {
      if (!(buf instanceof DmaBuffer) || !container.ownsBuffer(buf))
        throw usageError('EINVAL', `buffer "${name}" is not in ${container.label}`);
      return encodeBuffer(name, buf, out);
    });
    // The thread's own copies, made last: nothing above can fail after them.
    const fds: Fd[] = [];
    u.defer(() => fds.forEach((fd) => sys.close(fd)));
    for (const fd of out.fds) fds.push(sys.dup(fd));
    const claim = new Int32Array(new SharedArrayBuffer(4));
    const ticket: ThreadTicket = {
      protocol: PROTOCOL,
      version: PROTOCOL_VERSION,
      claim,
      container: granted.wire,
      devices,
      buffers,
      windows,
      fds,
    };
    return new ThreadLease(lease, ticket, (fd) => sys.close(fd));
  });
}

/** What a thread adopted from a ticket: its own handles on the lender's objects. */
export class ThreadBorrow implements Disposable {
  /** @internal Made by adoptFromThread. */
  constructor(
    private readonly borrower: Borrower,
    private readonly claim: Int32Array,
    /** The borrowed container: maps and unmaps in the lender's IOMMU space, inside the lent window. */
    readonly container: Container,
    /** The lent devices, open here, by address. */
    readonly devices: ReadonlyMap<string, Device>,
    /** The shared buffers, mapped here, by name. */
    readonly buffers: ReadonlyMap<string, DmaBuffer>,
  ) {}

  /** The lent device at `address`. @throws VfioError ENODEV not lent in this ticket. */
  device(address: string): Device {
    const d = this.devices.get(canonicalPciAddress(address));
    if (d === undefined) throw usageError('ENODEV', 'not lent to this thread', { device: address });
    return d;
  }

  /** The shared buffer `name`. @throws VfioError ENOENT not in this ticket. */
  buffer(name: string): DmaBuffer {
    const b = this.buffers.get(name);
    if (b === undefined) throw usageError('ENOENT', `no buffer "${name}" was lent to this thread`);
    return b;
  }

  /**
   * Closes everything adopted (devices, buffers, the container's fds), and
   * tells the lender so (its ThreadLease.end() may then clear the window).
   * Idempotent.
   * @throws VfioError the first error of that teardown (each step still runs).
   */
  close(): void {
    try {
      this.borrower.close();
    } finally {
      Atomics.compareExchange(this.claim, 0, ADOPTED, CLOSED);
    }
  }

  [Symbol.dispose](): void {
    this.close();
  }
}

/** A ticket checked whole: its claim word, its fds, and every grant decoded (no fd taken yet). */
interface CheckedTicket {
  readonly claim: Int32Array;
  readonly fds: FdSlots;
  readonly container: ContainerGrant;
  readonly devices: readonly DeviceGrant[];
  readonly windows: readonly WindowGrant[];
  readonly buffers: readonly BufferGrant[];
}

/**
 * Checks every field of a ticket; takes no fd (the FdSlots it returns closes
 * nothing until the caller calls closeRest, which it does only once the
 * ticket is claimed).
 * @throws VfioError EPROTONOSUPPORT another version; EPROTO anything else wrong.
 */
function checkTicket(ticket: unknown, pageSize: number, close: (fd: Fd) => void): CheckedTicket {
  const t = obj(ticket, 'ticket');
  if (t['protocol'] !== PROTOCOL) throw protocolError('not a vfio-share ticket');
  if (t['version'] !== PROTOCOL_VERSION) {
    throw usageError(
      'EPROTONOSUPPORT',
      `a vfio-share ticket of version ${String(t['version'])}, this thread speaks version ${PROTOCOL_VERSION}`,
    );
  }
  const claim = t['claim'];
  if (!(claim instanceof Int32Array) || !(claim.buffer instanceof SharedArrayBuffer) || claim.length !== 1) {
    throw protocolError('ticket.claim is not the shared claim word lendToThread makes');
  }
  const seen = new Set<number>();
  const numbers = arr(t, 'fds', 'ticket').map((fd, i) => {
    if (typeof fd !== 'number' || !Number.isSafeInteger(fd) || fd < 0 || fd > 0x7fffffff)
      throw protocolError(`ticket.fds[${i}] is not an fd`);
    if (seen.has(fd)) throw protocolError(`ticket.fds lists fd ${fd} twice`);
    seen.add(fd);
    return fd;
  });
  const fds = new FdSlots(numbers, close);
  const container = decodeContainer(t['container'], fds);
  const devices = arr(t, 'devices', 'ticket').map((d) => decodeDevice(d, fds, container.mode));
  const windows = arr(t, 'windows', 'ticket').map((w) => decodeWindow(w));
  const names = new Set<string>();
  const buffers = arr(t, 'buffers', 'ticket').map((b) => {
    const g = decodeBuffer(b, fds, pageSize);
    if (names.has(g.name)) throw protocolError(`ticket lends buffer "${g.name}" twice`);
    names.add(g.name);
    return g;
  });
  return { claim, fds, container, devices, windows, buffers };
}

/**
 * Builds this thread's handles from a ticket another thread made with
 * lendToThread (and posted here). The ticket is checked whole first: a
 * malformed one is refused with no fd touched. Then it is claimed (once
 * only, across threads) and every fd in it is this thread's: owned by the
 * handles returned, or closed when adoption fails.
 * @throws VfioError EPROTONOSUPPORT a ticket of another protocol version;
 *   EPROTO not a well-formed ticket; EALREADY the ticket was already adopted
 *   (or taken back by its lender); EINVAL `v` is not a Vfio context;
 *   ECLOSED `v` is closed; any errno of mapping a buffer.
 */
export function adoptFromThread(v: Vfio, ticket: unknown): ThreadBorrow {
  if (!(v instanceof Vfio)) throw usageError('EINVAL', 'adoptFromThread needs the Vfio context of this thread');
  if (v.closed) throw closedError('the Vfio context');
  const sys = v.kernel;
  const checked = checkTicket(ticket, sys.pageSize(), (fd) => sys.close(fd));
  if (Atomics.compareExchange(checked.claim, 0, UNCLAIMED, ADOPTED) !== UNCLAIMED) {
    throw usageError(
      'EALREADY',
      'this vfio-share ticket was already adopted (or taken back by its lender): a ticket is good for one adoption',
    );
  }
  const { fds } = checked;
  try {
    const borrower = new Borrower(v, 'the thread that lent it');
    try {
      const container = borrower.adoptContainer(0, checked.container, fds);
      const devices = new Map<string, Device>();
      for (const d of checked.devices) {
        const dev = borrower.adoptDevice(0, d, fds, () => undefined);
        devices.set(dev.address, dev);
      }
      for (const w of checked.windows) borrower.adoptWindow(0, w);
      const buffers = new Map<string, DmaBuffer>();
      for (const b of checked.buffers) buffers.set(b.name, borrower.adoptBuffer(0, b, fds));
      return new ThreadBorrow(borrower, checked.claim, container, devices, buffers);
    } catch (err) {
      try {
        borrower.close();
      } catch {
        // The adoption error is the one to report.
      }
      // Nothing of the ticket is held any more: the lender may end the lease.
      Atomics.store(checked.claim, 0, CLOSED);
      throw err;
    }
  } finally {
    fds.closeRest();
  }
}

/** lendToThread's `iova` option, checked: a positive integer size, bigint limit and alignment. */
function windowRequest(iova: unknown): { size: bigint; opts: { dmaLimit?: bigint; align?: bigint } } {
  if (typeof iova !== 'object' || iova === null) throw usageError('EINVAL', 'lendToThread iova must be { size, dmaLimit?, align? }');
  const o = iova as Record<string, unknown>;
  const size = o['size'];
  const ok = typeof size === 'bigint' ? size > 0n : typeof size === 'number' && Number.isSafeInteger(size) && size > 0;
  if (!ok) throw usageError('EINVAL', `lendToThread iova.size ${String(size)} is not a positive integer`);
  const opts: { dmaLimit?: bigint; align?: bigint } = {};
  for (const key of ['dmaLimit', 'align'] as const) {
    const v = o[key];
    if (v === undefined) continue;
    if (typeof v !== 'bigint' || v <= 0n) throw usageError('EINVAL', `lendToThread iova.${key} must be a positive bigint`);
    opts[key] = v;
  }
  return { size: BigInt(size as number | bigint), opts };
}
