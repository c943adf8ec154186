// Resource lifecycle: `using`, resources owned by a device, unmapAll, and the
// public entry point.
import t from 'tap';
import * as api from '../../lib/index.js';
import { EDU, MODES, NO_LEAKS, enableBusMaster, machine, vfioErrorOf } from './harness.js';
import { createVfio } from '../../lib/core/context.js';
import { FakeKernel, edu } from '../../lib/testing/index.js';

t.test('`using` releases devices, buffers and contexts', async (t) => {
  for (const mode of MODES) {
    const m = machine(mode);
    {
      using vfio = m.vfio;
      using dev = vfio.openDevice(EDU);
      using buf = dev.container.allocDma(4096);
      buf.bytes[0] = 1;
      t.ok(buf.live);
    }
    t.same(m.kernel.leaks(), NO_LEAKS, `${mode}: everything given back at the end of the block`);
    t.ok(m.vfio.closed);
    m.kernel.dispose();
  }
});

t.test('resources a device owns are closed before its fd, newest first', async (t) => {
  const { kernel, vfio } = machine('cdev');
  t.teardown(() => kernel.dispose());
  const order: string[] = [];
  const dev = vfio.openDevice(EDU);
  const fd = dev.fd;
  const probe = (name: string) => ({
    close() {
      order.push(`${name}:${dev.closed ? 'fd closed' : `fd ${fd} open`}`);
    },
  });
  dev.own(probe('bar0'));
  dev.own(probe('irq'));
  dev.release();
  t.same(order, [`irq:fd ${fd} open`, `bar0:fd ${fd} open`]);
  order.length = 0;
  // An owned resource closes before the device I/O: it may still use a BAR then.
  const third = vfio.openDevice(EDU);
  third.own({
    close() {
      order.push(`id ${third.mapBar(0).read32(0).toString(16)}`);
    },
  });
  using bar = third.mapBar(0);
  third.release();
  t.same(order, ['id 10000ed'], 'the owned resource read the BAR while closing');
  t.ok(bar.closed, 'then the device I/O was closed');
  order.length = 0;
  const again = vfio.openDevice(EDU);
  again.own({
    close() {
      order.push(again.closed ? 'closed' : 'open');
      throw new Error('a resource that fails to close');
    },
  });
  t.throws(() => again.container.close(), /a resource that fails to close/, 'the close reports the failure');
  t.same(order, ['open'], 'the container close closes them too, while the fd is open');
  t.ok(again.closed);
  vfio.close();
  t.same(kernel.leaks(), NO_LEAKS, 'a failing resource does not stop the release');
});

t.test('unmapAll takes every IOVA away and leaves the memory', async (t) => {
  for (const mode of MODES) {
    const { kernel, vfio } = machine(mode);
    const dev = vfio.openDevice(EDU);
    enableBusMaster(kernel, EDU);
    const bufs = [dev.container.allocDma(4096), dev.container.allocDma(4096), dev.container.allocDma(4096)];
    const iovas = bufs.map((b) => b.iova);
    dev.container.unmapAll();
    t.ok(
      bufs.every((b) => !b.mapped && b.live),
      `${mode}: unmapped, still allocated`,
    );
    t.match(
      vfioErrorOf(() => bufs[0]!.iova),
      { code: 'EINVAL' },
      `${mode}: no IOVA while unmapped`,
    );
    if (mode !== 'noiommu') {
      for (const iova of iovas)
        t.throws(() => kernel.device(EDU).dmaRead(iova, 1), `${mode}: the device cannot reach 0x${iova.toString(16)}`);
      t.equal(kernel.leaks().pinned, 3, `${mode}: only the mlock remains`);
    }
    bufs[1]!.map();
    bufs[1]!.bytes[0] = 0x42;
    t.equal(kernel.device(EDU).dmaRead(bufs[1]!.iova, 1)[0], 0x42, `${mode}: mapped again`);
    vfio.close();
    t.same(kernel.leaks(), NO_LEAKS);
    kernel.dispose();
  }
});

t.test('no-IOMMU buffers: per-page physical addresses, iova only when contiguous', async (t) => {
  const { kernel, vfio } = machine('noiommu');
  t.teardown(() => kernel.dispose());
  const dev = vfio.openDevice(EDU);
  dev.config.setBusMaster(true);
  // The fake's 4 KiB pages are never physically consecutive (as after a real system's first minutes).
  const buf = dev.container.allocDma(4 * 4096);
  t.equal(buf.contiguous, false);
  t.match(
    vfioErrorOf(() => buf.iova),
    { code: 'EINVAL', message: /not physically contiguous.*iovaAt\(offset\).*hugepages: true/ },
  );
  for (let page = 0; page < 4; page++) {
    buf.bytes.fill(0x10 + page, page * 4096, (page + 1) * 4096);
    const at = buf.iovaAt(page * 4096 + 100);
    t.equal(kernel.device(EDU).dmaRead(at, 1)[0], 0x10 + page, `page ${page}: iovaAt is its physical address`);
    t.equal(buf.contiguousFrom(page * 4096 + 100), 4096 - 100, 'contiguous to the end of the page');
  }
  const one = dev.container.allocDma(4096);
  t.equal(one.contiguous, true);
  t.equal(one.iova, one.iovaAt(0));
  vfio.close();
  t.same(kernel.leaks(), NO_LEAKS);
});

t.test('no-IOMMU huge-page buffers larger than a huge page: per-page addresses, contiguous within each huge page', async (t) => {
  const kernel = new FakeKernel({ mode: 'noiommu', devices: [edu({ dmaBits: 64 })], hugepages: 2 });
  t.teardown(() => kernel.dispose());
  const vfio = createVfio({ sys: kernel.sys, sysfs: kernel.sysfsRoot, dev: kernel.devRoot, proc: kernel.procRoot, env: {} });
  const dev = vfio.openDevice(EDU);
  dev.config.setBusMaster(true);
  const HUGE = 2 * 1024 * 1024;
  const buf = dev.container.allocDma(2 * HUGE, { hugepages: true });
  t.equal(buf.hugepages, true);
  t.equal(buf.contiguousFrom(0), HUGE, 'the first huge page is one block');
  t.equal(buf.contiguousFrom(HUGE + 4096), HUGE - 4096, 'the second too, from where asked');
  buf.bytes[HUGE + 5] = 0x77;
  t.equal(kernel.device(EDU).dmaRead(buf.iovaAt(HUGE + 5), 1)[0], 0x77);
  t.equal(buf.iovaAt(4096), buf.iovaAt(0) + 4096n, 'consecutive inside a huge page');
  vfio.close();
  t.same(kernel.leaks(), NO_LEAKS);
});

t.test('IOMMU modes: iovaAt is iova + offset and buffers are contiguous', async (t) => {
  for (const mode of ['cdev', 'group'] as const) {
    const { kernel, vfio } = machine(mode);
    const dev = vfio.openDevice(EDU);
    const buf = dev.container.allocDma(3 * 4096);
    t.equal(buf.contiguous, true);
    t.equal(buf.iovaAt(5000), buf.iova + 5000n);
    t.equal(buf.contiguousFrom(5000), 3 * 4096 - 5000);
    t.equal(buf.bytes, buf.bytes, 'bytes is one view, not a new one per access');
    vfio.close();
    t.same(kernel.leaks(), NO_LEAKS);
    kernel.dispose();
  }
});

t.test('the public entry point', async (t) => {
  t.type(api.createVfio, 'function');
  t.type(api.VfioError, 'function');
  t.type(api.parsePciAddress, 'function');
  t.ok(api.vfio instanceof api.Vfio, 'a default context');
  t.match(
    vfioErrorOf(() => api.vfio.getMode('../../etc')),
    { code: 'EINVAL' },
    'validated before anything else',
  );
  t.match(
    vfioErrorOf(() => api.createVfio({} as never)),
    { code: 'EINVAL' },
  );
});

t.test('after close, state getters are ECLOSED rather than stale answers', async (t) => {
  for (const mode of MODES) {
    const m = machine(mode);
    t.teardown(() => m.kernel.dispose());
    const dev = m.vfio.openDevice(EDU);
    const c = dev.container;
    t.same(c.devices, [EDU]);
    t.equal(c.kernelState.mode, mode);
    t.equal(dev.groupFd(3) === null, mode === 'cdev', `${mode}: groupFd answers while open`);
    dev.release();
    t.match(
      vfioErrorOf(() => dev.groupFd(3)),
      { code: 'ECLOSED' },
      `${mode}: Device.groupFd after release`,
    );
    c.close();
    t.match(
      vfioErrorOf(() => c.devices),
      { code: 'ECLOSED' },
      `${mode}: Container.devices after close`,
    );
    t.match(
      vfioErrorOf(() => c.kernelState),
      { code: 'ECLOSED' },
      `${mode}: Container.kernelState after close (its fds are closed)`,
    );
    m.vfio.close();
    t.same(m.kernel.leaks(), NO_LEAKS);
  }
});
