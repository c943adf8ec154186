// Facts about the generated uapi modules that the rest of the library relies
// on, with the expected ioctl numbers computed here by hand from the encoding
// (not read back from the generator).
import t from 'tap';
import type { StructLayout } from '../../lib/uapi/codec.js';
import * as iommufd from '../../lib/uapi/iommufd.js';
import * as vfio from '../../lib/uapi/vfio.js';

/**
 * _IO(type, nr) on x86-64 (asm-generic/ioctl.h): direction 0 in bits 30-31,
 * size 0 in bits 16-29, type in bits 8-15, nr in bits 0-7.
 */
const IO = (type: number, nr: number): number => (0 << 30) | (0 << 16) | (type << 8) | nr;
/** VFIO and IOMMUFD both use ';' (0x3b) as their ioctl type. */
const SEMICOLON = 0x3b;
/** VFIO numbers its ioctls from VFIO_BASE = 100. */
const VFIO_BASE = 100;

t.test('ioctl numbers', async (t) => {
  // 0x3b << 8 = 15104; + 100 = 15204.
  t.equal(vfio.VFIO_GET_API_VERSION, 15204);
  t.equal(vfio.VFIO_GET_API_VERSION, IO(SEMICOLON, VFIO_BASE + 0));
  t.equal(vfio.VFIO_DEVICE_BIND_IOMMUFD, IO(SEMICOLON, VFIO_BASE + 18)); // 0x3b76
  t.equal(vfio.VFIO_DEVICE_ATTACH_IOMMUFD_PT, IO(SEMICOLON, VFIO_BASE + 19));
  // IOMMUFD numbers its commands from 0x80 (IOMMUFD_CMD_BASE).
  t.equal(iommufd.IOMMU_DESTROY, IO(SEMICOLON, 0x80));
  t.equal(iommufd.IOMMU_IOAS_ALLOC, IO(SEMICOLON, 0x81)); // 0x3b81
  t.equal(iommufd.IOMMU_IOAS_MAP, IO(SEMICOLON, 0x85)); // 0x3b85
  t.equal(iommufd.IOMMU_IOAS_UNMAP, IO(SEMICOLON, 0x86));
  t.equal(iommufd.IOMMU_IOAS_MAP_FILE, IO(SEMICOLON, 0x8f));
  t.equal(iommufd.IOMMU_VEVENTQ_ALLOC, IO(SEMICOLON, 0x93));
  t.equal(vfio.ioctls.VFIO_GET_API_VERSION, vfio.VFIO_GET_API_VERSION, 'the ioctls record holds the same values');
});

t.test('the v6.17+ uapi is present', async (t) => {
  for (const name of [
    'IOMMU_IOAS_MAP_FILE',
    'IOMMU_HWPT_ALLOC',
    'IOMMU_HWPT_INVALIDATE',
    'IOMMU_VIOMMU_ALLOC',
    'IOMMU_VDEVICE_ALLOC',
    'IOMMU_VEVENTQ_ALLOC',
    'IOMMU_HW_QUEUE_ALLOC',
  ]) {
    t.ok(Object.hasOwn(iommufd.ioctls, name), `${name} is an ioctl`);
  }
  t.equal(typeof vfio.VFIO_DEVICE_FEATURE_DMA_BUF, 'number');
  t.ok(Object.hasOwn(iommufd.layouts, 'iommu_ioas_map_file'));
  t.ok(Object.hasOwn(iommufd.layouts, 'iommu_veventq_alloc'));
  t.match(vfio.UAPI_SOURCE, /^linux-libc-dev \d+\.\d+/);
  t.equal(vfio.UAPI_SOURCE, iommufd.UAPI_SOURCE, 'both modules come from one package');
});

t.test('struct layouts the library depends on', async (t) => {
  t.equal(vfio.vfio_region_info.size, 32);
  t.equal(vfio.vfio_region_info.fields.offset.offset, 24);
  t.equal(iommufd.iommu_ioas_map.size, 40);
  t.same(
    Object.entries(iommufd.iommu_ioas_map.fields).map(([n, f]) => [n, f.offset, f.type]),
    [
      ['size', 0, 'u32'],
      ['flags', 4, 'u32'],
      ['ioas_id', 8, 'u32'],
      ['__reserved', 12, 'u32'],
      ['user_va', 16, 'u64'],
      ['length', 24, 'u64'],
      ['iova', 32, 'u64'],
    ],
  );
  // Anonymous unions are flattened: both names at the union's offset.
  t.equal(vfio.vfio_pci_dependent_device.fields.group_id.offset, 0);
  t.equal(vfio.vfio_pci_dependent_device.fields.devid.offset, 0);
  // Flexible arrays: flagged, not counted in the size.
  t.equal(vfio.vfio_pci_hot_reset_info.fields.devices.flexible, true);
  t.equal(vfio.vfio_pci_hot_reset_info.size, 12);
  // Nested structs reference the other export itself.
  t.equal(vfio.vfio_region_info_cap_sparse_mmap.fields.header.type, vfio.vfio_info_cap_header);
});

t.test('every layout is internally consistent', async (t) => {
  const all: [string, StructLayout][] = [...Object.entries(vfio.layouts), ...Object.entries(iommufd.layouts)];
  t.ok(all.length > 50, 'many layouts');
  for (const [name, l] of all) {
    t.equal(l.name, name);
    t.equal(l.size % l.align, 0, `${name}: size is a multiple of align`);
    for (const [fname, f] of Object.entries(l.fields)) {
      const el = typeof f.type === 'string' ? Number(f.type.slice(1)) / 8 : f.type.size;
      const end = f.offset + (f.flexible ? 0 : el * (f.count ?? 1));
      if (end > l.size) t.fail(`${name}.${fname} ends at ${end}, past ${l.size}`);
      if (l.union && f.offset !== 0) t.fail(`${name}.${fname}: union member at ${f.offset}`);
    }
  }
});
