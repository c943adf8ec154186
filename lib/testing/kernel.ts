// FakeKernel: a whole fake machine for tests. Devices described as data, a
// /sys + /dev + /proc tree in a temporary directory, and a `Sys` whose fds
// follow VFIO and IOMMUFD semantics as Linux 6.12+ implements them.
//
// Guarantees:
// - `sys` can stand in for the real koffi Sys anywhere: same methods, same
//   VfioError shape, fds allocated lowest-first.
// - Every counted call can be failed on purpose (failNth / failWhen) without
//   side effects (except close, which frees the fd as Linux does).
// - `leaks()` counts what a correct program must have given back: open fds,
//   mappings, and pinned or locked pages.
import { rmSync } from 'node:fs';
import { resolve } from 'node:path';
import type { PollFd } from '../libc/sys.js';
import * as iommufdUapi from '../uapi/iommufd.js';
import * as vfioUapi from '../uapi/vfio.js';
import { ContainerFile } from './container.js';
import type { FakeMode, IommuModel, KernelConfig, KernelCore } from './core.js';
import { FakePciDevice, type DmaSpace } from './device.js';
import type { IrqKind } from './device-model.js';
import { DeviceFile } from './device-file.js';
import { edu } from './edu.js';
import { errnoNumber, fail } from './errors.js';
import { EventFdFile } from './eventfd.js';
import { FdTable, type FakeFile } from './files.js';
import { buildTrees, type Trees } from './fs-tree.js';
import { GroupFile, IommuGroup, VfioGroup } from './group.js';
import { IommufdFile } from './iommufd.js';
import { AddressSpace, PAGE_SIZE, PhysicalMemory } from './memory.js';
import { PagemapFile } from './pagemap.js';
import type { PciDeviceDescription } from './pci-spec.js';
import { FakeSys, type SysMethod, type SyscallRecord } from './sys.js';
import { UnixNamespace } from './socket.js';
import { VfToken } from './sriov.js';
import type { VfioHost } from './vfio-host.js';

export interface FakeKernelOptions {
  /** Which VFIO interfaces the machine offers (default 'cdev'). */
  readonly mode?: FakeMode;
  /** The PCI devices (default: one edu at 0000:00:03.0). */
  readonly devices?: readonly PciDeviceDescription[];
  /** The lowest fd handed out (default 3: stdin, stdout, stderr are taken; 0 models a closed stdin). */
  readonly firstFd?: number;
  /** RLIMIT_NOFILE (default 1024). */
  readonly fdLimit?: number;
  /** getuid() (default 0: root, with CAP_SYS_RAWIO, CAP_IPC_LOCK, CAP_SYS_ADMIN). */
  readonly uid?: number;
  /** /dev/vfio/vfio and group nodes (default: true in every mode). */
  readonly groupInterface?: boolean;
  /** /dev/iommu and /dev/vfio/devices/vfioN (default: true in 'cdev' mode only). */
  readonly cdevInterface?: boolean;
  /**
   * vfio_iommu_type1 loaded (default true). 'v1': loaded, but offering only
   * VFIO_TYPE1_IOMMU (CHECK_EXTENSION(VFIO_TYPE1v2_IOMMU) is 0, SET_IOMMU of
   * it ENODEV), so that a container runs with Type1 v1's unmap rules.
   */
  readonly type1?: boolean | 'v1';
  readonly iommu?: Partial<IommuModel>;
  /** vfio_iommu_type1 dma_entry_limit (default 65535). */
  readonly dmaEntryLimit?: number;
  /** RLIMIT_MEMLOCK in bytes for a non-root uid (default 8 MiB). */
  readonly memlockLimit?: number;
  /** Free 2 MiB huge pages (default 0). */
  readonly hugepages?: number;
  /** Record every counted call in `kernel.log` (default false). */
  readonly log?: boolean;
  /**
   * The kernel release (default '6.12.0'). From 6.17 the cdev bind takes a
   * VF token (VFIO_DEVICE_BIND_FLAG_TOKEN) and checks it; before, a VF binds
   * through its cdev with no token check and a bind with flags is EINVAL.
   * From 6.13 IOMMU_IOAS_MAP_FILE exists.
   */
  readonly release?: string;
  /**
   * Who serves /dev/vfio/vfio (default 'legacy'): 'iommufd-compat' models
   * CONFIG_IOMMUFD_VFIO_CONTAINER (no vfio_iommu_type1 module; the container
   * answers iommufd's own ioctls too).
   */
  readonly containerKind?: 'legacy' | 'iommufd-compat';
}

export interface FaultMatch {
  /** Sys method ('ioctlInt', 'memfdCreate', ...) or kernel name ('ioctl', 'memfd_create', ...). */
  readonly syscall?: string | readonly string[];
  readonly request?: number;
  readonly fd?: number;
  /** Matches the path of open, or the path an fd was opened by (exact, or a suffix starting with '/'). */
  readonly path?: string;
  /** The kind of file behind the fd. */
  readonly kind?: string;
}

export interface FaultRule {
  /** How many calls this rule failed so far. */
  readonly hits: number;
  remove(): void;
}

export interface Leaks {
  readonly fds: number;
  readonly mappings: number;
  /** Pages pinned for DMA plus pages locked with mlock. */
  readonly pinned: number;
}

/** What a test can do to and see of one fake device. */
export interface FakeDeviceHandle {
  readonly address: string;
  /** The live config space bytes (as vfio-pci presents them). */
  readonly config: Uint8Array;
  /** BAR memory: the bytes mmap views reach. */
  bar(index: number): Uint8Array;
  readonly openCount: number;
  readonly resets: number;
  /** VFIO_PCI_*_IRQ_INDEX enabled through SET_IRQS, or null. */
  readonly irqType: number | null;
  raiseIrq(kind: IrqKind, vector?: number): boolean;
  /** Device DMA: throws a KernelError (EFAULT: IOMMU fault; EIO: bus mastering off). */
  dmaRead(iova: bigint, length: number): Uint8Array;
  dmaWrite(iova: bigint, bytes: Uint8Array): void;
}

interface Rule {
  readonly match: (r: SyscallRecord) => boolean;
  readonly code: string;
  remaining: number;
  hits: number;
}

const DEFAULT_IOMMU: IommuModel = {
  pageSizes: (1n << 12n) | (1n << 21n) | (1n << 30n),
  aperture: { start: 0n, end: (1n << 48n) - 1n },
  reserved: [{ start: 0xfee00000n, end: 0xfeefffffn }],
};

function parseRelease(release: string): [number, number] {
  const m = /^(\d+)\.(\d+)/.exec(release);
  if (m === null) throw new TypeError(`kernel release ${JSON.stringify(release)} does not start with major.minor`);
  return [Number(m[1]), Number(m[2])];
}

function matchPath(want: string, got: string | undefined): boolean {
  return got !== undefined && (got === want || (want.startsWith('/') && got.endsWith(want)));
}

export class FakeKernel implements KernelCore, VfioHost {
  readonly sys: FakeSys;
  readonly sysfsRoot: string;
  readonly devRoot: string;
  readonly procRoot: string;
  readonly config: KernelConfig;
  readonly space = new AddressSpace();
  readonly phys = new PhysicalMemory();
  readonly fds: FdTable;
  readonly pciDevices = new Map<string, FakePciDevice>();
  readonly cdevBindings = new Map<FakePciDevice, DeviceFile>();
  /** Bound AF_UNIX socket paths (lib/testing/socket.ts). */
  readonly unixNamespace = new UnixNamespace();
  /** The fake's kernel log: why each refused call was refused, and what devices did. */
  readonly kernelLog: string[] = [];
  /** Every counted call, when the `log` option is on. */
  readonly log: SyscallRecord[] = [];
  pinnedPages = 0;
  hugepagesFree: number;
  private uidValue: number;
  private count = 0;
  private failAt: { n: number; code: string; except: readonly string[] } | null = null;
  private readonly rules: Rule[] = [];
  private readonly logging: boolean;
  private readonly iommuGroups = new Map<number, IommuGroup>();
  private readonly vfioGroups = new Map<FakePciDevice, VfioGroup>();
  /** Devices whose unbind from vfio-pci waits for their release (unbindFromVfio). */
  private readonly unbindPending = new Set<FakePciDevice>();
  /** Devices vfio-pci let go of. */
  private readonly unboundFromVfio = new Set<FakePciDevice>();
  private readonly nodes = new Map<string, (accessMode: number) => FakeFile>();
  private readonly trees: Trees;
  private readonly pending = new Set<() => void>();
  /**
   * The kernel's timer list for devices: per device, the earliest tick its
   * model asked for (DeviceContext.wakeAt) that no kernel tick has served
   * yet. It is when a device can next change something on its own (finish a
   * DMA, raise an interrupt), which is what a blocking poll waits for. A
   * model asks again at every tick for work still pending (a device keeps
   * one timer, the earliest), so a served entry is simply dropped.
   */
  private readonly deviceWakes = new Map<FakePciDevice, number>();

  constructor(opts: FakeKernelOptions = {}) {
    const mode = opts.mode ?? 'cdev';
    this.config = {
      mode,
      noiommuParam: mode === 'noiommu',
      type1: (opts.type1 ?? true) !== false,
      type1v2: opts.type1 !== 'v1',
      groupInterface: opts.groupInterface ?? true,
      cdevInterface: opts.cdevInterface ?? mode === 'cdev',
      iommu: { ...DEFAULT_IOMMU, ...opts.iommu },
      dmaEntryLimit: opts.dmaEntryLimit ?? 65535,
      memlockLimit: opts.memlockLimit ?? 8 * 1024 * 1024,
      hugepages: opts.hugepages ?? 0,
      pageSize: PAGE_SIZE,
      release: opts.release ?? '6.12.0',
      version: parseRelease(opts.release ?? '6.12.0'),
      containerKind: opts.containerKind ?? 'legacy',
    };
    this.hugepagesFree = this.config.hugepages;
    this.uidValue = opts.uid ?? 0;
    this.logging = opts.log ?? false;
    this.fds = new FdTable(opts.firstFd ?? 3, opts.fdLimit ?? 1024);
    this.sys = new FakeSys(this);

    const descs = opts.devices ?? [edu()];
    this.createDevices(descs, mode);
    this.trees = buildTrees(
      this.config,
      [...this.pciDevices.values()].map((d) => ({ desc: d.desc, iommuGroup: this.iommuGroupOf(d)?.id ?? null, vfioIndex: d.vfioIndex })),
      [...this.iommuGroups.values()].map((g) => ({
        id: g.id,
        noiommu: mode === 'noiommu',
        vfio: [...this.vfioGroups.values()].some((v) => v.iommu === g),
      })),
    );
    this.sysfsRoot = this.trees.sysfsRoot;
    this.devRoot = this.trees.devRoot;
    this.procRoot = this.trees.procRoot;
    this.registerNodes();
  }

  private createDevices(descs: readonly PciDeviceDescription[], mode: FakeMode): void {
    let index = 0;
    const next = { mem32: 0xc0000000n, mem64: 0x8000000000n, io: 0xc000n };
    const busAddress = (size: number, type: 'mem32' | 'mem64' | 'io'): bigint => {
      const s = BigInt(Math.max(size, type === 'io' ? 4 : PAGE_SIZE));
      const at = ((next[type] + s - 1n) / s) * s;
      next[type] = at + s;
      return at;
    };
    for (const desc of descs) {
      if (this.pciDevices.has(desc.address)) throw new TypeError(`two devices at ${desc.address}`);
      const isVfio = desc.driver !== null && /vfio/.test(desc.driver);
      const dev = new FakePciDevice(desc, this, busAddress, isVfio ? index++ : null);
      this.listWakes(dev);
      this.pciDevices.set(desc.address, dev);
    }
    const all = [...this.pciDevices.values()];
    this.linkSriov(all);
    if (mode === 'noiommu') {
      // Without an IOMMU only VFIO's no-IOMMU groups exist, one per device.
      for (const d of all.filter((x) => x.vfioIndex !== null)) {
        if (this.iommuGroups.has(d.desc.group)) throw new TypeError(`no-IOMMU groups hold one device: group ${d.desc.group} is used twice`);
        const g = new IommuGroup(d.desc.group, [d]);
        this.iommuGroups.set(g.id, g);
        this.vfioGroups.set(d, new VfioGroup(g, true, [d]));
      }
      return;
    }
    for (const id of new Set(all.map((d) => d.desc.group))) {
      const members = all.filter((d) => d.desc.group === id);
      const g = new IommuGroup(id, members);
      this.iommuGroups.set(id, g);
      const vfioMembers = members.filter((d) => d.vfioIndex !== null);
      if (vfioMembers.length > 0) {
        const vg = new VfioGroup(g, false, vfioMembers);
        for (const d of vfioMembers) this.vfioGroups.set(d, vg);
      }
    }
  }

  /** vfio_pci_vf_init(): a vfio-pci PF gets a token; a VF finds its PF when vfio-pci created it. */
  private linkSriov(all: readonly FakePciDevice[]): void {
    for (const d of all) if (d.desc.sriov !== null && d.vfioIndex !== null) d.vfToken = new VfToken();
    for (const d of all) {
      if (d.desc.physfn === null) continue;
      const pf = this.pciDevices.get(d.desc.physfn);
      if (pf === undefined || pf.desc.sriov === null) throw new TypeError(`${d.desc.address}: physfn ${d.desc.physfn} is not an SR-IOV PF`);
      const vfs = all.filter((x) => x.desc.physfn === pf.desc.address).length;
      if (vfs > pf.desc.sriov.totalVfs) throw new TypeError(`${pf.desc.address} has ${vfs} VFs, more than sriov_totalvfs`);
      if (d.vfioIndex !== null && pf.vfToken !== null) d.sriovPf = pf;
    }
  }

  private registerNodes(): void {
    const c = this.config;
    const dev = this.devRoot;
    if (c.groupInterface) {
      this.nodes.set(resolve(dev, 'vfio', 'vfio'), (am) => new ContainerFile(this, resolve(dev, 'vfio', 'vfio'), am));
      for (const vg of new Set(this.vfioGroups.values())) {
        const path = resolve(dev, 'vfio', vg.name);
        this.nodes.set(path, (am) => GroupFile.open(this, vg, path, am));
      }
    }
    if (c.cdevInterface) {
      this.nodes.set(resolve(dev, 'iommu'), (am) => new IommufdFile(this, resolve(dev, 'iommu'), am));
      if (c.mode !== 'noiommu') {
        for (const d of this.pciDevices.values()) {
          if (d.vfioIndex === null) continue;
          const path = resolve(dev, 'vfio', 'devices', `vfio${d.vfioIndex}`);
          this.nodes.set(path, (am) => DeviceFile.openCdev(this, d, path, am));
        }
      }
    }
    const pagemap = resolve(this.procRoot, 'self', 'pagemap');
    this.nodes.set(pagemap, () => new PagemapFile(this, pagemap));
  }

  // ---- KernelCore / VfioHost ----

  uid(): number {
    return this.uidValue;
  }

  dmesg(line: string): void {
    this.kernelLog.push(line);
  }

  /**
   * Who the fake's process is, as SO_PEERCRED reports it to a socket's peer:
   * this process's pid, the current uid (the fake has one group per user).
   */
  credentials(): { pid: number; uid: number; gid: number } {
    return { pid: process.pid, uid: this.uidValue, gid: this.uidValue };
  }

  /** Changes getuid() (and with it root's capabilities, and the credentials sockets record) from now on. */
  setUid(uid: number): void {
    this.uidValue = uid;
  }

  chargeLocked(pages: number): void {
    if (this.uidValue === 0) return; // CAP_IPC_LOCK
    const total = (this.space.locked.size + this.pinnedPages + pages) * PAGE_SIZE;
    if (total > this.config.memlockLimit) fail('ENOMEM', `RLIMIT_MEMLOCK (${this.config.memlockLimit} bytes) exceeded`);
  }

  unchargeLocked(_pages: number): void {
    // Locked memory is recomputed from what is locked and pinned; nothing to give back.
  }

  vfioGroupOf(dev: FakePciDevice): VfioGroup | null {
    return this.vfioGroups.get(dev) ?? null;
  }

  iommuGroupOf(dev: FakePciDevice): IommuGroup | null {
    for (const g of this.iommuGroups.values()) if (g.devices.includes(dev)) return g;
    return null;
  }

  eventfdOf(fd: number): EventFdFile {
    const f = this.fds.lookup(fd);
    if (f === undefined) fail('EBADF', `fd ${fd} is not open`);
    if (!(f instanceof EventFdFile)) fail('EINVAL', `fd ${fd} is not an eventfd`);
    return f.get();
  }

  dmaSpaceOf(dev: FakePciDevice): DmaSpace | string {
    if (this.config.mode === 'noiommu') return this.physicalDma();
    const df = this.cdevBindings.get(dev);
    if (df !== undefined) {
      const dom = df.hwpt;
      return dom ?? 'the device is bound to iommufd but not attached to an IOAS';
    }
    const vg = this.vfioGroupOf(dev);
    const t1 = vg?.container?.type1 ?? null;
    return t1 ?? 'the device is not in an IOMMU domain (no container with an IOMMU set, no IOAS attached)';
  }

  /** No IOMMU: an IOVA is a physical address. */
  private physicalDma(): DmaSpace {
    const page = (pa: bigint): { bytes: Uint8Array } => {
      const owner = this.phys.owners.get(pa >> 12n);
      if (owner === undefined || !owner.backing.alive) fail('EFAULT', `no RAM page at physical address 0x${pa.toString(16)}`);
      return { bytes: new Uint8Array(owner.backing.buffer, owner.page * PAGE_SIZE, PAGE_SIZE) };
    };
    const walk = (pa: bigint, length: number, fn: (bytes: Uint8Array, off: number, take: number, pos: number) => void): void => {
      let pos = 0;
      while (pos < length) {
        const at = pa + BigInt(pos);
        const off = Number(at % BigInt(PAGE_SIZE));
        const take = Math.min(PAGE_SIZE - off, length - pos);
        fn(page(at).bytes, off, take, pos);
        pos += take;
      }
    };
    return {
      read: (pa, length) => {
        const out = new Uint8Array(length);
        walk(pa, length, (b, off, take, pos) => out.set(b.subarray(off, off + take), pos));
        return out;
      },
      write: (pa, bytes) => walk(pa, bytes.byteLength, (b, off, take, pos) => b.set(bytes.subarray(pos, pos + take), off)),
    };
  }

  // ---- used by FakeSys ----

  resolvePath(path: string): string {
    return resolve(path);
  }

  openNode(path: string, accessMode: number, nonblock: boolean): FakeFile {
    const make = this.nodes.get(path);
    if (make === undefined) fail('ENOENT', `${path} is not a file the fake kernel serves`);
    const f = make(accessMode);
    f.nonblock = nonblock;
    return f;
  }

  requestName(kind: string | undefined, request: number): string | undefined {
    const pick = (m: Record<string, unknown>, prefix: RegExp): string | undefined =>
      Object.entries(m).find(([k, v]) => v === request && prefix.test(k))?.[0];
    const v = vfioUapi.ioctls as Record<string, unknown>;
    const i = iommufdUapi.ioctls as Record<string, unknown>;
    switch (kind) {
      case 'container':
        return pick(v, /^VFIO_(GET_API|CHECK_EXT|SET_IOMMU|IOMMU_(GET_INFO|MAP_DMA|UNMAP_DMA|DIRTY))/);
      case 'group':
        return pick(v, /^VFIO_GROUP_/);
      case 'device':
        return pick(v, /^VFIO_DEVICE_/);
      case 'iommufd':
        return pick(i, /^IOMMU_/) ?? pick(v, /^VFIO_(GET_API|CHECK_EXT)/);
      default:
        return undefined;
    }
  }

  record(method: SysMethod, syscall: string, details: Partial<SyscallRecord>): SyscallRecord {
    const rec: SyscallRecord = { ...details, n: ++this.count, method, syscall };
    if (this.logging) this.log.push(rec);
    return rec;
  }

  /** The errno name to fail this call with, if a fault is due. */
  injectedFault(rec: SyscallRecord): string | null {
    if (this.failAt !== null && rec.n === this.failAt.n) {
      const { code, except } = this.failAt;
      this.failAt = null;
      if (except.includes(rec.method) || except.includes(rec.syscall)) {
        this.dmesg(`fault not injected: call #${rec.n} (${rec.method}) is excepted`);
        return null;
      }
      this.dmesg(`fault injected: call #${rec.n} (${rec.method}) fails with ${code}`);
      return code;
    }
    for (const r of this.rules) {
      if (r.remaining > 0 && r.match(rec)) {
        r.remaining--;
        r.hits++;
        this.dmesg(`fault injected: call #${rec.n} (${rec.method}${rec.requestName ? ` ${rec.requestName}` : ''}) fails with ${r.code}`);
        return r.code;
      }
    }
    return null;
  }

  /**
   * Puts the device's wake-up requests on the kernel's timer list as well
   * (the device still arms its own timer for them): FakePciDevice keeps its
   * timer to itself, and a synchronous poll, which blocks the event loop
   * those timers run on, must know when a device will act.
   */
  private listWakes(dev: FakePciDevice): void {
    const armDeviceTimer = dev.wakeAt.bind(dev);
    dev.wakeAt = (at: number): void => {
      const listed = this.deviceWakes.get(dev);
      if (listed === undefined || at < listed) this.deviceWakes.set(dev, at);
      armDeviceTimer(at);
    };
  }

  tickDevices(): void {
    for (const d of this.pciDevices.values()) {
      // This tick serves a wake-up that is due; the model lists again whatever is still pending.
      const at = this.deviceWakes.get(d);
      if (at !== undefined && at <= d.now()) this.deviceWakes.delete(d);
      d.tick();
    }
  }

  /**
   * When the earliest device wake-up is due (the devices' clock,
   * performance.now() milliseconds), or null when no device has work
   * pending: then nothing but the process itself can make an fd ready. A
   * time in the past means a tick is due (work a device timer may already
   * have finished: the next tickDevices() drops it).
   */
  nextDeviceDeadline(): number | null {
    let next: number | null = null;
    for (const at of this.deviceWakes.values()) if (next === null || at < next) next = at;
    return next;
  }

  /** pollAsync's wait: resolves when an fd is ready or the timeout passes; never spins. */
  waitPoll(fds: readonly PollFd[], timeoutMs: number, revents: (files: (FakeFile | undefined | null)[]) => number[]): Promise<number[]> {
    const files = fds.map((p) => (p.fd < 0 ? null : this.fds.lookup(p.fd)?.get()));
    const held = files.filter((f): f is FakeFile => f !== null && f !== undefined);
    return new Promise<number[]>((resolvePromise) => {
      const offs: (() => void)[] = [];
      let timer: NodeJS.Timeout | undefined;
      let done = false;
      // Two signals in one tick queue two checks: only the first may finish
      // (a second would release the held files twice).
      const finish = (r: number[]): void => {
        if (done) return;
        done = true;
        for (const off of offs) off();
        if (timer !== undefined) clearTimeout(timer);
        this.pending.delete(cancel);
        for (const f of held) f.put();
        resolvePromise(r);
      };
      const cancel = (): void => finish(fds.map(() => 0));
      const check = (): void => {
        const r = revents(files);
        if (r.some((x) => x !== 0)) finish(r);
      };
      const now = revents(files);
      if (now.some((x) => x !== 0) || timeoutMs === 0) {
        finish(now);
        return;
      }
      for (const f of held) offs.push(f.onChange(() => queueMicrotask(check)));
      // A pending poll keeps the process alive, as a worker blocked in poll(2) does.
      timer = setTimeout(() => finish(revents(files)), timeoutMs < 0 ? 2 ** 31 - 1 : timeoutMs);
      this.pending.add(cancel);
    });
  }

  // ---- the test-facing API ----

  /** Number of counted Sys calls so far (a test sweeps failNth over 1..syscalls). */
  get syscalls(): number {
    return this.count;
  }

  /** pollAsync calls still waiting. */
  get pendingPolls(): number {
    return this.pending.size;
  }

  /**
   * The `n`-th counted call from now (1 = the next one) fails with `code`
   * ('ENOMEM', ...). If that call is one of `except` (Sys method or kernel
   * names, e.g. ['munmap']), it runs normally and nothing fails: a sweep can
   * leave out calls whose failure no program can recover from (a failed
   * munmap leaves the mapping, as on Linux).
   */
  failNth(n: number, code: string, opts: { except?: readonly string[] } = {}): void {
    if (!Number.isInteger(n) || n < 1) throw new RangeError(`failNth(${n}): n counts from 1`);
    errnoNumber(code);
    this.failAt = { n: this.count + n, code, except: opts.except ?? [] };
  }

  /** Every call matching `match` fails with `code` (`times` calls at most, default all). */
  failWhen(match: FaultMatch | ((call: SyscallRecord) => boolean), code: string, opts: { times?: number } = {}): FaultRule {
    errnoNumber(code);
    const test =
      typeof match === 'function'
        ? match
        : (r: SyscallRecord): boolean => {
            if (match.syscall !== undefined) {
              const names = typeof match.syscall === 'string' ? [match.syscall] : match.syscall;
              if (!names.includes(r.method) && !names.includes(r.syscall)) return false;
            }
            if (match.request !== undefined && r.request !== match.request) return false;
            if (match.fd !== undefined && r.fd !== match.fd) return false;
            if (match.kind !== undefined && r.kind !== match.kind) return false;
            if (match.path !== undefined && !matchPath(match.path, r.path)) return false;
            return true;
          };
    const rule: Rule = { match: test, code, remaining: opts.times ?? Infinity, hits: 0 };
    this.rules.push(rule);
    return {
      get hits() {
        return rule.hits;
      },
      remove: () => {
        const i = this.rules.indexOf(rule);
        if (i >= 0) this.rules.splice(i, 1);
      },
    };
  }

  clearFaults(): void {
    this.failAt = null;
    this.rules.splice(0);
  }

  leaks(): Leaks {
    return { fds: this.fds.size, mappings: this.space.vmas.length, pinned: this.pinnedPages + this.space.locked.size };
  }

  private deviceAt(address: string): FakePciDevice {
    const d = this.pciDevices.get(address);
    if (d === undefined) throw new RangeError(`no fake device at ${address}`);
    return d;
  }

  /** The device raises an interrupt: 'intx' is an edge (held while masked), MSI/MSI-X need it enabled and bus mastering on. */
  raiseIrq(address: string, kind: IrqKind, vector = 0): boolean {
    const d = this.deviceAt(address);
    return kind === 'intx' ? d.pulseIntx() : d.raise(kind, vector);
  }

  /**
   * `echo ADDR > /sys/bus/pci/drivers/vfio-pci/unbind`. While the device is
   * open the kernel signals its REQ eventfd (if set) and waits for the
   * release (vfio_unregister_group_dev); the rest happens at the last close,
   * inside that close(2): the sysfs driver links go, and when it was the last
   * device of its VFIO group the kernel takes the group out of its container
   * (vfio_device_remove_group), so a later VFIO_GROUP_UNSET_CONTAINER on a
   * still-open group fd answers EINVAL, as Linux 6.12 does (seen in the VM
   * tier). Not modelled: the group and cdev nodes in /dev stay.
   * Returns true when done at once (the device was not open).
   */
  unbindFromVfio(address: string): boolean {
    const d = this.deviceAt(address);
    if (d.vfioIndex === null || this.unboundFromVfio.has(d)) throw new RangeError(`${address} is not bound to a VFIO driver`);
    if (d.openCount === 0) {
      this.finishUnbind(d);
      return true;
    }
    this.unbindPending.add(d);
    d.raise('req', 0);
    return false;
  }

  deviceReleased(dev: FakePciDevice): void {
    if (dev.openCount === 0 && this.unbindPending.delete(dev)) this.finishUnbind(dev);
  }

  private finishUnbind(d: FakePciDevice): void {
    this.unboundFromVfio.add(d);
    const dir = resolve(this.sysfsRoot, 'bus', 'pci', 'devices', d.address);
    rmSync(resolve(dir, 'driver'), { force: true });
    if (d.desc.driver !== null) rmSync(resolve(this.sysfsRoot, 'bus', 'pci', 'drivers', d.desc.driver, d.address), { force: true });
    const vg = this.vfioGroups.get(d);
    if (vg !== undefined && vg.container !== null && vg.devices.every((x) => this.unboundFromVfio.has(x))) vg.container.detachGroup(vg);
    this.dmesg(`vfio-pci ${d.address}: unbound`);
  }

  device(address: string): FakeDeviceHandle {
    const d = this.deviceAt(address);
    return {
      address,
      config: d.config.bytes,
      bar: (i) => d.bar(i),
      get openCount() {
        return d.openCount;
      },
      get resets() {
        return d.resets;
      },
      get irqType() {
        return d.irqs.type;
      },
      raiseIrq: (kind, vector = 0) => this.raiseIrq(address, kind, vector),
      dmaRead: (iova, length) => d.dmaRead(iova, length),
      dmaWrite: (iova, bytes) => d.dmaWrite(iova, bytes),
    };
  }

  /** Removes the temporary /sys, /dev and /proc, ends pending polls and stops the devices' timers. */
  dispose(): void {
    for (const cancel of [...this.pending]) cancel();
    for (const d of this.pciDevices.values()) d.dispose();
    rmSync(this.trees.base, { recursive: true, force: true });
  }
}
