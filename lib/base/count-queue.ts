// A single-consumer async queue of counts: what `IrqVector.events()` is built
// on. Producers `push(n)` counts (interrupts since the last delivery); the
// consumer reads them with `next()`, and counts that arrive between two reads
// are summed. `end(err?)` ends the queue: without an error, counts already
// pushed are still delivered, then `done`; with one, the next read rejects
// with it.
//
// The invariant, kept here and nowhere else: every count pushed is delivered
// exactly once, either to the read that waits for it or summed into the next
// read; none is lost (a push with no reader waiting is kept) and none is
// doubled (a count that settles a waiting read is not also kept).
//
// Hooks let the owner react without sharing state:
// - `waiting(true|false)` when a read starts or stops waiting (the owner
//   watches its source only while someone waits);
// - `poll()` just before a read would wait: it may `push` what has already
//   arrived, so that the read settles at once;
// - `ended()` once, when the queue ends (the owner detaches it).
import { usageError } from './errors.js';

export interface CountQueueHooks {
  /** A read started (true) or stopped (false) waiting for a count. */
  waiting?(waiting: boolean): void;
  /** Called by `next()` before it waits; may call `push()` synchronously. */
  poll?(): void;
  /** Called once, first thing, when the queue ends. */
  ended?(): void;
  /** The error for a `next()` called while another one is still pending (default: EBUSY). */
  busy?(): unknown;
}

interface Waiter {
  resolve(r: IteratorResult<number>): void;
  reject(err: unknown): void;
}

const DONE: IteratorResult<number> = Object.freeze({ value: undefined, done: true });

export class CountQueue {
  readonly #hooks: CountQueueHooks;
  /** Counts pushed while no read waited: the next read takes their sum. */
  #pending = 0;
  #waiter: Waiter | null = null;
  #ended = false;
  /** An error `end()` got while no read waited: the next read rejects with it. */
  #failure: { err: unknown } | null = null;

  constructor(hooks: CountQueueHooks = {}) {
    this.#hooks = hooks;
  }

  /** True once `end()` was called. */
  get ended(): boolean {
    return this.#ended;
  }

  /** Delivers `n` to the waiting read, or keeps it for the next one. Ignored once ended. */
  push(n: number): void {
    if (this.#ended) return;
    const w = this.#takeWaiter();
    if (w === null) this.#pending += n;
    else w.resolve({ value: n, done: false });
  }

  /**
   * Ends the queue (only the first call counts). A waiting read settles now:
   * `done`, or rejected with `err`. Without a waiting read, `err` is kept for
   * the next read; counts already pushed are delivered first when there is
   * no error.
   */
  end(err?: unknown): void {
    if (this.#ended) return;
    this.#ended = true;
    this.#hooks.ended?.();
    const w = this.#takeWaiter();
    if (w === null) {
      if (err !== undefined) this.#failure = { err };
    } else if (err !== undefined) {
      w.reject(err);
    } else {
      w.resolve(DONE);
    }
  }

  /**
   * The next count: a failure kept by `end(err)` first, then the sum of what
   * was pushed, then `done` once ended; otherwise waits for a push or the end.
   * Rejects (per the `busy` hook, EBUSY by default) while another read is pending.
   */
  next(): Promise<IteratorResult<number>> {
    if (this.#pending === 0 && !this.#ended && this.#waiter === null) this.#hooks.poll?.();
    if (this.#failure !== null) {
      const { err } = this.#failure;
      this.#failure = null;
      return Promise.reject(err);
    }
    if (this.#pending > 0) {
      const n = this.#pending;
      this.#pending = 0;
      return Promise.resolve({ value: n, done: false });
    }
    if (this.#ended) return Promise.resolve(DONE);
    if (this.#waiter !== null) {
      return Promise.reject(this.#hooks.busy?.() ?? usageError('EBUSY', 'next() called again before the previous call settled'));
    }
    return new Promise((resolve, reject) => {
      this.#waiter = { resolve, reject };
      this.#hooks.waiting?.(true);
    });
  }

  /** The queue as an async iterator (`next`, and `return` = `end()`), without its producer side. */
  iterator(): AsyncIterableIterator<number> {
    const it: AsyncIterableIterator<number> = {
      next: () => this.next(),
      return: () => {
        this.end();
        return Promise.resolve(DONE);
      },
      [Symbol.asyncIterator]: () => it,
    };
    return it;
  }

  #takeWaiter(): Waiter | null {
    const w = this.#waiter;
    if (w === null) return null;
    this.#waiter = null;
    this.#hooks.waiting?.(false);
    return w;
  }
}
