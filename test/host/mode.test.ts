// Discovery and mode selection: sysfs description, getMode per device and per
// machine, forced modes (option and VFIO_MODE) and what happens when the
// machine cannot give them.
import { renameSync, rmSync, symlinkSync, readlinkSync } from 'node:fs';
import { join } from 'node:path';
import t from 'tap';
import { createVfio } from '../../lib/core/context.js';
import { locatePciDevice } from '../../lib/host/sysfs.js';
import { edu, FakeKernel } from '../../lib/testing/index.js';
import { EDU, EDU2, MODES, NO_LEAKS, machine, vfioErrorOf } from '../core/harness.js';

t.test('describeDevice reads sysfs', async (t) => {
  const { kernel, vfio } = machine('cdev');
  t.teardown(() => kernel.dispose());
  const d = vfio.describeDevice('00:03.0');
  t.match(d, {
    address: EDU,
    vendor: 0x1234,
    device: 0x11e8,
    class: 0x00ff00,
    driver: 'vfio-pci',
    iommuGroup: 3,
    noiommu: false,
    groupNode: `${kernel.devRoot}/vfio/3`,
    cdevNode: /\/vfio\/devices\/vfio[0-9]+$/,
  });
  t.equal(vfio.describeDevice(EDU2).iommuGroup, 6);
  t.same(kernel.leaks(), NO_LEAKS, 'discovery opens nothing');
  t.equal(kernel.syscalls, 0, 'discovery makes no system call');
});

t.test('describeDevice in no-IOMMU mode', async (t) => {
  const { kernel, vfio } = machine('noiommu');
  t.teardown(() => kernel.dispose());
  t.match(vfio.describeDevice(EDU), { noiommu: true, groupNode: `${kernel.devRoot}/vfio/noiommu-3`, cdevNode: null });
});

for (const mode of MODES) {
  t.test(`${mode} machine: getMode for a device and for the machine`, async (t) => {
    const { kernel, vfio } = machine(mode);
    t.teardown(() => kernel.dispose());
    t.equal(vfio.getMode(EDU), mode);
    t.equal(vfio.getMode(), mode, 'a new container would use it too');
    t.equal(vfio.defaultContainer.mode, mode);
    vfio.close();
    t.same(kernel.leaks(), NO_LEAKS);
  });
}

t.test('a cdev machine without the device cdev node falls back to group', async (t) => {
  const { kernel, vfio } = machine('cdev', { cdevInterface: false });
  t.teardown(() => kernel.dispose());
  t.equal(vfio.getMode(EDU), 'group');
});

t.test('forcing a mode: option, VFIO_MODE, and which wins', async (t) => {
  {
    const { kernel, vfio } = machine('cdev', {}, { VFIO_MODE: 'group' });
    t.equal(vfio.forcedMode, 'group');
    t.equal(vfio.getMode(EDU), 'group', 'VFIO_MODE=group on a machine that prefers cdev');
    const dev = vfio.openDevice(EDU);
    t.equal(dev.container.kernelState.mode, 'group', 'the device is driven through a group');
    vfio.close();
    t.same(kernel.leaks(), NO_LEAKS);
    kernel.dispose();
  }
  {
    const kernel = new FakeKernel({ mode: 'group', devices: [edu()] });
    const vfio = createVfio({
      sys: kernel.sys,
      sysfs: kernel.sysfsRoot,
      dev: kernel.devRoot,
      proc: kernel.procRoot,
      mode: 'group',
      env: { VFIO_MODE: 'cdev' },
    });
    t.equal(vfio.getMode(EDU), 'group', 'the option overrides VFIO_MODE');
    kernel.dispose();
  }
  {
    const { kernel, vfio } = machine('cdev', {}, { VFIO_MODE: '' });
    t.equal(vfio.forcedMode, undefined, 'an empty VFIO_MODE forces nothing');
    t.equal(vfio.getMode(EDU), 'cdev');
    kernel.dispose();
  }
  {
    const { kernel, vfio } = machine('cdev');
    const c = vfio.createContainer({ mode: 'group' });
    t.equal(c.mode, 'group', 'a container can be made in another available mode');
    c.assignDevice(EDU);
    const cd = vfio.createContainer();
    t.equal(cd.mode, 'cdev');
    vfio.close();
    t.same(kernel.leaks(), NO_LEAKS);
    kernel.dispose();
  }
});

t.test('a forced mode the machine or the device cannot give is ENXIO, with the reason', async (t) => {
  const cases: [machineMode: 'cdev' | 'group' | 'noiommu', forced: string, reason: RegExp][] = [
    ['group', 'cdev', /\/dev\/iommu does not exist/],
    ['cdev', 'noiommu', /enable_unsafe_noiommu_mode is not Y/],
    ['noiommu', 'group', /group 3 is a no-IOMMU group/],
    ['noiommu', 'cdev', /\/dev\/iommu does not exist/],
  ];
  for (const [machineMode, forced, reason] of cases) {
    const { kernel, vfio } = machine(machineMode, {}, { VFIO_MODE: forced });
    const err = vfioErrorOf(() => vfio.getMode(EDU));
    t.match(
      err,
      { code: 'ENXIO', device: EDU, message: new RegExp(`${forced} mode was forced but is not available: .*${reason.source}`) },
      `${forced} on a ${machineMode} machine`,
    );
    t.match(
      vfioErrorOf(() => vfio.openDevice(EDU)),
      { code: 'ENXIO' },
    );
    t.same(kernel.leaks(), NO_LEAKS);
    kernel.dispose();
  }
});

t.test('getDeviceInfo sets nothing up and reuses what is set up', async (t) => {
  for (const mode of MODES) {
    const { kernel, vfio } = machine(mode);
    const info = vfio.getDeviceInfo(EDU);
    t.same(kernel.leaks(), NO_LEAKS, `${mode}: nothing left behind`);
    t.equal(kernel.device(EDU).openCount, 0, `${mode}: the device is closed again`);
    const dev = vfio.openDevice(EDU);
    const before = kernel.syscalls;
    t.same(vfio.getDeviceInfo(EDU), info, `${mode}: the same answer for the open device`);
    t.equal(kernel.syscalls - before, 1, `${mode}: through the open fd (one ioctl)`);
    dev.release();
    vfio.close();
    kernel.dispose();
  }
});

t.test('an assigned device opens without a second look at sysfs; others are still described', async (t) => {
  for (const mode of MODES) {
    const { kernel, vfio } = machine(mode);
    const container = vfio.createContainer();
    container.assignDevice(EDU);
    // sysfs no longer shows either device: only the assigned one can open.
    const links = [EDU, EDU2].map((a) => join(kernel.sysfsRoot, 'bus', 'pci', 'devices', a));
    for (const l of links) renameSync(l, `${l}.away`);
    const dev = vfio.openDevice('00:03.0');
    t.equal(dev.container, container, `${mode}: found by its canonical address, in its container`);
    t.match(
      vfioErrorOf(() => vfio.openDevice('00:03.0')),
      { code: 'EEXIST' },
      `${mode}: and only once`,
    );
    t.match(
      vfioErrorOf(() => vfio.openDevice('0000:00:03.0/..')),
      { code: 'EINVAL' },
      `${mode}: the address is still checked first`,
    );
    t.match(
      vfioErrorOf(() => vfio.openDevice(EDU2)),
      { code: 'ENODEV', device: EDU2, message: /no such PCI device/ },
      `${mode}: an unassigned device is described (and is gone)`,
    );
    for (const l of links) renameSync(`${l}.away`, l);
    dev.release();
    vfio.close();
    t.same(kernel.leaks(), NO_LEAKS, `${mode}: nothing left open`);
    kernel.dispose();
  }
});

t.test('locating a device reads what its setup needs: not its ids, the cdev node only when asked', async (t) => {
  for (const mode of MODES) {
    const { kernel, vfio } = machine(mode);
    const roots = { sysfs: kernel.sysfsRoot, dev: kernel.devRoot, proc: kernel.procRoot };
    const d = vfio.describeDevice(EDU);
    const loc = locatePciDevice(roots, '00:03.0');
    t.same(
      loc,
      { address: EDU, driver: d.driver, iommuGroup: d.iommuGroup, noiommu: d.noiommu, groupNode: d.groupNode, cdevNode: d.cdevNode },
      `${mode}: the description without its ids`,
    );
    t.same(
      locatePciDevice(roots, EDU, { cdev: false }),
      { ...loc, cdevNode: null },
      `${mode}: cdev: false does not look for the cdev node`,
    );
    const dir = join(kernel.sysfsRoot, 'bus', 'pci', 'devices', EDU);
    renameSync(join(dir, 'vendor'), join(dir, 'vendor.away'));
    t.match(
      vfioErrorOf(() => vfio.describeDevice(EDU)),
      { code: 'ENODEV', message: /cannot read vendor/ },
      `${mode}: describing reads the ids`,
    );
    t.same(locatePciDevice(roots, EDU), loc, `${mode}: locating does not`);
    const dev = vfio.openDevice(EDU);
    t.equal(dev.address, EDU, `${mode}: nor does setting the device up`);
    vfio.close();
    renameSync(join(dir, 'vendor.away'), join(dir, 'vendor'));
    t.match(
      vfioErrorOf(() => locatePciDevice(roots, '0000:00:1f.0')),
      { code: 'ENODEV', device: '0000:00:1f.0', message: /no such PCI device in .*\/bus\/pci\/devices\)$/ },
      `${mode}: a missing device`,
    );
    t.match(
      vfioErrorOf(() => locatePciDevice(roots, '00:03.0/..')),
      { code: 'EINVAL' },
      `${mode}: the address is checked first`,
    );
    // A device with neither a driver nor an IOMMU group exists all the same.
    const links = ['driver', 'iommu_group'].map((l) => ({ path: join(dir, l), target: readlinkSync(join(dir, l)) }));
    for (const l of links) rmSync(l.path);
    t.match(
      locatePciDevice(roots, EDU),
      { address: EDU, driver: null, iommuGroup: null, noiommu: false, groupNode: null },
      `${mode}: no driver, no group`,
    );
    const again = createVfio({ sys: kernel.sys, ...roots, env: {} });
    t.match(
      vfioErrorOf(() => again.openDevice(EDU)),
      { code: 'ENODEV', message: /not managed by VFIO: no driver is bound/ },
      `${mode}: not managed`,
    );
    for (const l of links) symlinkSync(l.target, l.path);
    t.same(kernel.leaks(), NO_LEAKS, `${mode}: nothing left open`);
    kernel.dispose();
  }
});

t.test('a group-mode container sets a device up without its cdev node', async (t) => {
  const { kernel, vfio } = machine('cdev');
  t.teardown(() => kernel.dispose());
  const dir = join(kernel.sysfsRoot, 'bus', 'pci', 'devices', EDU);
  // Unreadable vfio-dev: a group container never looks there; a cdev one must.
  renameSync(join(dir, 'vfio-dev'), join(dir, 'vfio-dev.away'));
  const group = vfio.createContainer({ mode: 'group' });
  group.assignDevice(EDU);
  t.equal(vfio.openDevice(EDU).container, group);
  group.close();
  t.match(
    vfioErrorOf(() => vfio.createContainer({ mode: 'cdev' }).assignDevice(EDU)),
    { code: 'ENOTSUP', message: /no vfio-dev cdev node/ },
    'a cdev container looks for the node',
  );
  renameSync(join(dir, 'vfio-dev.away'), join(dir, 'vfio-dev'));
  vfio.close();
  t.same(kernel.leaks(), NO_LEAKS);
});

t.test('openDevice of an assigned device: any spelling of its address, and only addresses', async (t) => {
  const { kernel, vfio } = machine('group');
  t.teardown(() => kernel.dispose());
  const container = vfio.createContainer();
  container.assignDevice('00:03.0');
  const dev = vfio.openDevice(EDU);
  t.equal(dev.container, container, 'the canonical address as assignDevice recorded it');
  dev.release();
  container.assignDevice(EDU);
  t.equal(vfio.openDevice('00:03.0').container, container, 'another spelling');
  t.match(
    vfioErrorOf(() => vfio.openDevice(3 as unknown as string)),
    { code: 'EINVAL' },
    'not a string: EINVAL',
  );
  vfio.close();
  t.same(kernel.leaks(), NO_LEAKS);
});
