// A device already open elsewhere — another process, here a second context on
// the same fake kernel — is EBUSY in every mode, as the VM tier sees on Linux
// 6.12: group and no-IOMMU modes fail at open(2) of the group node (a group
// has one opener); cdev mode fails at VFIO_DEVICE_BIND_IOMMUFD, where the
// kernel says EINVAL (only the group path may open a device twice), which the
// library reports as EBUSY with the kernel's error as its cause.
import t from 'tap';
import { createVfio } from '../../lib/core/context.js';
import { EDU, MODES, NO_LEAKS, machine, vfioErrorOf } from './harness.js';

for (const mode of MODES) {
  t.test(`${mode}: a device open in another process is EBUSY`, async (t) => {
    const { kernel, vfio: holder } = machine(mode);
    t.teardown(() => kernel.dispose());
    const held = holder.openDevice(EDU);
    const other = createVfio({ sys: kernel.sys, sysfs: kernel.sysfsRoot, dev: kernel.devRoot, proc: kernel.procRoot, env: {} });
    const base = kernel.leaks();
    const err = vfioErrorOf(() => other.openDevice(EDU));
    t.match(err, { code: 'EBUSY', device: EDU }, 'openDevice: EBUSY');
    if (mode === 'cdev') {
      t.match(
        err,
        { request: 'VFIO_DEVICE_BIND_IOMMUFD', message: /already open through another VFIO cdev file/ },
        'cdev: at bind, saying why',
      );
      t.match(err instanceof Error ? err.cause : undefined, { code: 'EINVAL' }, "cdev: the kernel's EINVAL is the cause");
    } else {
      t.match(
        err,
        { syscall: 'open', message: /IOMMU group 3 is already open in another process or VFIO context/ },
        `${mode}: at open, saying why`,
      );
    }
    t.match(
      vfioErrorOf(() => other.getDeviceInfo(EDU)),
      { code: 'EBUSY', device: EDU },
      'getDeviceInfo: EBUSY',
    );
    t.same(kernel.leaks(), base, 'the refusals left nothing open');
    held.release();
    const dev = other.openDevice(EDU);
    t.equal(dev.mode, mode, 'released there, it opens here');
    other.close();
    holder.close();
    t.same(kernel.leaks(), NO_LEAKS);
  });
}
