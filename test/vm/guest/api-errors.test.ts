// Failures only a real kernel shows, each as the library's typed error and
// with nothing left open: a group made non-viable by a device on a host
// driver, a device not bound to vfio-pci, a device busy in another process,
// a forced mode the machine cannot give.
import t from 'tap';
import { spawn, type ChildProcessByStdio } from 'node:child_process';
import type { Readable, Writable } from 'node:stream';
import { createVfio, vfio, VfioError } from '../../../lib/index.js';
import { koffiSys } from '../../../lib/libc/koffi-sys.js';
import { EDU_ID, REG, newFds, openFds } from './edu.js';
import { errorOf, guestEnv } from './guest-env.js';

const env = guestEnv();
if (env === null) {
  t.plan(0, 'VM guest test: runs inside the VM via `npm run test:vm`');
} else {
  const { mode, edu, edu2, rng } = env;
  const iommu = mode !== 'noiommu';
  const fdsAtStart = openFds();

  t.test(`a group made non-viable by ${rng} on a host driver`, async (t) => {
    const desc = vfio.describeDevice(edu2);
    t.equal(desc.driver, 'vfio-pci', `${edu2} itself is bound to vfio-pci`);
    if (!iommu) {
      // Without an IOMMU every device is its own no-IOMMU group: the bridge
      // does not tie edu2 to the rng, so it opens like any other.
      t.not(desc.iommuGroup, vfio.describeDevice(edu).iommuGroup, 'a no-IOMMU group of its own');
      const dev = vfio.openDevice(edu2);
      t.equal(dev.mapBar(0).read32(REG.id), EDU_ID, 'no-IOMMU: the edu behind the bridge opens and answers');
      dev.release();
      return;
    }
    t.ok(desc.iommuGroup !== null, `group ${desc.iommuGroup}`);
    const before = openFds();
    for (const [what, fn] of [
      ['openDevice', () => vfio.openDevice(edu2)],
      ['getDeviceInfo', () => vfio.getDeviceInfo(edu2)],
      ['assignDevice', () => vfio.createContainer().assignDevice(edu2)],
    ] as const) {
      const err = errorOf(fn);
      t.match(err, { code: 'EBUSY', device: edu2 }, `${what}: EBUSY`);
      t.match(
        err instanceof VfioError ? err.message : err,
        new RegExp(`not viable.*${rng.replace(/\./g, '\\.')} is bound to virtio-pci`),
        `${what}: the message names the blocker`,
      );
    }
    if (mode === 'cdev') {
      const cause = (errorOf(() => vfio.openDevice(edu2)) as VfioError).cause;
      t.match(cause, { code: 'EPERM', request: 'VFIO_DEVICE_BIND_IOMMUFD' }, 'cdev: the kernel said EPERM at bind');
    }
    // Containers made by the failed assignDevice calls above stay open (they
    // belong to the context); close them so only leaks would remain.
    t.same(
      newFds(before).filter((f) => !/\/dev\/(vfio\/vfio|iommu)$/.test(f)),
      [],
      'no device or group fd left',
    );
    // The same container still takes a viable device.
    const c = vfio.createContainer();
    t.match(
      errorOf(() => c.assignDevice(edu2)),
      { code: 'EBUSY' },
    );
    c.assignDevice(edu);
    const dev = vfio.openDevice(edu);
    t.equal(dev.mapBar(0).read32(REG.id), EDU_ID, 'the failed assign left the container usable');
    c.close();
  });

  t.test(`${rng}: a device not bound to vfio-pci`, async (t) => {
    t.equal(vfio.describeDevice(rng).driver, 'virtio-pci', 'describeDevice still describes it');
    const before = openFds();
    for (const [what, fn] of [
      ['getMode', () => vfio.getMode(rng)],
      ['getDeviceInfo', () => vfio.getDeviceInfo(rng)],
      ['openDevice', () => vfio.openDevice(rng)],
      ['assignDevice', () => vfio.defaultContainer.assignDevice(rng)],
    ] as const) {
      const err = errorOf(fn);
      t.match(err, { code: 'ENODEV', device: rng }, `${what}: ENODEV`);
      t.match(err instanceof VfioError ? err.message : err, /bound to virtio-pci; bind it to vfio-pci/, `${what}: says what to do`);
    }
    t.match(
      errorOf(() => vfio.openDevice('0000:00:1e.0')),
      { code: 'ENODEV' },
      'no such device: ENODEV',
    );
    t.match(
      errorOf(() => vfio.openDevice('../../../etc')),
      { code: 'EINVAL' },
      'not a PCI address: EINVAL',
    );
    t.same(
      newFds(before).filter((f) => !/\/dev\/(vfio\/vfio|iommu)$/.test(f)),
      [],
      'no device or group fd left',
    );
  });

  t.test('a device busy in another process', async (t) => {
    const lib = new URL('../../../lib/index.js', import.meta.url).href;
    // The child opens edu through the library, says "ready", and holds it
    // until its stdin closes.
    const holder = [
      `const { vfio } = await import(process.env.LIB);`,
      `const dev = vfio.openDevice(process.env.VFIO_VM_EDU);`,
      `dev.mapBar(0).read32(0);`,
      `process.stdout.write('ready\\n');`,
      `process.stdin.on('end', () => { dev.release(); process.stdout.write('released\\n'); });`,
      `process.stdin.resume();`,
    ].join('\n');
    const child: ChildProcessByStdio<Writable, Readable, null> = spawn(process.execPath, ['--input-type=module', '-e', holder], {
      env: { ...process.env, LIB: lib },
      stdio: ['pipe', 'pipe', 'inherit'],
    });
    const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
    let out = '';
    await new Promise<void>((resolve, reject) => {
      child.stdout.on('data', (d: Buffer) => {
        out += d.toString();
        if (out.includes('ready\n')) resolve();
      });
      child.on('exit', (code) => reject(new Error(`the holder exited (${code}) before it was ready: ${out}`)));
    });
    t.pass(`child ${child.pid} holds ${edu}`);

    const before = openFds();
    const err = errorOf(() => vfio.openDevice(edu));
    t.match(err, { code: 'EBUSY', device: edu }, `openDevice: EBUSY (${err instanceof VfioError ? err.message : err})`);
    t.match(
      errorOf(() => vfio.getDeviceInfo(edu)),
      { code: 'EBUSY', device: edu },
      'getDeviceInfo: EBUSY',
    );
    t.same(
      newFds(before).filter((f) => !/\/dev\/(vfio\/vfio|iommu)$/.test(f)),
      [],
      'no device or group fd left',
    );

    child.stdin.end();
    t.equal(await exited, 0, 'the holder released it and exited');
    t.match(out, /released/);
    const dev = vfio.openDevice(edu);
    t.equal(dev.mapBar(0).read32(REG.id), EDU_ID, 'once released there, it opens here');
    dev.release();
  });

  t.test('a forced mode the machine cannot give', async (t) => {
    const impossible = iommu ? 'noiommu' : 'cdev';
    const ctx = createVfio({ sys: koffiSys, mode: impossible });
    t.match(
      errorOf(() => ctx.getMode(edu)),
      { code: 'ENXIO' },
      `${impossible}: ENXIO`,
    );
    t.match(
      errorOf(() => ctx.openDevice(edu)),
      { code: 'ENXIO' },
      `openDevice in ${impossible}: ENXIO`,
    );
    ctx.close();
    if (mode === 'cdev' || mode === 'group') {
      const other = mode === 'cdev' ? 'group' : 'cdev';
      const both = createVfio({ sys: koffiSys, mode: other });
      const dev = both.openDevice(edu);
      t.equal(dev.mode, other, `the IOMMU machine also gives ${other} mode`);
      t.equal(dev.mapBar(0).read32(REG.id), EDU_ID);
      both.close();
    }
  });

  t.test('no fd left by this file', async (t) => {
    vfio.close();
    await new Promise((r) => setTimeout(r, 100));
    t.same(newFds(fdsAtStart), [], 'after closing the context');
  });
}
