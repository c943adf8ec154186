// Interrupts: IRQ info, enabling an index's vectors with eventfds through
// VFIO_DEVICE_SET_IRQS, and waiting for them from the event loop.
//
// Guarantees:
// - Arguments are checked before any ioctl: a vector range beyond the
//   index's count (e.g. MSI-X vectors the device does not have) is EINVAL,
//   an index the device lacks is ENOTSUP, enabling INTx/MSI/MSI-X while
//   another of the three is enabled (the kernel allows one at a time) is
//   EBUSY.
// - Every eventfd belongs to exactly one IrqSet: a failed enable closes the
//   ones it made; disabling (or closing the device) first tells the kernel to
//   drop them (SET_IRQS DATA_NONE, count 0), then ends every listener, stops
//   watching, and closes them. Nothing is left open.
// - Waiting never blocks the event loop and never costs a thread per vector:
//   each vector's eventfd is watched by `Sys.watchEventfd` (the event loop's
//   own epoll, else one poll thread shared by all vectors of all devices). A
//   vector is watched only while a listener waits (a callback, or a pending
//   `next()`); counts that arrive meanwhile stay in the eventfd and go to the
//   next `next()` or wake. `next()` first reads the eventfd itself, so an
//   interrupt that has already arrived costs no trip through the event loop.
// - A vector that has been waited on holds one more fd (its watcher's dup of
//   the eventfd, on the event-loop path) until its set is disabled.
import { teardown, withUnwind } from '../base/cleanup.js';
import { CountQueue } from '../base/count-queue.js';
import { usageError, VfioError } from '../base/errors.js';
import { validateInteger, validateOneOf, validateOptions } from '../base/validate.js';
import { readEventfdCount } from '../libc/eventfd-poller.js';
import { EFD_CLOEXEC, EFD_NONBLOCK, type EventfdWatcher, type Fd } from '../libc/sys.js';
import { elementOffset, fieldRef, getField, setField } from '../uapi/codec.js';
import {
  VFIO_IRQ_INFO_AUTOMASKED,
  VFIO_IRQ_INFO_EVENTFD,
  VFIO_IRQ_INFO_MASKABLE,
  VFIO_IRQ_INFO_NORESIZE,
  VFIO_IRQ_SET_ACTION_MASK,
  VFIO_IRQ_SET_ACTION_TRIGGER,
  VFIO_IRQ_SET_ACTION_UNMASK,
  VFIO_IRQ_SET_DATA_EVENTFD,
  VFIO_IRQ_SET_DATA_NONE,
  VFIO_PCI_ERR_IRQ_INDEX,
  VFIO_PCI_INTX_IRQ_INDEX,
  VFIO_PCI_MSI_IRQ_INDEX,
  VFIO_PCI_MSIX_IRQ_INDEX,
  VFIO_PCI_REQ_IRQ_INDEX,
  vfio_irq_info,
  vfio_irq_set,
} from '../uapi/vfio.js';
import { deviceIoctl, resourceClosed, type DeviceHandle } from './handle.js';

/** The PCI interrupt indexes of VFIO. */
export type IrqKind = 'intx' | 'msi' | 'msix' | 'err' | 'req';

export const IRQ_INDEX: Readonly<Record<IrqKind, number>> = {
  intx: VFIO_PCI_INTX_IRQ_INDEX,
  msi: VFIO_PCI_MSI_IRQ_INDEX,
  msix: VFIO_PCI_MSIX_IRQ_INDEX,
  err: VFIO_PCI_ERR_IRQ_INDEX,
  req: VFIO_PCI_REQ_IRQ_INDEX,
};

const IRQ_KINDS: readonly IrqKind[] = Object.keys(IRQ_INDEX) as IrqKind[];
const LABEL: Readonly<Record<IrqKind, string>> = { intx: 'INTx', msi: 'MSI', msix: 'MSI-X', err: 'ERR', req: 'REQ' };

/** INTx, MSI and MSI-X exclude each other in vfio-pci; ERR and REQ are independent. */
const EXCLUSIVE: ReadonlySet<IrqKind> = new Set(['intx', 'msi', 'msix']);

export interface IrqInfo {
  readonly kind: IrqKind;
  readonly index: number;
  /** Vectors the index has: 0 when the device lacks it (no INTx pin, no MSI capability). */
  readonly count: number;
  /** VFIO_IRQ_INFO_* as the kernel returned them. */
  readonly flags: number;
  readonly eventfd: boolean;
  readonly maskable: boolean;
  /** INTx: the kernel masks the line when it fires; `unmask()` after handling. */
  readonly automasked: boolean;
  readonly noresize: boolean;
}

/** Ends a subscription; also `using`-disposable. Calling it twice is harmless. */
export type Unsubscribe = (() => void) & Disposable;

function unsubscriber(fn: () => void): Unsubscribe {
  let done = false;
  const f = (): void => {
    if (done) return;
    done = true;
    fn();
  };
  return Object.assign(f, { [Symbol.dispose]: f });
}

export interface WaitOptions {
  readonly signal?: AbortSignal;
}

/** Module-private: how an IrqSet ends its vectors (not part of the public API). */
const END = Symbol('end');

interface Listener {
  count(n: number): void;
  /** The vector stopped: disabled (no error) or its watch failed. */
  end(err?: unknown): void;
  /** Needs the watcher now: always for a callback, while next() is pending for an iterator. */
  waiting: boolean;
}

// The fields of the IRQ ioctls, looked up once.
const INFO_ARGSZ = fieldRef(vfio_irq_info, 'argsz');
const INFO_INDEX = fieldRef(vfio_irq_info, 'index');
const INFO_FLAGS = fieldRef(vfio_irq_info, 'flags');
const INFO_COUNT = fieldRef(vfio_irq_info, 'count');
const SET_ARGSZ = fieldRef(vfio_irq_set, 'argsz');
const SET_FLAGS = fieldRef(vfio_irq_set, 'flags');
const SET_INDEX = fieldRef(vfio_irq_set, 'index');
const SET_START = fieldRef(vfio_irq_set, 'start');
const SET_COUNT = fieldRef(vfio_irq_set, 'count');
/** Where data[] starts in vfio_irq_set. */
const SET_DATA = elementOffset(vfio_irq_set, 'data', 0);

/** SET_IRQS with `fds` (or no data). */
function setIrqs(h: DeviceHandle, index: number, flags: number, start: number, count: number, fds?: readonly Fd[], detail?: string): void {
  const dataBytes = fds === undefined ? 0 : fds.length * 4;
  const buf = Buffer.alloc(vfio_irq_set.size + dataBytes);
  setField(SET_ARGSZ, buf, vfio_irq_set.size + dataBytes);
  setField(SET_FLAGS, buf, flags);
  setField(SET_INDEX, buf, index);
  setField(SET_START, buf, start);
  setField(SET_COUNT, buf, count);
  // DATA_EVENTFD: data[] holds one C int (s32, little-endian) per vector.
  if (fds !== undefined) for (let i = 0; i < fds.length; i++) buf.writeInt32LE(fds[i]!, SET_DATA + 4 * i);
  deviceIoctl(h, 'VFIO_DEVICE_SET_IRQS', buf, detail);
}

/**
 * `n` new nonblocking eventfds handed to `wire` (which gives them to the
 * kernel); all closed again if a step fails.
 */
function openEventfds(h: DeviceHandle, n: number, wire: (fds: readonly Fd[]) => void): Fd[] {
  try {
    return withUnwind((u) => {
      const fds: Fd[] = [];
      for (let i = 0; i < n; i++) {
        const fd = h.sys.eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        u.defer(() => h.sys.close(fd));
        fds.push(fd);
      }
      wire(fds);
      return fds;
    });
  } catch (err) {
    throw err instanceof VfioError ? err.annotate({ device: h.address }) : err;
  }
}

/** One vector of an enabled IrqSet: its eventfd and the ways to wait for it. */
export class IrqVector {
  /** The vector number within its index (MSI-X vector 3 is 3). */
  readonly vector: number;
  readonly #set: IrqSet;
  readonly #h: DeviceHandle;
  readonly #fd: Fd;
  readonly #listeners = new Set<Listener>();
  /** 8 bytes for #drain's read of the eventfd counter. */
  readonly #counter = Buffer.alloc(8);
  /**
   * Made on the first wait and kept until the set is disabled (it holds a
   * dup of the eventfd on the event-loop path), started while some listener
   * waits, stopped otherwise: starting and stopping cost no system call.
   */
  #watcher: EventfdWatcher | null = null;
  #ended = false;

  /** @internal Made by Irqs.enable. */
  constructor(set: IrqSet, h: DeviceHandle, vector: number, fd: Fd) {
    this.#set = set;
    this.#h = h;
    this.vector = vector;
    this.#fd = fd;
  }

  /**
   * The eventfd the kernel signals (for handing to another consumer such as
   * KVM's irqfd). Owned by the IrqSet: do not close it; invalid once the set
   * is disabled.
   */
  get eventfd(): Fd {
    this.#assertLive();
    return this.#fd;
  }

  /**
   * Calls `listener` with the eventfd count (interrupts since the last
   * delivery, >= 1) after each wake, until unsubscribed or the set is
   * disabled. While anything listens, the watch keeps the process alive:
   * unsubscribe (or disable the set, or close the device) to let it exit.
   * Errors: ECLOSED the set is disabled.
   */
  on(listener: (count: number) => void): Unsubscribe {
    const l: Listener = { count: listener, end: () => {}, waiting: true };
    this.#add(l);
    return unsubscriber(() => this.#remove(l));
  }

  /**
   * The counts as an async iterator: `for await (const n of v.events({ signal }))`.
   * Counts that arrive between two `next()` calls are summed, never lost (they
   * wait in the eventfd, or with this iterator when another listener's watch
   * read them). `next()` takes an interrupt that has already arrived at once,
   * without a trip through the event loop, so "write a register, then await
   * next()" costs what C's write + poll + read does. The iteration ends (done)
   * when the set is disabled or the device closed; aborting `signal` rejects
   * the pending `next()` with `signal.reason`. Leaving the loop (`break`,
   * `return()`) stops listening.
   */
  events(opts: WaitOptions = {}): AsyncIterableIterator<number> {
    this.#assertLive();
    const { signal } = opts;
    // The queue keeps the counts and the one pending next(); this listener
    // feeds it and asks for the watcher only while a next() waits.
    const listener: Listener = { count: (n) => queue.push(n), end: (err) => queue.end(err), waiting: false };
    const onAbort = (): void => queue.end(signal?.reason);
    const queue = new CountQueue({
      waiting: (waiting) => {
        listener.waiting = waiting;
        this.#update();
      },
      // An interrupt already in the eventfd is taken now (see #drain); a
      // failed read ends the queue with its error.
      poll: () => this.#drain(),
      ended: () => {
        this.#remove(listener);
        signal?.removeEventListener('abort', onAbort);
      },
      busy: () => usageError('EBUSY', 'next() called again before the previous call settled', { device: this.#h.address }),
    });
    if (signal?.aborted) {
      queue.end(signal.reason);
    } else {
      this.#add(listener);
      signal?.addEventListener('abort', onAbort, { once: true });
    }
    return queue.iterator();
  }

  /**
   * The next count. Errors: ECLOSED the set was (or gets) disabled first;
   * `signal.reason` when aborted.
   */
  async wait(opts: WaitOptions = {}): Promise<number> {
    const it = this.events(opts);
    try {
      const r = await it.next();
      if (r.done === true) throw resourceClosed(this.#h, `${LABEL[this.#set.kind]} vector ${this.vector}`);
      return r.value;
    } finally {
      await it.return?.();
    }
  }

  /**
   * Takes the interrupts that have arrived and were not delivered yet,
   * without waiting: the eventfd's count read now (non-blocking), 0 when
   * there is none. For a driver that polls its device and wants to know, at
   * no cost of a wait, whether the vector fired meanwhile (or to clear it).
   * What it takes, no listener (on, events, wait) sees; what a listener's
   * watch read first, it does not see: a count is delivered once.
   * Errors: ECLOSED the set is disabled; the read's errno.
   */
  take(): number {
    this.#assertLive();
    return readEventfdCount(this.#h.sys, this.#fd, this.#counter);
  }

  /** Loopback: asks the kernel to signal this vector's eventfd (SET_IRQS DATA_NONE|TRIGGER). */
  trigger(): void {
    this.#set.trigger(this.vector);
  }

  /** Called by IrqSet when it is disabled, before the eventfd is closed. */
  [END](): void {
    if (this.#ended) return;
    this.#ended = true;
    this.#closeWatcher();
    const ls = [...this.#listeners];
    this.#listeners.clear();
    for (const l of ls) l.end();
  }

  #assertLive(): void {
    if (this.#ended) throw resourceClosed(this.#h, `${LABEL[this.#set.kind]} vector ${this.vector}`);
  }

  #add(l: Listener): void {
    this.#assertLive();
    this.#listeners.add(l);
    this.#update();
  }

  #remove(l: Listener): void {
    if (this.#listeners.delete(l)) this.#update();
  }

  /** Starts the watcher while some listener waits, stops it otherwise. */
  #update(): void {
    let waiting = false;
    for (const l of this.#listeners) {
      if (l.waiting) {
        waiting = true;
        break;
      }
    }
    if (!waiting) {
      this.#watcher?.stop();
      return;
    }
    if (this.#ended) return;
    this.#watcher ??= this.#h.sys.watchEventfd(this.#fd, {
      onCount: (n) => this.#dispatch(n),
      onError: (err) => this.#fail(err),
    });
    this.#watcher.start();
  }

  #dispatch(n: number): void {
    for (const x of [...this.#listeners]) x.count(n);
  }

  /** Ends every listener with `err` (a failed watch or read); a later listener starts afresh. */
  #fail(err: unknown): void {
    this.#closeWatcher();
    const ls = [...this.#listeners];
    this.#listeners.clear();
    for (const x of ls) x.end(err);
  }

  #closeWatcher(): void {
    const w = this.#watcher;
    this.#watcher = null;
    w?.close();
  }

  /**
   * Reads the eventfd now (non-blocking) and hands a count found there to
   * every listener, as a wake would. For `next()`: an interrupt that has
   * already arrived (a driver typically writes a register, then waits) is
   * taken at once, as C's poll(2) returns at once, instead of after a trip
   * through the event loop. Counts are never lost or doubled: whichever read
   * comes first clears the counter, the other finds nothing.
   */
  #drain(): void {
    let n: number;
    try {
      n = readEventfdCount(this.#h.sys, this.#fd, this.#counter);
    } catch (err) {
      this.#fail(err);
      return;
    }
    if (n > 0) this.#dispatch(n);
  }
}

/** The vectors of one IRQ index, enabled together. */
export class IrqSet implements Disposable {
  readonly kind: IrqKind;
  readonly index: number;
  /** First vector enabled. */
  readonly start: number;
  readonly info: IrqInfo;
  readonly #h: DeviceHandle;
  /** Tells the kernel and forgets the set (Irqs); may throw. */
  readonly #onDisable: (set: IrqSet) => void;
  readonly #vectors: IrqVector[];
  readonly #fds: Fd[];
  #enabled = true;

  /** @internal Made by Irqs.enable once the kernel accepted `fds`. */
  constructor(h: DeviceHandle, info: IrqInfo, start: number, fds: Fd[], onDisable: (set: IrqSet) => void) {
    this.#onDisable = onDisable;
    this.#h = h;
    this.kind = info.kind;
    this.index = info.index;
    this.info = info;
    this.start = start;
    this.#fds = fds;
    this.#vectors = fds.map((fd, i) => new IrqVector(this, h, start + i, fd));
  }

  /** Vectors enabled: start .. start+count-1 (grows with grow()). */
  get count(): number {
    return this.#vectors.length;
  }

  get enabled(): boolean {
    return this.#enabled;
  }

  /**
   * Enables more vectors while the set stays enabled, up to `count` in all
   * (vectors start+this.count .. start+count-1, each with its own eventfd):
   * MSI-X when the kernel reports it can (no NORESIZE flag: vfio-pci with
   * dynamic MSI-X allocation, Linux 6.2+ on platforms that support it). The
   * vectors already enabled keep their eventfds, listeners and waiters: no
   * interrupt is lost, nothing is rejected. A no-op when `count` is not more
   * than now.
   * Errors: ENOTSUP the index cannot grow while enabled (NORESIZE: disable
   * and enable it again, or enable every vector needed at first); EINVAL
   * `count` beyond the index's vectors; ECLOSED; the eventfd and ioctl
   * errors (the new eventfds are closed again; the set stays as it was).
   */
  grow(count: number): void {
    this.#assertEnabled();
    const label = LABEL[this.kind];
    const device = this.#h.address;
    if (!Number.isSafeInteger(count) || count < 1 || this.start + count > this.info.count) {
      throw usageError(
        'EINVAL',
        `${label} has ${this.info.count} vector(s) (0..${this.info.count - 1}): cannot grow to ${count} from ${this.start}`,
        {
          device,
        },
      );
    }
    if (count <= this.count) return;
    if (this.info.noresize) {
      throw usageError(
        'ENOTSUP',
        `${label} cannot gain vectors while enabled here (the kernel reports NORESIZE: no dynamic MSI-X allocation): ` +
          'enable every vector needed at first, or disable and enable again',
        { device },
      );
    }
    const from = this.start + this.count;
    const fds = openEventfds(this.#h, count - this.count, (fds) =>
      setIrqs(
        this.#h,
        this.index,
        VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER,
        from,
        fds.length,
        fds,
        `grow ${label} to ${from}..${this.start + count - 1}`,
      ),
    );
    for (const fd of fds) {
      this.#fds.push(fd);
      this.#vectors.push(new IrqVector(this, this.#h, this.start + this.#vectors.length, fd));
    }
  }

  /** Vector `n` (its number within the index, start <= n < start+count). */
  vector(n: number): IrqVector {
    this.#assertEnabled();
    const v = Number.isInteger(n) ? this.#vectors[n - this.start] : undefined;
    if (v === undefined) {
      throw usageError(
        'EINVAL',
        `${LABEL[this.kind]} vector ${n} is not enabled (enabled: ${this.start}..${this.start + this.count - 1})`,
        { device: this.#h.address },
      );
    }
    return v;
  }

  get vectors(): readonly IrqVector[] {
    this.#assertEnabled();
    return this.#vectors;
  }

  /**
   * Loopback test: the kernel signals the eventfd of `vector` (all enabled
   * vectors when omitted) as if the device had interrupted.
   */
  trigger(vector?: number): void {
    this.#assertEnabled();
    const [start, count] = vector === undefined ? [this.start, this.count] : [this.vector(vector).vector, 1];
    setIrqs(
      this.#h,
      this.index,
      VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER,
      start,
      count,
      undefined,
      `trigger ${LABEL[this.kind]}`,
    );
  }

  /** Masks the interrupt (INTx only: vfio-pci cannot mask MSI/MSI-X). Errors: ENOTSUP not maskable. */
  mask(): void {
    this.#maskAction(VFIO_IRQ_SET_ACTION_MASK, 'mask');
  }

  /** Unmasks it; for INTx (automasked) call this after handling each interrupt. */
  unmask(): void {
    this.#maskAction(VFIO_IRQ_SET_ACTION_UNMASK, 'unmask');
  }

  /**
   * Disables the vectors (the kernel drops the eventfds), ends every
   * listener and iterator, and closes the eventfds. Idempotent.
   */
  disable(): void {
    if (!this.#enabled) return;
    // Guard first; then the kernel drops its references to the eventfds;
    // then, even if it refused, listeners end and the eventfds are closed.
    this.#enabled = false;
    const sys = this.#h.sys;
    teardown([() => this.#onDisable(this), ...this.#vectors.map((v) => () => v[END]()), ...this.#fds.map((fd) => () => sys.close(fd))]);
  }

  [Symbol.dispose](): void {
    this.disable();
  }

  #maskAction(action: number, what: string): void {
    this.#assertEnabled();
    if (!this.info.maskable)
      throw usageError('ENOTSUP', `${LABEL[this.kind]} cannot be ${what}ed through VFIO (only INTx is maskable)`, {
        device: this.#h.address,
      });
    setIrqs(this.#h, this.index, VFIO_IRQ_SET_DATA_NONE | action, this.start, this.count, undefined, `${what} ${LABEL[this.kind]}`);
  }

  #assertEnabled(): void {
    if (!this.#enabled) throw resourceClosed(this.#h, `${LABEL[this.kind]} interrupt set`);
  }
}

export interface EnableOptions {
  /** First vector (default 0). */
  readonly start?: number;
  /** Vectors to enable (default 1). */
  readonly count?: number;
}

/** A device's interrupts. */
export class Irqs implements Disposable {
  readonly #h: DeviceHandle;
  readonly #sets = new Map<IrqKind, IrqSet>();
  readonly #info = new Map<IrqKind, IrqInfo>();
  #closed = false;
  /** The REQ set onRequest enabled (null if none, or REQ was enabled by hand), and its listener count. */
  #requestOwner: IrqSet | null = null;
  #requestListeners = 0;

  constructor(h: DeviceHandle) {
    this.#h = h;
  }

  /**
   * IRQ info for an index (cached: it does not change while the device is open).
   * Errors: EINVAL unknown kind; ENOTSUP the device has no such index (ERR
   * on a conventional-PCI device); ECLOSED.
   */
  info(kind: IrqKind): IrqInfo {
    this.#assertOpen();
    // Checked against the list, not by indexing IRQ_INDEX: 'toString' must not find Object.prototype's.
    validateOneOf(kind, 'interrupt kind', IRQ_KINDS, { device: this.#h.address });
    const index = IRQ_INDEX[kind];
    const cached = this.#info.get(kind);
    if (cached !== undefined) return cached;
    if (index >= this.#h.info().numIrqs) {
      throw usageError('ENOTSUP', `the device has no ${LABEL[kind]} interrupt index (it has ${this.#h.info().numIrqs})`, {
        device: this.#h.address,
      });
    }
    const buf = new Uint8Array(vfio_irq_info.size);
    setField(INFO_ARGSZ, buf, vfio_irq_info.size);
    setField(INFO_INDEX, buf, index);
    try {
      deviceIoctl(this.#h, 'VFIO_DEVICE_GET_IRQ_INFO', buf);
    } catch (err) {
      // vfio-pci answers EINVAL for ERR on a device that is not PCI Express.
      if (err instanceof VfioError && err.code === 'EINVAL' && kind === 'err') {
        throw new VfioError({
          code: 'ENOTSUP',
          syscall: 'ioctl',
          request: 'VFIO_DEVICE_GET_IRQ_INFO',
          device: this.#h.address,
          detail: 'the device has no ERR interrupt (it is not PCI Express)',
          cause: err,
        });
      }
      throw err;
    }
    const flags = getField(INFO_FLAGS, buf);
    const info: IrqInfo = {
      kind,
      index,
      count: getField(INFO_COUNT, buf),
      flags,
      eventfd: (flags & VFIO_IRQ_INFO_EVENTFD) !== 0,
      maskable: (flags & VFIO_IRQ_INFO_MASKABLE) !== 0,
      automasked: (flags & VFIO_IRQ_INFO_AUTOMASKED) !== 0,
      noresize: (flags & VFIO_IRQ_INFO_NORESIZE) !== 0,
    };
    this.#info.set(kind, info);
    return info;
  }

  /**
   * Enables vectors start..start+count-1 of `kind` (default: vector 0 only),
   * each with its own eventfd. `enable('msix', 4)` is `{ count: 4 }`.
   *
   * Errors: EINVAL bad kind or range (beyond the index's count; INTx, ERR
   * and REQ have exactly vector 0); ENOTSUP the device lacks the index or it
   * has no vectors; EBUSY `kind` is already enabled (except: MSI-X enabled
   * from the same `start` with fewer vectors grows to `count` when the kernel
   * allows it, see IrqSet.grow, and that set is returned), or another of
   * INTx/MSI/MSI-X is; ECLOSED; the eventfd and ioctl errors (EMFILE, ENOSPC
   * when the platform cannot allocate the vectors, ...).
   */
  enable(kind: IrqKind, opts: number | EnableOptions = {}): IrqSet {
    const info = this.info(kind);
    const h = this.#h;
    const where = { device: h.address };
    // A number is the count; anything else must be an options object ('2' is not a count).
    const { start = 0, count = 1 } = typeof opts === 'number' ? { count: opts } : validateOptions(opts, 'options', where);
    validateInteger(start, 'start', 0, Number.MAX_SAFE_INTEGER, where);
    validateInteger(count, 'count', 0, Number.MAX_SAFE_INTEGER, where);
    const label = LABEL[kind];
    if (info.count === 0) throw usageError('ENOTSUP', `the device has no ${label} vectors`, { device: h.address });
    if (!info.eventfd) throw usageError('ENOTSUP', `${label} cannot signal an eventfd`, { device: h.address });
    if (count < 1 || start + count > info.count) {
      throw usageError('EINVAL', `${label} has ${info.count} vector(s) (0..${info.count - 1}): cannot enable ${count} from ${start}`, {
        device: h.address,
      });
    }
    const existing = this.#sets.get(kind);
    if (existing !== undefined) {
      // The same first vector and more of them: the enabled set grows (when the kernel allows it).
      if (existing.start === start && count > existing.count && !info.noresize) {
        existing.grow(count);
        return existing;
      }
      throw usageError(
        'EBUSY',
        `${label} is already enabled (${existing.start}..${existing.start + existing.count - 1}): ` +
          (info.noresize ? 'disable it first' : 'disable it first, or grow it (set.grow(count))'),
        { device: h.address },
      );
    }
    if (EXCLUSIVE.has(kind)) {
      for (const other of this.#sets.keys()) {
        if (EXCLUSIVE.has(other))
          throw usageError('EBUSY', `${LABEL[other]} is enabled: disable it before enabling ${label}`, { device: h.address });
      }
    }
    const fds = openEventfds(h, count, (fds) =>
      setIrqs(
        h,
        info.index,
        VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER,
        start,
        count,
        fds,
        `enable ${label} ${start}..${start + count - 1}`,
      ),
    );
    const set = new IrqSet(h, info, start, fds, (s) => this.#release(s));
    this.#sets.set(kind, set);
    return set;
  }

  /** The enabled set of `kind`, or null. */
  enabled(kind: IrqKind): IrqSet | null {
    this.#assertOpen();
    return this.#sets.get(kind) ?? null;
  }

  /**
   * Calls `listener` when the kernel asks for the device back (the REQ
   * notifier: e.g. the device is being unbound from vfio-pci). The
   * application should release the device; the kernel waits for it. REQ is
   * enabled with the first listener and disabled with the last one (unless it
   * was enabled with `enable('req')`). Errors: those of `enable('req')`.
   */
  onRequest(listener: () => void): Unsubscribe {
    let set = this.#sets.get('req');
    if (set === undefined) {
      set = this.enable('req');
      this.#requestOwner = set;
      this.#requestListeners = 0;
    }
    const off = set.vector(0).on(() => listener());
    const reqSet = set;
    if (this.#requestOwner === reqSet) this.#requestListeners++;
    return unsubscriber(() => {
      off();
      if (this.#requestOwner === reqSet && reqSet.enabled && --this.#requestListeners === 0) reqSet.disable();
    });
  }

  /**
   * Disables every enabled set and closes their eventfds. Called by the
   * device's close, before the device fd is closed. Idempotent. Errors: the
   * first failure, after everything was attempted.
   */
  close(): void {
    if (this.#closed) return;
    try {
      teardown([...this.#sets.values()].map((set) => () => set.disable()));
    } finally {
      this.#closed = true;
    }
  }

  [Symbol.dispose](): void {
    this.close();
  }

  /** IrqSet.disable's kernel half: forget the set, then SET_IRQS DATA_NONE count 0. */
  #release(set: IrqSet): void {
    if (this.#sets.get(set.kind) === set) this.#sets.delete(set.kind);
    if (this.#requestOwner === set) {
      this.#requestOwner = null;
      this.#requestListeners = 0;
    }
    // A closed device fd has already dropped every trigger in the kernel.
    if (this.#h.closed) return;
    setIrqs(this.#h, set.index, VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER, 0, 0, undefined, `disable ${LABEL[set.kind]}`);
  }

  #assertOpen(): void {
    if (this.#closed) throw resourceClosed(this.#h, 'interrupts');
    this.#h.assertOpen();
  }
}
