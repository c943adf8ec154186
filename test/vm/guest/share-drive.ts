// What a borrower (a secondary process, ./share-secondary.ts, or a worker
// thread, ./share-worker.ts) does with what a primary lent it, on the real
// kernel: map BAR0, run edu DMA both ways between its own buffer and the
// primary's shared one, take an MSI on its own eventfd. It returns facts
// (plain JSON) for share.test.ts to check; it asserts nothing itself.
import type { Device, DmaBuffer } from '../../../lib/index.js';
import { EDU_DMA_BUFFER, REG, eduDma } from './edu.js';

/** Bytes per DMA: well below edu's 4 KiB buffer (see MAX_DMA in edu.ts). */
export const SHARE_DMA_BYTES = 1024;
/** Where in the shared buffer the borrower has edu write its pattern. */
export const SHARE_OFFSET = { secondary: 1024, worker: 2048, orphan: 3072 } as const;

/** The pattern a borrower writes (`seed` tells borrowers apart). */
export function borrowerPattern(seed: number): Uint8Array {
  return Uint8Array.from({ length: SHARE_DMA_BYTES }, (_, i) => (i * 7 + seed) & 0xff);
}

/** The pattern the primary puts at the start of its shared buffer. */
export function primaryPattern(): Uint8Array {
  return Uint8Array.from({ length: SHARE_DMA_BYTES }, (_, i) => (i * 13 + 5) & 0xff);
}

/** What a borrower saw (bigints as strings; -1 means "no difference"). */
export interface DriveFacts {
  readonly mode: string;
  readonly ioasId: number | null;
  readonly devId: number | null;
  readonly iommuType: number | null;
  readonly groups: readonly number[];
  readonly barId: number;
  readonly window: { readonly start: string; readonly last: string } | null;
  readonly ownIova: string;
  readonly importedIova: string;
  /** own -> edu -> own. */
  readonly roundTrip: number;
  /** edu -> the primary's shared buffer, read back through this borrower's mapping. */
  readonly intoShared: number;
  /** the primary's pattern in the shared buffer -> edu -> own. */
  readonly fromShared: number;
  /** MSI count received on this borrower's eventfd. */
  readonly msi: number;
}

/** Index of the first difference, or -1 (tap's per-element diff is slow under TCG). */
export function firstDiff(a: Uint8Array, b: Uint8Array): number {
  if (a.length !== b.length) return Math.min(a.length, b.length);
  return a.findIndex((x, i) => x !== b[i]);
}

export async function drive(
  dev: Device,
  own: DmaBuffer,
  imported: DmaBuffer,
  window: { start: bigint; last: bigint } | null,
  seed: number,
  offset: number,
): Promise<DriveFacts> {
  const state = dev.container.kernelState;
  const bar0 = dev.mapBar(0);
  try {
    const barId = bar0.read32(REG.id);
    dev.config.setBusMaster(true);
    const n = SHARE_DMA_BYTES;
    const mine = borrowerPattern(seed);
    own.bytes.set(mine);
    await eduDma(bar0, own.iova, EDU_DMA_BUFFER, n, false);
    own.bytes.fill(0);
    await eduDma(bar0, EDU_DMA_BUFFER, own.iova, n, true);
    const roundTrip = firstDiff(own.bytes.subarray(0, n), mine);
    await eduDma(bar0, EDU_DMA_BUFFER, imported.iovaAt(offset), n, true);
    const intoShared = firstDiff(imported.bytes.subarray(offset, offset + n), mine);
    await eduDma(bar0, imported.iova, EDU_DMA_BUFFER, n, false);
    await eduDma(bar0, EDU_DMA_BUFFER, own.iovaAt(2048), n, true);
    const fromShared = firstDiff(own.bytes.subarray(2048, 2048 + n), primaryPattern());

    const msi = dev.irqs.enable('msi');
    const got = msi.vector(0).wait({ signal: AbortSignal.timeout(10_000) });
    bar0.write32(REG.irqRaise, 0x1000);
    const count = await got;
    bar0.write32(REG.irqAck, 0x1000);
    msi.disable();
    return {
      mode: dev.container.mode,
      ioasId: state.mode === 'cdev' ? state.ioasId : null,
      devId: state.mode === 'cdev' ? (state.devices.find((d) => d.address === dev.address)?.devId ?? null) : null,
      iommuType: state.mode === 'cdev' ? null : state.iommuType,
      groups: state.mode === 'cdev' ? [] : state.groups.map((g) => g.group),
      barId,
      window: window === null ? null : { start: window.start.toString(), last: window.last.toString() },
      ownIova: own.iova.toString(),
      importedIova: imported.iova.toString(),
      roundTrip,
      intoShared,
      fromShared,
      msi: count,
    };
  } finally {
    bar0.close();
  }
}
