// SR-IOV VF tokens on a real kernel: QEMU's nvme as an SR-IOV physical
// function (VFIO_VM_NVME_PF, bound to vfio-pci, vfio_pci.enable_sriov=1 on
// the command line; see test/vm/README.md). The test creates two VFs through
// sriov_numvfs (vfio-pci binds them itself), then checks vfio-pci's token
// rules through the library: a VF opened without a token or with a wrong one
// is EACCES with a message that says a VF token is needed; with the token
// set on the PF it opens and its config space and BAR0 read; a PF released
// while its VF is open leaves the VF working, and opens again only with the
// current token. In cdev mode the token needs Linux 6.17+
// (VFIO_DEVICE_BIND_FLAG_TOKEN): before, it is ENOTSUP naming the kernel.
import t from 'tap';
import { readFileSync, readlinkSync, writeFileSync } from 'node:fs';
import { basename } from 'node:path';
import { createVfio } from '../../../lib/index.js';
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
} else if (process.env.VFIO_VM_SRIOV_PENDING !== 'run') {
  // Seen on 6.12 (the first real-kernel run, stop 11): group mode's token
  // rules hold (EACCES without a token and with a wrong one, config space
  // reads with the right one), but QEMU's nvme VF is inaccessible (D3cold,
  // "not ready after FLR") until the PF brings its secondary controller
  // online, so the BAR0 read below dies with SIGBUS; and 6.12's cdev bind
  // opens a VF with no token at all, which this test's cdev branch does not
  // expect. Both need the test reworked against a real run before it gates CI.
  t.plan(0, 'pending rework: QEMU nvme VFs need their secondary controller online before BAR0 reads; 6.12 cdev opens VFs without a token');
} else {
  const TOKEN = '5d8f1c4e-2b7a-4e39-9c61-0a3f5b7d9e21';
  const WRONG = '11111111-2222-3333-4444-555555555555';
  const sysfs = (a: string, f: string): string => `/sys/bus/pci/devices/${a}/${f}`;
  const release = readFileSync('/proc/sys/kernel/osrelease', 'utf8').trim();
  const [major, minor] = release.split('.').map(Number) as [number, number];
  const cdevTokens = major > 6 || (major === 6 && minor >= 17);
  const v = createVfio({ sys: koffiSys, env: { VFIO_MODE: env.mode } });
  t.teardown(() => {
    v.close();
    writeFileSync(sysfs(pf, 'sriov_numvfs'), '0');
  });

  t.test(`${env.mode} mode on Linux ${release}: VFs of a PF on vfio-pci and their token`, async (t) => {
    t.equal(basename(readlinkSync(sysfs(pf, 'driver'))), 'vfio-pci', 'the PF is on vfio-pci');
    if (readFileSync(sysfs(pf, 'sriov_numvfs'), 'utf8').trim() !== '2') {
      writeFileSync(sysfs(pf, 'sriov_numvfs'), '0');
      writeFileSync(sysfs(pf, 'sriov_numvfs'), '2');
    }
    const vf = basename(readlinkSync(sysfs(pf, 'virtfn0')));
    t.equal(basename(readlinkSync(sysfs(vf, 'driver'))), 'vfio-pci', 'vfio-pci took its own VF (driver_override)');
    t.equal(basename(readlinkSync(sysfs(vf, 'physfn'))), pf);

    const pfDev = v.openDevice(pf);
    const none = errorOf(() => v.openDevice(vf));
    t.comment(`a VF opened without a token: ${typeof none === 'string' ? none : `${none.code} ${none.message}`}`);
    t.match(none, { code: 'EACCES', message: /a VF token is needed/ });

    if (env.mode === 'cdev' && !cdevTokens) {
      pfDev.setVfToken(TOKEN);
      t.match(
        errorOf(() => v.openDevice(vf, { vfToken: TOKEN })),
        {
          code: 'ENOTSUP',
          message: new RegExp(`needs Linux 6\\.17 or later; this kernel is ${release.replace(/[.+]/g, '\\$&')}`),
        },
      );
      pfDev.release();
      return;
    }

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
    const vendor = Number(readFileSync(sysfs(vf, 'vendor'), 'utf8'));
    t.equal(vfDev.config.read16(0), vendor, 'the VF config space reads its vendor id');
    const cap = vfDev.mapBar(0).read32(0);
    t.not(cap, 0xffffffff, `BAR0 reads (NVMe CAP low 0x${cap.toString(16)})`);
    t.not(cap, 0);

    // vfio-pci keeps VFs open across a release of their PF, and then opens
    // the PF only with the current token.
    pfDev.release();
    t.equal(vfDev.config.read16(0), vendor, 'the VF still works with its PF released');
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
