// What the fake kernel's own tests (lib/testing-*.test.ts) share: they drive the
// fake's Sys directly, with the codec, as the library would.
import type { Test } from 'tap';
import { errnoName } from '../../lib/base/errors.js';
import { MAP_ANONYMOUS, MAP_PRIVATE, PROT_READ, PROT_WRITE } from '../../lib/libc/sys.js';
import { FakeKernel, errnoNumber, type FakeKernelOptions } from '../../lib/testing/index.js';

export const RW = PROT_READ | PROT_WRITE;
export const ANON = MAP_PRIVATE | MAP_ANONYMOUS;

/** The error `code` the library sees for an errno name (the real Sys derives it from the number). */
export const E = (name: string): { code: string } => ({ code: errnoName(errnoNumber(name)) });

/** A fake kernel disposed of when the test ends. */
export function freshKernel(t: Test, opts: FakeKernelOptions): FakeKernel {
  const k = new FakeKernel(opts);
  t.teardown(() => k.dispose());
  return k;
}

/** An `int` argument as the kernel reads it (e.g. VFIO_GROUP_SET_CONTAINER's container fd). */
export function intArg(n: number): Uint8Array {
  const b = new Uint8Array(4);
  new DataView(b.buffer).setInt32(0, n, true);
  return b;
}

/**
 * Polls `done` every millisecond until it holds, as a driver waits on a
 * status register (the fake's devices work on their own clock, as QEMU's
 * do); throws after `ms`.
 */
export async function until(what: string, done: () => boolean, ms = 5000): Promise<void> {
  const end = Date.now() + ms;
  while (!done()) {
    if (Date.now() > end) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 1));
  }
}
