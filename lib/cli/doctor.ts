// `vfio doctor`: checks, one by one, what a machine needs before a program
// can drive a device through VFIO, and for each problem prints the exact fix.
// It reads sysfs, /dev and /proc only (nothing is opened), so it works as any
// user and answers "why can't I" for that user.
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { flag } from './args.js';
import type { Command } from './command.js';
import { EXIT } from './command.js';
import { inspectDevice, pciAddresses } from './devices.js';
import { featureChecks } from './features.js';
import type { CliEnv } from './env.js';
import { bytes, json } from './format.js';
import { machineAvailability, VFIO_MODES } from '../host/mode.js';
import { iommufdNode, noiommuParameter, type1ModuleDir, vfioCdevDir, vfioContainerNode } from '../host/paths.js';

type Status = 'ok' | 'warn' | 'fail' | 'info';

interface Check {
  readonly name: string;
  readonly status: Status;
  readonly message: string;
  /** What to do about it (absent when nothing needs doing). */
  readonly fix?: string;
}

/** RLIMIT_MEMLOCK below this warns: DMA buffers of a real driver need more. */
const MEMLOCK_WARN = 64 * 2 ** 20;

function listDir(path: string): string[] {
  try {
    return readdirSync(path).sort();
  } catch {
    return [];
  }
}

function readText(path: string): string | null {
  try {
    return readFileSync(path, 'utf8').trim();
  } catch {
    return null;
  }
}

/** The IOMMU hardware the kernel drives (`/sys/class/iommu/dmar0`, `ivhd0`, ...). */
function iommuCheck(env: CliEnv, noiommu: boolean): Check {
  const units = listDir(join(env.roots.sysfs, 'class', 'iommu'));
  if (units.length > 0) return { name: 'iommu', status: 'ok', message: `IOMMU enabled (${units.join(', ')})` };
  // Only the IOMMU parameters of the command line matter here.
  const params = (readText(join(env.roots.proc, 'cmdline')) ?? '').split(/\s+/).filter((p) => /iommu/.test(p));
  const fix =
    'enable VT-d (Intel) or AMD-Vi / IOMMU (AMD) in the firmware setup, and boot with intel_iommu=on on Intel ' +
    `(AMD enables it by default); IOMMU parameters on the kernel command line now: ${params.length === 0 ? 'none' : params.join(' ')}`;
  if (noiommu) {
    return { name: 'iommu', status: 'warn', message: 'no IOMMU: only the unsafe no-IOMMU mode is available (no DMA protection)', fix };
  }
  return { name: 'iommu', status: 'fail', message: 'no IOMMU is enabled (/sys/class/iommu is empty)', fix };
}

function moduleChecks(env: CliEnv): Check[] {
  const s = env.roots.sysfs;
  const checks: Check[] = [];
  const vfio = existsSync(join(s, 'module', 'vfio'));
  checks.push(
    vfio
      ? { name: 'vfio', status: 'ok', message: 'vfio is loaded' }
      : { name: 'vfio', status: 'fail', message: 'the vfio module is not loaded', fix: 'sudo modprobe vfio-pci (it loads vfio too)' },
  );
  const vfioPci = existsSync(join(s, 'bus', 'pci', 'drivers', 'vfio-pci'));
  checks.push(
    vfioPci
      ? { name: 'vfio-pci', status: 'ok', message: 'the vfio-pci driver is loaded' }
      : { name: 'vfio-pci', status: 'fail', message: 'the vfio-pci driver is not loaded', fix: 'sudo modprobe vfio-pci' },
  );
  const iommufd = existsSync(iommufdNode(env.roots));
  const cdevDir = existsSync(vfioCdevDir(env.roots));
  const type1 = existsSync(type1ModuleDir(env.roots));
  checks.push(
    type1 || iommufd
      ? {
          name: 'type1',
          status: 'ok',
          message: type1 ? 'vfio_iommu_type1 is loaded (group mode)' : 'IOMMUFD provides the Type1 interface (group mode)',
        }
      : {
          name: 'type1',
          status: 'warn',
          message: 'no Type1 IOMMU driver: group mode is unavailable',
          fix: 'sudo modprobe vfio_iommu_type1',
        },
  );
  checks.push(
    iommufd
      ? { name: 'iommufd', status: 'ok', message: `${iommufdNode(env.roots)} exists (cdev mode)` }
      : {
          name: 'iommufd',
          status: 'warn',
          message: `${iommufdNode(env.roots)} does not exist: cdev mode is unavailable`,
          fix: 'sudo modprobe iommufd (kernel 6.6+ built with CONFIG_IOMMUFD)',
        },
  );
  checks.push(
    cdevDir
      ? { name: 'vfio-cdev', status: 'ok', message: `${vfioCdevDir(env.roots)} exists (cdev mode)` }
      : {
          name: 'vfio-cdev',
          status: 'warn',
          message: `${vfioCdevDir(env.roots)} does not exist: cdev mode is unavailable`,
          fix: 'a kernel built with CONFIG_VFIO_DEVICE_CDEV=y (6.6+), with a device bound to vfio-pci',
        },
  );
  const container = existsSync(vfioContainerNode(env.roots));
  checks.push(
    container
      ? { name: 'container', status: 'ok', message: `${vfioContainerNode(env.roots)} exists (group and no-IOMMU modes)` }
      : {
          name: 'container',
          status: 'warn',
          message: `${vfioContainerNode(env.roots)} does not exist: group and no-IOMMU modes are unavailable`,
          fix: 'sudo modprobe vfio (a kernel with CONFIG_VFIO_CONTAINER=y)',
        },
  );
  return checks;
}

function noiommuCheck(env: CliEnv, hasIommu: boolean): Check {
  const param = noiommuParameter(env.roots);
  const value = readText(param);
  if (value === 'Y') {
    return {
      name: 'noiommu',
      status: hasIommu ? 'info' : 'ok',
      message: 'enable_unsafe_noiommu_mode=Y: devices without an IOMMU get no-IOMMU groups (DMA is not isolated)',
    };
  }
  if (hasIommu)
    return { name: 'noiommu', status: 'info', message: `enable_unsafe_noiommu_mode=${value ?? 'absent'} (not needed with an IOMMU)` };
  return {
    name: 'noiommu',
    status: 'info',
    message:
      `enable_unsafe_noiommu_mode=${value ?? 'absent'}: without an IOMMU, no-IOMMU mode is the only way ` +
      '(unsafe: the device can DMA anywhere)',
    fix: `echo Y | sudo tee ${param} (or boot with vfio.enable_unsafe_noiommu_mode=1), then bind the device again`,
  };
}

/** Can the user open `path` read-write? Decided from its owner and mode, as the kernel does. */
function canReadWrite(env: CliEnv, path: string): { ok: boolean; why: string } {
  const st = statSync(path);
  const mode = st.mode & 0o777;
  const why = `owner ${st.uid}:${st.gid}, mode ${mode.toString(8).padStart(4, '0')}`;
  if (env.uid === 0) return { ok: true, why };
  const bits = st.uid === env.uid ? (mode >> 6) & 7 : env.gids.includes(st.gid) ? (mode >> 3) & 7 : mode & 7;
  return { ok: (bits & 6) === 6, why };
}

function permissionCheck(env: CliEnv): Check {
  const nodes = [
    vfioContainerNode(env.roots),
    iommufdNode(env.roots),
    ...listDir(join(env.roots.dev, 'vfio'))
      .filter((n) => /^(noiommu-)?[0-9]+$/.test(n))
      .map((n) => join(env.roots.dev, 'vfio', n)),
    ...listDir(vfioCdevDir(env.roots)).map((n) => join(vfioCdevDir(env.roots), n)),
  ].filter((p) => existsSync(p));
  if (nodes.length === 0) return { name: 'permissions', status: 'info', message: 'no VFIO device nodes to check' };
  const denied = nodes.map((p) => ({ p, ...canReadWrite(env, p) })).filter((n) => !n.ok);
  if (denied.length === 0)
    return { name: 'permissions', status: 'ok', message: `uid ${env.uid} can open ${nodes.length} VFIO node(s) read-write` };
  return {
    name: 'permissions',
    status: 'fail',
    message: `uid ${env.uid} cannot open ${denied.map((d) => `${d.p} (${d.why})`).join(', ')} read-write`,
    fix:
      `run as root, or give the user the nodes: sudo chown ${env.uid} ${denied.map((d) => d.p).join(' ')} ` +
      '(lasting: a udev rule SUBSYSTEM=="vfio", OWNER="<user>", and for /dev/iommu KERNEL=="iommu", OWNER="<user>")',
  };
}

/** RLIMIT_MEMLOCK from /proc/self/limits: DMA memory is locked and counted against it. */
function memlockCheck(env: CliEnv): Check {
  if (env.uid === 0) return { name: 'memlock', status: 'ok', message: 'root (CAP_IPC_LOCK): the memlock limit does not apply' };
  const limits = readText(join(env.roots.proc, 'self', 'limits'));
  const line = limits?.split('\n').find((l) => l.startsWith('Max locked memory'));
  const soft = line?.slice('Max locked memory'.length).trim().split(/\s+/)[0];
  if (soft === undefined) return { name: 'memlock', status: 'warn', message: 'cannot read the memlock limit from /proc/self/limits' };
  const fix =
    'raise it: `ulimit -l unlimited` in a root shell before dropping privileges, ' +
    'or a line "<user> - memlock unlimited" in /etc/security/limits.conf (LimitMEMLOCK=infinity for a systemd service)';
  if (soft === 'unlimited') return { name: 'memlock', status: 'ok', message: 'memlock limit: unlimited' };
  const n = Number(soft);
  if (!Number.isFinite(n)) return { name: 'memlock', status: 'warn', message: `memlock limit reads ${JSON.stringify(soft)}` };
  if (n < MEMLOCK_WARN) {
    return {
      name: 'memlock',
      status: 'warn',
      message: `memlock limit is ${bytes(n)}: every DMA buffer counts against it (twice in group mode)`,
      fix,
    };
  }
  return { name: 'memlock', status: 'ok', message: `memlock limit: ${bytes(n)}` };
}

function modesCheck(env: CliEnv, hasIommu: boolean): Check {
  // The nodes of cdev and group mode exist without IOMMU hardware too (the
  // modules load), but no device can use them then: say so.
  const nodes = machineAvailability(env.roots);
  const avail = hasIommu ? nodes : { ...nodes, cdev: nodes.cdev ?? 'no IOMMU', group: nodes.group ?? 'no IOMMU' };
  const usable = VFIO_MODES.filter((m) => avail[m] === null);
  const why = VFIO_MODES.filter((m) => avail[m] !== null).map((m) => `${m}: ${avail[m]}`);
  if (usable.length === 0) {
    return { name: 'modes', status: 'fail', message: `no VFIO mode is available (${why.join('; ')})`, fix: 'fix the failed checks above' };
  }
  return { name: 'modes', status: 'ok', message: `available modes: ${usable.join(', ')}${why.length ? ` (not: ${why.join('; ')})` : ''}` };
}

function devicesCheck(env: CliEnv): Check {
  const v = env.vfio();
  const devices = pciAddresses(env.roots)
    .map((a) => inspectDevice(env.roots, v, a))
    .filter((d) => d.vfio);
  if (devices.length === 0) {
    return {
      name: 'devices',
      status: 'info',
      message: 'no device is bound to vfio-pci',
      fix: 'vfio ls shows the devices; sudo vfio bind <address> hands one to VFIO',
    };
  }
  const bad = devices.filter((d) => d.viable !== true || d.mode === null);
  const list = devices.map((d) => `${d.address} (${d.mode ?? 'no mode'}${d.viable === true ? '' : ', group not viable'})`).join(', ');
  if (bad.length === 0) return { name: 'devices', status: 'ok', message: `bound to vfio-pci: ${list}` };
  const fixes = bad.map((d) =>
    d.viable !== true
      ? `${d.address}: its group also holds ${d.blockers.map((b) => `${b.address} (${b.driver})`).join(', ')}: ` +
        `sudo vfio bind ${d.address} --group`
      : `${d.address}: ${d.modeError}`,
  );
  return { name: 'devices', status: 'fail', message: `bound to vfio-pci: ${list}`, fix: fixes.join('; ') };
}

const MARK: Readonly<Record<Status, string>> = { ok: 'ok  ', warn: 'warn', fail: 'FAIL', info: 'info' };

export const doctor: Command = {
  name: 'doctor',
  summary: 'check that this machine can run VFIO, and say what to fix',
  usage: 'doctor [--json]',
  help: `Checks, in order: the IOMMU (/sys/class/iommu), the vfio, vfio-pci,
vfio_iommu_type1 and iommufd modules and the /dev nodes they make, the
no-IOMMU parameter, which VFIO modes are available, whether you may open the
VFIO nodes read-write, your memlock limit (DMA memory is locked), the
devices bound to vfio-pci (viable group, usable mode), and what the running
kernel offers: which container serves /dev/vfio/vfio (legacy or iommufd's
compat container), SR-IOV (PFs, vfio-pci enable_sriov), VF tokens in the
cdev bind (Linux 6.17+) and IOMMU_IOAS_MAP_FILE (6.13+).

Each line is "ok", "info", "warn" or "FAIL"; every warn and FAIL is followed
by "fix:" and what to run. Nothing is opened or changed: run it as the user
who will run the program.

Options:
  --json        [{ name, status, message, fix }] instead of text

Exits 1 when any check FAILed, 0 otherwise.`,
  options: { json: { type: 'boolean' } },
  positionals: { min: 0, max: 0, names: 'no argument' },
  run(args, env) {
    const noiommu = readText(noiommuParameter(env.roots)) === 'Y';
    const iommu = iommuCheck(env, noiommu);
    const checks: Check[] = [
      iommu,
      ...moduleChecks(env),
      noiommuCheck(env, iommu.status === 'ok'),
      modesCheck(env, iommu.status === 'ok'),
      permissionCheck(env),
      memlockCheck(env),
      devicesCheck(env),
      ...featureChecks(env),
    ];
    if (flag(args, 'json')) {
      env.out(json(checks));
    } else {
      let text = '';
      for (const c of checks) {
        text += `${MARK[c.status]}  ${c.name}: ${c.message}\n`;
        if (c.fix !== undefined && c.status !== 'ok') text += `      fix: ${c.fix}\n`;
      }
      const failed = checks.filter((c) => c.status === 'fail').length;
      text += failed === 0 ? '\nvfio doctor: nothing blocks VFIO here\n' : `\nvfio doctor: ${failed} problem(s) to fix\n`;
      env.out(text);
    }
    return checks.some((c) => c.status === 'fail') ? EXIT.failure : EXIT.ok;
  },
};
