// SR-IOV VF tokens on the fake kernel, which follows vfio-pci's rules
// (lib/testing/sriov.ts): a VF of a PF bound to vfio-pci opens only with the
// PF's token, set through VFIO_DEVICE_FEATURE on the PF; the group path takes
// it in the device name, the cdev bind with VFIO_DEVICE_BIND_FLAG_TOKEN from
// Linux 6.17 (before that a token there is ENOTSUP).
import t from 'tap';
import { createVfio } from '../../lib/core/context.js';
import { FakeKernel, pciDevice, type FakeKernelOptions, type FakeMode } from '../../lib/testing/index.js';
import { NO_LEAKS, vfioErrorOf } from './harness.js';

const PF = '0000:01:00.0';
const VF0 = '0000:01:00.1';
const VF1 = '0000:01:00.2';
const OTHER = '0000:00:03.0';
const TOKEN = 'bd8d9d2b-5a5f-4f5a-a211-f591514ba1f3';
const WRONG = '00000000-1111-2222-3333-444444444444';

const nvme = (address: string, group: number, extra: object) =>
  pciDevice({
    address,
    group,
    vendor: 0x1b36,
    device: 0x0010,
    class: 0x010802,
    bars: [{ index: 0, size: 16384, type: 'mem64' }],
    ...extra,
  });

function sriovMachine(mode: FakeMode, opts: Omit<FakeKernelOptions, 'mode' | 'devices'> = {}, pfDriver: string | null = 'vfio-pci') {
  const kernel = new FakeKernel({
    mode,
    devices: [
      nvme(PF, 1, { sriov: { totalVfs: 4 }, driver: pfDriver }),
      nvme(VF0, 2, { physfn: PF }),
      nvme(VF1, 3, { physfn: PF }),
      nvme(OTHER, 4, {}),
    ],
    ...opts,
  });
  const vfio = createVfio({ sys: kernel.sys, sysfs: kernel.sysfsRoot, dev: kernel.devRoot, proc: kernel.procRoot, env: {} });
  t.teardown(() => {
    vfio.close();
    kernel.dispose();
  });
  return { kernel, vfio };
}

for (const [mode, release] of [
  ['group', '6.12.0'],
  ['group', '7.2.0'],
  ['cdev', '7.2.0'],
] as const) {
  t.test(`${mode} mode on ${release}: a VF opens only with its PF's token`, async (t) => {
    const { kernel, vfio } = sriovMachine(mode, { release });
    const pf = vfio.openDevice(PF);

    const none = vfioErrorOf(() => vfio.openDevice(VF0));
    t.match(none, { code: 'EACCES', message: /a VF token is needed: its PF 0000:01:00\.0 is bound to vfio-pci/ }, 'no token: EACCES');
    // The PF's token starts random: even before it is set, no token opens a VF.
    t.match(
      vfioErrorOf(() => vfio.openDevice(VF0, { vfToken: TOKEN })),
      { code: 'EACCES', message: /VF token is needed that matches/ },
    );

    pf.setVfToken(TOKEN);
    t.match(
      vfioErrorOf(() => vfio.openDevice(VF0, { vfToken: WRONG })),
      { code: 'EACCES', message: /VF token is needed that matches/ },
      'wrong token',
    );
    const vf = vfio.openDevice(VF0, { vfToken: TOKEN.toUpperCase() });
    t.equal(vf.config.read16(0), 0x1b36, 'the VF config space reads');
    t.equal(vf.mapBar(0).read32(0), 0, 'its BAR0 reads');

    // A PF whose VFs are open opens again only with the current token.
    pf.release();
    t.match(
      vfioErrorOf(() => vfio.openDevice(PF)),
      { code: 'EACCES', message: /VFs of this PF are open/ },
    );
    t.match(
      vfioErrorOf(() => vfio.openDevice(PF, { vfToken: WRONG })),
      { code: 'EACCES', message: /matches the current one/ },
    );
    const pf2 = vfio.openDevice(PF, { vfToken: TOKEN });
    t.equal(vf.config.read16(0), 0x1b36, 'the VF kept working while its PF was released and opened again');
    pf2.release();
    vf.release();

    // With no VF open the PF opens without a token, and one given for it sets it.
    const pf3 = vfio.openDevice(PF, { vfToken: WRONG });
    pf3.release();
    t.match(
      vfioErrorOf(() => vfio.openDevice(VF1, { vfToken: TOKEN })),
      { code: 'EACCES' },
      'the PF open set another token',
    );
    vfio.openDevice(VF1, { vfToken: WRONG }).release();

    t.match(
      vfioErrorOf(() => vfio.openDevice(OTHER, { vfToken: TOKEN })),
      {
        code: 'EINVAL',
        message: /neither an SR-IOV PF bound to vfio-pci nor one of its VFs/,
      },
    );
    t.match(
      vfioErrorOf(() => vfio.openDevice(OTHER).setVfToken(TOKEN)),
      { code: 'ENOTSUP', message: /not an SR-IOV physical function/ },
    );
    vfio.close();
    t.same(kernel.leaks(), NO_LEAKS);
  });
}

t.test('cdev mode before 6.17: a token is ENOTSUP naming the kernel; no token binds unchecked, as 6.12 does', async (t) => {
  const { kernel, vfio } = sriovMachine('cdev', { release: '6.12.43+deb13-amd64' });
  const pf = vfio.openDevice(PF);
  pf.setVfToken(TOKEN);
  t.match(
    vfioErrorOf(() => vfio.openDevice(VF0, { vfToken: TOKEN })),
    {
      code: 'ENOTSUP',
      message: /needs Linux 6\.17 or later; this kernel is 6\.12\.43\+deb13-amd64/,
    },
  );
  t.same(kernel.leaks().fds, 2, 'only the iommufd and the PF stay open');
  // Linux 6.12's cdev bind checks no VF token at all.
  vfio.openDevice(VF0).release();
  vfio.close();
  t.same(kernel.leaks(), NO_LEAKS);
});

t.test('a VF token that is not a UUID is EINVAL before anything is opened', async (t) => {
  const { kernel, vfio } = sriovMachine('group', { log: true });
  for (const bad of ['', 'nope', `${TOKEN} `, `${TOKEN.slice(0, 35)}g`, 42 as unknown as string]) {
    t.match(
      vfioErrorOf(() => vfio.openDevice(VF0, { vfToken: bad })),
      { code: 'EINVAL', message: /must be a UUID/ },
    );
  }
  t.same(kernel.log, [], 'no system call');
  const pf = vfio.openDevice(PF);
  t.match(
    vfioErrorOf(() => pf.setVfToken('x')),
    { code: 'EINVAL' },
  );
});

t.test('a VF whose PF is not on vfio-pci opens without a token; a token is EINVAL', async (t) => {
  const { vfio } = sriovMachine('group', {}, 'nvme');
  t.match(
    vfioErrorOf(() => vfio.openDevice(VF0, { vfToken: TOKEN })),
    { code: 'EINVAL', message: /its PF 0000:01:00\.0 is not bound to vfio-pci/ },
  );
  vfio.openDevice(VF0).release();
});

t.test('assignDevice takes the token too', async (t) => {
  const { vfio } = sriovMachine('group');
  vfio.openDevice(PF).setVfToken(TOKEN);
  const c = vfio.createContainer();
  t.match(
    vfioErrorOf(() => c.assignDevice(VF0)),
    { code: 'EACCES' },
  );
  c.assignDevice(VF0, { vfToken: TOKEN });
  t.equal(vfio.openDevice(VF0).container, c);
});
