// Fault sweep: fail the 1st, 2nd, 3rd, ... system call of a whole program
// (open → info → map → remap → free → release → close), in every mode. Each
// failure must surface as a VfioError with the injected code; a failing setup
// must leave exactly what was there before it; and closing the context
// afterwards must leave nothing at all.
import t from 'tap';

// A sweep runs its program once per system call it makes.
t.setTimeout(10 * 60 * 1000);
import { VfioError } from '../../lib/base/errors.js';
import type { FakeMode, Leaks } from '../../lib/testing/index.js';
import { EDU, EDU2, MODES, NO_LEAKS, machine, type Machine } from './harness.js';

const INJECTED = 'ENOMEM';

/** How a program marks its steps for the sweep. */
interface Steps {
  /** A setup step: if it fails, the kernel must look as it did before it. */
  setup<T>(name: string, fn: () => T): T;
  /** A teardown step: if it fails, closing the context must still clean up. */
  teardown(name: string, fn: () => void): void;
}

type Program = (m: Machine, mode: FakeMode, s: Steps) => void;

const PROGRAMS: Record<string, Program> = {
  'open → info → map → remap → free → release → close': ({ vfio }, mode, s) => {
    const dev = s.setup('openDevice', () => vfio.openDevice(EDU));
    s.setup('getInfo', () => dev.getInfo());
    const a = s.setup('allocDma', () => dev.container.allocDma(4096, { dmaLimit: 1n << 28n }));
    const b = s.setup('allocDma at an IOVA', () =>
      mode === 'noiommu' ? dev.container.allocDma(4096) : dev.container.allocDma(8192, { iova: 0x400000n }),
    );
    s.setup('iommuInfo', () => (mode === 'noiommu' ? null : dev.container.iommuInfo()));
    s.teardown('unmap', () => a.unmap());
    s.setup('map', () => a.map({ dmaLimit: 1n << 28n }));
    s.teardown('free', () => a.free());
    s.teardown('free', () => b.free());
    s.teardown('release', () => dev.release());
    s.teardown('close', () => vfio.close());
  },
  'two containers, info of an unopened device, device churn under a live buffer': ({ vfio }, mode, s) => {
    s.setup('getDeviceInfo', () => vfio.getDeviceInfo(EDU2));
    const other = s.setup('createContainer', () => vfio.createContainer({ mode }));
    s.setup('assignDevice', () => other.assignDevice(EDU2));
    const b = s.setup('openDevice (assigned)', () => vfio.openDevice(EDU2));
    const a = s.setup('openDevice', () => vfio.openDevice(EDU));
    // One page: a no-IOMMU buffer must be physically contiguous.
    const buf = s.setup('allocDma', () => a.container.allocDma(4096));
    s.teardown('release the last device of the container', () => a.release());
    const again = s.setup('openDevice again (mappings come back)', () => vfio.openDevice(EDU));
    s.teardown('unmapAll', () => again.container.unmapAll());
    s.setup('map', () => buf.map());
    s.teardown('close the other container', () => other.close());
    s.teardown('b.release after its container closed', () => b.release());
    s.teardown('close', () => vfio.close());
  },
};

for (const mode of MODES) {
  for (const [title, program] of Object.entries(PROGRAMS)) {
    t.test(`${mode}: ${title}: every system call can fail cleanly`, async (t) => {
      let failures = 0;
      for (let n = 1; ; n++) {
        const m = machine(mode);
        const { kernel, vfio } = m;
        const start = kernel.syscalls;
        kernel.failNth(n, INJECTED);
        let step = '';
        let before: Leaks | null = null;
        const steps: Steps = {
          setup: (name, fn) => {
            step = name;
            before = kernel.leaks();
            return fn();
          },
          teardown: (name, fn) => {
            step = name;
            before = null;
            fn();
          },
        };
        let error: unknown = null;
        try {
          program(m, mode, steps);
        } catch (err) {
          error = err;
        }
        const made = kernel.syscalls - start;
        if (error === null) {
          t.ok(made < n, `the program made ${made} calls and passed once call #${n} was beyond them`);
          t.same(kernel.leaks(), NO_LEAKS, 'a clean run leaks nothing');
          kernel.dispose();
          t.ok(failures > 10, `${failures} injected failures were all handled`);
          break;
        }
        failures++;
        const ok = error instanceof VfioError && error.code === INJECTED && error.errno > 0;
        if (!ok) t.fail(`call #${n} (${step}): expected a VfioError ${INJECTED}, got ${String(error)}`);
        if (before !== null) {
          const now = kernel.leaks();
          if (JSON.stringify(now) !== JSON.stringify(before)) {
            t.fail(`call #${n} failed ${step}, which left ${JSON.stringify(now)} instead of ${JSON.stringify(before)}`);
          }
        }
        try {
          vfio.close();
        } catch (err) {
          t.fail(`call #${n} (${step}): closing afterwards failed: ${String(err)}`);
        }
        const after = kernel.leaks();
        if (JSON.stringify(after) !== JSON.stringify(NO_LEAKS)) t.fail(`call #${n} (${step}): leaked ${JSON.stringify(after)}`);
        kernel.dispose();
        if (n > 500) {
          t.fail('the sweep does not end');
          break;
        }
      }
    });
  }
}
