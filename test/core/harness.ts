// Shared setup for the core tests: a fake machine and a Vfio context on it.
import { createVfio, type Vfio } from '../../lib/core/context.js';
import { VfioError } from '../../lib/base/errors.js';
import { edu, FakeKernel, type FakeKernelOptions, type FakeMode } from '../../lib/testing/index.js';

export const MODES: readonly FakeMode[] = ['cdev', 'group', 'noiommu'];
export const EDU = '0000:00:03.0';
export const EDU2 = '0000:00:04.0';

export interface Machine {
  readonly kernel: FakeKernel;
  readonly vfio: Vfio;
}

/** A fake machine (two edu devices in groups 3 and 6 by default) and a context on it. */
export function machine(mode: FakeMode, opts: Omit<FakeKernelOptions, 'mode'> = {}, env: Record<string, string> = {}): Machine {
  const kernel = new FakeKernel({
    mode,
    devices: [edu(), edu({ address: EDU2, group: 6 })],
    ...opts,
  });
  const vfio = createVfio({ sys: kernel.sys, sysfs: kernel.sysfsRoot, dev: kernel.devRoot, proc: kernel.procRoot, env });
  return { kernel, vfio };
}

export const NO_LEAKS = { fds: 0, mappings: 0, pinned: 0 };

/** Runs `fn` and returns the VfioError it throws (or fails with a description). */
export function vfioErrorOf(fn: () => unknown): VfioError | string {
  try {
    fn();
  } catch (err) {
    return err instanceof VfioError ? err : `not a VfioError: ${String(err)}`;
  }
  return 'did not throw';
}

/** Turns on bus mastering in the fake device's config space, as a driver would. */
export function enableBusMaster(kernel: FakeKernel, address: string): void {
  const cfg = kernel.device(address).config;
  cfg[4] = (cfg[4] ?? 0) | 0x4;
}
