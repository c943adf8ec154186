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
// Lifetimes: the lender ends the lease (ThreadLease.end) once the worker has
// closed what it adopted (for example when the worker exits): its devices
// come back with their interrupts off and its window is cleared. A worker
// that exits without closing leaves its fds open in the process (no thread
// owns them any more), as any native resource a thread forgets.
import { withUnwind } from '../base/cleanup.js';
import type { Container } from '../core/container/container.js';
import type { Vfio } from '../core/context.js';
import type { Device } from '../core/device.js';
import type { DmaBuffer } from '../core/dma.js';
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

/**
 * Plain data for postMessage: the grants of ./protocol.ts, whose fd slots
 * index `fds`, the fd numbers the adopting thread takes over.
 */
export interface ThreadTicket {
  readonly protocol: typeof PROTOCOL;
  readonly version: number;
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

  /**
   * The thread is done (it closed what it adopted): devices come back with
   * their interrupts off, the IOVA window is cleared and freed. Idempotent.
   * @throws VfioError the first error of that (each step still runs).
   */
  end(): void {
    if (this.state === 'ended') return;
    this.state = 'ended';
    this.lease.end();
  }

  /**
   * The ticket never reached a thread (postMessage failed, the worker never
   * started): closes its fds, then ends the lease. Never call it for a
   * ticket a thread may have adopted: those fds are the thread's.
   */
  discard(): void {
    if (this.state === 'ended') return;
    for (const fd of this.ticket.fds) {
      try {
        this.closeFd(fd);
      } catch {
        // close(2) frees the fd even when it reports an error.
      }
    }
    this.end();
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
  const { sys } = container.kernelEnv;
  if (container.borrowed) throw usageError('EINVAL', `${container.label} is borrowed: only its lender can lend it`);
  const lease = new Lease('a worker thread');
  return withUnwind((u) => {
    u.defer(() => lease.end());
    const out = new OutgoingFds();
    const granted = encodeContainer(container, out);
    lease.granting(container, granted.groups);
    const devices = (opts.devices ?? []).map((address) => {
      const lent = lease.lend(container, canonicalPciAddress(address));
      // Every group of the container came with its grant.
      return encodeDevice(lent, null, out);
    });
    const windows: WireWindow[] = [];
    if (opts.iova !== undefined) {
      const size = BigInt(opts.iova.size);
      const got = lease.reserve(container, size, {
        ...(opts.iova.dmaLimit === undefined ? {} : { dmaLimit: opts.iova.dmaLimit }),
        ...(opts.iova.align === undefined ? {} : { align: opts.iova.align }),
      });
      windows.push(encodeWindow(got.iova, size, got.granule));
    }
    const buffers = Object.entries(opts.buffers ?? {}).map(([name, buf]) => {
      if (!container.ownsBuffer(buf)) throw usageError('EINVAL', `buffer "${name}" is not in ${container.label}`);
      return encodeBuffer(name, buf, out);
    });
    // The thread's own copies, made last: nothing above can fail after them.
    const fds: Fd[] = [];
    u.defer(() => fds.forEach((fd) => sys.close(fd)));
    for (const fd of out.fds) fds.push(sys.dup(fd));
    const ticket: ThreadTicket = { protocol: PROTOCOL, version: PROTOCOL_VERSION, container: granted.wire, devices, buffers, windows, fds };
    return new ThreadLease(lease, ticket, (fd) => sys.close(fd));
  });
}

/** What a thread adopted from a ticket: its own handles on the lender's objects. */
export class ThreadBorrow implements Disposable {
  /** @internal Made by adoptFromThread. */
  constructor(
    private readonly borrower: Borrower,
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

  /** Closes everything adopted (devices, buffers, the container's fds). Idempotent. */
  close(): void {
    this.borrower.close();
  }

  [Symbol.dispose](): void {
    this.close();
  }
}

/**
 * Builds this thread's handles from a ticket another thread made with
 * lendToThread (and posted here). Takes over every fd in it, even when it
 * fails (they are then closed).
 * @throws VfioError EPROTONOSUPPORT a ticket of another protocol version;
 *   EPROTO not a well-formed ticket; ECLOSED `v` is closed; any errno of
 *   mapping a buffer.
 */
export function adoptFromThread(v: Vfio, ticket: unknown): ThreadBorrow {
  const t = obj(ticket, 'ticket');
  const sys = v.kernel;
  const fds = new FdSlots(
    arr(t, 'fds', 'ticket').map((fd, i) => {
      if (typeof fd !== 'number' || !Number.isSafeInteger(fd) || fd < 0) throw protocolError(`ticket.fds[${i}] is not an fd`);
      return fd;
    }),
    (fd) => sys.close(fd),
  );
  try {
    if (t['protocol'] !== PROTOCOL) throw protocolError('not a vfio-share ticket');
    if (t['version'] !== PROTOCOL_VERSION) {
      throw usageError(
        'EPROTONOSUPPORT',
        `a vfio-share ticket of version ${String(t['version'])}, this thread speaks version ${PROTOCOL_VERSION}`,
      );
    }
    if (v.closed) throw closedError('the Vfio context');
    const borrower = new Borrower(v, 'the thread that lent it');
    try {
      const grant = decodeContainer(t['container'], fds);
      const container = borrower.adoptContainer(0, grant, fds);
      const devices = new Map<string, Device>();
      for (const d of arr(t, 'devices', 'ticket')) {
        const dev = borrower.adoptDevice(0, decodeDevice(d, fds, grant.mode), fds, () => undefined);
        devices.set(dev.address, dev);
      }
      for (const w of arr(t, 'windows', 'ticket')) borrower.adoptWindow(0, decodeWindow(w));
      const buffers = new Map<string, DmaBuffer>();
      for (const b of arr(t, 'buffers', 'ticket')) {
        const g = decodeBuffer(b, fds, container.kernelEnv.pageSize);
        if (buffers.has(g.name)) throw protocolError(`ticket lends buffer "${g.name}" twice`);
        buffers.set(g.name, borrower.adoptBuffer(0, g, fds));
      }
      return new ThreadBorrow(borrower, container, devices, buffers);
    } catch (err) {
      try {
        borrower.close();
      } catch {
        // The adoption error is the one to report.
      }
      throw err;
    }
  } finally {
    fds.closeRest();
  }
}
