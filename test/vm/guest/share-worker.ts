// A worker thread for share.test.ts: adopts the ticket the main thread made
// with lendToThread (workerData.ticket), drives edu through it
// (./share-drive.ts) and posts the facts back. It builds all its handles
// itself from the ticket's fds (its own Vfio context, its own BAR mapping,
// its own mapping of the shared buffer), then closes them before it ends.
import { parentPort, workerData } from 'node:worker_threads';
import { createVfio } from '../../../lib/index.js';
import { koffiSys } from '../../../lib/libc/koffi-sys.js';
import { adoptFromThread } from '../../../lib/share/index.js';
import { SHARE_OFFSET, drive } from './share-drive.js';

const { ticket, edu } = workerData as { ticket: unknown; edu: string };
const v = createVfio({ sys: koffiSys, env: {} });
try {
  const borrow = adoptFromThread(v, ticket);
  try {
    const iommu = borrow.container.dmaMode === 'iommu';
    const [window] = borrow.container.iovaWindows;
    const own = borrow.container.allocDma(4096, iommu ? { dmaLimit: 2n ** 28n } : {});
    const facts = await drive(borrow.device(edu), own, borrow.buffer('ring'), window ?? null, 29, SHARE_OFFSET.worker);
    parentPort?.postMessage({ kind: 'share-worker', facts });
  } finally {
    borrow.close();
  }
} catch (err) {
  parentPort?.postMessage({ kind: 'share-worker', error: err instanceof Error ? `${err.message}\n${err.stack ?? ''}` : String(err) });
} finally {
  v.close();
}
