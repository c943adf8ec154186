// The iommufd compat container (/dev/vfio/vfio served by iommufd,
// CONFIG_IOMMUFD_VFIO_CONTAINER): group mode works on it as on the legacy
// container, and the library says which of the two the machine has, from the
// filesystem (getContainerKind) and from the kernel (Container.containerKind).
import t from 'tap';
import { EDU, enableBusMaster, machine, NO_LEAKS } from './harness.js';

for (const kind of ['legacy', 'iommufd-compat'] as const) {
  t.test(`group mode on the ${kind} container`, async (t) => {
    // iommufd is loaded beside the compat container: cdev mode is there too.
    const { kernel, vfio } = machine('group', { containerKind: kind, cdevInterface: kind === 'iommufd-compat' }, { VFIO_MODE: 'group' });
    t.teardown(() => kernel.dispose());
    t.equal(vfio.getContainerKind(), kind, 'the filesystem tells');
    t.equal(vfio.getMode(EDU), 'group');
    const c = vfio.createContainer({ mode: 'group' });
    t.equal(c.containerKind, kind, 'the kernel tells, before any group joins');
    c.assignDevice(EDU);
    const dev = vfio.openDevice(EDU);
    t.equal(dev.container.containerKind, kind, 'and once the IOMMU is set');
    using buf = dev.container.allocDma(4096);
    buf.bytes.fill(0x5a, 0, 8);
    enableBusMaster(kernel, EDU);
    t.same([...kernel.device(EDU).dmaRead(buf.iova, 8)], Array(8).fill(0x5a), 'DMA goes through the container');
    c.close();
    vfio.close();
    t.same(kernel.leaks(), NO_LEAKS);
  });
}

t.test('cdev containers are iommufd; no /dev/vfio/vfio is no container kind', async (t) => {
  const { kernel, vfio } = machine('cdev', { groupInterface: false });
  t.teardown(() => kernel.dispose());
  t.equal(vfio.getContainerKind(), null);
  t.equal(vfio.createContainer().containerKind, 'iommufd');
});
