// worker_threads and the rules lib/share/thread.ts is built on, on the real
// kernel (koffiSys; no VFIO device needed): fd numbers are process-wide, so
// a worker handed dup'd fds owns them; it maps a memfd itself (its own
// mapping of the same pages, which the main thread's unmapping cannot pull
// from under it) and signals an eventfd the main thread polls. The same file
// is the worker (workerData says so). The full ticket path with a device
// runs in the VM tier (test/vm/guest/share.test.ts) and on the fake
// (test/share/fake.test.ts).
import t from 'tap';
import { Worker, isMainThread, parentPort, workerData } from 'node:worker_threads';
import { koffiSys as sys } from '../../lib/libc/koffi-sys.js';
import { EFD_CLOEXEC, EFD_NONBLOCK, MAP_SHARED, MFD_CLOEXEC, POLLIN, PROT_READ, PROT_WRITE } from '../../lib/libc/sys.js';

const PAGE = 4096;

interface Ticket {
  readonly memfd: number;
  readonly eventfd: number;
}

if (!isMainThread) {
  // The worker: adopt the fds (they are ours now), map, write, signal, close.
  const { memfd, eventfd } = workerData as Ticket;
  const addr = sys.mmap(PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, memfd, 0n);
  const view = sys.view(addr, PAGE);
  const first = view[0];
  view.set([1, 2, 3, 4], 200);
  sys.munmap(addr, PAGE);
  sys.close(memfd);
  sys.write(eventfd, Buffer.from([1, 0, 0, 0, 0, 0, 0, 0]));
  sys.close(eventfd);
  parentPort?.postMessage({ kind: 'share-worker', first });
} else {
  t.test('a worker maps a memfd and signals an eventfd from fds the main thread dup()ed for it', async (t) => {
    const memfd = sys.memfdCreate('share-worker', MFD_CLOEXEC);
    sys.ftruncate(memfd, BigInt(PAGE));
    const addr = sys.mmap(PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, memfd, 0n);
    const view = sys.view(addr, PAGE);
    view[0] = 0x77;
    const efd = sys.eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    const ticket: Ticket = { memfd: sys.dup(memfd), eventfd: sys.dup(efd) };
    t.not(ticket.memfd, memfd, 'the worker gets its own fd numbers');
    const worker = new Worker(new URL(import.meta.url), { workerData: ticket });
    const reply = await new Promise<{ first: number }>((resolve, reject) => {
      // Only our message: test hooks running in the worker may post their own.
      worker.on('message', (m: { kind?: string; first: number }) => {
        if (m?.kind === 'share-worker') resolve(m);
      });
      worker.once('error', reject);
    });
    const revents = await sys.pollAsync([{ fd: efd, events: POLLIN }], 20_000);
    t.equal(revents[0]! & POLLIN, POLLIN, 'the eventfd the worker signalled is readable here');
    const counter = Buffer.alloc(8);
    sys.read(efd, counter);
    t.equal(counter.readBigUInt64LE(0), 1n);
    t.equal(reply.first, 0x77, 'the worker read the page the main thread wrote');
    t.same([...view.subarray(200, 204)], [1, 2, 3, 4], 'the main thread sees what the worker wrote');
    await worker.terminate();
    // The worker closed its copies: ours still work, and closing them is ours.
    t.equal(sys.pread(memfd, Buffer.alloc(1), 200n), 1, 'our memfd is still open');
    sys.munmap(addr, PAGE);
    sys.close(memfd);
    sys.close(efd);
  });
}
