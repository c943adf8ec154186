// Runs the `vfio` command in-process on the fake kernel: its sysfs/dev/proc
// roots and Sys, output captured, and sysfs control-file writes answered the
// way the PCI core answers them (driver_override, a driver's unbind and bind,
// drivers_probe), so that bind/unbind change the fake tree as they would
// change /sys.
import {
  existsSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  readdirSync,
  readlinkSync,
  realpathSync,
  rmSync,
  symlinkSync,
  unlinkSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, dirname, join, relative } from 'node:path';
import { createVfio } from '../../lib/core/context.js';
import type { CliEnv } from '../../lib/cli/env.js';
import { main } from '../../lib/cli/main.js';
import { FakeKernel, type FakeKernelOptions } from '../../lib/testing/index.js';

export interface CliResult {
  readonly code: number;
  readonly out: string;
  readonly err: string;
}

export interface CliMachine {
  readonly kernel: FakeKernel;
  /** Where bind state is kept for this machine. */
  readonly stateDir: string;
  /** Every sysfs write, in order: [path relative to the sysfs root, value]. */
  readonly writes: [string, string][];
  /** Runs `vfio ...args`; each run gets a fresh context on the kernel. */
  run(...args: string[]): CliResult;
  /** The driver a device is bound to in the fake sysfs, or null. */
  driverOf(address: string): string | null;
  dispose(): void;
}

export interface CliMachineOptions extends FakeKernelOptions {
  /** The driver the PCI core would pick for a device when nothing overrides it. */
  readonly native?: Readonly<Record<string, string>>;
  /** Drivers whose probe fails for a device (address → driver), as a driver may refuse one. */
  readonly refuse?: Readonly<Record<string, string>>;
  /** The caller's uid for `vfio doctor` (default 0). */
  readonly uid?: number;
  readonly gids?: readonly number[];
  /** The fake sysfs rejects writes (as /sys does for a non-root user). */
  readonly readOnlySysfs?: boolean;
}

function errnoError(code: string, message: string): NodeJS.ErrnoException {
  return Object.assign(new Error(`${code}: ${message}`), { code });
}

/** The PCI core's answers to sysfs writes, on the fake tree. */
class FakePciCore {
  constructor(
    private readonly sysfs: string,
    private readonly native: Readonly<Record<string, string>>,
    private readonly refuse: Readonly<Record<string, string>>,
  ) {}

  deviceDir(address: string): string {
    return realpathSync(join(this.sysfs, 'bus', 'pci', 'devices', address));
  }

  driverOf(address: string): string | null {
    try {
      return basename(readlinkSync(join(this.deviceDir(address), 'driver')));
    } catch {
      return null;
    }
  }

  write(path: string, value: string): void {
    const rel = relative(this.sysfs, path);
    let m: RegExpExecArray | null;
    if ((m = /^bus\/pci\/devices\/([^/]+)\/driver_override$/.exec(rel)) !== null) {
      const v = value.trim();
      writeFileSync(join(this.deviceDir(m[1] as string), 'driver_override'), v === '' ? '(null)\n' : `${v}\n`);
    } else if ((m = /^bus\/pci\/devices\/([^/]+)\/driver\/unbind$/.exec(rel)) !== null) {
      const address = m[1] as string;
      const driver = this.driverOf(address);
      if (driver === null) throw errnoError('ENOENT', `${path}: no driver bound`);
      if (value.trim() !== address) throw errnoError('ENODEV', `${value} is not bound to ${driver}`);
      this.unlink(address, driver);
    } else if (rel === 'bus/pci/drivers_probe') {
      const address = value.trim();
      if (!existsSync(join(this.sysfs, 'bus', 'pci', 'devices', address))) throw errnoError('ENODEV', `no device ${address}`);
      if (this.driverOf(address) !== null) return;
      const override = this.override(address);
      const candidate = override ?? this.native[address] ?? null;
      if (candidate !== null && this.refuse[address] !== candidate && existsSync(join(this.sysfs, 'bus', 'pci', 'drivers', candidate))) {
        this.link(address, candidate);
      }
    } else if ((m = /^bus\/pci\/drivers\/([^/]+)\/bind$/.exec(rel)) !== null) {
      const driver = m[1] as string;
      const address = value.trim();
      if (this.driverOf(address) !== null) throw errnoError('EBUSY', `${address} already has a driver`);
      const override = this.override(address);
      if (override !== null && override !== driver) throw errnoError('ENODEV', `driver_override of ${address} is ${override}`);
      if (this.refuse[address] === driver) throw errnoError('ENODEV', `${driver} refused ${address}`);
      this.link(address, driver);
    } else if ((m = /^bus\/pci\/devices\/([^/]+)\/sriov_numvfs$/.exec(rel)) !== null) {
      this.setNumVfs(m[1] as string, value.trim());
    } else {
      throw errnoError('EACCES', `the fake PCI core does not model writes to ${rel}`);
    }
  }

  /**
   * sriov_numvfs_store(): N creates N VFs, 0 removes them, a non-zero count
   * while VFs exist is EBUSY; a PF on vfio-pci needs enable_sriov (ENOENT).
   * The fake kernel's VFs exist from the start (their devices are in the
   * tree): "creating" one links it as virtfnN of its PF and, for a PF on
   * vfio-pci, sets its driver_override to vfio-pci and binds it there, as
   * vfio-pci's bus notifier and the probe that follows do.
   */
  private setNumVfs(pf: string, value: string): void {
    const dir = this.deviceDir(pf);
    const n = Number(value);
    const total = Number(readFileSync(join(dir, 'sriov_totalvfs'), 'utf8'));
    const current = Number(readFileSync(join(dir, 'sriov_numvfs'), 'utf8'));
    if (!/^[0-9]+$/.test(value) || n > total) throw errnoError('ERANGE', `${value} VFs`);
    if (n === current) return;
    if (n !== 0 && current !== 0) throw errnoError('EBUSY', `${current} VFs already enabled`);
    const pfDriver = this.driverOf(pf);
    if (n !== 0 && pfDriver === 'vfio-pci') {
      const param = readFileSync(join(this.sysfs, 'module', 'vfio_pci', 'parameters', 'enable_sriov'), 'utf8').trim();
      if (param !== 'Y') throw errnoError('ENOENT', 'vfio-pci: enable_sriov is off');
    }
    const vfs = this.vfsOf(pf);
    if (n > vfs.length) throw new Error(`the fake machine declares ${vfs.length} VFs of ${pf}, not ${n}`);
    for (const name of readdirSync(dir).filter((f) => /^virtfn[0-9]+$/.test(f))) {
      const vf = basename(readlinkSync(join(dir, name)));
      const drv = this.driverOf(vf);
      if (drv !== null) this.unlink(vf, drv);
      unlinkSync(join(dir, name));
    }
    for (let i = 0; i < n; i++) {
      const vf = vfs[i] as string;
      symlinkSync(relative(dir, this.deviceDir(vf)), join(dir, `virtfn${i}`));
      if (pfDriver === 'vfio-pci') {
        writeFileSync(join(this.deviceDir(vf), 'driver_override'), 'vfio-pci\n');
        if (this.driverOf(vf) === null) this.link(vf, 'vfio-pci');
      }
    }
    writeFileSync(join(dir, 'sriov_numvfs'), `${n}\n`);
  }

  /** The fake kernel's VFs of `pf` (devices whose physfn link names it), sorted. */
  private vfsOf(pf: string): string[] {
    const all = readdirSync(join(this.sysfs, 'bus', 'pci', 'devices'));
    return all
      .filter((a) => {
        try {
          return basename(readlinkSync(join(this.deviceDir(a), 'physfn'))) === pf;
        } catch {
          return false;
        }
      })
      .sort();
  }

  private override(address: string): string | null {
    try {
      const v = readFileSync(join(this.deviceDir(address), 'driver_override'), 'utf8').trim();
      return v === '' || v === '(null)' ? null : v;
    } catch {
      return null;
    }
  }

  private link(address: string, driver: string): void {
    const dev = this.deviceDir(address);
    const drvDir = join(this.sysfs, 'bus', 'pci', 'drivers', driver);
    symlinkSync(relative(dev, drvDir), join(dev, 'driver'));
    symlinkSync(relative(drvDir, dev), join(drvDir, address));
  }

  private unlink(address: string, driver: string): void {
    unlinkSync(join(this.deviceDir(address), 'driver'));
    const back = join(this.sysfs, 'bus', 'pci', 'drivers', driver, address);
    if (existsSync(dirname(back))) unlinkSync(back);
  }
}

export function cliMachine(opts: CliMachineOptions = {}): CliMachine {
  const kernel = new FakeKernel(opts);
  const stateDir = join(mkdtempSync(join(tmpdir(), 'vfio-cli-state-')), 'run-vfio');
  // The native drivers are loaded: they have their sysfs directory.
  for (const driver of Object.values(opts.native ?? {})) {
    const dir = join(kernel.sysfsRoot, 'bus', 'pci', 'drivers', driver);
    mkdirSync(dir, { recursive: true });
    for (const f of ['bind', 'unbind']) writeFileSync(join(dir, f), '');
  }
  const core = new FakePciCore(kernel.sysfsRoot, opts.native ?? {}, opts.refuse ?? {});
  const writes: [string, string][] = [];
  return {
    kernel,
    stateDir,
    writes,
    run(...args) {
      let out = '';
      let err = '';
      const env: CliEnv = {
        roots: { sysfs: kernel.sysfsRoot, dev: kernel.devRoot, proc: kernel.procRoot },
        vfio: () => createVfio({ sys: kernel.sys, sysfs: kernel.sysfsRoot, dev: kernel.devRoot, proc: kernel.procRoot, env: {} }),
        out: (t) => {
          out += t;
        },
        err: (t) => {
          err += t;
        },
        writeSysfs: (path, value) => {
          writes.push([relative(kernel.sysfsRoot, path), value]);
          if (opts.readOnlySysfs) throw errnoError('EACCES', path);
          core.write(path, value);
        },
        stateDir,
        uid: opts.uid ?? 0,
        gids: opts.gids ?? [0],
      };
      const code = main(args, env);
      return { code, out, err };
    },
    driverOf: (address) => core.driverOf(address),
    dispose() {
      kernel.dispose();
      rmSync(dirname(stateDir), { recursive: true, force: true });
    },
  };
}
