// The library's paths (lib/host/paths.ts): each is what path.join of the root and
// the parts gives, for any roots, and follows a root that changes.
import { join } from 'node:path';
import t from 'tap';
import {
  DEFAULT_ROOTS,
  iommufdNode,
  noiommuParameter,
  pagemapFile,
  pciDeviceDir,
  pciDevicesDir,
  type1ModuleDir,
  vfioCdevDir,
  vfioContainerNode,
  vfioGroupNode,
  type Roots,
} from '../../lib/host/paths.js';

function joined(r: Roots): Record<string, string> {
  return {
    pciDevices: join(r.sysfs, 'bus', 'pci', 'devices'),
    pciDevice: join(r.sysfs, 'bus', 'pci', 'devices', '0000:00:03.0'),
    container: join(r.dev, 'vfio', 'vfio'),
    group: join(r.dev, 'vfio', '12'),
    noiommuGroup: join(r.dev, 'vfio', 'noiommu-0'),
    cdevDir: join(r.dev, 'vfio', 'devices'),
    iommufd: join(r.dev, 'iommu'),
    noiommuParameter: join(r.sysfs, 'module', 'vfio', 'parameters', 'enable_unsafe_noiommu_mode'),
    type1: join(r.sysfs, 'module', 'vfio_iommu_type1'),
    pagemap: join(r.proc, 'self', 'pagemap'),
  };
}

function built(r: Roots): Record<string, string> {
  return {
    pciDevices: pciDevicesDir(r),
    pciDevice: pciDeviceDir(r, '0000:00:03.0'),
    container: vfioContainerNode(r),
    group: vfioGroupNode(r, 12, false),
    noiommuGroup: vfioGroupNode(r, 0, true),
    cdevDir: vfioCdevDir(r),
    iommufd: iommufdNode(r),
    noiommuParameter: noiommuParameter(r),
    type1: type1ModuleDir(r),
    pagemap: pagemapFile(r),
  };
}

t.test('every path is the join of its root and parts', async (t) => {
  const cases: Roots[] = [
    DEFAULT_ROOTS,
    { sysfs: '/tmp/fake/sys/', dev: '/tmp/fake//dev', proc: '/tmp/fake/./proc' },
    { sysfs: 'relative/sys', dev: '../dev', proc: '/' },
    { sysfs: '', dev: '.', proc: 'p/..' },
  ];
  for (const r of cases) {
    t.same(built(r), joined(r), JSON.stringify(r));
    t.same(built(r), joined(r), `${JSON.stringify(r)}, asked again`);
  }
});

t.test('a root that changes is followed', async (t) => {
  const r = { sysfs: '/a/sys', dev: '/a/dev', proc: '/a/proc' };
  t.same(built(r), joined(r));
  r.dev = '/b/dev';
  t.same(built(r), joined(r), 'dev');
  r.sysfs = '/b/sys';
  t.same(built(r), joined(r), 'sysfs');
  r.proc = '/b/proc';
  t.same(built(r), joined(r), 'proc');
});
