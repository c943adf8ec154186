// The example NVMe driver as an SR-IOV PF driver on the fake kernel's nvme
// PF (nvmeSriov in lib/testing/nvme.ts, QEMU 7.2's rules), the same steps as
// the VM tier's guest/sriov.test.ts: the primary gives up its flexible
// resources (effective at its next FLR: the next open), hands a secondary
// controller queues and a vector, brings it online; the VF then opens with
// the PF's token and reads as an NVMe controller, and runs I/O-less bring-up
// with the driver. Also: what the controller refuses, with the status QEMU
// gives, and a VF offline reads as QEMU's does.
import t from 'tap';
import { createVfio } from '../../lib/core/context.js';
import { FakeKernel, nvmeSriov, type FakeMode } from '../../lib/testing/index.js';
import { Nvme, NvmeStatusError } from '../../examples/nvme/driver.js';

const PF = '0000:03:00.0';
const VF1 = '0000:03:00.1';
const VF2 = '0000:03:00.2';
const TOKEN = '5d8f1c4e-2b7a-4e39-9c61-0a3f5b7d9e21';
const NO_LEAKS = { fds: 0, mappings: 0, pinned: 0 };

/** The VM tier's PF: max_ioqpairs=6, sriov_vq_flexible=4, sriov_vi_flexible=2, sriov_max_vq_per_vf=2, sriov_max_vi_per_vf=1. */
function machine(mode: FakeMode) {
  const kernel = new FakeKernel({
    mode,
    release: '7.2.0',
    devices: nvmeSriov(
      { address: PF, group: 10, ioQueuePairs: 6, serial: 'vfio-nvme-pf' },
      [
        { address: VF1, group: 11, serial: 'vfio-nvme-pf' },
        { address: VF2, group: 12, serial: 'vfio-nvme-pf' },
      ],
      { vqFlexible: 4, viFlexible: 2, maxVqPerVf: 2, maxViPerVf: 1 },
    ),
  });
  const ctx = createVfio({ sys: kernel.sys, sysfs: kernel.sysfsRoot, dev: kernel.devRoot, proc: kernel.procRoot, env: {} });
  t.teardown(() => {
    ctx.close();
    kernel.dispose();
  });
  return { kernel, ctx };
}

const statusOf = (p: Promise<unknown>): Promise<unknown> =>
  p.then(
    () => 'resolved',
    (e: unknown) => e,
  );

for (const mode of ['group', 'cdev'] as const) {
  t.test(`${mode}: a VF's secondary controller brought online through the PF, then the VF opened with the token`, async (t) => {
    const { kernel, ctx } = machine(mode);
    {
      await using primary = await Nvme.open(ctx, PF, { ioQueues: 1 });
      t.equal(primary.controller.id, 0, 'the primary controller is CNTLID 0');
      t.same(await primary.secondaryControllers(), [
        { id: 1, online: false, vfNumber: 1, queues: 0, vectors: 0 },
        { id: 2, online: false, vfNumber: 2, queues: 0, vectors: 0 },
      ]);
      // Nothing is free while the primary holds every flexible resource.
      t.match(
        await statusOf(primary.virtualizationManagement({ action: 'secondary-assign', controller: 1, resource: 'queues', count: 2 })),
        { name: 'NvmeStatusError', message: /Virtualization Management \(secondary-assign\)/ },
      );
      t.equal(await primary.virtualizationManagement({ action: 'primary-allocate', resource: 'queues', count: 0 }), 0);
      t.equal(await primary.virtualizationManagement({ action: 'primary-allocate', resource: 'vectors', count: 0 }), 0);
    }
    // The open's FLR applies the allocation.
    const primary = await Nvme.open(ctx, PF, { ioQueues: 1 });
    t.teardown(() => primary.close());
    t.equal(await primary.virtualizationManagement({ action: 'secondary-assign', controller: 1, resource: 'queues', count: 2 }), 2);
    t.match(
      await statusOf(primary.virtualizationManagement({ action: 'secondary-assign', controller: 1, resource: 'vectors', count: 2 })),
      NvmeStatusError,
      'more vectors than sriov_max_vi_per_vf: refused',
    );
    t.match(
      await statusOf(primary.virtualizationManagement({ action: 'secondary-online', controller: 1 })),
      NvmeStatusError,
      'online without a vector: refused',
    );
    t.equal(await primary.virtualizationManagement({ action: 'secondary-assign', controller: 1, resource: 'vectors', count: 1 }), 1);

    // Offline: every register but CSTS reads 0, CSTS says CFS.
    primary.device.setVfToken(TOKEN);
    {
      const vf = ctx.openDevice(VF1, { vfToken: TOKEN });
      const bar = vf.mapBar(0);
      t.equal(bar.read64(0), 0n, 'offline: CAP reads 0');
      t.equal(bar.read32(0x1c), 2, 'offline: CSTS.CFS');
      bar.close();
      vf.release();
    }
    await primary.virtualizationManagement({ action: 'secondary-online', controller: 1 });
    t.match(
      await statusOf(primary.virtualizationManagement({ action: 'secondary-assign', controller: 1, resource: 'queues', count: 1 })),
      NvmeStatusError,
      'an online secondary controller takes no resources',
    );
    t.same((await primary.secondaryControllers())[0], { id: 1, online: true, vfNumber: 1, queues: 2, vectors: 1 });

    // Online: the VF is a controller with one I/O queue pair, driven by the same driver.
    {
      await using vf = await Nvme.open(ctx, VF1, { ioQueues: 1, vfToken: TOKEN });
      t.equal(vf.controller.id, 1, "the VF's controller is its secondary controller");
      t.same(vf.ioQueues, [1]);
    }
    t.equal(
      await statusOf(Nvme.open(ctx, VF1, { ioQueues: 2, vfToken: TOKEN })).then((e) => (e as Error).message),
      `${VF1}: the controller grants 1 I/O queue pairs, 2 asked`,
    );

    // Offline again: the resources go back to the pool.
    await primary.virtualizationManagement({ action: 'secondary-offline', controller: 1 });
    t.same((await primary.secondaryControllers())[0], { id: 1, online: false, vfNumber: 1, queues: 0, vectors: 0 });
    await primary.close();
    ctx.close();
    // The portable eventfd poller (lib/libc/eventfd-poller.ts) closes its own
    // wake-up eventfd when its loop sees no watch left: a turn later.
    for (let i = 0; i < 50 && kernel.leaks().fds > 0; i++) await new Promise((r) => setTimeout(r, 10));
    t.same(kernel.leaks(), NO_LEAKS);
  });
}

t.test("a VF's controller is no primary: Identify CNS 15h is Invalid Field, Virtualization Management names no controller", async (t) => {
  const kernel = new FakeKernel({
    mode: 'cdev',
    release: '7.2.0',
    devices: nvmeSriov({ address: PF, group: 10 }, [{ address: VF1, group: 11 }], { vqFlexible: 2, viFlexible: 1 }),
  });
  const ctx = createVfio({ sys: kernel.sys, sysfs: kernel.sysfsRoot, dev: kernel.devRoot, proc: kernel.procRoot, env: {} });
  t.teardown(() => {
    ctx.close();
    kernel.dispose();
  });
  const pf = await Nvme.open(ctx, PF, { ioQueues: 1 });
  await pf.virtualizationManagement({ action: 'primary-allocate', resource: 'queues', count: 0 });
  await pf.virtualizationManagement({ action: 'primary-allocate', resource: 'vectors', count: 0 });
  await pf.close();
  const primary = await Nvme.open(ctx, PF, { ioQueues: 1 });
  await primary.virtualizationManagement({ action: 'secondary-assign', controller: 1, resource: 'queues', count: 2 });
  await primary.virtualizationManagement({ action: 'secondary-assign', controller: 1, resource: 'vectors', count: 1 });
  await primary.virtualizationManagement({ action: 'secondary-online', controller: 1 });
  primary.device.setVfToken(TOKEN);
  await using vf = await Nvme.open(ctx, VF1, { ioQueues: 1, vfToken: TOKEN });
  t.match(await statusOf(vf.secondaryControllers()), { name: 'NvmeStatusError', message: /Invalid Field in Command/ });
  t.match(await statusOf(vf.virtualizationManagement({ action: 'secondary-online', controller: 1 })), NvmeStatusError);
  t.type(await statusOf(vf.virtualizationManagement({ action: 'primary-allocate', resource: 'queues', count: 70000 })), RangeError);
  await primary.close();
});

t.test('nvmeSriov checks QEMU’s SR-IOV parameters', async (t) => {
  t.throws(() => nvmeSriov({ address: PF }, [], { vqFlexible: 2, viFlexible: 1 }), RangeError);
  t.throws(() => nvmeSriov({ address: PF }, [{ address: VF1 }], { vqFlexible: 1, viFlexible: 1 }), /2 per VF/);
  t.throws(() => nvmeSriov({ address: PF }, [{ address: VF1 }], { vqFlexible: 2, viFlexible: 0 }), /1 per VF/);
});
