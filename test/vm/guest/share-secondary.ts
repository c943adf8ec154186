// A secondary process for share.test.ts: connects to the primary at argv[2],
// borrows edu (argv[3]) and the buffer "ring", reserves an IOVA window (not
// in no-IOMMU mode), drives edu (./share-drive.ts), prints the facts as one
// JSON line on stdout, gives everything back and exits 0. Any failure is a
// non-zero exit with the error on stderr. With argv[4] = 'die' it instead
// enables MSI and kills itself while holding the device, its mapping and
// the interrupt (the primary must take them back).
import { createVfio } from '../../../lib/index.js';
import { koffiSys } from '../../../lib/libc/koffi-sys.js';
import { connectPrimary } from '../../../lib/share/index.js';
import { SHARE_OFFSET, drive } from './share-drive.js';

const [path, edu, how] = process.argv.slice(2);
if (path === undefined || edu === undefined) throw new Error('usage: share-secondary.js SOCKET EDU');

const v = createVfio({ sys: koffiSys, env: {} });
const sec = await connectPrimary(v, path, { timeoutMs: 30_000 });
const dev = await sec.openDevice(edu);
const iommu = dev.container.dmaMode === 'iommu';
const window = iommu ? await sec.reserveIova(dev.container, 1 << 20, { dmaLimit: 2n ** 28n }) : null;
const own = dev.container.allocDma(4096, iommu ? { dmaLimit: 2n ** 28n } : {});
const imported = await sec.importBuffer('ring');
const facts = await drive(dev, own, imported, window, 11, SHARE_OFFSET.secondary);
process.stdout.write(`${JSON.stringify({ facts, pid: process.pid, primaryPid: sec.primaryPid })}\n`);
if (how === 'die') {
  dev.irqs.enable('msi');
  process.kill(process.pid, 'SIGKILL');
}
dev.release();
sec.close();
v.close();
