// The library's own cost per operation, natively on the host: what it adds
// around the kernel's work, without TCG and without the kernel.
//
// The fake kernel (lib/testing) sets the device up; then the hot ioctls of the
// `lib-*` cases are answered by a stub that does nothing (DMA map/unmap: the
// unmap's size field, left as asked, says all of it was unmapped) or copies
// BAR0's prepared answer into the argument (region info: the kernel's
// copy_to_user), so the time left is the library's JavaScript plus the Sys
// dispatch — the part of the TS/C ratio that is ours. Add the FFI's price
// (`ffi-floor`, host rows) for a real kernel call.
//
// `lib-bring-up-*` is the bring-up of bench/guest/main.ts (createContainer,
// assignDevice, openDevice, info(), mapBar(0), irqs.enable('msi', 1)) with
// the fake kernel answering every call, minus the time spent inside its Sys
// calls (each one timed): what is left is the library's JavaScript and its
// sysfs reads (real files: the fake's tree is on disk), plus the timing's own
// cost (two clock reads per Sys call, ~50 calls). Teardown is not timed.
//
// Usage: node native-overhead.js ITERS BATCHES   Prints `BENCH {json}` lines (mode `host`).
import { createVfio, type Vfio } from '../lib/core/context.js';
import type { Sys } from '../lib/libc/sys.js';
import * as codec from '../lib/uapi/codec.js';
import { IOMMU_IOAS_MAP, IOMMU_IOAS_UNMAP } from '../lib/uapi/iommufd.js';
import { VFIO_DEVICE_GET_REGION_INFO, VFIO_IOMMU_MAP_DMA, VFIO_IOMMU_UNMAP_DMA, vfio_region_info } from '../lib/uapi/vfio.js';
import { edu, FakeKernel } from '../lib/testing/index.js';

const EDU = '0000:00:03.0';
/** Bring-ups per batch: ITERS / this (one costs ~1000 region-info calls). */
const BRING_UP_DIVISOR = 200;

const [itersArg, batchesArg] = process.argv.slice(2);
const iters = Number(itersArg ?? 20000);
const batches = Number(batchesArg ?? 10);
const warmupNs = Number(process.env['BENCH_WARMUP_MS'] ?? 1000) * 1e6;

function now(): number {
  return Number(process.hrtime.bigint());
}

/** Warm-up, then `batches` timed calls of `batch`, each `n` operations: ns per operation. */
function timeBatches(n: number, batch: () => number | void): number[] {
  const w0 = now();
  do batch();
  while (now() - w0 < warmupNs);
  const out: number[] = [];
  for (let b = 0; b < batches; b++) {
    const t0 = now();
    const timed = batch();
    const ns = typeof timed === 'number' ? timed : now() - t0;
    out.push(Math.round((ns / n) * 10) / 10);
  }
  return out;
}

function emit(name: string, samples: number[]): void {
  process.stdout.write(`BENCH ${JSON.stringify({ impl: 'ts', mode: 'host', case: name, unit: 'op', samples })}\n`);
}

// BAR0 of edu as the kernel answers it: readable, writable, mappable, 4 KiB,
// no capability chain.
const REGION_ANSWER = codec.alloc(vfio_region_info, {
  argsz: vfio_region_info.size,
  flags: 7,
  index: 0,
  size: 4096n,
  offset: 0n,
  cap_offset: 0,
});

/**
 * A Sys of the same shape as the real context's (lib/index.ts `lazySys`, once
 * loaded: a plain object of bound methods), with `ioctl` replaced.
 */
function likeLazySys(target: Sys, ioctl: Sys['ioctl']): Sys {
  const out: Record<string, unknown> = {};
  for (let o: object | null = target; o !== null && o !== Object.prototype; o = Object.getPrototypeOf(o) as object | null) {
    for (const key of Object.getOwnPropertyNames(o)) {
      const v: unknown = Reflect.get(target, key);
      if (key !== 'constructor' && typeof v === 'function' && !(key in out)) out[key] = (v as (...a: unknown[]) => unknown).bind(target);
    }
  }
  out['ioctl'] = ioctl;
  return out as unknown as Sys;
}

/** A Sys that adds the time spent in each call to `clock.inKernel`. */
function timed(target: Sys, clock: { inKernel: number }): Sys {
  const bound = new Map<PropertyKey, unknown>();
  return new Proxy(target, {
    get(t, key) {
      if (!bound.has(key)) {
        const v: unknown = Reflect.get(t, key);
        if (typeof v !== 'function') bound.set(key, v);
        else {
          const f = (v as (...a: unknown[]) => unknown).bind(t);
          bound.set(key, (...args: unknown[]) => {
            const t0 = now();
            try {
              return f(...args);
            } finally {
              clock.inKernel += now() - t0;
            }
          });
        }
      }
      return bound.get(key);
    },
  }) as Sys;
}

function bringUp(vfio: Vfio, mode: 'group' | 'cdev'): () => void {
  const container = vfio.createContainer({ mode });
  container.assignDevice(EDU);
  const device = vfio.openDevice(EDU);
  device.info();
  device.mapBar(0);
  device.irqs.enable('msi', 1);
  return () => container.close();
}

for (const mode of ['group', 'cdev'] as const) {
  const kernel = new FakeKernel({ mode, devices: [edu()], hugepages: 2 });
  try {
    let stub = false;
    const stubIoctl = (fd: number, req: number, arg: Uint8Array): number => {
      if (stub) {
        if (req === VFIO_IOMMU_MAP_DMA || req === IOMMU_IOAS_MAP) return 0;
        // The unmap structs' size/length field already holds what was asked:
        // left as it is, it says "all of it was unmapped".
        if (req === VFIO_IOMMU_UNMAP_DMA || req === IOMMU_IOAS_UNMAP) return 0;
        if (req === VFIO_DEVICE_GET_REGION_INFO) {
          arg.set(REGION_ANSWER);
          return 0;
        }
      }
      return kernel.sys.ioctl(fd, req, arg);
    };
    const where = { sysfs: kernel.sysfsRoot, dev: kernel.devRoot, proc: kernel.procRoot, env: {} };
    const clock = { inKernel: 0 };
    const setup = createVfio({ sys: timed(kernel.sys, clock), ...where });
    const n = Math.max(1, Math.round(iters / BRING_UP_DIVISOR));
    emit(
      `lib-bring-up-${mode}`,
      timeBatches(n, () => {
        let total = 0;
        for (let i = 0; i < n; i++) {
          clock.inKernel = 0;
          const t0 = now();
          const close = bringUp(setup, mode);
          total += now() - t0 - clock.inKernel;
          close();
        }
        return total;
      }),
    );
    setup.close();

    const vfio = createVfio({ sys: likeLazySys(kernel.sys, stubIoctl), ...where });

    const dev = vfio.openDevice(EDU);
    const buf = dev.container.allocDma(4096);
    buf.unmap();
    // dma-2m's buffer: one 2 MiB huge page, at a 2 MiB-aligned IOVA.
    const huge = dev.container.allocDma(2 << 20, { hugepages: true });
    if (!huge.hugepages) throw new Error('the fake kernel gave no huge page');
    huge.unmap();
    stub = true;
    emit(
      `lib-dma-4k-${mode}`,
      timeBatches(iters, () => {
        for (let i = 0; i < iters; i++) {
          buf.map();
          buf.unmap();
        }
      }),
    );
    emit(
      `lib-dma-2m-${mode}`,
      timeBatches(iters, () => {
        for (let i = 0; i < iters; i++) {
          huge.map();
          huge.unmap();
        }
      }),
    );
    if (mode === 'group') {
      emit(
        'lib-region-info',
        timeBatches(iters, () => {
          for (let i = 0; i < iters; i++) dev.regionInfo(0);
        }),
      );
    }
    stub = false;
    vfio.close();
  } finally {
    kernel.dispose();
  }
}
