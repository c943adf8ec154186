// The fake's fault injection is usable for sweeps: a scenario that cleans up
// after itself, failed at every one of its calls in turn, always ends with a
// VfioError and nothing leaked (close frees its fd even when it fails; a
// failed munmap leaves its mapping, as on Linux, so the sweep excepts it).
import t from 'tap';
import { VfioError } from '../../lib/base/errors.js';
import { MAP_ANONYMOUS, MAP_PRIVATE, MAP_SHARED, O_RDWR, PROT_READ, PROT_WRITE } from '../../lib/libc/sys.js';
import { alloc, get } from '../../lib/uapi/codec.js';
import * as I from '../../lib/uapi/iommufd.js';
import * as V from '../../lib/uapi/vfio.js';
import { FakeKernel, edu } from '../../lib/testing/index.js';

/** Runs `body` then `cleanup`, keeping the first error. */
function guarded(body: () => void, cleanup: () => void): void {
  let first: unknown = null;
  try {
    body();
  } catch (e) {
    first = e;
  }
  try {
    cleanup();
  } catch (e) {
    first ??= e;
  }
  if (first !== null) throw first;
}

function cdevScenario(k: FakeKernel): void {
  const s = k.sys;
  const iommu = s.open(`${k.devRoot}/iommu`, O_RDWR);
  guarded(
    () => {
      const dev = s.open(`${k.devRoot}/vfio/devices/vfio0`, O_RDWR);
      guarded(
        () => {
          s.ioctl(
            dev,
            V.VFIO_DEVICE_BIND_IOMMUFD,
            alloc(V.vfio_device_bind_iommufd, { argsz: V.vfio_device_bind_iommufd.size, iommufd: iommu }),
          );
          const a = alloc(I.iommu_ioas_alloc, { size: I.iommu_ioas_alloc.size });
          s.ioctl(iommu, I.IOMMU_IOAS_ALLOC, a);
          const ioas = get(I.iommu_ioas_alloc, a, 'out_ioas_id');
          s.ioctl(
            dev,
            V.VFIO_DEVICE_ATTACH_IOMMUFD_PT,
            alloc(V.vfio_device_attach_iommufd_pt, { argsz: V.vfio_device_attach_iommufd_pt.size, pt_id: ioas }),
          );
          const buf = s.mmap(8192, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0n);
          guarded(
            () => {
              s.mlock(buf, 8192);
              const m = alloc(I.iommu_ioas_map, { size: I.iommu_ioas_map.size, flags: 6, ioas_id: ioas, user_va: buf, length: 8192n });
              s.ioctl(iommu, I.IOMMU_IOAS_MAP, m);
              const bar = s.mmap(1 << 20, PROT_READ | PROT_WRITE, MAP_SHARED, dev, 0n);
              guarded(
                () => void s.pread(dev, new Uint8Array(4), 0n),
                () => s.munmap(bar, 1 << 20),
              );
              s.ioctl(
                iommu,
                I.IOMMU_IOAS_UNMAP,
                alloc(I.iommu_ioas_unmap, { size: I.iommu_ioas_unmap.size, ioas_id: ioas, iova: 0n, length: (1n << 64n) - 1n }),
              );
            },
            () => s.munmap(buf, 8192),
          );
        },
        () => s.close(dev),
      );
    },
    () => s.close(iommu),
  );
}

function groupScenario(k: FakeKernel): void {
  const s = k.sys;
  const c = s.open(`${k.devRoot}/vfio/vfio`, O_RDWR);
  guarded(
    () => {
      const g = s.open(`${k.devRoot}/vfio/3`, O_RDWR);
      guarded(
        () => {
          const fd = new Uint8Array(4);
          new DataView(fd.buffer).setInt32(0, c, true);
          s.ioctl(g, V.VFIO_GROUP_SET_CONTAINER, fd);
          s.ioctlInt(c, V.VFIO_SET_IOMMU, V.VFIO_TYPE1v2_IOMMU);
          const d = s.ioctl(g, V.VFIO_GROUP_GET_DEVICE_FD, Buffer.from('0000:00:03.0\0'));
          guarded(
            () => {
              const e = s.eventfd(0, 0);
              guarded(
                () => {
                  const set = alloc(
                    V.vfio_irq_set,
                    {
                      argsz: V.vfio_irq_set.size + 4,
                      flags: V.VFIO_IRQ_SET_DATA_EVENTFD | V.VFIO_IRQ_SET_ACTION_TRIGGER,
                      index: 1,
                      count: 1,
                    },
                    4,
                  );
                  new DataView(set.buffer).setInt32(V.vfio_irq_set.size, e, true);
                  s.ioctl(d, V.VFIO_DEVICE_SET_IRQS, set);
                  const buf = s.mmap(4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0n);
                  guarded(
                    () => {
                      s.ioctl(
                        c,
                        V.VFIO_IOMMU_MAP_DMA,
                        alloc(V.vfio_iommu_type1_dma_map, {
                          argsz: V.vfio_iommu_type1_dma_map.size,
                          flags: 3,
                          vaddr: buf,
                          iova: 0x10000n,
                          size: 4096n,
                        }),
                      );
                      s.ioctl(
                        c,
                        V.VFIO_IOMMU_UNMAP_DMA,
                        alloc(V.vfio_iommu_type1_dma_unmap, { argsz: V.vfio_iommu_type1_dma_unmap.size, iova: 0x10000n, size: 4096n }),
                      );
                    },
                    () => s.munmap(buf, 4096),
                  );
                },
                () => s.close(e),
              );
            },
            () => s.close(d),
          );
        },
        () => s.close(g),
      );
    },
    () => s.close(c),
  );
}

for (const [mode, scenario] of [
  ['cdev', cdevScenario],
  ['group', groupScenario],
] as const) {
  t.test(`${mode}: failing each call in turn leaks nothing`, async (t) => {
    const clean = new FakeKernel({ mode, devices: [edu()] });
    const before = clean.syscalls;
    scenario(clean);
    const total = clean.syscalls - before;
    t.same(clean.leaks(), { fds: 0, mappings: 0, pinned: 0 });
    clean.dispose();
    t.ok(total > 10, `${total} calls`);
    for (let n = 1; n <= total; n++) {
      const k = new FakeKernel({ mode, devices: [edu()] });
      k.failNth(n, 'EIO', { except: ['munmap'] });
      let err: unknown = null;
      try {
        scenario(k);
      } catch (e) {
        err = e;
      }
      const excepted = k.kernelLog.some((l) => l.startsWith('fault not injected'));
      t.ok(
        excepted ? err === null : err instanceof VfioError && err.code === 'EIO',
        `call ${n}: ${excepted ? 'munmap excepted' : 'a typed error'}`,
      );
      t.same(k.leaks(), { fds: 0, mappings: 0, pinned: 0 }, `call ${n}: nothing leaked`);
      k.dispose();
    }
  });
}
