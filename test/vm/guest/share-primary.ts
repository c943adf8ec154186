// A primary process for share.test.ts's "the primary dies" check: sets up a
// container in mode argv[4] with edu (argv[3]) and a shared buffer "ring"
// (holding primaryPattern()), serves them at argv[2], prints "ready" and
// waits to be killed.
import { createVfio, type VfioMode } from '../../../lib/index.js';
import { koffiSys } from '../../../lib/libc/koffi-sys.js';
import { ShareServer } from '../../../lib/share/index.js';
import { primaryPattern } from './share-drive.js';

const [path, edu, mode] = process.argv.slice(2);
if (path === undefined || edu === undefined || mode === undefined) throw new Error('usage: share-primary.js SOCKET EDU MODE');

const v = createVfio({ sys: koffiSys, env: {} });
const container = v.createContainer({ mode: mode as VfioMode });
container.assignDevice(edu);
const ring = container.allocDma(4096, { shareable: true, ...(mode === 'noiommu' ? {} : { dmaLimit: 2n ** 28n }) });
ring.bytes.set(primaryPattern());
const server = ShareServer.listen(path, { containers: [container] });
server.shareBuffer('ring', ring);
process.stdout.write('ready\n');
// The server's poll keeps the process alive until it is killed.
