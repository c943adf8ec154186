// Two disciplines for giving resources back, used by every module that opens
// something:
//
// - `Unwind`: a setup that opens several things in turn registers how to
//   undo each one; if a later step throws, everything registered so far is
//   undone in reverse order and the original error propagates. A setup that
//   succeeds calls `done()` and the registered undo steps are forgotten.
// - `teardown`: releasing a live object runs every step even when one fails
//   (a close that fails has still closed the fd on Linux; the next step must
//   still run), then throws the first failure.
//
// Guarantees:
// - An undo step that throws never hides the error that caused the unwind:
//   the original error is rethrown and the remaining undo steps still run.
// - Steps run at most once.

type Step = () => void;

export class Unwind {
  private steps: Step[] = [];

  /** Registers how to undo the step that just succeeded. */
  defer(step: Step): void {
    this.steps.push(step);
  }

  /** The setup succeeded: keep everything it made. */
  done(): void {
    this.steps = [];
  }

  /** The setup failed: undo every registered step, newest first. */
  unwind(): void {
    const steps = this.steps;
    this.steps = [];
    for (let i = steps.length - 1; i >= 0; i--) {
      try {
        steps[i]!();
      } catch {
        // The caller is already propagating the error that made it unwind;
        // a failure to undo must not replace it. The remaining steps still run.
      }
    }
  }
}

/**
 * Runs `body` with a fresh Unwind: on success its undo steps are dropped, on
 * failure they run (newest first) and the error is rethrown.
 */
export function withUnwind<T>(body: (u: Unwind) => T): T {
  const u = new Unwind();
  try {
    const result = body(u);
    u.done();
    return result;
  } catch (err) {
    u.unwind();
    throw err;
  }
}

/** Runs every step in order, then throws the first error any of them threw. */
export function teardown(steps: readonly Step[]): void {
  let first: { err: unknown } | undefined;
  for (const step of steps) {
    try {
      step();
    } catch (err) {
      first ??= { err };
    }
  }
  if (first !== undefined) throw first.err;
}
