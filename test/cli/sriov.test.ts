// `vfio sriov` and the SR-IOV columns of `vfio ls` / `vfio info` on the fake
// sysfs, whose PCI core answers sriov_numvfs writes as Linux does.
import t from 'tap';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { pciDevice } from '../../lib/testing/index.js';
import { cliMachine } from './harness.js';

const PF = '0000:01:00.0';
const VF0 = '0000:01:00.1';
const VF1 = '0000:01:00.2';
const TOKEN = 'bd8d9d2b-5a5f-4f5a-a211-f591514ba1f3';
const nvme = (address: string, group: number, extra: object) =>
  pciDevice({ address, group, vendor: 0x1b36, device: 0x0010, class: 0x010802, bars: [{ index: 0, size: 16384 }], ...extra });

function sriovMachine(pfDriver: string, vfDriver: string | null) {
  const m = cliMachine({
    mode: 'group',
    devices: [
      nvme(PF, 1, { sriov: { totalVfs: 4 }, driver: pfDriver }),
      nvme(VF0, 2, { physfn: PF, driver: vfDriver }),
      nvme(VF1, 3, { physfn: PF, driver: vfDriver }),
    ],
  });
  t.teardown(() => m.dispose());
  return m;
}

t.test('list, remove and create the VFs of a PF on vfio-pci', async (t) => {
  const m = sriovMachine('vfio-pci', 'vfio-pci');
  const show = m.run('sriov', '01:00.0');
  t.equal(show.code, 0, show.err);
  t.match(show.out, `${PF}: 2 of 4 VFs\n`);
  t.match(show.out, new RegExp(`${VF0} +vfio-pci +2`));
  t.same(JSON.parse(m.run('sriov', PF, '--json').out), {
    pf: PF,
    totalVfs: 4,
    numVfs: 2,
    vfs: [
      { address: VF0, driver: 'vfio-pci', iommuGroup: 2 },
      { address: VF1, driver: 'vfio-pci', iommuGroup: 3 },
    ],
  });

  const ls = m.run('ls');
  t.match(ls.out, /SR-IOV/);
  t.match(ls.out, new RegExp(`${PF} .* PF 2/4`));
  t.match(ls.out, new RegExp(`${VF1} .* VF of ${PF}`));
  const lsJson = JSON.parse(m.run('ls', '--json').out) as { address: string; physfn: string | null; sriov: unknown }[];
  t.equal(lsJson.find((d) => d.address === VF0)?.physfn, PF);
  t.match(lsJson.find((d) => d.address === PF)?.sriov, { totalVfs: 4, numVfs: 2, vfs: [VF0, VF1] });

  const enableSriov = (v: string) => writeFileSync(join(m.kernel.sysfsRoot, 'module', 'vfio_pci', 'parameters', 'enable_sriov'), v);
  enableSriov('Y\n');
  m.writes.length = 0;
  t.match(m.run('sriov', PF, '--numvfs', '1'), { code: 0, out: new RegExp(`${PF}: created 1 VF\\(s\\) \\(had 2\\)`) }, 'through 0');
  t.same(m.writes, [
    [`bus/pci/devices/${PF}/sriov_numvfs`, '0'],
    [`bus/pci/devices/${PF}/sriov_numvfs`, '1'],
  ]);
  t.match(m.run('sriov', PF, '--numvfs', '5'), { code: 1, err: /at most 4 VFs/ });
  t.match(m.run('sriov', PF, '--numvfs', '0'), { code: 0, out: new RegExp(`${PF}: removed its 1 VF\\(s\\)\n${PF}: 0 of 4 VFs\n`) });

  enableSriov('N\n');
  const off = m.run('sriov', PF, '--numvfs', '2');
  t.equal(off.code, 1);
  t.match(off.err, /ENOENT.*vfio-pci creates VFs only with enable_sriov=1/);
  enableSriov('Y\n');
  const on = m.run('sriov', PF, '--numvfs', '2');
  t.equal(on.code, 0, on.err);
  t.equal(m.driverOf(VF0), 'vfio-pci', "vfio-pci takes its PF's VFs");
});

t.test('--bind hands VFs of a PF on a host driver to vfio-pci', async (t) => {
  const m = sriovMachine('nvme', null);
  const r = m.run('sriov', PF, '--bind');
  t.equal(r.code, 0, r.err);
  t.match(r.out, `${VF0}: bound to vfio-pci (was no driver)\n${VF1}: bound to vfio-pci (was no driver)\n`);
  t.equal(m.driverOf(VF1), 'vfio-pci');
});

t.test('not a PF', async (t) => {
  const m = sriovMachine('vfio-pci', 'vfio-pci');
  t.match(m.run('sriov', VF0), { code: 1, err: new RegExp(`${VF0} is a VF of ${PF}: give the PF`) });
  t.match(m.run('sriov', 'zz'), { code: 2 });
});

t.test('vfio info of a VF takes --vf-token and names its PF; the container kind is shown', async (t) => {
  const m = sriovMachine('vfio-pci', 'vfio-pci');
  const without = m.run('info', VF0);
  t.equal(without.code, 1);
  t.match(without.err, /EACCES.*a VF token is needed/);
  // The PF's token starts random: set it the way a PF driver does.
  const v = m.kernel;
  const { createVfio } = await import('../../lib/core/context.js');
  const ctx = createVfio({ sys: v.sys, sysfs: v.sysfsRoot, dev: v.devRoot, proc: v.procRoot, env: {} });
  ctx.openDevice(PF).setVfToken(TOKEN);
  ctx.close();
  const r = m.run('info', VF0, '--vf-token', TOKEN);
  t.equal(r.code, 0, r.err);
  t.match(r.out, `  container    the legacy VFIO container (vfio)\n  sr-iov       VF of ${PF}\n`);
  t.match(JSON.parse(m.run('info', VF0, '--vf-token', TOKEN, '--json').out), { containerKind: 'legacy', physfn: PF });
  t.match(m.run('info', PF).out, `  sr-iov       PF with 2 of 4 VFs: ${VF0}, ${VF1}\n`);
});
