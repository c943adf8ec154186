// Interrupts on the fake kernel: IRQ info, enabling with eventfds, delivery
// through callbacks and async iterators (with abort), masking, REQ, and that
// disabling or closing leaves no eventfd behind.
import t from 'tap';
import { edu, pciDevice } from '../../lib/testing/index.js';
import { rig } from './fixture.js';
import { EventfdPoller } from '../../lib/libc/eventfd-poller.js';
import { VFIO_DEVICE_SET_IRQS } from '../../lib/uapi/vfio.js';

const ADDR = '0000:00:03.0';

function msixDevice(vectors: number, dynamicMsix = true) {
  return pciDevice({
    dynamicMsix,
    address: '0000:00:04.0',
    vendor: 0x8086,
    device: 0x10fb,
    class: 0x020000,
    pcie: true,
    bars: [{ index: 0, size: 1 << 14 }],
    irqs: { msi: 0, msix: vectors, msixTableOffset: 0x2000, msixPbaOffset: 0x3000 },
  });
}

const tick = (ms = 5): Promise<void> => new Promise((r) => setTimeout(r, ms));

t.test('IRQ info per index', async (t) => {
  const r = rig();
  t.teardown(() => r.dispose());
  const { io } = r.open();
  t.match(io.irqs.info('intx'), { index: 0, count: 1, eventfd: true, maskable: true, automasked: true, noresize: false });
  t.match(io.irqs.info('msi'), { index: 1, count: 1, maskable: false, noresize: true });
  t.match(io.irqs.info('msix'), { index: 2, count: 0 });
  t.match(io.irqs.info('req'), { index: 4, count: 1 });
  t.throws(() => io.irqs.info('err'), { code: 'ENOTSUP', message: /not PCI Express/ });
  t.throws(() => io.irqs.info('nmi' as 'msi'), { code: 'EINVAL' });
  const pcie = rig({ devices: [msixDevice(8)] });
  t.teardown(() => pcie.dispose());
  const x = pcie.open('0000:00:04.0');
  t.match(x.io.irqs.info('err'), { index: 3, count: 1 });
  t.match(x.io.irqs.info('msix'), { count: 8 });
});

t.test('enable: bad ranges and kinds are refused before any ioctl', async (t) => {
  const r = rig({ devices: [msixDevice(4)], log: true });
  t.teardown(() => r.dispose());
  const { io } = r.open('0000:00:04.0');
  io.irqs.info('msix');
  io.irqs.info('intx');
  const setIrqsCalls = (): number => r.kernel.log.filter((c) => c.request === VFIO_DEVICE_SET_IRQS).length;
  const before = r.kernel.leaks();
  t.throws(() => io.irqs.enable('msix', 5), { code: 'EINVAL', message: /MSI-X has 4 vector/ });
  t.throws(() => io.irqs.enable('msix', { start: 2, count: 3 }), { code: 'EINVAL' });
  t.throws(() => io.irqs.enable('msix', { start: -1, count: 1 }), { code: 'EINVAL' });
  t.throws(() => io.irqs.enable('msix', 0), { code: 'EINVAL' });
  t.throws(() => io.irqs.enable('intx', 2), { code: 'EINVAL' });
  t.throws(() => io.irqs.enable('msi'), { code: 'ENOTSUP', message: /no MSI vectors/ });
  t.equal(setIrqsCalls(), 0, 'no SET_IRQS was issued');
  t.same(r.kernel.leaks(), before, 'no eventfd was made');
  const set = io.irqs.enable('msix', { start: 1, count: 3 });
  t.equal(setIrqsCalls(), 1);
  t.equal(set.count, 3);
  t.equal(set.vector(3).vector, 3);
  t.throws(() => set.vector(0), { code: 'EINVAL', message: /enabled: 1\.\.3/ });
  t.throws(() => io.irqs.enable('msix'), { code: 'EBUSY', message: /already enabled \(1\.\.3\): disable it first, or grow it/ });
  t.throws(() => io.irqs.enable('intx'), { code: 'EBUSY', message: /MSI-X is enabled/ });
  t.equal(r.kernel.leaks().fds, before.fds + 3, 'one eventfd per vector');
  set.disable();
  t.equal(r.kernel.leaks().fds, before.fds);
  t.equal(r.kernel.device('0000:00:04.0').irqType, null, 'the kernel has MSI-X disabled');
});

t.test('MSI delivery through the async iterator, counts summed, abort ends it', async (t) => {
  const r = rig();
  t.teardown(() => r.dispose());
  const { io } = r.open();
  io.config.setBusMaster(true);
  const msi = io.irqs.enable('msi', 1);
  t.equal(r.kernel.device(ADDR).irqType, 1);
  const ac = new AbortController();
  const seen: number[] = [];
  const loop = (async () => {
    for await (const count of msi.vector(0).events({ signal: ac.signal })) {
      seen.push(count);
      if (seen.length === 1) {
        // Two interrupts while the body runs: one summed count next time.
        // (A tick between them: the fake's pollAsync double-releases its file
        // references when two signals land in one microtask; see the report.)
        r.kernel.raiseIrq(ADDR, 'msi', 0);
        await tick(5);
        r.kernel.raiseIrq(ADDR, 'msi', 0);
        await tick(20);
      }
      if (seen.length === 2) ac.abort();
    }
  })();
  await tick();
  t.ok(r.kernel.raiseIrq(ADDR, 'msi', 0), 'the device signalled the eventfd');
  await t.rejects(loop, { name: 'AbortError' });
  t.same(seen, [1, 2]);
  await EventfdPoller.of(r.kernel.sys).idle();
  t.equal(r.kernel.pendingPolls, 0, 'nothing polls once nobody listens');
});

t.test('an already-aborted signal rejects at once; wait() honours abort', async (t) => {
  const r = rig();
  t.teardown(() => r.dispose());
  const { io } = r.open();
  const msi = io.irqs.enable('msi');
  const it = msi.vector(0).events({ signal: AbortSignal.abort() });
  await t.rejects(it.next(), { name: 'AbortError' });
  t.same(await it.next(), { value: undefined, done: true });
  const ac = new AbortController();
  const w = msi.vector(0).wait({ signal: ac.signal });
  ac.abort(new Error('stop'));
  await t.rejects(w, { message: 'stop' });
});

t.test('loopback trigger and callbacks', async (t) => {
  const r = rig();
  t.teardown(() => r.dispose());
  const { io } = r.open();
  const msi = io.irqs.enable('msi');
  const got: number[] = [];
  const off = msi.vector(0).on((n) => got.push(n));
  msi.vector(0).trigger();
  await tick(20);
  t.same(got, [1]);
  msi.trigger();
  await tick(20);
  t.same(got, [1, 1]);
  off();
  off();
  await EventfdPoller.of(r.kernel.sys).idle();
  // Counts that arrive while nobody listens are kept for the next listener.
  msi.trigger();
  t.equal(await msi.vector(0).wait(), 1);
});

t.test('INTx: automasked, unmask delivers what is pending; MSI cannot be masked', async (t) => {
  const r = rig();
  t.teardown(() => r.dispose());
  const { io } = r.open();
  const intx = io.irqs.enable('intx');
  const v = intx.vector(0);
  const first = v.wait();
  await tick();
  t.ok(r.kernel.raiseIrq(ADDR, 'intx'));
  t.equal(await first, 1);
  t.notOk(r.kernel.raiseIrq(ADDR, 'intx'), 'masked by the kernel after the first');
  const second = v.wait();
  intx.unmask();
  t.equal(await second, 1, 'the pending edge arrives on unmask');
  intx.unmask();
  intx.mask();
  t.notOk(r.kernel.raiseIrq(ADDR, 'intx'), 'masked by hand');
  intx.disable();
  const msi = io.irqs.enable('msi');
  t.throws(() => msi.mask(), { code: 'ENOTSUP' });
  t.throws(() => msi.unmask(), { code: 'ENOTSUP' });
});

t.test('many MSI-X vectors share one poll', async (t) => {
  const r = rig({ devices: [msixDevice(32)] });
  t.teardown(() => r.dispose());
  const { io } = r.open('0000:00:04.0');
  io.config.setBusMaster(true);
  const set = io.irqs.enable('msix', 32);
  const counts = new Array<number>(32).fill(0);
  const offs = set.vectors.map((v) => v.on((n) => (counts[v.vector] = (counts[v.vector] ?? 0) + n)));
  await tick();
  t.equal(r.kernel.pendingPolls, 1, 'one poll for 32 vectors');
  const bar = io.mapBar(0);
  for (let i = 0; i < 32; i++) bar.write32(0x2000 + 16 * i + 12, 0); // unmask every table entry
  io.config.write16(io.config.msix()!.capOffset + 2, 0x8000 | 31); // MSI-X enable, function unmasked
  for (const v of [0, 7, 7, 31]) {
    t.ok(r.kernel.raiseIrq('0000:00:04.0', 'msix', v), `vector ${v} raised`);
    await tick(2);
  }
  await tick(20);
  t.equal(counts[0], 1);
  t.equal(counts[7], 2);
  t.equal(counts[31], 1);
  t.equal(
    counts.reduce((a, b) => a + b),
    4,
  );
  t.equal(r.kernel.pendingPolls, 1);
  offs.forEach((off) => off());
  await EventfdPoller.of(r.kernel.sys).idle();
  t.equal(r.kernel.pendingPolls, 0);
});

t.test('REQ surfaces as an event; the last listener disables it', async (t) => {
  const r = rig();
  t.teardown(() => r.dispose());
  const { io } = r.open();
  let asked = 0;
  const off = io.irqs.onRequest(() => asked++);
  const off2 = io.irqs.onRequest(() => asked++);
  t.ok(io.irqs.enabled('req'));
  t.ok(r.kernel.raiseIrq(ADDR, 'req'));
  await tick(20);
  t.equal(asked, 2);
  off();
  t.ok(io.irqs.enabled('req'), 'still one listener');
  off2();
  t.equal(io.irqs.enabled('req'), null);
  t.notOk(r.kernel.raiseIrq(ADDR, 'req'), 'the kernel has no REQ eventfd any more');
});

t.test('disable and close end iterators and close every eventfd', async (t) => {
  const r = rig();
  t.teardown(() => r.dispose());
  const before = r.kernel.leaks();
  const dev = r.open();
  const msi = dev.io.irqs.enable('msi');
  const req = dev.io.irqs.enable('req');
  const it = msi.vector(0).events();
  const pending = it.next();
  const reqWait = req.vector(0).wait();
  await tick();
  const v0 = msi.vector(0);
  msi.disable();
  t.same(await pending, { value: undefined, done: true }, 'iteration ends');
  t.throws(() => msi.vector(0), { code: 'ECLOSED' });
  t.throws(() => v0.on(() => {}), { code: 'ECLOSED' });
  t.throws(() => v0.events(), { code: 'ECLOSED' });
  t.throws(() => msi.trigger(), { code: 'ECLOSED' });
  msi.disable();
  dev.close();
  await t.rejects(reqWait, { code: 'ECLOSED' });
  t.throws(() => dev.io.irqs, { code: 'ECLOSED' });
  await EventfdPoller.of(r.kernel.sys).idle();
  t.same(r.kernel.leaks(), { ...before, fds: before.fds + (r.mode === 'cdev' ? 1 : 0) }, "only the rig's iommufd is still open");
});

t.test('a refused SET_IRQS closes the eventfds it was given', async (t) => {
  const r = rig({ devices: [msixDevice(8)] });
  t.teardown(() => r.dispose());
  const { io } = r.open('0000:00:04.0');
  io.irqs.info('msix');
  const before = r.kernel.leaks();
  const rule = r.kernel.failWhen({ request: VFIO_DEVICE_SET_IRQS }, 'ENOSPC');
  t.throws(() => io.irqs.enable('msix', 8), { code: 'ENOSPC', request: 'VFIO_DEVICE_SET_IRQS', device: '0000:00:04.0' });
  rule.remove();
  t.same(r.kernel.leaks(), before);
  t.equal(io.irqs.enabled('msix'), null);
  // A failing eventfd() in the middle: the earlier ones are closed too.
  let made = 0;
  const rule2 = r.kernel.failWhen((c) => c.method === 'eventfd' && ++made === 5, 'EMFILE');
  t.throws(() => io.irqs.enable('msix', 8), { code: 'EMFILE' });
  rule2.remove();
  t.same(r.kernel.leaks(), before);
  const ok = io.irqs.enable('msix', 8);
  t.equal(ok.count, 8);
});

t.test('edu end to end: the factorial interrupt arrives as MSI', async (t) => {
  const r = rig({ devices: [edu()] });
  t.teardown(() => r.dispose());
  const { io } = r.open();
  io.config.setBusMaster(true);
  const bar = io.mapBar(0);
  const msi = io.irqs.enable('msi');
  const done = msi.vector(0).wait({ signal: AbortSignal.timeout(2000) });
  bar.write32(0x20, 0x80); // raise an interrupt when the factorial is done
  bar.write32(0x08, 5);
  io.config.read16(0); // any syscall lets the fake device run
  t.equal(await done, 1);
  t.equal(bar.read32(0x08), 120);
  t.equal(bar.read32(0x24), 1, 'interrupt status: factorial');
  bar.write32(0x64, 1);
});

t.test('a failing poll ends the waiting iterators with its error, and leaks nothing', async (t) => {
  const r = rig();
  t.teardown(() => r.dispose());
  const { io } = r.open();
  const msi = io.irqs.enable('msi');
  const before = r.kernel.leaks();
  const rule = r.kernel.failWhen({ syscall: 'pollAsync' }, 'ENOMEM', { times: 1 });
  await t.rejects(msi.vector(0).wait(), { code: 'ENOMEM', syscall: 'poll' });
  t.equal(rule.hits, 1);
  await EventfdPoller.of(r.kernel.sys).idle();
  t.same(r.kernel.leaks(), before, 'the stop eventfd was closed');
  // The vector still works afterwards.
  const next = msi.vector(0).wait();
  msi.trigger();
  t.equal(await next, 1);
});

t.test('next() takes an interrupt already in the eventfd at once, and every listener gets it exactly once', async (t) => {
  const r = rig();
  t.teardown(() => r.dispose());
  const { io } = r.open();
  io.config.setBusMaster(true);
  const msi = io.irqs.enable('msi', 1);
  const v = msi.vector(0);
  const seen: number[] = [];
  const off = v.on((n) => seen.push(n));
  const it = v.events();
  t.ok(r.kernel.raiseIrq(ADDR, 'msi', 0));
  t.ok(r.kernel.raiseIrq(ADDR, 'msi', 0));
  let got: IteratorResult<number> | undefined;
  void it.next().then((x) => (got = x));
  // Microtasks only: no timer, no poll has run yet.
  await Promise.resolve();
  await Promise.resolve();
  t.same(got, { value: 2, done: false }, 'resolved before the event loop turned');
  t.same(seen, [2], 'the callback listener got the same count');
  await tick(20);
  t.same(seen, [2], 'and the watch found nothing more (no count delivered twice)');
  // Nothing pending: next() waits for the watch as before.
  const next = it.next();
  await tick(5);
  t.ok(r.kernel.raiseIrq(ADDR, 'msi', 0));
  t.same(await next, { value: 1, done: false });
  t.same(seen, [2, 1]);
  off();
  await it.return?.();
  msi.disable();
  await EventfdPoller.of(r.kernel.sys).idle();
});

t.test("a failing read in next() ends the iteration with that error and the vector's listeners with it", async (t) => {
  const r = rig();
  t.teardown(() => r.dispose());
  const { io } = r.open();
  const msi = io.irqs.enable('msi', 1);
  const v = msi.vector(0);
  const ended: unknown[] = [];
  const other = v.events();
  const otherNext = other.next().catch((e: unknown) => ended.push(e));
  const rule = r.kernel.failWhen({ syscall: 'read', kind: 'eventfd' }, 'EIO', { times: 1 });
  const it = v.events();
  await t.rejects(it.next(), { code: 'EIO', syscall: 'read' });
  t.equal(rule.hits, 1);
  await otherNext;
  t.match(ended, [{ code: 'EIO' }], 'the other iterator ended with it too');
  t.same(await it.next(), { value: undefined, done: true }, 'then the iteration is over');
  await EventfdPoller.of(r.kernel.sys).idle();
  t.equal(r.kernel.pendingPolls, 0, 'nothing polls any more');
  // The vector itself still works.
  const again = v.wait();
  msi.trigger();
  t.equal(await again, 1);
  msi.disable();
});

t.test('an enabled MSI-X set grows without losing an interrupt or a waiter (no NORESIZE)', async (t) => {
  const r = rig({ devices: [msixDevice(8)] });
  t.teardown(() => r.dispose());
  const { io } = r.open('0000:00:04.0');
  io.config.setBusMaster(true);
  t.equal(io.irqs.info('msix').noresize, false, 'dynamic MSI-X: the kernel allows growth');
  const set = io.irqs.enable('msix', 2);
  const bar = io.mapBar(0);
  const unmask = (n: number) => {
    for (let i = 0; i < n; i++) bar.write32(0x2000 + 16 * i + 12, 0);
    io.config.write16(io.config.msix()!.capOffset + 2, 0x8000 | 7);
  };
  unmask(2);
  const waiter = set.vector(1).wait({ signal: AbortSignal.timeout(5000) });
  t.ok(r.kernel.raiseIrq('0000:00:04.0', 'msix', 0), 'vector 0 fires before the growth');
  const v0 = set.vector(0);
  set.grow(4);
  t.equal(set.count, 4);
  t.same(
    set.vectors.map((v) => v.vector),
    [0, 1, 2, 3],
  );
  t.equal(set.vector(0), v0, 'the vectors already there are the same objects (same eventfds)');
  t.equal(io.irqs.enable('msix', 6), set, 'enable() of more vectors from the same start grows the same set');
  t.equal(set.count, 6);
  unmask(6);
  t.ok(r.kernel.raiseIrq('0000:00:04.0', 'msix', 1), 'vector 1 fires after the growth');
  t.equal(await waiter, 1, 'the waiter from before the growth got it');
  t.equal(v0.take(), 1, "vector 0's interrupt from before the growth was kept");
  t.ok(r.kernel.raiseIrq('0000:00:04.0', 'msix', 5), 'a new vector fires');
  t.equal(await set.vector(5).wait({ signal: AbortSignal.timeout(5000) }), 1);
  t.throws(() => set.grow(9), { code: 'EINVAL', message: /MSI-X has 8 vector/ });
  set.grow(3);
  t.equal(set.count, 6, 'a smaller count is a no-op');
  const before = r.kernel.leaks().fds;
  r.kernel.failWhen({ syscall: 'ioctl', request: VFIO_DEVICE_SET_IRQS }, 'ENOSPC', { times: 1 });
  t.throws(() => set.grow(8), { code: 'ENOSPC' });
  t.equal(set.count, 6, 'a failed growth leaves the set as it was');
  t.equal(r.kernel.leaks().fds, before, 'and closes the new eventfds');
  set.disable();
});

t.test('NORESIZE: an enabled MSI-X set cannot grow, and says what to do', async (t) => {
  const r = rig({ devices: [msixDevice(8, false)] });
  t.teardown(() => r.dispose());
  const { io } = r.open('0000:00:04.0');
  t.equal(io.irqs.info('msix').noresize, true);
  const set = io.irqs.enable('msix', 2);
  t.throws(() => set.grow(4), { code: 'ENOTSUP', message: /NORESIZE.*enable every vector needed at first, or disable and enable again/ });
  t.throws(() => io.irqs.enable('msix', 4), { code: 'EBUSY', message: /already enabled \(0\.\.1\): disable it first/ });
  t.equal(set.count, 2);
  set.disable();
  t.throws(() => set.grow(4), { code: 'ECLOSED' });
});

t.test('take(): the pending count without waiting', async (t) => {
  const r = rig();
  t.teardown(() => r.dispose());
  const { io } = r.open();
  io.config.setBusMaster(true);
  const v = io.irqs.enable('msi').vector(0);
  t.equal(v.take(), 0, 'nothing pending: 0, at once');
  r.kernel.raiseIrq(ADDR, 'msi', 0);
  r.kernel.raiseIrq(ADDR, 'msi', 0);
  t.equal(v.take(), 2, 'two interrupts taken');
  t.equal(v.take(), 0, 'and cleared');
  r.kernel.raiseIrq(ADDR, 'msi', 0);
  const it = v.events();
  t.equal(v.take(), 1, 'taken before an iterator asked');
  const next = it.next();
  r.kernel.raiseIrq(ADDR, 'msi', 0);
  t.same(await next, { value: 1, done: false }, 'the iterator gets only the later one');
  await it.return?.();
  io.irqs.enabled('msi')!.disable();
  t.throws(() => v.take(), { code: 'ECLOSED' });
});

t.test('hostile kinds and options are EINVAL, never a TypeError or a silent default', async (t) => {
  const r = rig({ devices: [msixDevice(4)] });
  t.teardown(() => r.dispose());
  const { io } = r.open('0000:00:04.0');
  const before = r.kernel.leaks();
  for (const kind of ['toString', '__proto__', 'constructor', 'hasOwnProperty', 7, null, undefined]) {
    t.throws(
      () => io.irqs.info(kind as 'msi'),
      { name: 'VfioError', code: 'EINVAL', message: /interrupt kind must be one of/ },
      `info(${String(kind)})`,
    );
    t.throws(() => io.irqs.enable(kind as 'msi'), { name: 'VfioError', code: 'EINVAL' }, `enable(${String(kind)})`);
  }
  t.throws(() => io.irqs.enable('msix', '2' as unknown as number), {
    code: 'EINVAL',
    message: /options must be an object or undefined, got the string "2"/,
  });
  t.throws(() => io.irqs.enable('msix', null as unknown as number), { code: 'EINVAL' });
  t.throws(() => io.irqs.enable('msix', { count: '2' as unknown as number }), { code: 'EINVAL', message: /count must be/ });
  t.throws(() => io.irqs.enable('msix', { start: 1.5 }), { code: 'EINVAL', message: /start must be/ });
  t.throws(() => io.irqs.enable('msix', 2n as unknown as number), { code: 'EINVAL' });
  t.equal(io.irqs.enabled('msix'), null, 'nothing was enabled');
  t.same(r.kernel.leaks(), before);
});

t.test('enabled() after close is ECLOSED, not a stale answer', async (t) => {
  const r = rig({ devices: [msixDevice(4)] });
  t.teardown(() => r.dispose());
  const o = r.open('0000:00:04.0');
  o.io.irqs.enable('msix', 2);
  o.io.irqs.close();
  t.throws(() => o.io.irqs.enabled('msix'), { code: 'ECLOSED' });
});
