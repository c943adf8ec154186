// The library's own cost per operation, natively on the host: what it adds
// around the kernel's work, without TCG and without the kernel.
//
// The fake kernel (test/fake) sets the device up; then the hot ioctls of the
// `lib-*` cases are answered by a stub that does nothing (DMA map/unmap) or
// writes BAR0's answer (region info), so the time left is the library's
// JavaScript plus the Sys dispatch — the part of the TS/C ratio that is ours.
// Add the FFI's price (`ffi-floor`, host rows) for a real kernel call.
//
// Usage: node native-overhead.js ITERS BATCHES   Prints `BENCH {json}` lines (mode `host`).
import { createVfio } from '../lib/context.js';
import type { Sys } from '../lib/libc/sys.js';
import * as codec from '../lib/uapi/codec.js';
import { IOMMU_IOAS_MAP, IOMMU_IOAS_UNMAP } from '../lib/uapi/iommufd.js';
import { VFIO_DEVICE_GET_REGION_INFO, VFIO_IOMMU_MAP_DMA, VFIO_IOMMU_UNMAP_DMA, vfio_region_info } from '../lib/uapi/vfio.js';
import { edu, FakeKernel } from '../test/fake/index.js';

const STUBBED = new Set([VFIO_IOMMU_MAP_DMA, VFIO_IOMMU_UNMAP_DMA, IOMMU_IOAS_MAP, IOMMU_IOAS_UNMAP]);
const EDU = '0000:00:03.0';

const [itersArg, batchesArg] = process.argv.slice(2);
const iters = Number(itersArg ?? 20000);
const batches = Number(batchesArg ?? 10);
const warmupNs = Number(process.env['BENCH_WARMUP_MS'] ?? 1000) * 1e6;

function now(): number {
  return Number(process.hrtime.bigint());
}

function timeBatches(batch: () => void): number[] {
  const w0 = now();
  do batch();
  while (now() - w0 < warmupNs);
  const out: number[] = [];
  for (let b = 0; b < batches; b++) {
    const t0 = now();
    batch();
    out.push(Math.round(((now() - t0) / iters) * 10) / 10);
  }
  return out;
}

function emit(name: string, samples: number[]): void {
  process.stdout.write(`BENCH ${JSON.stringify({ impl: 'ts', mode: 'host', case: name, unit: 'op', samples })}\n`);
}

for (const mode of ['group', 'cdev'] as const) {
  const kernel = new FakeKernel({ mode, devices: [edu()] });
  try {
    let stub = false;
    const stubIoctl = (fd: number, req: number, arg: Uint8Array): number => {
      if (stub && STUBBED.has(req)) return 0;
      if (stub && req === VFIO_DEVICE_GET_REGION_INFO) {
        codec.write(vfio_region_info, arg, { flags: 7, size: 4096n, offset: 0n, cap_offset: 0 });
        return 0;
      }
      return kernel.sys.ioctl(fd, req, arg);
    };
    // The same shape as the real context's Sys (lib/index.ts): a Proxy with
    // the methods bound once.
    const bound = new Map<PropertyKey, unknown>([['ioctl', stubIoctl]]);
    const sys = new Proxy(kernel.sys, {
      get(target, key) {
        if (!bound.has(key)) {
          const v: unknown = Reflect.get(target, key);
          bound.set(key, typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(target) : v);
        }
        return bound.get(key);
      },
    }) as Sys;
    const vfio = createVfio({ sys, sysfs: kernel.sysfsRoot, dev: kernel.devRoot, proc: kernel.procRoot, env: {} });
    const dev = vfio.openDevice(EDU);
    const buf = dev.container.allocDma(4096);
    buf.unmap();
    stub = true;
    emit(`lib-dma-4k-${mode}`, timeBatches(() => {
      for (let i = 0; i < iters; i++) {
        buf.map();
        buf.unmap();
      }
    }));
    if (mode === 'group') {
      emit('lib-region-info', timeBatches(() => {
        for (let i = 0; i < iters; i++) dev.regionInfo(0);
      }));
    }
    stub = false;
    vfio.close();
  } finally {
    kernel.dispose();
  }
}
