// What the guest tests know about QEMU's edu device (QEMU docs/specs/edu.rst)
// and small helpers to drive it through a mapped BAR0. Only facts of the
// device live here; everything VFIO goes through the library under test.
import { readdirSync, readlinkSync } from 'node:fs';
import type { Region } from '../../../lib/index.js';

export const EDU_VENDOR = 0x1234;
export const EDU_DEVICE = 0x11e8;
/** BAR0 0x00: identification (major 1, minor 0, 0xed). */
export const EDU_ID = 0x010000ed;

/** BAR0 register offsets. */
export const REG = {
  id: 0x00,
  /** Liveness: reads back the bitwise inverse of what was written. */
  inverse: 0x04,
  /** Factorial: write n, read n! once status bit 0x01 clears. */
  factorial: 0x08,
  /** Status: 0x01 computing (read-only), 0x80 raise interrupt 0x01 when the factorial is done. */
  status: 0x20,
  irqStatus: 0x24,
  irqRaise: 0x60,
  irqAck: 0x64,
  dmaSrc: 0x80,
  dmaDst: 0x88,
  dmaCount: 0x90,
  dmaCmd: 0x98,
} as const;

export const STATUS_COMPUTING = 0x01;
export const STATUS_IRQ_ON_FACTORIAL = 0x80;
/** The interrupt status bit edu sets when a factorial finishes (with STATUS_IRQ_ON_FACTORIAL). */
export const IRQ_FACTORIAL = 0x01;
/** DMA command bits: start, direction (1 = edu → RAM), raise interrupt 0x100 when done. */
export const DMA_START = 0x1;
export const DMA_TO_RAM = 0x2;
export const DMA_IRQ = 0x4;
/** Where edu's 4 KiB DMA buffer sits in its DMA address space. */
export const EDU_DMA_BUFFER = 0x40000n;
/**
 * QEMU 7.2's edu aborts the whole VM on a DMA of its full 4096-byte buffer
 * (an off-by-one in its range check): stay well below.
 */
export const MAX_DMA = 2048;

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/**
 * Polls `done` every few ms until it is true; throws after `ms` (edu runs
 * DMA from a 100 ms timer of QEMU's virtual clock, and TCG is slow).
 */
export async function until(what: string, done: () => boolean, ms = 10_000): Promise<void> {
  const end = Date.now() + ms;
  while (!done()) {
    if (Date.now() > end) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await sleep(2);
  }
}

/** Runs one edu DMA and waits for it to finish. */
export async function eduDma(bar0: Region, src: bigint, dst: bigint, count: number, toRam: boolean): Promise<void> {
  bar0.write64(REG.dmaSrc, src);
  bar0.write64(REG.dmaDst, dst);
  bar0.write64(REG.dmaCount, BigInt(count));
  bar0.write32(REG.dmaCmd, DMA_START | (toRam ? DMA_TO_RAM : 0));
  await until('the edu DMA to finish', () => (bar0.read32(REG.dmaCmd) & DMA_START) === 0);
}

/** n! modulo 2^32, as edu computes it. */
export function factorial(n: number): number {
  let r = 1;
  for (let i = 2; i <= n; i++) r = Math.imul(r, i) >>> 0;
  return r;
}

/** This process's open fds, as `fd -> target` (for leak checks). */
export function openFds(): Map<number, string> {
  const out = new Map<number, string>();
  for (const name of readdirSync('/proc/self/fd')) {
    try {
      out.set(Number(name), readlinkSync(`/proc/self/fd/${name}`));
    } catch {
      // The fd readdir itself used, closed by now.
    }
  }
  return out;
}

/** The fds open now that were not open (to the same target) in `before`: `fd -> target`. */
export function newFds(before: Map<number, string>): string[] {
  return [...openFds()].filter(([fd, target]) => before.get(fd) !== target).map(([fd, target]) => `${fd} -> ${target}`);
}
