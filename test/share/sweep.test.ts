// Fault sweep over sharing: fail the 1st, 2nd, 3rd, ... system call of a
// whole primary + secondary program (serve, connect, borrow a device, a
// window, a buffer, DMA setup, give back, close) on the fake kernel, in every
// mode. Whichever side the failure hits, the program must end with a
// VfioError (the injected code, or the typed error the other side sees:
// ECONNRESET when the primary dropped the connection, ETIMEDOUT, ...), never
// hang, and closing everything afterwards must leave no fd, mapping or pin.
import t from 'tap';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createVfio, type Vfio } from '../../lib/core/context.js';
import { VfioError } from '../../lib/base/errors.js';
import { ShareServer, connectPrimary, type Secondary } from '../../lib/share/index.js';
import { FakeKernel, edu, type FakeMode } from '../../lib/testing/index.js';

t.setTimeout(10 * 60 * 1000);

const EDU = '0000:00:03.0';
const MODES: readonly FakeMode[] = ['cdev', 'group', 'noiommu'];
const NO_LEAKS = { fds: 0, mappings: 0, pinned: 0 };
const DMA_LIMIT = 2n ** 28n;

interface Held {
  server?: ShareServer;
  sec?: Secondary;
}

async function program(primary: Vfio, secondary: Vfio, path: string, mode: FakeMode, held: Held): Promise<void> {
  const c = primary.createContainer({ mode });
  c.assignDevice(EDU);
  const shared = c.allocDma(4096, { shareable: true, dmaLimit: DMA_LIMIT });
  held.server = ShareServer.listen(path, { containers: [c] });
  held.server.shareBuffer('ring', shared);
  const sec = await connectPrimary(secondary, path, { timeoutMs: 300 });
  held.sec = sec;
  const dev = await sec.openDevice(EDU);
  if (mode !== 'noiommu') await sec.reserveIova(dev.container, 1 << 16, { dmaLimit: DMA_LIMIT });
  const own = dev.container.allocDma(4096, { dmaLimit: DMA_LIMIT });
  const imported = await sec.importBuffer('ring');
  const bar = dev.mapBar(0);
  bar.read32(0);
  dev.irqs.enable('msi').disable();
  imported.free();
  own.free();
  dev.release();
  sec.close();
  await held.server.close();
  primary.close();
  secondary.close();
}

/** Closes whatever the program left, the way a program that caught the error would. */
async function cleanup(primary: Vfio, secondary: Vfio, held: Held): Promise<void> {
  const attempt = async (fn: () => unknown): Promise<void> => {
    try {
      await fn();
    } catch {
      // The first error was the one the sweep checks; cleanup goes on.
    }
  };
  await attempt(() => held.sec?.close());
  await attempt(() => held.server?.close());
  // A second close finishes what a failed step left.
  for (let i = 0; i < 2; i++) {
    await attempt(() => secondary.close());
    await attempt(() => primary.close());
  }
}

function setup(mode: FakeMode): { kernel: FakeKernel; primary: Vfio; secondary: Vfio; path: string; dispose: () => void } {
  const kernel = new FakeKernel({ mode, devices: [edu()] });
  const roots = { sys: kernel.sys, sysfs: kernel.sysfsRoot, dev: kernel.devRoot, proc: kernel.procRoot, env: {} };
  const dir = mkdtempSync(join(tmpdir(), 'vfio-share-sweep-'));
  return {
    kernel,
    primary: createVfio(roots),
    secondary: createVfio(roots),
    path: join(dir, 'p.sock'),
    dispose: () => {
      kernel.dispose();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

for (const mode of MODES) {
  t.test(`${mode}: every system call of serve → borrow → give back → close, failed in turn`, async (t) => {
    const clean = setup(mode);
    await program(clean.primary, clean.secondary, clean.path, mode, {});
    const n = clean.kernel.syscalls;
    t.same(clean.kernel.leaks(), NO_LEAKS, `the program leaks nothing (${n} system calls)`);
    clean.dispose();

    const bad: string[] = [];
    for (let i = 1; i <= n; i++) {
      const w = setup(mode);
      // A failed munmap leaves the mapping (as on Linux): no program can undo that.
      w.kernel.failNth(i, 'ENOMEM', { except: ['munmap'] });
      const held: Held = {};
      let err: unknown = null;
      try {
        await program(w.primary, w.secondary, w.path, mode, held);
      } catch (e) {
        err = e;
      }
      await cleanup(w.primary, w.secondary, held);
      const leaks = w.kernel.leaks();
      const injected = w.kernel.kernelLog.find((l) => l.startsWith('fault injected'));
      if (err !== null && !(err instanceof VfioError)) bad.push(`#${i}: not a VfioError: ${String(err)}`);
      if (JSON.stringify(leaks) !== JSON.stringify(NO_LEAKS)) bad.push(`#${i} (${injected ?? 'no fault'}): leaks ${JSON.stringify(leaks)}`);
      w.dispose();
    }
    t.same(bad, [], `${n} runs: a typed error (or a recovery) and no leak in each`);
  });
}
