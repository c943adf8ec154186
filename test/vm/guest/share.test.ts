// Sharing a container on the real kernel (lib/share; issue 8), in the booted
// mode. This process is the primary: it sets up a container with edu and a
// shareable DMA buffer and serves them on a Unix socket. A secondary process
// (./share-secondary.ts) borrows them over SCM_RIGHTS, maps edu's BAR0,
// reserves an IOVA window, runs DMA between its own buffer and the primary's,
// and takes an MSI on its own eventfd. Then a worker thread
// (./share-worker.ts) does the same from a ticket (lendToThread). The
// borrowers' drive is in ./share-drive.ts; the checks are here.
//
// cdev: the container is the third IOAS of one iommufd (two others are
// allocated first, `iommufdOf`), so its id is not 1 or 2; the secondary must
// map with the primary's id. group: the secondary maps into the primary's
// Type1 container, whose IOMMU type it must not set again. noiommu: supported
// too (DMA addresses are physical, no IOVA window).
import t, { type Test } from 'tap';
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { Worker } from 'node:worker_threads';
import { createVfio, VfioError, type Container, type DmaBuffer } from '../../../lib/index.js';
import { EventfdPoller } from '../../../lib/libc/eventfd-poller.js';
import { koffiSys } from '../../../lib/libc/koffi-sys.js';
import { ShareServer, connectPrimary, lendToThread } from '../../../lib/share/index.js';
import { EDU_ID, REG, newFds, openFds } from './edu.js';
import { eduDmaLimit, guestEnv } from './guest-env.js';
import { SHARE_DMA_BYTES, SHARE_OFFSET, borrowerPattern, drive, firstDiff, primaryPattern, type DriveFacts } from './share-drive.js';

const env = guestEnv();
if (env === null) {
  t.plan(0, 'VM guest test: runs inside the VM via `npm run test:vm`');
} else {
  const { mode, edu } = env;
  const iommu = mode !== 'noiommu';
  const dmaLimit = eduDmaLimit(mode);
  const fdsAtStart = openFds();
  const v = createVfio({ sys: koffiSys, env: {} });
  const path = '/tmp/vfio-share-primary.sock';

  let container: Container;
  const extra: Container[] = [];
  let shared: DmaBuffer;
  let server: ShareServer;

  /** Checks what a borrower reports against the primary's own state. */
  function checkFacts(t: Test, who: string, f: DriveFacts, seed: number, offset: number): void {
    const mine = container.kernelState;
    t.equal(f.mode, mode, `${who}: its borrowed container is in ${mode} mode`);
    if (mine.mode === 'cdev') {
      t.equal(f.ioasId, mine.ioasId, `${who}: maps with the primary's IOAS id ${mine.ioasId}`);
      t.equal(f.devId, mine.devices[0]?.devId ?? -1, `${who}: and knows the device's id in the iommufd`);
    } else {
      t.equal(f.iommuType, mine.iommuType, `${who}: the primary's IOMMU type ${mine.iommuType}`);
      t.same(
        f.groups,
        mine.groups.map((g) => g.group),
        `${who}: the primary's group membership`,
      );
    }
    t.equal(f.barId, EDU_ID, `${who}: BAR0 mapped, edu identifies itself`);
    if (iommu) {
      t.ok(f.window !== null, `${who}: an IOVA window`);
      const start = BigInt(f.window?.start ?? -1);
      const last = BigInt(f.window?.last ?? -1);
      const own = BigInt(f.ownIova);
      t.ok(own >= start && own + 4095n <= last, `${who}: its own buffer (IOVA 0x${own.toString(16)}) lies in its window`);
      t.ok(last < 2n ** 28n, `${who}: the window is below edu's 28-bit DMA limit`);
      t.ok(last < shared.iova || start >= shared.iova + BigInt(shared.size), `${who}: the window misses the primary's mapping`);
    } else {
      t.equal(f.window, null, `${who}: no window in no-IOMMU mode`);
    }
    t.equal(f.importedIova, shared.iova.toString(), `${who}: the shared buffer has the primary's IOVA`);
    t.equal(f.roundTrip, -1, `${who}: own buffer -> edu -> own buffer`);
    t.equal(f.fromShared, -1, `${who}: the primary's bytes -> edu -> own buffer`);
    t.equal(f.intoShared, -1, `${who}: edu -> the shared buffer, seen through its mapping`);
    t.equal(
      firstDiff(shared.bytes.subarray(offset, offset + SHARE_DMA_BYTES), borrowerPattern(seed)),
      -1,
      `${who}: the primary sees in its own buffer what the borrower had edu write`,
    );
    t.ok(f.msi >= 1, `${who}: an MSI reached its own eventfd`);
  }

  t.test('primary: a container with edu and a shared buffer, served', async (t) => {
    if (mode === 'cdev') {
      const first = v.createContainer({ mode });
      const second = v.createContainer({ mode, iommufdOf: first });
      extra.push(first, second);
      container = v.createContainer({ mode, iommufdOf: first });
    } else {
      container = v.createContainer({ mode });
    }
    container.assignDevice(edu);
    const state = container.kernelState;
    if (state.mode === 'cdev') t.ok(state.ioasId !== 1 && state.ioasId !== 2, `the container's IOAS id is ${state.ioasId}, not 1 or 2`);
    shared = container.allocDma(4096, { shareable: true, ...(dmaLimit === undefined ? {} : { dmaLimit }) });
    shared.bytes.fill(0);
    shared.bytes.set(primaryPattern());
    server = ShareServer.listen(path, { containers: [container] });
    server.shareBuffer('ring', shared);
    t.pass(`serving on ${path}`);
  });

  t.test('a secondary process borrows the container and drives edu', async (t) => {
    const helper = fileURLToPath(new URL('./share-secondary.js', import.meta.url));
    const child = spawn(process.execPath, ['--enable-source-maps', helper, path, edu], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    const code = await new Promise<number | null>((resolve) => child.on('exit', resolve));
    t.equal(code, 0, `the secondary exited 0${err === '' ? '' : `: ${err}`}`);
    const line = out.trim().split('\n').pop() ?? '';
    const report = JSON.parse(line === '' ? '{}' : line) as { facts?: DriveFacts; primaryPid?: number };
    t.equal(report.primaryPid, process.pid, 'it talked to this process');
    if (report.facts !== undefined) checkFacts(t, 'secondary', report.facts, 11, SHARE_OFFSET.secondary);
    else t.fail('the secondary reported no facts');
    const end = Date.now() + 10_000;
    while (server.connections > 0 && Date.now() < end) await new Promise((r) => setTimeout(r, 10));
    t.equal(server.connections, 0, 'its connection ended with it');
  });

  t.test('a secondary dies holding the device, a mapping and MSI: the primary takes all back', async (t) => {
    const helper = fileURLToPath(new URL('./share-secondary.js', import.meta.url));
    const child = spawn(process.execPath, ['--enable-source-maps', helper, path, edu, 'die'], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    const signal = await new Promise<string | null>((resolve) => child.on('exit', (_code, sig) => resolve(sig)));
    t.equal(signal, 'SIGKILL', `the secondary died${err === '' ? '' : `: ${err}`}`);
    const line = out.trim().split('\n').pop() ?? '';
    const facts = (JSON.parse(line === '' ? '{}' : line) as { facts?: DriveFacts }).facts;
    t.ok(facts !== undefined && facts.roundTrip === -1, 'it had driven edu before dying');
    const end = Date.now() + 10_000;
    while (server.connections > 0 && Date.now() < end) await new Promise((r) => setTimeout(r, 10));
    t.equal(server.connections, 0, 'the kernel closed its socket: the connection ended');
    const msiLines = (): string[] =>
      readFileSync('/proc/interrupts', 'utf8')
        .split('\n')
        .filter((l) => l.includes('vfio-msi') && l.includes(edu));
    t.same(msiLines(), [], 'the MSI it left enabled was disabled when the device came back');
    const dev = v.openDevice(edu);
    t.pass('the device came back to the primary');
    if (iommu && facts !== undefined) {
      const at = BigInt(facts.ownIova);
      const b = container.allocDma(4096, { iova: at });
      t.equal(b.iova, at, `the dead secondary's IOVA 0x${at.toString(16)} was unmapped and is the primary's again`);
      b.free();
    }
    const bar0 = dev.mapBar(0);
    dev.config.setBusMaster(true);
    const msi = dev.irqs.enable('msi');
    t.equal(msiLines().length, 1, '/proc/interrupts shows an enabled vfio MSI (so the check above can fail)');
    const got = msi.vector(0).wait({ signal: AbortSignal.timeout(10_000) });
    bar0.write32(REG.irqRaise, 0x1000);
    t.ok((await got) >= 1, 'the primary takes MSI on its own eventfd');
    bar0.write32(REG.irqAck, 0x1000);
    // Releasing undoes the assignment: assign it again for what follows.
    dev.release();
    container.assignDevice(edu);
  });

  t.test('a worker thread borrows the device from a ticket and drives edu', async (t) => {
    const lease = lendToThread(container, {
      devices: [edu],
      buffers: { ring: shared },
      ...(iommu ? { iova: { size: 1 << 20, dmaLimit: 2n ** 28n } } : {}),
    });
    t.throws(() => v.openDevice(edu), { code: 'EBUSY' }, 'lent: the main thread cannot open it meanwhile');
    const worker = new Worker(new URL('./share-worker.js', import.meta.url), { workerData: { ticket: lease.ticket, edu } });
    const reply = await new Promise<{ facts?: DriveFacts; error?: string }>((resolve, reject) => {
      worker.on('message', (m: { kind?: string; facts?: DriveFacts; error?: string }) => {
        if (m?.kind === 'share-worker') resolve(m);
      });
      worker.once('error', reject);
    });
    await new Promise((resolve) => worker.once('exit', resolve));
    lease.end();
    t.equal(reply.error, undefined, 'the worker ran through');
    if (reply.facts !== undefined) checkFacts(t, 'worker', reply.facts, 29, SHARE_OFFSET.worker);
    const back = v.openDevice(edu);
    t.pass('the device came back to the main thread');
    back.release();
  });

  t.test('teardown: nothing left open', async (t) => {
    await server.close();
    container.close();
    for (const c of extra) c.close();
    v.close();
    // Node itself keeps /dev/null open once a child was spawned with stdin 'ignore'.
    t.same(
      newFds(fdsAtStart).filter((fd) => !fd.endsWith(' -> /dev/null')),
      [],
      'no fd left in the primary',
    );
  });

  t.test('the primary dies: the secondary gets ECONNRESET and keeps what it holds', async (t) => {
    // Roles swapped: a child is the primary, this process the secondary.
    const helper = fileURLToPath(new URL('./share-primary.js', import.meta.url));
    const where = '/tmp/vfio-share-dying.sock';
    const primary = spawn(process.execPath, ['--enable-source-maps', helper, where, edu, mode], { stdio: ['ignore', 'pipe', 'pipe'] });
    let err = '';
    primary.stderr.on('data', (d: Buffer) => (err += d.toString()));
    const exited = new Promise<string | null>((resolve) => primary.on('exit', (_code, signal) => resolve(signal)));
    await new Promise<void>((resolve, reject) => {
      primary.stdout.on('data', (d: Buffer) => d.toString().includes('ready') && resolve());
      primary.on('exit', () => reject(new Error(`the primary exited before serving: ${err}`)));
    });
    const v2 = createVfio({ sys: koffiSys, env: {} });
    const sec = await connectPrimary(v2, where, { timeoutMs: 30_000 });
    const dev = await sec.openDevice(edu);
    const window = iommu ? await sec.reserveIova(dev.container, 1 << 20, { dmaLimit: 2n ** 28n }) : null;
    const own = dev.container.allocDma(4096, iommu ? { dmaLimit: 2n ** 28n } : {});
    const ring = await sec.importBuffer('ring');

    primary.kill('SIGKILL');
    t.equal(await exited, 'SIGKILL', 'the primary is dead');
    const started = Date.now();
    const refused = await sec.importBuffer('ring').then(
      () => 'answered',
      (e: unknown) => (e instanceof VfioError ? e.code : String(e)),
    );
    t.equal(refused, 'ECONNRESET', 'the next request: ECONNRESET');
    t.ok(Date.now() - started < 5_000, 'at once, not at the timeout');
    t.notOk(sec.connected, 'no longer connected');

    // The kernel objects are files this process holds too: device, IOAS or
    // Type1 container, the dead primary's mapping of the shared pages.
    const f = await drive(dev, own, ring, window, 41, SHARE_OFFSET.orphan);
    t.equal(f.barId, EDU_ID, 'BAR0 still answers');
    t.equal(f.roundTrip, -1, 'DMA through its own mapping still works');
    t.equal(f.fromShared, -1, "and through the dead primary's mapping of the shared buffer");
    t.equal(f.intoShared, -1, 'both ways');
    t.ok(f.msi >= 1, 'interrupts still arrive');
    dev.release();
    sec.close();
    v2.close();
    // Where the poll thread watches the eventfds (the fallback), it closes its
    // stop eventfd once its poll has returned.
    await EventfdPoller.of(koffiSys).idle();
    t.same(
      newFds(fdsAtStart).filter((fd) => !fd.endsWith(' -> /dev/null')),
      [],
      'nothing left open',
    );
  });
}
