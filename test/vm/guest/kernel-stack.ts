// The real kernel's VFIO stack as each mode presents it, before the library
// is involved: edu is bound to vfio-pci, the mode's /dev nodes exist, and the
// raw ioctls the library's containers will start with answer as documented.
// When these fail, the VM setup (kernel config, boot line, binding) is wrong,
// not the library. Not a test file of its own (each file costs ~5 s of
// loading tap per mode under TCG): api-device.test.ts runs these first.
import type { Test } from 'tap';
import { existsSync, readlinkSync, statSync } from 'node:fs';
import { basename } from 'node:path';
import { koffiSys as sys } from '../../../lib/libc/koffi-sys.js';
import { O_CLOEXEC, O_RDWR, type Fd } from '../../../lib/libc/sys.js';
import { alloc, read } from '../../../lib/uapi/codec.js';
import { IOMMU_DESTROY, IOMMU_IOAS_ALLOC, iommu_destroy, iommu_ioas_alloc } from '../../../lib/uapi/iommufd.js';
import {
  VFIO_API_VERSION,
  VFIO_CHECK_EXTENSION,
  VFIO_GET_API_VERSION,
  VFIO_GROUP_FLAGS_VIABLE,
  VFIO_GROUP_GET_STATUS,
  VFIO_NOIOMMU_IOMMU,
  VFIO_TYPE1v2_IOMMU,
  vfio_group_status,
} from '../../../lib/uapi/vfio.js';
import type { GuestEnv } from './guest-env.js';

/** Adds the kernel-stack subtests to `t`. */
export function kernelStackTests(t: Test, env: GuestEnv): void {
  const { mode, edu } = env;
  const sysfs = `/sys/bus/pci/devices/${edu}`;

  /** Opens `path` read-write and closes it when the test `tt` ends. */
  function openForTest(tt: Test, path: string): Fd {
    const fd = sys.open(path, O_RDWR | O_CLOEXEC);
    tt.teardown(() => sys.close(fd));
    return fd;
  }

  function isCharDevice(path: string): boolean {
    return existsSync(path) && statSync(path).isCharacterDevice();
  }

  const group = basename(readlinkSync(`${sysfs}/iommu_group`));

  t.test(`edu ${edu} is bound to vfio-pci`, async (tt) => {
    tt.equal(basename(readlinkSync(`${sysfs}/driver`)), 'vfio-pci', 'its driver is vfio-pci');
    tt.match(group, /^\d+$/, 'it is in an IOMMU group');
  });

  if (mode === 'group' || mode === 'noiommu') {
    t.test('/dev/vfio/vfio: API version and IOMMU extension', async (tt) => {
      const container = openForTest(tt, '/dev/vfio/vfio');
      tt.equal(sys.ioctlInt(container, VFIO_GET_API_VERSION, 0), VFIO_API_VERSION, 'VFIO_GET_API_VERSION');
      const extension = mode === 'group' ? VFIO_TYPE1v2_IOMMU : VFIO_NOIOMMU_IOMMU;
      tt.equal(sys.ioctlInt(container, VFIO_CHECK_EXTENSION, extension), 1, `VFIO_CHECK_EXTENSION(${extension})`);
    });

    const groupNode = mode === 'group' ? `/dev/vfio/${group}` : `/dev/vfio/noiommu-${group}`;
    t.test(`${groupNode} is edu's group and is viable`, async (tt) => {
      tt.ok(isCharDevice(groupNode), `${groupNode} is a character device`);
      const fd = openForTest(tt, groupNode);
      const status = alloc(vfio_group_status, { argsz: vfio_group_status.size });
      sys.ioctl(fd, VFIO_GROUP_GET_STATUS, status);
      tt.ok(read(vfio_group_status, status).flags & VFIO_GROUP_FLAGS_VIABLE, 'VFIO_GROUP_FLAGS_VIABLE');
    });
  }

  if (mode === 'noiommu') {
    t.test('there is no IOMMU', async (tt) => {
      tt.notOk(existsSync('/sys/class/iommu/dmar0'), 'no DMAR unit (intel_iommu=off)');
      tt.notOk(existsSync(`/dev/vfio/${group}`), 'no IOMMU-backed group node');
    });
  } else {
    t.test('an Intel IOMMU is active', async (tt) => {
      tt.ok(existsSync('/sys/class/iommu/dmar0'), '/sys/class/iommu/dmar0');
    });
  }

  if (mode === 'cdev') {
    t.test('edu has a VFIO device cdev', async (tt) => {
      tt.ok(existsSync(`${sysfs}/vfio-dev/vfio0`), `${sysfs}/vfio-dev/vfio0`);
      tt.ok(isCharDevice('/dev/vfio/devices/vfio0'), '/dev/vfio/devices/vfio0 is a character device');
      openForTest(tt, '/dev/vfio/devices/vfio0');
    });

    t.test('/dev/iommu allocates and destroys an IOAS', async (tt) => {
      const iommufd = openForTest(tt, '/dev/iommu');
      const ioas = alloc(iommu_ioas_alloc, { size: iommu_ioas_alloc.size });
      sys.ioctl(iommufd, IOMMU_IOAS_ALLOC, ioas);
      const id = read(iommu_ioas_alloc, ioas).out_ioas_id;
      tt.ok(id > 0, `IOMMU_IOAS_ALLOC returned id ${id}`);
      const destroy = alloc(iommu_destroy, { size: iommu_destroy.size, id });
      tt.equal(sys.ioctl(iommufd, IOMMU_DESTROY, destroy), 0, 'IOMMU_DESTROY');
    });
  }
}
