// SR-IOV VF tokens on a real kernel: QEMU's nvme as an SR-IOV physical
// function (VFIO_VM_NVME_PF, bound to vfio-pci, vfio_pci.enable_sriov=1 on
// the command line; see test/vm/README.md), driven by the example NVMe
// driver (examples/nvme) the way a user's PF driver would:
//   1. the primary controller gives up its flexible queue and interrupt
//      resources (Virtualization Management, "primary allocate 0"), which
//      takes effect at its next FLR (the next open: vfio-pci resets a
//      function when it is opened and when it is released);
//   2. with the PF open again, two VFs are created through sriov_numvfs
//      (vfio-pci binds them itself);
//   3. the PF hands VF 1's secondary controller 2 queues (admin + 1 I/O) and
//      1 vector and brings it online. Until then QEMU's VF is a controller
//      in fatal status (CSTS.CFS) whose registers read 0;
//   4. vfio-pci's token rules through the library: with the PF open, a VF
//      opened without a token or with a wrong one is EACCES with a message
//      that says a VF token is needed; with the token set on the PF it opens,
//      and its config space and BAR0 (CAP, CSTS) read as an NVMe controller;
//   5. released while its VF is open, the PF opens again only with the
//      current token (vfio-pci: "VFs of this PF are open").
// QEMU 7.2 quirk that orders the steps: a PF's FLR unregisters its VFs but
// leaves VF Enable set in config space (fixed in QEMU 9.0, "pcie_sriov:
// Reset SR-IOV extended capability"), so Linux's restore after the reset
// sees VFs enabled and does not re-create them: in QEMU every VF is gone
// after any reset of its PF while Linux still lists it (its config space
// reads all-ones: the first real-kernel run saw "not ready after FLR" and a
// SIGBUS on BAR0; releasing such a VF then waits 65 s for its FLR). Hence
// VFs are created only while the PF is open, and before step 5 the PF's
// reset methods are turned off (sysfs reset_method, restored at the end) so
// that its release and reopening keep the VF alive. On hardware the FLR
// clears VF Enable and Linux re-creates the VFs in their reset state.
// cdev mode: the token travels in VFIO_DEVICE_BIND_FLAG_TOKEN from Linux 6.17
// on. Before it, the kernel checks no token at all on a cdev bind (the check
// lives in the group path's match callback): a VF opens without one, and the
// library refuses a token it cannot pass (ENOTSUP naming the kernel) rather
// than drop it silently.
import t from 'tap';
import { readFileSync, readlinkSync, writeFileSync } from 'node:fs';
import { basename } from 'node:path';
import { createVfio, type Device } from '../../../lib/index.js';
import { Nvme } from '../../../examples/nvme/driver.js';
import { koffiSys } from '../../../lib/libc/koffi-sys.js';
import { errorOf, guestEnv } from './guest-env.js';

const env = guestEnv();
const pf = process.env.VFIO_VM_NVME_PF;
if (env === null) {
  t.plan(0, 'VM guest test: runs inside the VM via `npm run test:vm`');
} else if (env.mode === 'noiommu') {
  t.plan(0, 'VF tokens need vfio-pci with an IOMMU (group or cdev mode)');
} else if (pf === undefined) {
  t.plan(0, 'this boot has no SR-IOV PF (VFIO_VM_NVME_PF)');
} else {
  const TOKEN = '5d8f1c4e-2b7a-4e39-9c61-0a3f5b7d9e21';
  const WRONG = '11111111-2222-3333-4444-555555555555';
  const sysfs = (a: string, f: string): string => `/sys/bus/pci/devices/${a}/${f}`;
  const release = env.kernel;
  const [major, minor] = release.split('.').map(Number) as [number, number];
  const cdevTokens = major > 6 || (major === 6 && minor >= 17);
  const v = createVfio({ sys: koffiSys, env: { VFIO_MODE: env.mode } });
  t.teardown(() => {
    v.close();
    writeFileSync(sysfs(pf, 'sriov_numvfs'), '0');
  });

  t.test(`${env.mode} mode on Linux ${release}: VFs of a PF on vfio-pci and their token`, async (t) => {
    t.equal(basename(readlinkSync(sysfs(pf, 'driver'))), 'vfio-pci', 'the PF is on vfio-pci');
    t.equal(readFileSync(sysfs(pf, 'sriov_numvfs'), 'utf8').trim(), '0', 'the boot starts with no VF');

    // Step 1.
    {
      await using primary = await Nvme.open(v, pf, { ioQueues: 1 });
      t.ok((await primary.secondaryControllers()).length >= 2, 'the PF lists a secondary controller per VF');
      await primary.virtualizationManagement({ action: 'primary-allocate', resource: 'queues', count: 0 });
      await primary.virtualizationManagement({ action: 'primary-allocate', resource: 'vectors', count: 0 });
    }
    // Step 2: the open's FLR applies step 1; the PF stays open until step 5.
    const primary = await Nvme.open(v, pf, { ioQueues: 1 });
    t.teardown(() => primary.close());
    writeFileSync(sysfs(pf, 'sriov_numvfs'), '2');
    const vf = basename(readlinkSync(sysfs(pf, 'virtfn0')));
    t.equal(basename(readlinkSync(sysfs(vf, 'driver'))), 'vfio-pci', 'vfio-pci took its own VF (driver_override)');
    t.equal(basename(readlinkSync(sysfs(vf, 'physfn'))), pf);

    // Step 3.
    const sc = (await primary.secondaryControllers()).find((c) => c.vfNumber === 1);
    if (sc === undefined) throw new Error('no secondary controller for VF 1');
    await primary.virtualizationManagement({ action: 'secondary-assign', controller: sc.id, resource: 'queues', count: 2 });
    await primary.virtualizationManagement({ action: 'secondary-assign', controller: sc.id, resource: 'vectors', count: 1 });
    await primary.virtualizationManagement({ action: 'secondary-online', controller: sc.id });
    t.match(
      (await primary.secondaryControllers()).find((c) => c.id === sc.id),
      { online: true, queues: 2, vectors: 1 },
      `secondary controller ${sc.id} (VF 1) is online with 2 queues and 1 vector`,
    );
    const pfDev = primary.device;

    // Step 4.
    const vendor = Number(readFileSync(sysfs(vf, 'vendor'), 'utf8'));
    const readsAsNvme = (dev: Device, what: string): void => {
      t.equal(dev.config.read16(0), vendor, `${what}: the VF's config space reads its vendor id`);
      const bar = dev.mapBar(0);
      const cap = bar.read64(0);
      t.not(cap, 0xffffffffffffffffn, `${what}: BAR0 reads (CAP 0x${cap.toString(16)})`);
      t.equal((cap >> 37n) & 1n, 1n, `${what}: CAP says the NVM command set`);
      t.equal(bar.read32(0x1c) & 2, 0, `${what}: CSTS.CFS is clear (the secondary controller is online)`);
      bar.close();
    };
    if (env.mode === 'cdev' && !cdevTokens) {
      const vfDev = v.openDevice(vf);
      t.pass(`Linux ${release} checks no VF token on a cdev bind (6.17+ does): the VF opens without one`);
      readsAsNvme(vfDev, 'opened without a token');
      vfDev.release();
      pfDev.setVfToken(TOKEN);
      t.match(
        errorOf(() => v.openDevice(vf, { vfToken: TOKEN })),
        {
          code: 'ENOTSUP',
          message: new RegExp(`needs Linux 6\\.17 or later; this kernel is ${release.replace(/[.+]/g, '\\$&')}`),
        },
        'a token it cannot pass is refused, not dropped',
      );
      return;
    }
    const none = errorOf(() => v.openDevice(vf));
    t.comment(`a VF opened without a token: ${typeof none === 'string' ? none : `${none.code} ${none.message}`}`);
    t.match(none, { code: 'EACCES', message: /a VF token is needed/ });
    t.match(
      errorOf(() => v.openDevice(vf, { vfToken: TOKEN })),
      { code: 'EACCES' },
      'the PF starts with a random token',
    );
    pfDev.setVfToken(TOKEN);
    const wrong = errorOf(() => v.openDevice(vf, { vfToken: WRONG }));
    t.comment(`a VF opened with a wrong token: ${typeof wrong === 'string' ? wrong : `${wrong.code} ${wrong.message}`}`);
    t.match(wrong, { code: 'EACCES', message: /VF token is needed that matches/ });

    const vfDev = v.openDevice(vf, { vfToken: TOKEN });
    readsAsNvme(vfDev, 'opened with the token');

    // Step 5 (reset methods off: see the top).
    writeFileSync(sysfs(pf, 'reset_method'), '\n');
    t.teardown(() => writeFileSync(sysfs(pf, 'reset_method'), 'default'));
    await primary.close();
    t.match(
      errorOf(() => v.openDevice(pf)),
      { code: 'EACCES', message: /VFs of this PF are open/ },
    );
    t.match(
      errorOf(() => v.openDevice(pf, { vfToken: WRONG })),
      { code: 'EACCES' },
    );
    const again = v.openDevice(pf, { vfToken: TOKEN });
    again.release();
    vfDev.release();
    v.openDevice(pf).release();
  });
}
