// `vfio doctor` on fake machines that are healthy, half set up, or set up for
// someone else: each problem is named with its fix, and the exit code says
// whether anything blocks VFIO.
import t from 'tap';
import { chmodSync, mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { edu, pciDevice } from '../../lib/testing/index.js';
import { cliMachine, type CliMachine } from './harness.js';

interface CheckJson {
  name: string;
  status: 'ok' | 'warn' | 'fail' | 'info';
  message: string;
  fix?: string;
}

function checks(m: CliMachine): Record<string, CheckJson> {
  const r = m.run('doctor', '--json');
  return Object.fromEntries((JSON.parse(r.out) as CheckJson[]).map((c) => [c.name, c]));
}

/** The machine has IOMMU hardware (what intel_iommu=on gives: /sys/class/iommu/dmar0). */
function withIommu(m: CliMachine): void {
  mkdirSync(join(m.kernel.sysfsRoot, 'class', 'iommu', 'dmar0'), { recursive: true });
}

t.test('a healthy cdev machine', async (t) => {
  const m = cliMachine({ mode: 'cdev', devices: [edu()] });
  t.teardown(() => m.dispose());
  withIommu(m);
  const r = m.run('doctor');
  t.equal(r.code, 0, r.out);
  t.match(r.out, /^ok {4}iommu: IOMMU enabled \(dmar0\)\n/);
  t.match(r.out, /\nok {4}modes: available modes: cdev, group \(not: noiommu: /);
  t.match(r.out, /\nok {4}devices: bound to vfio-pci: 0000:00:03\.0 \(cdev\)\n/);
  t.match(r.out, /\nvfio doctor: nothing blocks VFIO here\n$/);
  t.notMatch(r.out, /FAIL/);
  const c = checks(m);
  t.same(Object.keys(c), [
    'iommu',
    'vfio',
    'vfio-pci',
    'type1',
    'iommufd',
    'vfio-cdev',
    'container',
    'noiommu',
    'modes',
    'permissions',
    'memlock',
    'devices',
    'container-kind',
    'sriov',
    'vf-token-cdev',
    'map-file',
  ]);
  t.equal(c['permissions']?.status, 'ok');
  t.match(c['permissions']?.message, /uid 0 can open 4 VFIO node\(s\) read-write/);
});

t.test('no IOMMU, no-IOMMU mode enabled: usable, with a warning', async (t) => {
  const m = cliMachine({ mode: 'noiommu', devices: [edu()] });
  t.teardown(() => m.dispose());
  writeFileSync(join(m.kernel.procRoot, 'cmdline'), 'console=ttyS0 intel_iommu=off vfio.enable_unsafe_noiommu_mode=1\n');
  const r = m.run('doctor');
  t.equal(r.code, 0, r.out);
  const c = checks(m);
  t.equal(c['iommu']?.status, 'warn');
  t.match(c['iommu']?.fix, /IOMMU parameters on the kernel command line now: intel_iommu=off vfio\.enable_unsafe_noiommu_mode=1$/);
  t.equal(c['noiommu']?.status, 'ok');
  t.match(c['modes'], { status: 'ok', message: /^available modes: noiommu \(not: cdev: .*; group: no IOMMU\)$/ });
  t.match(c['devices'], { status: 'ok', message: 'bound to vfio-pci: 0000:00:03.0 (noiommu)' });
  t.match(r.out, /^warn  iommu: no IOMMU: only the unsafe no-IOMMU mode is available \(no DMA protection\)\n {6}fix: enable VT-d/);
});

t.test('nothing loaded: every missing piece with its fix, exit 1', async (t) => {
  const m = cliMachine({
    mode: 'group',
    type1: false,
    groupInterface: false,
    devices: [pciDevice({ address: '0000:00:05.0', group: 5, vendor: 0x8086, device: 0x10d3, class: 0x020000, driver: 'e1000e' })],
  });
  t.teardown(() => m.dispose());
  rmSync(join(m.kernel.sysfsRoot, 'bus', 'pci', 'drivers', 'vfio-pci'), { recursive: true });
  rmSync(join(m.kernel.sysfsRoot, 'module', 'vfio'), { recursive: true });
  const r = m.run('doctor');
  t.equal(r.code, 1);
  const c = checks(m);
  t.match(c['iommu'], { status: 'fail', fix: /intel_iommu=on/ });
  t.match(c['vfio'], { status: 'fail', fix: 'sudo modprobe vfio-pci (it loads vfio too)' });
  t.match(c['vfio-pci'], { status: 'fail', fix: 'sudo modprobe vfio-pci' });
  t.match(c['type1'], { status: 'warn', fix: 'sudo modprobe vfio_iommu_type1' });
  t.match(c['iommufd'], { status: 'warn', fix: /modprobe iommufd/ });
  t.match(c['container'], { status: 'warn' });
  t.match(c['noiommu'], { status: 'info', fix: /enable_unsafe_noiommu_mode/ });
  t.match(c['modes'], { status: 'fail', message: /^no VFIO mode is available/ });
  t.match(c['devices'], { status: 'info', fix: /sudo vfio bind <address>/ });
  t.match(r.out, /\nvfio doctor: 4 problem\(s\) to fix\n$/);
  t.match(r.out, /\nFAIL  vfio-pci: the vfio-pci driver is not loaded\n {6}fix: sudo modprobe vfio-pci\n/);
});

t.test('a user without access to the nodes, and a low memlock limit', async (t) => {
  const m = cliMachine({ mode: 'cdev', devices: [edu()], uid: 1000, gids: [1000] });
  t.teardown(() => m.dispose());
  withIommu(m);
  const node = join(m.kernel.devRoot, 'vfio', 'devices', 'vfio0');
  chmodSync(node, 0o600);
  writeFileSync(
    join(m.kernel.procRoot, 'self', 'limits'),
    'Limit                     Soft Limit           Hard Limit           Units\nMax locked memory         8388608              8388608              bytes\n',
  );
  const r = m.run('doctor');
  t.equal(r.code, 1);
  const c = checks(m);
  t.match(c['permissions'], {
    status: 'fail',
    message: new RegExp(`^uid 1000 cannot open .*${node} \\(owner 0:0, mode 0600\\)`),
    fix: new RegExp(`sudo chown 1000 .*${node}`),
  });
  t.match(c['memlock'], { status: 'warn', message: /memlock limit is 8 MiB/, fix: /ulimit -l unlimited/ });
  writeFileSync(join(m.kernel.procRoot, 'self', 'limits'), 'Max locked memory         unlimited            unlimited            bytes\n');
  t.match(checks(m)['memlock'], { status: 'ok', message: 'memlock limit: unlimited' });
});

t.test('a device in a group that is not viable', async (t) => {
  const m = cliMachine({
    mode: 'group',
    devices: [edu(), pciDevice({ address: '0000:00:05.0', group: 3, vendor: 0x8086, device: 0x10d3, class: 0x020000, driver: 'e1000e' })],
  });
  t.teardown(() => m.dispose());
  withIommu(m);
  t.equal(m.run('doctor').code, 1);
  t.match(checks(m)['devices'], {
    status: 'fail',
    message: 'bound to vfio-pci: 0000:00:03.0 (group, group not viable)',
    fix: '0000:00:03.0: its group also holds 0000:00:05.0 (e1000e): sudo vfio bind 0000:00:03.0 --group',
  });
});

t.test('bad arguments', async (t) => {
  const m = cliMachine({ mode: 'cdev', devices: [edu()] });
  t.teardown(() => m.dispose());
  t.same(m.run('doctor', 'now'), { code: 2, out: '', err: 'vfio doctor: unexpected argument "now" (see `vfio doctor --help`)\n' });
  t.match(m.run('doctor', '--fix'), { code: 2, err: /^vfio doctor: Unknown option '--fix'.*\(see `vfio doctor --help`\)\n$/ });
});

t.test('kernel features: container kind, SR-IOV, VF token in the cdev bind, MAP_FILE', async (t) => {
  const { pciDevice } = await import('../../lib/testing/index.js');
  const nvme = (address: string, group: number, extra: object) =>
    pciDevice({ address, group, vendor: 0x1b36, device: 0x0010, class: 0x010802, bars: [{ index: 0, size: 16384 }], ...extra });
  const newest = cliMachine({
    mode: 'cdev',
    release: '7.2.13-amd64',
    containerKind: 'iommufd-compat',
    devices: [nvme('0000:01:00.0', 1, { sriov: { totalVfs: 4 } }), nvme('0000:01:00.1', 2, { physfn: '0000:01:00.0' })],
  });
  t.teardown(() => newest.dispose());
  const c = checks(newest);
  t.match(c['container-kind'], { status: 'ok', message: /iommufd's compat container/ });
  t.match(c['sriov'], {
    status: 'info',
    message: /SR-IOV PFs: 0000:01:00\.0 \(1\/4 VFs\); vfio-pci enable_sriov=N: a PF on vfio-pci cannot create VFs/,
    fix: /enable_sriov/,
  });
  t.match(c['vf-token-cdev'], { status: 'ok', message: /Linux 7\.2\.13-amd64/ });
  t.match(c['map-file'], { status: 'ok', message: /IOMMU_IOAS_MAP_FILE: Linux 7\.2\.13-amd64/ });

  const lts = cliMachine({ mode: 'cdev', release: '6.12.43+deb13-amd64', devices: [edu()] });
  t.teardown(() => lts.dispose());
  const d = checks(lts);
  t.match(d['container-kind'], { status: 'ok', message: /legacy VFIO container/ });
  t.match(d['sriov'], { status: 'info', message: /no SR-IOV physical function/ });
  t.match(d['vf-token-cdev'], {
    status: 'info',
    message: /no VF token in the cdev bind on Linux 6\.12\.43\+deb13-amd64 \(needs 6\.17\+\)/,
  });
  t.match(d['map-file'], { status: 'info', message: /no IOMMU_IOAS_MAP_FILE on Linux 6\.12\.43\+deb13-amd64 \(needs 6\.13\+\)/ });
});
