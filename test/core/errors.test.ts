// Every error path of the core: the error's code, and that nothing leaked.
import t, { type Test } from 'tap';
import { createVfio } from '../../lib/core/context.js';
import * as codec from '../../lib/uapi/codec.js';
import { iommu_ioas_unmap, IOMMU_IOAS_UNMAP } from '../../lib/uapi/iommufd.js';
import {
  vfio_iommu_type1_dma_unmap,
  VFIO_IOMMU_UNMAP_DMA,
  VFIO_DEVICE_ATTACH_IOMMUFD_PT,
  VFIO_GROUP_SET_CONTAINER,
  VFIO_SET_IOMMU,
  VFIO_IOMMU_MAP_DMA,
} from '../../lib/uapi/vfio.js';
import { IOMMU_IOAS_MAP } from '../../lib/uapi/iommufd.js';
import { edu, FakeKernel } from '../../lib/testing/index.js';
import { EDU, EDU2, MODES, NO_LEAKS, enableBusMaster, machine, vfioErrorOf } from './harness.js';

/** Asserts `fn` throws a VfioError with `code` (and `device`, when given). */
function throwsCode(t: Test, fn: () => unknown, code: string, msg: string, device?: string): void {
  const err = vfioErrorOf(fn);
  if (typeof err === 'string') {
    t.fail(`${msg}: ${err}`);
    return;
  }
  t.equal(err.code, code, `${msg}: ${err.message}`);
  if (device !== undefined) t.equal(err.device, device, `${msg}: names the device`);
}

t.test('EINVAL: bad addresses and options, before any system call', async (t) => {
  const { kernel, vfio } = machine('cdev');
  t.teardown(() => kernel.dispose());
  const before = kernel.syscalls;
  for (const bad of ['../0000:00:03.0', '0000:00:03.0/..', ' 00:03.0', '0000:00:03.0:x', '']) {
    throwsCode(t, () => vfio.openDevice(bad), 'EINVAL', `openDevice(${JSON.stringify(bad)})`);
    throwsCode(t, () => vfio.getMode(bad), 'EINVAL', `getMode(${JSON.stringify(bad)})`);
    throwsCode(t, () => vfio.getDeviceInfo(bad), 'EINVAL', `getDeviceInfo(${JSON.stringify(bad)})`);
  }
  throwsCode(t, () => vfio.createContainer({ mode: 'vfio' as never }), 'EINVAL', 'unknown container mode');
  t.equal(kernel.syscalls, before, 'no system call was made');
  const dev = vfio.openDevice(EDU);
  const c = dev.container;
  throwsCode(t, () => c.allocDma(0), 'EINVAL', 'size 0');
  throwsCode(t, () => c.allocDma(-4096), 'EINVAL', 'negative size');
  throwsCode(t, () => c.allocDma(4096, { align: 3n * 4096n }), 'EINVAL', 'alignment not a power of two');
  throwsCode(t, () => c.allocDma(4096, { iova: 0x1234n }), 'EINVAL', 'unaligned IOVA');
  throwsCode(t, () => c.allocDma(4096, { iova: 0xfee00000n }), 'EINVAL', 'IOVA in the reserved MSI window');
  throwsCode(t, () => c.allocDma(4096, { iova: 1n << 50n }), 'EINVAL', 'IOVA beyond the aperture');
  throwsCode(t, () => c.allocDma(4096, { iova: 4096 as never }), 'EINVAL', 'IOVA not a bigint');
  const held = kernel.leaks();
  throwsCode(t, () => c.allocDma(4096, null as never), 'EINVAL', 'null options');
  throwsCode(t, () => c.allocDma(4096, 'x' as never), 'EINVAL', 'string options');
  throwsCode(t, () => c.allocDma('4096' as never), 'EINVAL', 'string size');
  throwsCode(t, () => c.allocDma(4096, { shareable: 'yes' as never }), 'EINVAL', 'shareable not a boolean');
  throwsCode(t, () => c.allocDma(4096, { iova: 0x10000000n, dmaLimit: 0x10000000n }), 'EINVAL', 'explicit IOVA at the DMA limit');
  throwsCode(
    t,
    () => c.allocDma(8192, { iova: 0x0fffe000n + 4096n, dmaLimit: 0x10000000n }),
    'EINVAL',
    'explicit IOVA whose end passes the limit',
  );
  throwsCode(t, () => c.allocDma(4096, { iova: 0x10001000n, align: 0x10000n }), 'EINVAL', 'explicit IOVA not on the asked alignment');
  t.same(kernel.leaks(), held, 'the refused allocations left nothing');
  const below = c.allocDma(4096, { iova: 0x0ffff000n, dmaLimit: 0x10000000n });
  t.equal(below.iova, 0x0ffff000n, 'an explicit IOVA under the limit is taken');
  below.unmap();
  throwsCode(t, () => below.map(null as never), 'EINVAL', 'map(null)');
  throwsCode(t, () => below.iovaAt('1' as never), 'EINVAL', 'iovaAt a string');
  below.free();
  dev.release();
  vfio.close();
  t.same(kernel.leaks(), NO_LEAKS);
});

t.test('EINVAL: an unknown VFIO_MODE', async (t) => {
  const { kernel, vfio } = machine('cdev', {}, { VFIO_MODE: 'iommufd' });
  t.teardown(() => kernel.dispose());
  throwsCode(t, () => vfio.getMode(EDU), 'EINVAL', 'VFIO_MODE=iommufd');
  throwsCode(t, () => vfio.openDevice(EDU), 'EINVAL', 'openDevice with VFIO_MODE=iommufd');
  t.same(kernel.leaks(), NO_LEAKS);
});

for (const mode of MODES) {
  t.test(`${mode}: ENODEV for a missing device or one not bound to VFIO`, async (t) => {
    const kernel = new FakeKernel({ mode, devices: [edu(), edu({ address: EDU2, group: 6, driver: 'e1000e' })] });
    t.teardown(() => kernel.dispose());
    const vfio = createVfio({ sys: kernel.sys, sysfs: kernel.sysfsRoot, dev: kernel.devRoot, proc: kernel.procRoot, env: {} });
    throwsCode(t, () => vfio.openDevice('0000:00:1f.0'), 'ENODEV', 'no such device', '0000:00:1f.0');
    throwsCode(t, () => vfio.openDevice(EDU2), 'ENODEV', 'bound to e1000e', EDU2);
    throwsCode(t, () => vfio.getDeviceInfo(EDU2), 'ENODEV', 'getDeviceInfo', EDU2);
    throwsCode(t, () => vfio.getMode(EDU2), 'ENODEV', 'getMode', EDU2);
    throwsCode(t, () => vfio.defaultContainer.assignDevice(EDU2), 'ENODEV', 'assignDevice', EDU2);
    vfio.close();
    t.same(kernel.leaks(), NO_LEAKS);
  });

  t.test(`${mode}: EEXIST and EBUSY for double assignment`, async (t) => {
    const { kernel, vfio } = machine(mode);
    t.teardown(() => kernel.dispose());
    const a = vfio.createContainer({ mode });
    const b = vfio.createContainer({ mode });
    a.assignDevice(EDU);
    const base = kernel.leaks();
    const err = vfioErrorOf(() => a.assignDevice(EDU));
    t.match(err, { code: 'EEXIST', device: EDU, message: /already assigned to container #\d+/ }, 'same container: EEXIST');
    const busy = vfioErrorOf(() => b.assignDevice(EDU));
    t.match(busy, { code: 'EBUSY', device: EDU, message: new RegExp(`assigned to ${a.label}`) }, 'other container: EBUSY naming it');
    const dev = vfio.openDevice(EDU);
    t.equal(dev.container, a);
    throwsCode(t, () => vfio.openDevice(EDU), 'EEXIST', 'opening an open device again', EDU);
    t.same(kernel.leaks(), base, 'the refusals opened nothing');
    dev.release();
    b.assignDevice(EDU);
    t.pass('after release the device can go to another container');
    vfio.close();
    t.same(kernel.leaks(), NO_LEAKS);
  });
}

for (const mode of ['cdev', 'group'] as const) {
  t.test(`${mode}: EBUSY for a group split across containers, and a non-viable group`, async (t) => {
    const kernel = new FakeKernel({
      mode,
      devices: [
        edu(),
        edu({ address: EDU2, group: 3 }),
        edu({ address: '0000:00:05.0', group: 7 }),
        edu({ address: '0000:00:06.0', group: 7, driver: 'e1000e' }),
      ],
    });
    t.teardown(() => kernel.dispose());
    const vfio = createVfio({ sys: kernel.sys, sysfs: kernel.sysfsRoot, dev: kernel.devRoot, proc: kernel.procRoot, env: {} });
    const a = vfio.openDevice(EDU);
    const other = vfio.createContainer({ mode });
    const base = kernel.leaks();
    const err = vfioErrorOf(() => other.assignDevice(EDU2));
    t.match(err, { code: 'EBUSY', device: EDU2, message: /IOMMU group 3 is in container #/ });
    t.same(kernel.leaks(), base);
    t.match(
      vfioErrorOf(() => vfio.openDevice('0000:00:05.0')),
      { code: 'EBUSY', device: '0000:00:05.0', message: /IOMMU group 7 is not viable \(0000:00:06.0 is bound to e1000e\)/ },
      'group 7 has a device bound to another driver: the same answer in both modes',
    );
    t.same(kernel.leaks(), base, 'nothing left open by the refused open');
    a.release();
    vfio.close();
    t.same(kernel.leaks(), NO_LEAKS);
  });
}

t.test('ENOSPC: no IOVA room below the DMA limit', async (t) => {
  for (const mode of MODES) {
    const { kernel, vfio } = machine(mode);
    const dev = vfio.openDevice(EDU);
    const base = kernel.leaks();
    // One page below 8 KiB exists only at IOVA 0x1000 (0 is never used), and
    // in no-IOMMU mode the physical address is higher than that.
    if (mode !== 'noiommu') dev.container.allocDma(4096, { dmaLimit: 0x2000n });
    const after = kernel.leaks();
    throwsCode(t, () => dev.container.allocDma(4096, { dmaLimit: 0x2000n }), 'ENOSPC', `${mode}: below 8 KiB`);
    t.same(kernel.leaks(), after, `${mode}: the refused buffer was freed`);
    t.ok(after.mappings >= base.mappings);
    vfio.close();
    t.same(kernel.leaks(), NO_LEAKS, `${mode}: no leaks`);
    kernel.dispose();
  }
});

t.test('EEXIST: a chosen IOVA that overlaps a mapping; a buffer mapped twice', async (t) => {
  for (const mode of ['cdev', 'group'] as const) {
    const { kernel, vfio } = machine(mode);
    const dev = vfio.openDevice(EDU);
    const buf = dev.container.allocDma(8192, { iova: 0x100000n });
    const base = kernel.leaks();
    throwsCode(t, () => dev.container.allocDma(4096, { iova: 0x101000n }), 'EEXIST', `${mode}: overlap`);
    throwsCode(t, () => buf.map(), 'EEXIST', `${mode}: already mapped`);
    t.same(kernel.leaks(), base);
    vfio.close();
    t.same(kernel.leaks(), NO_LEAKS);
    kernel.dispose();
  }
});

t.test('ENOTSUP: what no-IOMMU mode cannot do, and a device the container mode cannot drive', async (t) => {
  const { kernel, vfio } = machine('noiommu');
  t.teardown(() => kernel.dispose());
  const dev = vfio.openDevice(EDU);
  t.equal(dev.container.dmaMode, 'identity');
  throwsCode(t, () => dev.container.allocDma(4096, { iova: 0x10000n }), 'ENOTSUP', 'explicit IOVA');
  throwsCode(t, () => dev.container.iommuInfo(), 'ENOTSUP', 'IOVA ranges');
  const buf = dev.container.allocDma(4096);
  buf.unmap();
  throwsCode(t, () => buf.map({ iova: 0x10000n }), 'ENOTSUP', 'explicit IOVA on map()');
  t.ok(buf.map() > 0n, 'map() gives the physical address again');
  const group = vfio.createContainer({ mode: 'group' });
  throwsCode(t, () => group.assignDevice(EDU2), 'ENOTSUP', 'a no-IOMMU device in a Type1 container', EDU2);
  vfio.close();
  t.same(kernel.leaks(), NO_LEAKS);
});

t.test('EPERM: physical addresses need root in no-IOMMU mode', async (t) => {
  const { kernel, vfio } = machine('noiommu');
  t.teardown(() => kernel.dispose());
  const dev = vfio.openDevice(EDU);
  kernel.setUid(1000);
  const base = kernel.leaks();
  throwsCode(t, () => dev.container.allocDma(4096), 'EPERM', 'pagemap hides PFNs');
  t.same(kernel.leaks(), base);
  vfio.close();
  t.same(kernel.leaks(), NO_LEAKS);
});

t.test('ENXIO: VFIO not available, forced modes the machine cannot give', async (t) => {
  {
    const { kernel, vfio } = machine('group', { groupInterface: false, cdevInterface: false });
    const err = vfioErrorOf(() => vfio.openDevice(EDU));
    t.match(err, { code: 'ENXIO', device: EDU, message: /VFIO is not available: cdev: .*; group: .*; noiommu: .*/ }, 'no VFIO at all');
    throwsCode(t, () => vfio.createContainer(), 'ENXIO', 'no container either');
    t.same(kernel.leaks(), NO_LEAKS);
    kernel.dispose();
  }
  {
    const { kernel, vfio } = machine('group', {}, { VFIO_MODE: 'cdev' });
    t.match(
      vfioErrorOf(() => vfio.getMode(EDU)),
      { code: 'ENXIO', message: /cdev mode was forced but is not available: .*\/dev\/iommu does not exist/ },
    );
    throwsCode(t, () => vfio.openDevice(EDU), 'ENXIO', 'VFIO_MODE=cdev on a group machine');
    throwsCode(t, () => vfio.createContainer(), 'ENXIO', 'createContainer too');
    t.same(kernel.leaks(), NO_LEAKS);
    kernel.dispose();
  }
  {
    const { kernel, vfio } = machine('cdev');
    throwsCode(t, () => vfio.createContainer({ mode: 'noiommu' }), 'ENXIO', 'noiommu on a machine with it disabled');
    const k2 = new FakeKernel({ mode: 'group', type1: false, devices: [edu()] });
    const v2 = createVfio({ sys: k2.sys, sysfs: k2.sysfsRoot, dev: k2.devRoot, proc: k2.procRoot, env: {} });
    t.match(
      vfioErrorOf(() => v2.getMode(EDU)),
      { code: 'ENXIO', message: /no Type1 IOMMU/ },
      'group mode without vfio_iommu_type1',
    );
    t.same(kernel.leaks(), NO_LEAKS);
    t.same(k2.leaks(), NO_LEAKS);
    kernel.dispose();
    k2.dispose();
  }
});

for (const mode of ['cdev', 'group'] as const) {
  t.test(`${mode}: EIO when the kernel does not hold the mapping the library made`, async (t) => {
    const { kernel, vfio } = machine(mode);
    t.teardown(() => kernel.dispose());
    const dev = vfio.openDevice(EDU);
    const buf = dev.container.allocDma(8192);
    const iova = buf.iova;
    // Someone unmaps it behind the library's back.
    const s = dev.container.kernelState;
    if (s.mode === 'cdev') {
      const arg = codec.alloc(iommu_ioas_unmap, { size: iommu_ioas_unmap.size, ioas_id: s.ioasId, iova, length: 8192n });
      kernel.sys.ioctl(s.iommufd, IOMMU_IOAS_UNMAP, arg);
    } else if (s.mode === 'group') {
      const arg = codec.alloc(vfio_iommu_type1_dma_unmap, { argsz: vfio_iommu_type1_dma_unmap.size, iova, size: 8192n });
      kernel.sys.ioctl(s.containerFd, VFIO_IOMMU_UNMAP_DMA, arg);
    }
    const err = vfioErrorOf(() => buf.unmap());
    t.match(
      err,
      { code: 'EIO', message: /asked to unmap 8192 bytes at IOVA 0x[0-9a-f]+, the kernel unmapped 0/ },
      'the same EIO in both modes',
    );
    t.notOk(buf.mapped, 'the mapping is forgotten');
    const next = dev.container.allocDma(8192);
    t.not(next.iova, iova, 'its IOVAs are not handed out again');
    buf.free();
    vfio.close();
    t.same(kernel.leaks(), NO_LEAKS);
  });
}

t.test('ECLOSED after release and close', async (t) => {
  const { kernel, vfio } = machine('cdev');
  t.teardown(() => kernel.dispose());
  const dev = vfio.openDevice(EDU);
  const c = dev.container;
  const buf = c.allocDma(4096);
  dev.release();
  dev.release();
  t.pass('release is idempotent');
  throwsCode(t, () => dev.fd, 'ECLOSED', 'fd after release');
  throwsCode(t, () => dev.getInfo(), 'ECLOSED', 'getInfo after release');
  throwsCode(t, () => dev.own({ close() {} }), 'ECLOSED', 'own after release');
  c.close();
  throwsCode(t, () => buf.bytes, 'ECLOSED', 'buffer bytes after container close');
  throwsCode(t, () => buf.iova, 'ECLOSED', 'buffer iova after container close');
  throwsCode(t, () => buf.map(), 'ECLOSED', 'map after container close');
  throwsCode(t, () => c.assignDevice(EDU), 'ECLOSED', 'assign after close');
  throwsCode(t, () => c.allocDma(4096), 'ECLOSED', 'allocDma after close');
  throwsCode(t, () => c.iommuInfo(), 'ECLOSED', 'iommuInfo after close');
  throwsCode(t, () => c.unmapAll(), 'ECLOSED', 'unmapAll after close');
  c.close();
  buf.free();
  t.pass('close and free are idempotent');
  t.not(vfio.defaultContainer, c, 'a closed default container is replaced on next use');
  vfio.close();
  throwsCode(t, () => vfio.getMode(EDU), 'ECLOSED', 'context after close');
  throwsCode(t, () => vfio.createContainer(), 'ECLOSED', 'createContainer after close');
  throwsCode(t, () => vfio.defaultContainer, 'ECLOSED', 'defaultContainer after close');
  t.same(kernel.leaks(), NO_LEAKS);
});

t.test('close order: devices, then mappings, then groups, then container fds, then memory', async (t) => {
  for (const mode of ['cdev', 'group'] as const) {
    const kernel = new FakeKernel({ mode, devices: [edu()], log: true });
    const vfio = createVfio({ sys: kernel.sys, sysfs: kernel.sysfsRoot, dev: kernel.devRoot, proc: kernel.procRoot, env: {} });
    const dev = vfio.openDevice(EDU);
    dev.container.allocDma(4096);
    const from = kernel.log.length;
    dev.container.close();
    const calls = kernel.log.slice(from).map((r) => (r.requestName ?? r.syscall) + (r.kind ? `:${r.kind}` : ''));
    const expected =
      mode === 'cdev'
        ? // The second munmap is the page IOMMU_IOAS_IOVA_RANGES writes into.
          [
            'VFIO_DEVICE_DETACH_IOMMUFD_PT:device',
            'close:device',
            'IOMMU_IOAS_UNMAP:iommufd',
            'IOMMU_DESTROY:iommufd',
            'close:iommufd',
            'munmap',
            'munmap',
          ]
        : [
            'close:device',
            'VFIO_IOMMU_UNMAP_DMA:container',
            'VFIO_GROUP_UNSET_CONTAINER:group',
            'close:group',
            'close:container',
            'munmap',
          ];
    t.same(calls, expected, `${mode}: ${calls.join(', ')}`);
    t.same(kernel.leaks(), NO_LEAKS);
    vfio.close();
    kernel.dispose();
  }
});

t.test('group mode: no MAP_DMA before SET_IOMMU; mappings made early are replayed', async (t) => {
  const kernel = new FakeKernel({ mode: 'group', devices: [edu()], log: true });
  t.teardown(() => kernel.dispose());
  const vfio = createVfio({ sys: kernel.sys, sysfs: kernel.sysfsRoot, dev: kernel.devRoot, proc: kernel.procRoot, env: {} });
  const c = vfio.createContainer();
  const buf = c.allocDma(4096, { dmaLimit: 1n << 28n });
  buf.bytes[0] = 0x5a;
  throwsCode(t, () => c.iommuInfo(), 'EINVAL', 'no IOMMU ranges before the first device');
  t.notOk(
    kernel.log.some((r) => r.request === VFIO_IOMMU_MAP_DMA),
    'no MAP_DMA was issued without an IOMMU',
  );
  c.assignDevice(EDU);
  const names = kernel.log.map((r) => r.requestName).filter((n) => n !== undefined);
  t.ok(names.indexOf('VFIO_SET_IOMMU') < names.indexOf('VFIO_IOMMU_MAP_DMA'), 'SET_IOMMU comes first, then the replay');
  const dev = vfio.openDevice(EDU);
  enableBusMaster(kernel, EDU);
  t.equal(kernel.device(EDU).dmaRead(buf.iova, 1)[0], 0x5a, 'the early buffer is mapped');
  dev.release();
  vfio.close();
  t.same(kernel.leaks(), NO_LEAKS);
});

t.test('group mode: a failed replay unwinds the assignment', async (t) => {
  const { kernel, vfio } = machine('group');
  t.teardown(() => kernel.dispose());
  const c = vfio.createContainer();
  c.allocDma(4096);
  c.allocDma(4096);
  const base = kernel.leaks();
  const rule = kernel.failWhen({ request: VFIO_IOMMU_MAP_DMA }, 'ENOMEM', { times: 1 });
  // The first replayed mapping goes in, the second fails: both must be undone.
  let seen = 0;
  rule.remove();
  kernel.failWhen((r) => r.request === VFIO_IOMMU_MAP_DMA && ++seen === 2, 'ENOMEM');
  throwsCode(t, () => c.assignDevice(EDU), 'ENOMEM', 'replay failed', EDU);
  t.same(kernel.leaks(), base, 'group left, IOMMU dropped, nothing pinned');
  t.same(c.devices, []);
  kernel.clearFaults();
  c.assignDevice(EDU);
  t.pass('a later assignment works');
  vfio.close();
  t.same(kernel.leaks(), NO_LEAKS);
});

t.test('failed setups leave nothing: a refused ioctl at each step of openDevice', async (t) => {
  const cases: [mode: 'cdev' | 'group', request: number, name: string][] = [
    ['cdev', VFIO_DEVICE_ATTACH_IOMMUFD_PT, 'VFIO_DEVICE_ATTACH_IOMMUFD_PT'],
    ['group', VFIO_GROUP_SET_CONTAINER, 'VFIO_GROUP_SET_CONTAINER'],
    ['group', VFIO_SET_IOMMU, 'VFIO_SET_IOMMU'],
  ];
  for (const [mode, request, name] of cases) {
    const { kernel, vfio } = machine(mode);
    kernel.failWhen({ request }, 'EPERM');
    const err = vfioErrorOf(() => vfio.openDevice(EDU));
    t.match(err, { code: 'EPERM', request: name, device: EDU }, `${mode}: ${name} is named in the error`);
    t.same(kernel.leaks(), NO_LEAKS, `${mode}: nothing leaked, the default container made for the call included`);
    kernel.dispose();
  }
  for (const mode of ['cdev', 'group'] as const) {
    const { kernel, vfio } = machine(mode);
    const dev = vfio.openDevice(EDU);
    const base = kernel.leaks();
    kernel.failWhen({ request: mode === 'cdev' ? IOMMU_IOAS_MAP : VFIO_IOMMU_MAP_DMA }, 'ENOMEM');
    throwsCode(t, () => dev.container.allocDma(4096), 'ENOMEM', `${mode}: map refused`);
    t.same(kernel.leaks(), base, `${mode}: the buffer's memory was freed`);
    kernel.clearFaults();
    const ok = dev.container.allocDma(4096);
    t.equal(ok.iova, 0x1000n, `${mode}: the refused IOVA went back to the allocator`);
    vfio.close();
    t.same(kernel.leaks(), NO_LEAKS);
    kernel.dispose();
  }
});

t.test('fd 0 is a valid fd', async (t) => {
  for (const mode of MODES) {
    const { kernel, vfio } = machine(mode, { firstFd: 0 });
    const dev = vfio.openDevice(EDU);
    const s = dev.container.kernelState;
    t.equal(s.mode === 'cdev' ? s.iommufd : s.containerFd, 0, `${mode}: the container got fd 0`);
    const buf = dev.container.allocDma(4096);
    enableBusMaster(kernel, EDU);
    buf.bytes[0] = 9;
    t.equal(kernel.device(EDU).dmaRead(buf.iova, 1)[0], 9, `${mode}: DMA works`);
    t.ok(dev.getInfo().pci);
    dev.release();
    vfio.close();
    t.same(kernel.leaks(), NO_LEAKS, `${mode}: fd 0 was closed too`);
    kernel.dispose();
  }
});
