// The library's public API driving edu on a real kernel, in the booted mode
// (after a look at the kernel's VFIO stack through raw ioctls, ./kernel-stack.ts):
// discovery, mode, container and device setup, BAR0, config space, DMA both
// ways with buffers the library allocates and maps, MSI and INTx delivered
// to the async API, reset, and release/close leaving no fd behind.
//
// The subtests run in order and share one device (as a driver would):
// setup opens it, the last subtest releases it and closes the container.
import t from 'tap';
import { readlinkSync, writeFileSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { basename } from 'node:path';
import { createVfio, vfio, VfioError, type Container, type Device, type DmaBuffer, type Region } from '../../../lib/index.js';
import { koffiSys } from '../../../lib/libc/koffi-sys.js';
import {
  EDU_DEVICE,
  EDU_DMA_BUFFER,
  EDU_ID,
  EDU_VENDOR,
  IRQ_FACTORIAL,
  MAX_DMA,
  REG,
  STATUS_COMPUTING,
  STATUS_IRQ_ON_FACTORIAL,
  eduDma,
  factorial,
  newFds,
  openFds,
  until,
} from './edu.js';
import { errorOf, eduDmaLimit, guestEnv } from './guest-env.js';
import { kernelStackTests } from './kernel-stack.js';

const env = guestEnv();
if (env === null) {
  t.plan(0, 'VM guest test: runs inside the VM via `npm run test:vm`');
} else {
  const { mode, edu } = env;
  const iommu = mode !== 'noiommu';
  const dmaLimit = eduDmaLimit(mode);
  const timeout = (): AbortSignal => AbortSignal.timeout(10_000);

  // Fds open before the library did anything (koffi's loading opens none that stay).
  const fdsAtStart = openFds();

  // The kernel's VFIO stack as the mode presents it, through raw ioctls.
  t.test('the kernel stack, before the library', async (t) => {
    kernelStackTests(t, env);
  });

  t.test('discovery: describeDevice, getMode, getDeviceInfo', async (t) => {
    const desc = vfio.describeDevice(edu);
    t.match(desc, { address: edu, vendor: EDU_VENDOR, device: EDU_DEVICE, driver: 'vfio-pci', noiommu: !iommu }, 'sysfs');
    t.type(desc.iommuGroup, 'number', 'an IOMMU group');
    t.equal(desc.groupNode, iommu ? `/dev/vfio/${desc.iommuGroup}` : `/dev/vfio/noiommu-${desc.iommuGroup}`, 'its group node');
    t.equal(desc.cdevNode !== null, iommu, iommu ? 'a cdev node' : 'no cdev node (no-IOMMU groups have none)');
    t.equal(vfio.describeDevice(edu.slice(5)).address, edu, 'the short address names the same device');

    t.equal(vfio.getMode(), mode, 'getMode() is the booted mode (VFIO_MODE)');
    t.equal(vfio.getMode(edu), mode, 'getMode(edu) too');
    // Not forced: what the machine offers by itself.
    const auto = createVfio({ sys: koffiSys, env: {} });
    t.equal(auto.getMode(edu), iommu ? 'cdev' : 'noiommu', 'unforced: cdev preferred with an IOMMU, noiommu without');
    auto.close();

    const before = openFds();
    const info = vfio.getDeviceInfo(edu);
    t.match(info, { address: edu, pci: true }, 'a PCI device');
    t.ok(info.numRegions >= 9, `${info.numRegions} regions (vfio-pci has at least 9)`);
    t.ok(info.numIrqs >= 5, `${info.numIrqs} IRQ indexes (vfio-pci has 5)`);
    t.same(newFds(before), [], 'getDeviceInfo sets nothing up: no fd left');
  });

  let container: Container;
  let dev: Device;
  let bar0: Region;

  t.test('container and device setup', async (t) => {
    container = vfio.createContainer();
    t.equal(container.mode, mode, 'createContainer() in the booted mode');
    t.equal(container.dmaMode, iommu ? 'iommu' : 'identity');
    container.assignDevice(edu);
    t.same(container.devices, [edu], 'assigned');
    t.match(
      errorOf(() => container.assignDevice(edu)),
      { code: 'EEXIST' },
      'a second assign is EEXIST',
    );
    const state = container.kernelState;
    if (state.mode === 'cdev') {
      t.equal(state.devices.length, 1, 'cdev: one device bound to the iommufd');
      t.ok(state.ioasId > 0, 'cdev: an IOAS');
    } else {
      t.equal(state.iommuSet, true, 'group: the IOMMU is set once the group joined');
      t.equal(state.groups.length, 1, 'group: one group');
    }
    dev = vfio.openDevice(edu);
    t.equal(dev.container, container, 'openDevice uses the container the device was assigned to');
    t.equal(dev.mode, mode);
    t.match(
      errorOf(() => vfio.openDevice(edu)),
      { code: 'EEXIST' },
      'opening it twice is EEXIST',
    );
    t.match(dev.info(), { pci: true, address: edu });
  });

  t.test('regions and IRQ info', async (t) => {
    const regions = dev.regions();
    const bar0Info = regions.find((r) => r.name === 'bar0');
    t.match(bar0Info, { size: 1 << 20, readable: true, writable: true, mappable: true }, 'BAR0: 1 MiB, mappable');
    for (const name of ['bar1', 'bar2', 'bar3', 'bar4', 'bar5']) {
      t.equal(regions.find((r) => r.name === name)?.size, 0, `${name} is not implemented`);
    }
    t.match(
      regions.find((r) => r.name === 'config'),
      { readable: true, writable: true },
      'config region',
    );
    t.match(dev.irqs.info('intx'), { count: 1, eventfd: true, maskable: true, automasked: true }, 'INTx: 1, maskable, automasked');
    t.match(dev.irqs.info('msi'), { count: 1, eventfd: true, maskable: false }, 'MSI: 1 vector');
    t.match(dev.irqs.info('msix'), { count: 0 }, 'no MSI-X');
    t.match(
      errorOf(() => dev.irqs.enable('msix')),
      { code: 'ENOTSUP' },
      'enabling MSI-X is ENOTSUP',
    );
    t.match(
      errorOf(() => dev.irqs.enable('msi', { count: 2 })),
      { code: 'EINVAL' },
      'a second MSI vector is EINVAL',
    );
    t.match(
      errorOf(() => dev.mapBar(1)),
      { code: 'ENOENT' },
      'mapping BAR1 is ENOENT',
    );
  });

  t.test('BAR0 registers', async (t) => {
    bar0 = dev.mapBar(0);
    t.equal(dev.config.command().memorySpace, true, 'mapBar turned memory decoding on');
    t.equal(bar0.read32(REG.id), EDU_ID, 'id');
    for (const v of [0, 0x12345678, 0xffffffff]) {
      bar0.write32(REG.inverse, v);
      t.equal(bar0.read32(REG.inverse), ~v >>> 0, `liveness: ~0x${v.toString(16)}`);
    }
    bar0.write32(REG.factorial, 10);
    await until('the factorial', () => (bar0.read32(REG.status) & STATUS_COMPUTING) === 0);
    t.equal(bar0.read32(REG.factorial), factorial(10), '10! = 3628800');
    // edu takes only 32- and 64-bit accesses (QEMU refuses narrower ones;
    // they read 0 on this QEMU): a narrow read that returned part of the id
    // would be a wider access cut down, not the access of its width.
    const low16 = bar0.read16(REG.id);
    t.not(low16, EDU_ID & 0xffff, `a 16-bit read is a 16-bit access (edu refuses it: read 0x${low16.toString(16)})`);
    const low8 = bar0.read8(REG.id);
    t.not(low8, EDU_ID & 0xff, `an 8-bit read is an 8-bit access (edu refuses it: read 0x${low8.toString(16)})`);
    bar0.write64(REG.dmaSrc, 0x0123456789abcdefn);
    t.equal(bar0.read64(REG.dmaSrc), 0x0123456789abcdefn, '64-bit write and read (DMA source register)');
    t.equal(bar0.read32(REG.dmaSrc), 0x89abcdef, '32-bit read of its low half');
    t.match(
      errorOf(() => bar0.read32(1 << 20)),
      { code: 'EINVAL' },
      'reading past the BAR is EINVAL',
    );

    // The same registers without mmap: pread/pwrite on the device fd.
    const slow = dev.mapBar(0, { noMmap: true, size: 0x1000 });
    t.equal(slow.read32(REG.id), EDU_ID, 'id through pread');
    t.not(slow.read16(REG.id), EDU_ID & 0xffff, 'a 16-bit pread is a 16-bit access');
    t.equal(slow.read64(REG.dmaSrc), 0x0123456789abcdefn, '64-bit pread');
    slow.write32(REG.inverse, 0x0f0f0f0f);
    t.equal(bar0.read32(REG.inverse), 0xf0f0f0f0, 'pwrite reaches the same register');
    slow.close();
    t.match(
      errorOf(() => slow.read32(0)),
      { code: 'ECLOSED' },
      'a closed Region throws ECLOSED',
    );
  });

  t.test('config space', async (t) => {
    const cfg = dev.config;
    t.match(cfg.ids(), { vendorId: EDU_VENDOR, deviceId: EDU_DEVICE, classCode: 0x00ff00, headerType: 0, interruptPin: 1 }, 'ids');
    t.equal(cfg.read16(0), EDU_VENDOR, 'raw 16-bit read');
    t.equal(cfg.read32(0), (EDU_DEVICE << 16) | EDU_VENDOR, 'raw 32-bit read');
    cfg.setBusMaster(true);
    t.match(cfg.command(), { memorySpace: true, busMaster: true }, 'bus master on');
    cfg.setBusMaster(false);
    t.equal(cfg.command().busMaster, false, 'and off');
    cfg.setBusMaster(true);
    t.match(cfg.bar(0), { space: 'memory', is64: false }, 'BAR0 is a 32-bit memory BAR');
    const msi = cfg.findCapability('msi');
    t.ok(msi !== null, 'the capability walk finds MSI');
    t.ok(msi !== null && msi.offset >= 0x40, `at 0x${msi?.offset.toString(16)}`);
    t.equal(cfg.findCapability('msix'), null, 'no MSI-X');
    t.equal(cfg.msix(), null, 'msix() is null');
  });

  t.test('DMA both ways with library buffers', async (t) => {
    dev.config.setBusMaster(true);
    const buf = container.allocDma(4096, dmaLimit === undefined ? {} : { dmaLimit });
    t.ok(buf.mapped, 'allocDma maps the buffer');
    if (dmaLimit !== undefined) t.ok(buf.iova + BigInt(buf.size) <= dmaLimit, `IOVA 0x${buf.iova.toString(16)} below 2^28`);
    else t.ok(buf.iova > 0n && buf.iova % 4096n === 0n, `no-IOMMU: IOVA = physical address 0x${buf.iova.toString(16)}`);

    // edu's DMA buffer is not visible through BAR0: a round trip RAM → edu →
    // RAM shows both directions (the RAM is cleared in between).
    const n = MAX_DMA;
    const pattern = Uint8Array.from({ length: n }, (_, i) => (i * 7 + 3) & 0xff);
    /** Compares without tap's element-by-element diff (slow under TCG): index of the first difference, or -1. */
    const firstDiff = (a: Uint8Array, b: Uint8Array): number => {
      if (a.length !== b.length) return Math.min(a.length, b.length);
      return a.findIndex((x, i) => x !== b[i]);
    };
    buf.bytes.set(pattern);
    await eduDma(bar0, buf.iova, EDU_DMA_BUFFER, n, false);
    buf.bytes.fill(0);
    await eduDma(bar0, EDU_DMA_BUFFER, buf.iova, n, true);
    t.equal(firstDiff(buf.bytes.subarray(0, n), pattern), -1, `RAM → edu → RAM: ${n} bytes came back`);

    buf.bytes.fill(0);
    await eduDma(bar0, EDU_DMA_BUFFER, buf.iovaAt(1024), 1024, true);
    t.equal(firstDiff(buf.bytes.subarray(1024, 2048), pattern.subarray(0, 1024)), -1, 'edu → RAM, at an offset in the buffer');
    t.equal(
      buf.bytes.subarray(0, 1024).some((b) => b !== 0),
      false,
      'nothing written before that offset',
    );

    if (iommu) {
      const info = container.iommuInfo();
      t.ok(
        info.ranges.some((r) => r.start <= buf.iova && buf.iova <= r.last),
        'the IOVA lies in an IOMMU range',
      );
      if (mode === 'group') t.ok(((info.pageSizes ?? 0n) & 4096n) !== 0n, 'Type1 maps 4 KiB pages');
      else t.equal(info.pageSizes, null, 'IOMMUFD reports no page-size bitmap');
      t.equal(info.granule, 4096n, 'granule 4 KiB');

      // A buffer at an IOVA of our choosing.
      const fixed = container.allocDma(4096, { iova: 0x200000n });
      t.equal(fixed.iova, 0x200000n, 'allocDma at a chosen IOVA');
      fixed.bytes.fill(0);
      await eduDma(bar0, EDU_DMA_BUFFER, 0x200000n, 512, true);
      t.equal(firstDiff(fixed.bytes.subarray(0, 512), pattern.subarray(0, 512)), -1, 'edu wrote at the chosen IOVA');
      t.match(
        errorOf(() => container.allocDma(4096, { iova: 0x200000n })),
        { code: 'EEXIST' },
        'an overlapping IOVA is EEXIST',
      );

      // Unmapped, the IOVA no longer reaches the buffer: the IOMMU drops edu's write.
      fixed.unmap();
      t.notOk(fixed.mapped, 'unmapped');
      fixed.bytes.fill(0x55);
      await eduDma(bar0, EDU_DMA_BUFFER, 0x200000n, 512, true);
      t.equal(
        fixed.bytes.subarray(0, 512).every((b) => b === 0x55),
        true,
        'a DMA to the unmapped IOVA does not reach the memory',
      );
      t.equal(fixed.map({ iova: 0x200000n }), 0x200000n, 'mapped again');
      await eduDma(bar0, EDU_DMA_BUFFER, 0x200000n, 512, true);
      t.equal(firstDiff(fixed.bytes.subarray(0, 512), pattern.subarray(0, 512)), -1, 'and reachable again');
      fixed.free();
    } else {
      t.match(
        errorOf(() => container.allocDma(4096, { iova: 0x200000n })),
        { code: 'ENOTSUP' },
        'no-IOMMU: a chosen IOVA is ENOTSUP',
      );
      t.match(
        errorOf(() => container.iommuInfo()),
        { code: 'ENOTSUP' },
        'no-IOMMU: iommuInfo is ENOTSUP',
      );
    }
    buf.free();
    t.match(
      errorOf(() => buf.bytes),
      { code: 'ECLOSED' },
      'a freed buffer throws ECLOSED',
    );
  });

  t.test('DMA through buffers on 2 MiB huge pages', async (t) => {
    dev.config.setBusMaster(true);
    const HUGE = 2 << 20;
    const limit = dmaLimit === undefined ? {} : { dmaLimit };
    const firstDiff = (a: Uint8Array, b: Uint8Array): number => a.findIndex((x, i) => x !== b[i]);
    for (const shareable of [false, true]) {
      const what = shareable ? 'shareable (a memfd on huge pages)' : 'anonymous';
      const buf = container.allocDma(HUGE, { hugepages: true, shareable, ...limit });
      t.equal(buf.hugepages, true, `${what}: on a huge page (the guest reserves them at boot)`);
      // With an IOMMU the library picks a 2 MiB-aligned IOVA; without one the
      // IOVA is the physical address, which a huge page aligns the same way.
      t.equal(buf.iova % BigInt(HUGE), 0n, `${what}: IOVA 0x${buf.iova.toString(16)} is 2 MiB-aligned`);
      // The whole page is reachable: a round trip through its last bytes.
      const n = MAX_DMA;
      const at = HUGE - n;
      const pattern = Uint8Array.from({ length: n }, (_, i) => (i * 13 + 5) & 0xff);
      buf.bytes.set(pattern, at);
      await eduDma(bar0, buf.iovaAt(at), EDU_DMA_BUFFER, n, false);
      buf.bytes.fill(0);
      await eduDma(bar0, EDU_DMA_BUFFER, buf.iovaAt(at), n, true);
      t.equal(firstDiff(buf.bytes.subarray(at, HUGE), pattern), -1, `${what}: RAM → edu → RAM through the end of the page`);
      buf.free();
    }
  });

  t.test('MSI delivered to the async API', async (t) => {
    dev.config.setBusMaster(true); // MSI is a DMA write: edu needs bus mastering
    const msi = dev.irqs.enable('msi');
    t.match(
      errorOf(() => dev.irqs.enable('intx')),
      { code: 'EBUSY' },
      'INTx while MSI is on is EBUSY',
    );
    const v = msi.vector(0);

    const first = v.wait({ signal: timeout() });
    bar0.write32(REG.irqRaise, 0x1000);
    t.ok((await first) >= 1, 'edu raised an interrupt (0x60) → the vector fired');
    t.equal(bar0.read32(REG.irqStatus) & 0x1000, 0x1000, 'edu shows it in its status');
    bar0.write32(REG.irqAck, 0x1000);
    t.equal(bar0.read32(REG.irqStatus), 0, 'acknowledged (0x64)');

    // Factorial done → interrupt, status bit 0x01.
    bar0.write32(REG.status, STATUS_IRQ_ON_FACTORIAL);
    const done = v.wait({ signal: timeout() });
    bar0.write32(REG.factorial, 12);
    t.ok((await done) >= 1, 'the factorial-done interrupt arrived');
    t.equal(bar0.read32(REG.irqStatus) & IRQ_FACTORIAL, IRQ_FACTORIAL, 'status says: factorial');
    t.equal(bar0.read32(REG.factorial), factorial(12), 'and the result is there');
    bar0.write32(REG.irqAck, IRQ_FACTORIAL);
    bar0.write32(REG.status, 0);

    // Three interrupts through the async iterator.
    let total = 0;
    const it = v.events({ signal: timeout() });
    for (let i = 0; i < 3; i++) {
      bar0.write32(REG.irqRaise, 0x2);
      const r = await it.next();
      t.equal(r.done, false, `raise ${i + 1}: a count`);
      total += r.value as number;
      bar0.write32(REG.irqAck, 0x2);
    }
    await it.return?.();
    t.equal(total, 3, 'three raises, three counts through events()');

    const looped = v.wait({ signal: timeout() });
    v.trigger();
    t.ok((await looped) >= 1, 'loopback trigger through the kernel');
    msi.disable();
    t.notOk(msi.enabled, 'disabled');
    t.match(
      errorOf(() => v.eventfd),
      { code: 'ECLOSED' },
      'a disabled vector throws ECLOSED',
    );
  });

  t.test('INTx: automask, unmask, level semantics', async (t) => {
    const intx = dev.irqs.enable('intx');
    t.ok(intx.info.automasked, 'automasked');
    const v = intx.vector(0);
    const counts: number[] = [];
    const off = v.on((n) => counts.push(n));
    const expect = async (what: string, n: number): Promise<void> => {
      await until(what, () => counts.length >= n);
    };

    bar0.write32(REG.irqRaise, 0x4);
    await expect('the first INTx', 1);
    t.pass('edu asserted INTx → the vector fired');
    // The kernel masked the line: a still-asserted line fires again only when unmasked.
    bar0.write32(REG.irqRaise, 0x8);
    await new Promise((r) => setTimeout(r, 300));
    t.equal(counts.length, 1, 'while masked, nothing more arrives');
    intx.unmask();
    await expect('INTx again after unmask (the line is still asserted)', 2);
    t.pass('unmasking a still-asserted line fires again');
    bar0.write32(REG.irqAck, 0x4 | 0x8);
    intx.unmask();
    await new Promise((r) => setTimeout(r, 300));
    t.equal(counts.length, 2, 'acknowledged and unmasked: quiet');

    bar0.write32(REG.irqRaise, 0x10);
    await expect('INTx after ack + unmask', 3);
    t.pass('the next raise fires');
    bar0.write32(REG.irqAck, 0x10);
    intx.unmask();
    off();
    intx.disable();
  });

  t.test('reset', async (t) => {
    const info = dev.info();
    if (info.reset) {
      bar0.write32(REG.inverse, 0x1);
      dev.reset();
      t.equal(bar0.read32(REG.id), EDU_ID, 'after VFIO_DEVICE_RESET the mapped BAR still reads the id');
    } else {
      t.match(
        errorOf(() => dev.reset()),
        { code: 'ENOTSUP' },
        'no RESET flag: reset() is ENOTSUP',
      );
    }
    let hot: unknown;
    try {
      hot = dev.hotResetInfo();
    } catch (err) {
      hot = err;
    }
    if (hot instanceof VfioError) {
      t.equal(hot.code, 'ENODEV', `hot reset info: ${hot.message}`);
    } else {
      t.ok(hot !== null && typeof hot === 'object', `hot reset info: ${JSON.stringify(hot)}`);
    }
  });

  t.test('release and close leave nothing behind', async (t) => {
    const msi = dev.irqs.enable('msi');
    const v = msi.vector(0);
    const pending = v.wait();
    const buf: DmaBuffer = container.allocDma(4096, dmaLimit === undefined ? {} : { dmaLimit });

    dev.release();
    t.ok(dev.closed, 'released');
    t.match(
      errorOf(() => dev.fd),
      { code: 'ECLOSED' },
      'dev.fd: ECLOSED',
    );
    t.match(
      errorOf(() => dev.mapBar(0)),
      { code: 'ECLOSED' },
      'dev.mapBar: ECLOSED',
    );
    t.match(
      errorOf(() => dev.config.read16(0)),
      { code: 'ECLOSED' },
      'dev.config: ECLOSED',
    );
    t.match(
      errorOf(() => bar0.read32(REG.id)),
      { code: 'ECLOSED' },
      'its BAR: ECLOSED',
    );
    t.notOk(msi.enabled, 'its interrupts are disabled');
    await t.rejects(pending, { code: 'ECLOSED' }, 'a pending wait ends with ECLOSED');
    t.same(container.devices, [], 'the container no longer holds it');
    t.ok(buf.mapped, 'the container keeps its buffers');

    // Released, the device can be opened again (in the same container).
    container.assignDevice(edu);
    const again = vfio.openDevice(edu);
    const bar = again.mapBar(0);
    t.equal(bar.read32(REG.id), EDU_ID, 'reopened after release');

    container.close();
    t.ok(again.closed, 'closing the container releases its devices');
    t.match(
      errorOf(() => bar.read32(REG.id)),
      { code: 'ECLOSED' },
      'their BARs',
    );
    t.match(
      errorOf(() => buf.bytes),
      { code: 'ECLOSED' },
      'and its buffers',
    );
    t.match(
      errorOf(() => container.allocDma(4096)),
      { code: 'ECLOSED' },
      'container.allocDma: ECLOSED',
    );
    t.match(
      errorOf(() => container.assignDevice(edu)),
      { code: 'ECLOSED' },
      'container.assignDevice: ECLOSED',
    );

    // A whole context, closed at once.
    const ctx = createVfio({ sys: koffiSys });
    const d = ctx.openDevice(edu);
    d.mapBar(0).read32(REG.id);
    ctx.close();
    t.ok(d.closed, 'closing a context closes its devices');
    t.match(
      errorOf(() => ctx.openDevice(edu)),
      { code: 'ECLOSED' },
      'a closed context throws ECLOSED',
    );

    // The interrupt poller lets its stop eventfd go once idle.
    await new Promise((r) => setTimeout(r, 100));
    t.same(newFds(fdsAtStart), [], 'no fd left open (compared with the start of the file)');
    t.equal(openFds().size, fdsAtStart.size, `${fdsAtStart.size} fds, as at the start`);
  });
  t.test('the kernel asks for the device back (REQ) when it is unbound', async (t) => {
    const driverOf = (): string | null => {
      try {
        return basename(readlinkSync(`/sys/bus/pci/devices/${edu}/driver`));
      } catch {
        return null;
      }
    };
    const ctx = createVfio({ sys: koffiSys });
    const d = ctx.openDevice(edu);
    let asked = 0;
    const requested = new Promise<void>((resolve) => {
      d.irqs.onRequest(() => {
        asked++;
        d.release(); // what an application should do: give it back
        resolve();
      });
    });
    // The unbind blocks in the kernel until the device is released; an
    // async write runs it on libuv's pool, off the event loop.
    const unbound = writeFile(`/sys/bus/pci/devices/${edu}/driver/unbind`, edu);
    const timer = new Promise<'timeout'>((resolve) => setTimeout(() => resolve('timeout'), 20_000).unref());
    if ((await Promise.race([requested, timer])) === 'timeout') {
      t.fail('no REQ within 20 s: releasing the device so the unbind can finish');
      d.release();
    } else {
      t.equal(asked, 1, 'onRequest fired once');
    }
    await unbound;
    t.ok(d.closed, 'the device was released');
    t.equal(driverOf(), null, 'the unbind went through');
    ctx.close();

    // Bind it back (driver_override still says vfio-pci) for the files after this one.
    writeFileSync('/sys/bus/pci/drivers_probe', edu);
    t.equal(driverOf(), 'vfio-pci', 'bound to vfio-pci again');
    const again = createVfio({ sys: koffiSys });
    t.equal(again.openDevice(edu).mapBar(0).read32(REG.id), EDU_ID, 'and it opens again');
    again.close();
  });
}
