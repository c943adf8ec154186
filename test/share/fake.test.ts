// lib/share on the fake kernel: a primary and a secondary as two Vfio
// contexts on one FakeKernel, talking over the fake's AF_UNIX sockets. The
// fake has one process, so the secondary's fds are new numbers for the same
// fake files (what SCM_RIGHTS gives a real receiver) in the same address
// space; test/share/socket.test.ts passes real fds between real processes.
import t, { type Test } from 'tap';
import { mkdtempSync, rmSync, existsSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createVfio, type Vfio } from '../../lib/core/context.js';
import type { Container } from '../../lib/core/container/container.js';
import type { Region } from '../../lib/device/index.js';
import { VfioError } from '../../lib/base/errors.js';
import { AF_UNIX, MSG_DONTWAIT, MSG_NOSIGNAL, SOCK_CLOEXEC, SOCK_SEQPACKET, type Fd } from '../../lib/libc/sys.js';
import { ShareServer, connectPrimary, lendToThread, adoptFromThread, PROTOCOL_VERSION } from '../../lib/share/index.js';
import { VFIO_NOIOMMU_IOMMU, VFIO_TYPE1v2_IOMMU } from '../../lib/uapi/vfio.js';
import { EDU_ID, FakeKernel, edu, type FakeMode } from '../../lib/testing/index.js';
import { until } from '../testing/harness.js';

const EDU = '0000:00:03.0';
const EDU2 = '0000:00:04.0';
const MODES: readonly FakeMode[] = ['cdev', 'group', 'noiommu'];
const DMA_LIMIT = 2n ** 28n;
const EDU_BUF = 0x40000n;
const NO_LEAKS = { fds: 0, mappings: 0, pinned: 0 };

interface World {
  readonly kernel: FakeKernel;
  readonly primary: Vfio;
  readonly secondary: Vfio;
  readonly path: string;
}

function world(t: Test, mode: FakeMode): World {
  const kernel = new FakeKernel({ mode, devices: [edu(), edu({ address: EDU2, group: 6 })] });
  const roots = { sys: kernel.sys, sysfs: kernel.sysfsRoot, dev: kernel.devRoot, proc: kernel.procRoot, env: {} };
  const dir = mkdtempSync(join(tmpdir(), 'vfio-share-'));
  t.teardown(() => {
    kernel.dispose();
    rmSync(dir, { recursive: true, force: true });
  });
  return { kernel, primary: createVfio(roots), secondary: createVfio(roots), path: join(dir, 'primary.sock') };
}

/** The primary's container; in cdev mode the third IOAS of one iommufd, so its id is 3. */
function servedContainer(v: Vfio, mode: FakeMode): { c: Container; extra: Container[] } {
  if (mode !== 'cdev') return { c: v.createContainer({ mode }), extra: [] };
  const first = v.createContainer({ mode });
  const second = v.createContainer({ mode, iommufdOf: first });
  return { c: v.createContainer({ mode, iommufdOf: first }), extra: [first, second] };
}

/** One edu DMA through BAR0, waited for as a driver must: until the device clears the start bit. */
async function eduDma(bar: Region, src: bigint, dst: bigint, count: number, toRam: boolean): Promise<void> {
  bar.write64(0x80, src);
  bar.write64(0x88, dst);
  bar.write64(0x90, BigInt(count));
  bar.write32(0x98, 0x1 | (toRam ? 0x2 : 0));
  await until('the edu DMA', () => (bar.read32(0x98) & 0x1) === 0);
}

async function rejection(p: Promise<unknown>): Promise<VfioError | string> {
  try {
    await p;
  } catch (err) {
    return err instanceof VfioError ? err : `not a VfioError: ${String(err)}`;
  }
  return 'did not reject';
}

for (const mode of MODES) {
  t.test(`${mode}: a secondary drives edu through the primary's container`, async (t) => {
    const { kernel, primary, secondary, path } = world(t, mode);
    const { c, extra } = servedContainer(primary, mode);
    c.assignDevice(EDU);
    const shared = c.allocDma(4096, { shareable: true, dmaLimit: DMA_LIMIT });
    shared.bytes.forEach((_, i, a) => (a[i] = i & 0xff));
    const server = ShareServer.listen(path, { containers: [c] });
    server.shareBuffer('ring', shared);
    t.equal(statSync(path).mode & 0o777, 0o600, 'the socket node is private to its user');

    const sec = await connectPrimary(secondary, path);
    t.same(sec.containers, [{ index: 0, mode, devices: [EDU] }], 'hello lists the served container');
    t.same(sec.buffers, [{ name: 'ring', container: 0, size: 4096 }], 'and the shared buffer');
    t.equal(server.connections, 1);

    const dev = await sec.openDevice('00:03.0');
    t.equal(dev.address, EDU, 'the short address names the same device');
    t.ok(dev.container.borrowed, 'the device sits in a borrowed container');
    const mine = dev.container.kernelState;
    const theirs = c.kernelState;
    if (mine.mode === 'cdev' && theirs.mode === 'cdev') {
      t.equal(theirs.ioasId, 3, 'the primary container is the third IOAS of its iommufd');
      t.equal(mine.ioasId, theirs.ioasId, 'the secondary uses the IOAS id of the primary');
      t.not(mine.iommufd, theirs.iommufd, 'through its own iommufd fd');
      t.same(
        mine.devices.map((d) => d.devId),
        theirs.devices.map((d) => d.devId),
        'the device id in the iommufd travels too',
      );
    } else if (mine.mode !== 'cdev' && theirs.mode !== 'cdev') {
      t.equal(mine.iommuType, mode === 'noiommu' ? VFIO_NOIOMMU_IOMMU : VFIO_TYPE1v2_IOMMU, 'the IOMMU type the primary set');
      t.equal(mine.iommuType, theirs.iommuType);
      t.ok(mine.iommuSet, 'set already: the secondary never sets it');
      t.same(
        mine.groups.map((g) => ({ group: g.group, devices: g.devices })),
        [{ group: 3, devices: [EDU] }],
        'group membership',
      );
      t.not(mine.containerFd, theirs.containerFd, 'through its own container fd');
    } else t.fail('modes differ');
    t.match(
      await rejection(Promise.resolve().then(() => primary.openDevice(EDU))),
      { code: 'EBUSY' },
      'the primary cannot open a lent device',
    );

    using bar = dev.mapBar(0);
    t.equal(bar.read32(0), EDU_ID, 'BAR0 mapped in the secondary');
    dev.config.setBusMaster(true);

    if (mode === 'noiommu') {
      t.match(await rejection(sec.reserveIova(dev.container, 1 << 20)), { code: 'ENOTSUP' }, 'no IOVA windows without an IOMMU');
    } else {
      t.match(await rejection(Promise.resolve().then(() => dev.container.allocDma(4096))), { code: 'ENOSPC' }, 'no IOVA before a window');
      const w = await sec.reserveIova(dev.container, 1 << 20, { dmaLimit: DMA_LIMIT });
      t.equal(w.last - w.start + 1n, 1n << 20n, 'a 1 MiB window');
      t.ok(w.last < DMA_LIMIT, 'below the DMA limit');
      t.ok(w.start >= shared.iova + 4096n || w.last < shared.iova, 'not over the primary mapping');
    }
    const own = dev.container.allocDma(4096, { dmaLimit: DMA_LIMIT });
    const ownIova = own.iova;
    if (mode !== 'noiommu') {
      const [win] = dev.container.iovaWindows;
      t.ok(win !== undefined && own.iova >= win.start && own.iova + 4095n <= win.last, 'the secondary allocates inside its window');
      t.throws(() => c.allocDma(4096, { iova: own.iova }), { code: 'EEXIST' }, 'the primary never hands out the window');
    }
    const imported = await sec.importBuffer('ring');
    t.equal(imported.iova, shared.iova, 'the imported buffer has the primary IOVA');
    t.same([...imported.bytes.subarray(0, 8)], [0, 1, 2, 3, 4, 5, 6, 7], 'and the same pages');
    t.throws(() => imported.unmap(), { code: 'ENOTSUP' }, 'its mapping is the primary');

    // RAM (the secondary's own buffer) -> edu -> RAM (the primary's shared buffer).
    own.bytes.fill(0xc3, 0, 64);
    await eduDma(bar, own.iova, EDU_BUF, 64, false);
    await eduDma(bar, EDU_BUF, imported.iovaAt(1024), 64, true);
    t.same([...shared.bytes.subarray(1024, 1088)], new Array(64).fill(0xc3), 'the primary sees what the secondary had the device write');

    // Interrupts: the secondary's own eventfds.
    const msi = dev.irqs.enable('msi', 1);
    const got = msi.vector(0).wait();
    t.ok(kernel.raiseIrq(EDU, 'msi'), 'the device raises MSI');
    t.equal(await got, 1, 'the secondary receives it');

    // Release: the primary gets the device back, interrupts off. (It keeps
    // it open: in group mode releasing its last device would take the IOMMU,
    // and the secondary's mappings with it, down.)
    dev.release();
    let back: ReturnType<Vfio['openDevice']> | null = null;
    await waitFor(() => {
      try {
        back = primary.openDevice(EDU);
        return true;
      } catch {
        return false;
      }
    });
    t.equal(kernel.device(EDU).irqType, null, 'no interrupt left wired');

    sec.close();
    await waitFor(() => server.connections === 0);
    if (mode !== 'noiommu') {
      const again = c.allocDma(4096, { iova: ownIova });
      t.equal(again.iova, ownIova, 'the window came back to the primary when the secondary left');
      again.free();
    }
    await server.close();
    t.notOk(existsSync(path), 'the socket node is removed');
    (back as ReturnType<Vfio['openDevice']> | null)?.release();
    for (const x of [c, ...extra]) x.close();
    primary.close();
    secondary.close();
    t.same(kernel.leaks(), NO_LEAKS);
  });
}

async function waitFor(cond: () => boolean, ms = 2000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error('timed out');
    await new Promise((r) => setTimeout(r, 1));
  }
}

t.test('errors: unknown device, lent twice, no such buffer, no such container', async (t) => {
  const { kernel, primary, secondary, path } = world(t, 'cdev');
  const c = primary.createContainer({ mode: 'cdev' });
  c.assignDevice(EDU);
  const other = primary.createContainer({ mode: 'cdev' });
  other.assignDevice(EDU2);
  const server = ShareServer.listen(path, { containers: [c] });
  const third = createVfio({ sys: kernel.sys, sysfs: kernel.sysfsRoot, dev: kernel.devRoot, proc: kernel.procRoot, env: {} });
  const a = await connectPrimary(secondary, path);
  const b = await connectPrimary(third, path);
  t.match(await rejection(a.openDevice(EDU2)), { code: 'ENODEV', device: EDU2 }, 'a device of a container not served');
  t.match(await rejection(a.openDevice('0000:00:07.0')), { code: 'ENODEV' }, 'a device not assigned at all');
  t.match(await rejection(Promise.resolve().then(() => a.openDevice('../x'))), { code: 'EINVAL' }, 'not a PCI address');
  const dev = await a.openDevice(EDU);
  t.match(await rejection(b.openDevice(EDU)), { code: 'EBUSY', device: EDU }, 'lent to another secondary');
  t.match(await rejection(a.importBuffer('nope')), { code: 'ENOENT' }, 'no such buffer');
  t.match(await rejection(a.attachContainer(4)), { code: 'EINVAL' }, 'no such container');
  t.equal(await a.attachContainer(0), dev.container, 'attach returns the container already borrowed');
  t.ok(a.connected && b.connected, 'refusals keep the connections');
  t.throws(() => dev.container.assignDevice(EDU2), { code: 'ENOTSUP' }, 'a borrowed container assigns nothing');
  a.close();
  b.close();
  await server.close();
  primary.close();
  secondary.close();
  third.close();
  t.same(kernel.leaks(), NO_LEAKS);
});

t.test('the primary goes away: typed errors, nothing hangs, what was received keeps working', async (t) => {
  const { kernel, primary, secondary, path } = world(t, 'group');
  const c = primary.createContainer({ mode: 'group' });
  c.assignDevice(EDU);
  const server = ShareServer.listen(path, { containers: [c] });
  const sec = await connectPrimary(secondary, path);
  const dev = await sec.openDevice(EDU);
  await server.close();
  const err = await rejection(sec.importBuffer('x'));
  t.match(err, { code: 'ECONNRESET' }, 'the next request: ECONNRESET');
  t.match(String(err), /closed the connection/);
  t.notOk(sec.connected);
  t.match(await rejection(sec.openDevice(EDU2)), { code: 'ECONNRESET' }, 'and every one after');
  using bar = dev.mapBar(0);
  t.equal(bar.read32(0), EDU_ID, 'the device is still usable: its fd is this process too');
  sec.close();
  c.close();
  primary.close();
  secondary.close();
  t.same(kernel.leaks(), NO_LEAKS);
});

t.test('no primary: ENOENT, ECONNREFUSED', async (t) => {
  const { kernel, secondary, path } = world(t, 'cdev');
  t.match(await rejection(connectPrimary(secondary, path)), { code: 'ENOENT' }, 'no socket node');
  writeFileSync(path, '');
  t.match(await rejection(connectPrimary(secondary, path)), { code: 'ECONNREFUSED' }, 'a node nobody listens on');
  t.same(kernel.leaks(), NO_LEAKS);
});

t.test('a primary that never answers: ETIMEDOUT', async (t) => {
  const { kernel, secondary, path } = world(t, 'cdev');
  const sys = kernel.sys;
  const l = sys.socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
  sys.bind(l, path);
  sys.listen(l, 1);
  t.match(await rejection(connectPrimary(secondary, path, { timeoutMs: 50 })), { code: 'ETIMEDOUT' });
  sys.close(l);
  t.same(kernel.leaks(), NO_LEAKS);
});

t.test('protocol versions: each side refuses the other version with EPROTONOSUPPORT', async (t) => {
  const { kernel, primary, secondary, path } = world(t, 'cdev');
  const sys = kernel.sys;
  const c = primary.createContainer({ mode: 'cdev' });
  const server = ShareServer.listen(path, { containers: [c] });

  // A secondary of version 2: the primary refuses, in its own version, and hangs up.
  const s = sys.socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
  sys.connect(s, path);
  sys.sendmsg(s, Buffer.from(JSON.stringify({ protocol: 'vfio-share', version: 2, id: 1, op: 'hello', pid: 1 })), [], MSG_NOSIGNAL);
  const reply = await receiveJson(kernel, s);
  t.match(reply, { protocol: 'vfio-share', version: PROTOCOL_VERSION, id: 1, ok: false, error: { code: 'EPROTONOSUPPORT' } });
  await waitFor(() => server.connections === 0);
  sys.close(s);

  // Garbage: the connection ends, the server goes on.
  const g = sys.socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
  sys.connect(g, path);
  sys.sendmsg(g, Buffer.from('not json'), [], MSG_NOSIGNAL);
  await waitFor(() => server.connections === 0);
  sys.close(g);
  const ok = await connectPrimary(secondary, path);
  t.ok(ok.connected, 'the server still serves');
  ok.close();
  await server.close();

  // A primary of version 2: the secondary refuses its answer.
  const l = sys.socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
  sys.bind(l, path);
  sys.listen(l, 1);
  const pending = rejection(connectPrimary(secondary, path, { timeoutMs: 2000 }));
  await waitFor(() => (sys.poll([{ fd: l, events: 1 }], 0)[0] ?? 0) !== 0);
  const conn = sys.accept(l, SOCK_CLOEXEC);
  const hello = await receiveJson(kernel, conn);
  t.match(hello, { op: 'hello', version: PROTOCOL_VERSION, pid: process.pid }, 'hello carries the version');
  sys.sendmsg(
    conn,
    Buffer.from(JSON.stringify({ protocol: 'vfio-share', version: 2, id: hello['id'], ok: true, result: {} })),
    [],
    MSG_NOSIGNAL,
  );
  t.match(await pending, { code: 'EPROTONOSUPPORT' });
  sys.close(conn);
  sys.close(l);
  c.close();
  primary.close();
  secondary.close();
  t.same(kernel.leaks(), NO_LEAKS);
});

t.test('a malformed grant: EPROTO, and its fds are closed', async (t) => {
  const { kernel, secondary, path } = world(t, 'cdev');
  const sys = kernel.sys;
  const l = sys.socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
  sys.bind(l, path);
  sys.listen(l, 1);
  const connecting = connectPrimary(secondary, path, { timeoutMs: 2000 });
  await waitFor(() => (sys.poll([{ fd: l, events: 1 }], 0)[0] ?? 0) !== 0);
  const conn = sys.accept(l, SOCK_CLOEXEC);
  const hello = await receiveJson(kernel, conn);
  const result = { pid: 7, containers: [{ index: 0, mode: 'cdev', devices: [EDU] }], buffers: [] };
  sys.sendmsg(
    conn,
    Buffer.from(JSON.stringify({ protocol: 'vfio-share', version: 1, id: hello['id'], ok: true, result })),
    [],
    MSG_NOSIGNAL,
  );
  const sec = await connecting;
  t.equal(sec.primaryPid, 7);
  const attaching = rejection(sec.attachContainer(0));
  const req = await receiveJson(kernel, conn);
  t.match(req, { op: 'attach-container', container: 0 });
  const decoy = sys.eventfd(0, 0);
  const before = kernel.leaks().fds;
  // An IOAS id in a string, and an fd slot the message does not carry.
  const bad = { container: { mode: 'cdev', iommufd: 3, ioasId: '2' } };
  sys.sendmsg(
    conn,
    Buffer.from(JSON.stringify({ protocol: 'vfio-share', version: 1, id: req['id'], ok: true, result: bad })),
    [decoy],
    MSG_NOSIGNAL,
  );
  t.match(await attaching, { code: 'EPROTO' });
  t.equal(kernel.leaks().fds, before - 1, 'the fd that came with it was closed (and the socket: the connection ended)');
  t.notOk(sec.connected);
  sec.close();
  sys.close(decoy);
  sys.close(conn);
  sys.close(l);
  secondary.close();
  t.same(kernel.leaks(), NO_LEAKS);
});

async function receiveJson(kernel: FakeKernel, fd: Fd): Promise<Record<string, unknown>> {
  const buf = Buffer.alloc(65536);
  await kernel.sys.pollAsync([{ fd, events: 1 }], 2000);
  const got = kernel.sys.recvmsg(fd, buf, 8, MSG_DONTWAIT);
  return JSON.parse(buf.toString('utf8', 0, got.bytes)) as Record<string, unknown>;
}

t.test('worker-thread tickets (adopted here, on the fake): devices, buffers, windows', async (t) => {
  for (const mode of MODES) {
    const { kernel, primary, secondary } = world(t, mode);
    const c = primary.createContainer({ mode });
    c.assignDevice(EDU);
    // One page: a no-IOMMU buffer must be physically contiguous.
    const shared = c.allocDma(4096, { shareable: true, dmaLimit: DMA_LIMIT });
    shared.bytes[5] = 42;
    const lease = lendToThread(c, {
      devices: [EDU],
      buffers: { frames: shared },
      ...(mode === 'noiommu' ? {} : { iova: { size: 1 << 16, dmaLimit: DMA_LIMIT } }),
    });
    const ticket = structuredClone(lease.ticket);
    t.equal(ticket.fds.length, lease.ticket.fds.length, `${mode}: the ticket survives structured cloning`);
    t.throws(() => primary.openDevice(EDU), { code: 'EBUSY' }, `${mode}: lent`);
    const borrow = adoptFromThread(secondary, ticket);
    const dev = borrow.device(EDU);
    using bar = dev.mapBar(0);
    t.equal(bar.read32(0), EDU_ID, `${mode}: the thread maps BAR0 itself`);
    t.equal(borrow.buffer('frames').bytes[5], 42, `${mode}: and the shared buffer`);
    const own = borrow.container.allocDma(4096, { dmaLimit: DMA_LIMIT });
    dev.config.setBusMaster(true);
    own.bytes.fill(9, 0, 8);
    await eduDma(bar, own.iova, EDU_BUF, 8, false);
    await eduDma(bar, EDU_BUF, shared.iova, 8, true);
    t.same([...shared.bytes.subarray(0, 8)], new Array(8).fill(9), `${mode}: DMA from the thread's buffer into the lender's`);
    borrow.close();
    lease.end();
    primary.openDevice(EDU).release();
    primary.close();
    secondary.close();
    t.same(kernel.leaks(), NO_LEAKS, `${mode}: no leak`);
  }
});

t.test('a ticket that never reached a thread is discarded without leaks; bad tickets are refused', async (t) => {
  const { kernel, primary, secondary } = world(t, 'cdev');
  const c = primary.createContainer({ mode: 'cdev' });
  c.assignDevice(EDU);
  const lease = lendToThread(c, { devices: [EDU], iova: { size: 4096 } });
  lease.discard();
  primary.openDevice(EDU).release();
  t.throws(() => adoptFromThread(secondary, { protocol: 'vfio-share', version: 9, fds: [] }), { code: 'EPROTONOSUPPORT' });
  t.throws(() => adoptFromThread(secondary, { protocol: 'nope', version: 1, fds: [] }), { code: 'EPROTO' });
  t.throws(() => lendToThread(c, { devices: [EDU2] }), { code: 'ENODEV' }, 'a device not in the container');
  t.throws(() => lendToThread(c, { buffers: { x: c.allocDma(4096) } }), { code: 'EINVAL' }, 'a buffer that is not shareable');
  primary.close();
  secondary.close();
  t.same(kernel.leaks(), NO_LEAKS);
});

t.test('listen: a path in use, a bad container list', async (t) => {
  const { kernel, primary, path } = world(t, 'cdev');
  const c = primary.createContainer({ mode: 'cdev' });
  writeFileSync(path, '');
  t.throws(() => ShareServer.listen(path, { containers: [c] }), { code: 'EADDRINUSE' });
  t.throws(() => ShareServer.listen(path, { containers: [] }), { code: 'EINVAL' });
  t.throws(() => ShareServer.listen(path, { containers: [c, c] }), { code: 'EINVAL' });
  rmSync(path);
  const group = primary.createContainer({ mode: 'group' });
  const server = ShareServer.listen(path, { containers: [c, group] });
  const buf = c.allocDma(4096);
  t.throws(() => server.shareBuffer('x', buf), { code: 'EINVAL' }, 'not shareable');
  const ok = c.allocDma(4096, { shareable: true });
  server.shareBuffer('x', ok);
  t.throws(() => server.shareBuffer('x', ok), { code: 'EEXIST' });
  await server.close();
  primary.close();
  t.same(kernel.leaks(), NO_LEAKS);
});
