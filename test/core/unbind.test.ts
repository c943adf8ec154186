// The kernel takes a device back: unbinding it from vfio-pci while it is open
// signals the REQ notifier and waits for the release. On Linux 6.12 (the VM
// tier) the unbind then finishes inside the device fd's close, and the
// group's last device leaving makes the kernel take the group out of its
// container: the library's own VFIO_GROUP_UNSET_CONTAINER that follows gets
// EINVAL. Releasing from the onRequest listener must still succeed, in every
// mode, and leave nothing open.
import t from 'tap';
import { EDU, MODES, NO_LEAKS, machine } from './harness.js';

for (const mode of MODES) {
  t.test(`${mode}: released from onRequest while the kernel unbinds it`, async (t) => {
    const { kernel, vfio } = machine(mode);
    t.teardown(() => kernel.dispose());
    const dev = vfio.openDevice(EDU);
    const released = new Promise<unknown>((resolve) => {
      dev.irqs.onRequest(() => {
        try {
          dev.release();
          resolve(null);
        } catch (err) {
          resolve(err);
        }
      });
    });
    t.equal(kernel.unbindFromVfio(EDU), false, 'the unbind waits for the release');
    t.equal(await released, null, 'release() from the listener succeeds');
    t.ok(dev.closed, 'released');
    t.equal(vfio.describeDevice(EDU).driver, null, 'the unbind finished: no driver');
    if (mode !== 'cdev') t.match(kernel.kernelLog.join('\n'), /unbound/);
    vfio.close();
    t.same(kernel.leaks(), NO_LEAKS, 'nothing left open');
  });
}

t.test('group: the kernel already took the group out: release still closes it', async (t) => {
  const { kernel, vfio } = machine('group');
  t.teardown(() => kernel.dispose());
  const dev = vfio.openDevice(EDU);
  kernel.unbindFromVfio(EDU);
  dev.release(); // the close finishes the unbind; then UNSET_CONTAINER is EINVAL
  t.ok(
    kernel.kernelLog.some((l) => /VFIO_GROUP_UNSET_CONTAINER|not in a container/.test(l)),
    'the kernel refused the UNSET',
  );
  t.same(dev.container.devices, [], 'the container holds nothing');
  t.same(dev.container.kernelState.mode === 'group' ? dev.container.kernelState.groups : null, [], 'and no group');
  vfio.close();
  t.same(kernel.leaks(), NO_LEAKS);
});
