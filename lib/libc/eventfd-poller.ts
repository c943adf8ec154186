// Waits for many eventfds at once without blocking the event loop: one
// poll(2) over every watched eventfd plus a stop eventfd, run on one libuv
// pool thread (`sys.pollAsync`), re-armed after each wake. The portable way
// to implement `Sys.watchEventfd`, built on the rest of `Sys` only: the real
// kernel's Sys prefers the event loop's own epoll (./eventfd-stream.ts) and
// falls back to this; the fake kernel (lib/testing) uses this.
//
// Guarantees:
// - One in-flight poll per Sys, whatever the number of vectors and devices:
//   interrupts never cost a thread each (libuv's pool has only four).
// - A change of the watched set (watch/unwatch) writes the stop eventfd, so
//   the in-flight poll returns and is re-armed with the new set.
// - Nothing runs while nothing is watched: the last unwatch stops the poll
//   and the stop eventfd is closed once the in-flight poll has returned
//   (`idle()` resolves then), so the process can exit and no fd is left.
// - Readiness is only a hint: after a wake every ready, still-watched eventfd
//   is read non-blocking (EAGAIN means nothing to deliver). Results for an fd
//   that was unwatched (and maybe closed and its number reused) while the
//   poll was in flight are dropped, because watches are matched by identity,
//   not by fd number.
import { VfioError } from '../base/errors.js';
import {
  EFD_CLOEXEC,
  EFD_NONBLOCK,
  POLLERR,
  POLLHUP,
  POLLIN,
  POLLNVAL,
  type EventfdWatch,
  type EventfdWatcher,
  type Fd,
  type Sys,
} from './sys.js';

const pollers = new WeakMap<Sys, EventfdPoller>();

/** Runs a listener; a throwing listener surfaces as an uncaught exception, as from an EventEmitter, without breaking the poll loop. */
export function deliver(fn: () => void): void {
  try {
    fn();
  } catch (err) {
    queueMicrotask(() => {
      throw err;
    });
  }
}

export class EventfdPoller {
  readonly #sys: Sys;
  readonly #watches = new Map<Fd, EventfdWatch>();
  #stopFd: Fd = -1;
  #running: Promise<void> | null = null;
  #inPoll = false;
  readonly #counter = Buffer.alloc(8);

  private constructor(sys: Sys) {
    this.#sys = sys;
  }

  /** The poller shared by everything that uses `sys`. */
  static of(sys: Sys): EventfdPoller {
    let p = pollers.get(sys);
    if (p === undefined) {
      p = new EventfdPoller(sys);
      pollers.set(sys, p);
    }
    return p;
  }

  /** Number of eventfds being watched. */
  get size(): number {
    return this.#watches.size;
  }

  /**
   * Delivers `fd`'s count to `w` after each wake until the returned function
   * is called. One watch per fd. The caller keeps `fd` open until it has
   * unwatched it.
   */
  watch(fd: Fd, w: EventfdWatch): () => void {
    if (this.#watches.has(fd)) throw new VfioError({ code: 'EEXIST', detail: `eventfd ${fd} is already watched` });
    this.#watches.set(fd, w);
    this.#kick();
    return () => {
      if (this.#watches.get(fd) !== w) return;
      this.#watches.delete(fd);
      this.#kick();
    };
  }

  /** A watcher of `fd` over this poller (the portable Sys.watchEventfd). */
  watcher(fd: Fd, w: EventfdWatch): EventfdWatcher {
    let off: (() => void) | null = null;
    let closed = false;
    const stop = (): void => {
      const o = off;
      off = null;
      o?.();
    };
    return {
      start: () => {
        if (off !== null || closed) return;
        off = this.watch(fd, {
          onCount: w.onCount,
          onError: (err) => {
            off = null;
            closed = true;
            w.onError(err);
          },
        });
      },
      stop,
      close: () => {
        closed = true;
        stop();
      },
    };
  }

  /** Resolves once no poll is in flight and the stop eventfd is closed. */
  async idle(): Promise<void> {
    while (this.#running !== null) await this.#running;
  }

  #kick(): void {
    if (this.#running === null) {
      if (this.#watches.size > 0) this.#running = this.#run();
      return;
    }
    // A poll with the old set is in flight: make it return so the loop
    // re-arms with the new set (or stops when the set is empty).
    if (this.#inPoll && this.#stopFd >= 0) this.#signalStop();
  }

  #signalStop(): void {
    this.#counter.writeBigUInt64LE(1n, 0);
    try {
      this.#sys.write(this.#stopFd, this.#counter);
    } catch {
      // EAGAIN: the counter is at its maximum, so it is signalled anyway.
    }
  }

  async #run(): Promise<void> {
    // Yield once first, so that #running is assigned before anything in the
    // loop (even a synchronous failure) can reach the `finally` that clears it.
    await undefined;
    try {
      while (this.#watches.size > 0) {
        const snapshot = [...this.#watches];
        let revents: number[];
        try {
          if (this.#stopFd < 0) this.#stopFd = this.#sys.eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
          this.#inPoll = true;
          revents = await this.#sys.pollAsync(
            [{ fd: this.#stopFd, events: POLLIN }, ...snapshot.map(([fd]) => ({ fd, events: POLLIN }))],
            -1,
          );
        } catch (err) {
          this.#inPoll = false;
          // The poll itself failed (or the stop eventfd could not be made):
          // every watch of this round ends with the error; later ones retry.
          for (const [fd, w] of snapshot) {
            if (this.#watches.get(fd) !== w) continue;
            this.#watches.delete(fd);
            deliver(() => w.onError(err));
          }
          // Let the event loop run before retrying for watches added since:
          // a poll that keeps failing must not spin on microtasks.
          await new Promise<void>((resolve) => setImmediate(resolve));
          continue;
        }
        this.#inPoll = false;
        if ((revents[0] ?? 0) !== 0) readEventfdCount(this.#sys, this.#stopFd, this.#counter);
        snapshot.forEach(([fd, w], i) => {
          const r = revents[i + 1] ?? 0;
          if (r === 0 || this.#watches.get(fd) !== w) return;
          let count: number;
          try {
            if ((r & POLLNVAL) !== 0)
              throw new VfioError({ code: 'EBADF', syscall: 'poll', detail: `eventfd ${fd} was closed while watched` });
            if ((r & (POLLIN | POLLERR | POLLHUP)) === 0) return;
            count = readEventfdCount(this.#sys, fd, this.#counter);
          } catch (err) {
            this.#watches.delete(fd);
            deliver(() => w.onError(err));
            return;
          }
          if (count > 0) deliver(() => w.onCount(count));
        });
      }
    } finally {
      this.#inPoll = false;
      const stop = this.#stopFd;
      this.#stopFd = -1;
      this.#running = null;
      if (stop >= 0) {
        try {
          this.#sys.close(stop);
        } catch {
          // Nothing useful to do: the fd is gone either way.
        }
      }
    }
  }
}

/**
 * Reads and clears a non-blocking eventfd's counter into `buf` (8 bytes); 0
 * when it was not signalled (EAGAIN). Other failures throw.
 */
export function readEventfdCount(sys: Sys, fd: Fd, buf: Buffer): number {
  return sys.tryRead(fd, buf) === null ? 0 : Number(buf.readBigUInt64LE(0));
}
