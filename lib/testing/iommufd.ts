// /dev/iommu (drivers/iommu/iommufd): a context of objects named by small
// integer ids (lowest free id, never 0), IOAS address spaces with their
// io_pagetable rules, and the hardware page tables (HWPT) that attaching a
// device creates.
//
// Faithful details worth knowing:
// - An IOAS with no device attached has no IOMMU domain: it accepts any
//   alignment (iova_alignment 1), pins nothing, and reports [0, 2^64-1] as its
//   IOVA range. Attaching a device creates an automatic HWPT (its id is what
//   VFIO_DEVICE_ATTACH_IOMMUFD_PT writes back into pt_id), raises the
//   alignment to the IOMMU page, reserves the aperture's outside and the
//   device's reserved regions, and pins every mapped page.
// - Unmapping a range that does not exactly cover whole mappings, or covers
//   none, is ENOENT (type1 would say success with size 0).
import {
  iommu_destroy,
  iommu_ioas_alloc,
  iommu_ioas_allow_iovas,
  iommu_ioas_iova_ranges,
  iommu_ioas_map,
  iommu_ioas_unmap,
  iommu_iova_range,
  iommu_option,
  IOMMUFD_CMD_BASE,
  IOMMU_DESTROY,
  IOMMU_IOAS_ALLOC,
  IOMMU_IOAS_ALLOW_IOVAS,
  IOMMU_IOAS_IOVA_RANGES,
  IOMMU_IOAS_MAP,
  IOMMU_IOAS_MAP_FILE,
  iommu_ioas_map_file,
  IOMMU_IOAS_MAP_FIXED_IOVA,
  IOMMU_IOAS_MAP_READABLE,
  IOMMU_IOAS_MAP_WRITEABLE,
  IOMMU_IOAS_UNMAP,
  IOMMU_OPTION,
  IOMMU_OPTION_HUGE_PAGES,
  IOMMU_OPTION_OP_GET,
  IOMMU_OPTION_OP_SET,
  IOMMU_OPTION_RLIMIT_MODE,
} from '../uapi/iommufd.js';
import {
  VFIO_CHECK_EXTENSION,
  VFIO_GET_API_VERSION,
  VFIO_API_VERSION,
  VFIO_NOIOMMU_IOMMU,
  VFIO_TYPE1_IOMMU,
  VFIO_TYPE1v2_IOMMU,
  VFIO_UNMAP_ALL,
} from '../uapi/vfio.js';
import { get, read, set, write, type StructLayout } from '../uapi/codec.js';
import { kernelAtLeast, type KernelCore } from './core.js';
import type { DmaSpace, FakePciDevice } from './device.js';
import { fail } from './errors.js';
import { FakeFile, type IoctlArg } from './files.js';
import { MemfdFile } from './memfd.js';
import { PAGE_SIZE, type Backing } from './memory.js';
import { Pin } from './pin.js';
import { copyStructFromUser, offsetofend, PointerMemory, type UserMemory } from './uaccess.js';

const U64_MAX = (1n << 64n) - 1n;
/** ULONG_MAX on a 64-bit kernel: IOVAs and lengths must be below it. */
const ULONG_MAX = U64_MAX;
const PAGE = BigInt(PAGE_SIZE);

interface Range {
  start: bigint;
  /** Inclusive. */
  last: bigint;
}

interface Reserved extends Range {
  readonly owner: object;
}

interface Area extends Range {
  /** IOMMU_IOAS_MAP: the user address the pages are pinned from. */
  readonly uptr: bigint;
  /** IOMMU_IOAS_MAP_FILE: the file and offset the pages are pinned from instead. */
  readonly file: { readonly backing: Backing; readonly offset: number } | null;
  readonly read: boolean;
  readonly write: boolean;
  /** Pinned while the IOAS has at least one domain. */
  pin: Pin | null;
}

function roundupPow2(n: bigint): bigint {
  let p = 1n;
  while (p < n) p <<= 1n;
  return p;
}

function ffs(n: bigint): bigint {
  return n & -n;
}

function alignUp(n: bigint, a: bigint): bigint {
  return ((n + a - 1n) / a) * a;
}

export class Ioas {
  readonly kind = 'ioas';
  readonly areas: Area[] = [];
  readonly reserved: Reserved[] = [];
  allowed: Range[] = [];
  readonly domains: Hwpt[] = [];
  alignment = 1n;
  disableLargePages = false;

  constructor(
    private readonly k: KernelCore,
    readonly id: number,
  ) {}

  private intersects(list: readonly Range[], start: bigint, last: bigint): boolean {
    return list.some((r) => r.start <= last && r.last >= start);
  }

  /** iopt_check_iova(). */
  private checkIova(iova: bigint, length: bigint): void {
    if (iova % this.alignment !== 0n) fail('EINVAL', `IOVA 0x${iova.toString(16)} is not aligned to ${this.alignment}`);
    const last = iova + length - 1n;
    if (last > ULONG_MAX) fail('EOVERFLOW', 'IOVA range wraps');
    if (this.intersects(this.reserved, iova, last)) fail('EINVAL', 'IOVA range hits a reserved region');
    if (this.intersects(this.areas, iova, last)) fail('EEXIST', 'IOVA range overlaps a mapping');
  }

  /** Holes of `used` within [lo, hi], ascending. */
  private holes(used: Range[], lo: bigint, hi: bigint): Range[] {
    const sorted = used.filter((r) => r.last >= lo && r.start <= hi).sort((a, b) => (a.start < b.start ? -1 : 1));
    const out: Range[] = [];
    let at = lo;
    for (const r of sorted) {
      if (r.start > at) out.push({ start: at, last: r.start - 1n });
      if (r.last + 1n > at) at = r.last + 1n;
      if (at > hi || at === 0n) return out;
    }
    if (at <= hi) out.push({ start: at, last: hi });
    return out;
  }

  /** iopt_alloc_iova(): first fit from PAGE_SIZE, keeping the user pointer's alignment. */
  private allocIova(uptr: bigint, length: bigint): bigint {
    if (length === 0n || length >= ULONG_MAX / 2n) fail('EOVERFLOW', 'length too large to allocate');
    const pageOffset = uptr % PAGE;
    const align = uptr === 0n ? roundupPow2(length) : roundupPow2(length) < ffs(uptr) ? roundupPow2(length) : ffs(uptr);
    if (align < this.alignment) fail('EINVAL', 'allocation alignment below the IOAS alignment');
    const allowed = this.allowed.length > 0 ? this.allowed : [{ start: PAGE, last: ULONG_MAX - PAGE }];
    for (const a of allowed) {
      const lo = a.start < PAGE ? PAGE : a.start;
      const hi = a.last > ULONG_MAX - PAGE ? ULONG_MAX - PAGE : a.last;
      if (lo > hi) continue;
      for (const h of this.holes([...this.reserved, ...this.areas], lo, hi)) {
        const start = alignUp(h.start, align) | pageOffset;
        if (start <= h.last && h.last - start >= length - 1n) return start;
      }
    }
    fail('ENOSPC', 'no free IOVA range fits');
  }

  /**
   * IOMMU_IOAS_MAP (`file` null: pages of the user range at `uptr`) and
   * IOMMU_IOAS_MAP_FILE (`file`: pages of the file from its `offset`, which
   * then stands where the user address would: in the IOVA alignment and
   * the alignment checks, as iopt_map_common takes start_byte).
   */
  map(uptr: bigint, length: bigint, fixedIova: bigint | null, readable: boolean, writeable: boolean, file: Area['file'] = null): bigint {
    // iopt_alloc_pages()
    if (length === 0n || length > U64_MAX - PAGE) fail('EINVAL', 'length is zero or too large');
    if (uptr + length > U64_MAX) fail('EOVERFLOW', 'user range wraps');
    // iopt_alloc_area_pages()
    if (length % this.alignment !== 0n) fail('EINVAL', `length is not a multiple of the IOAS alignment ${this.alignment}`);
    const iova = fixedIova === null ? this.allocIova(uptr, length) : (this.checkIova(fixedIova, length), fixedIova);
    if ((uptr % PAGE) % this.alignment !== 0n) fail('EINVAL', 'user address is not aligned to the IOAS alignment');
    const area: Area = { start: iova, last: iova + length - 1n, uptr, file, read: readable, write: writeable, pin: null };
    if (this.domains.length > 0) area.pin = this.pinArea(area);
    let i = 0;
    while (i < this.areas.length && this.areas[i]!.start < area.start) i++;
    this.areas.splice(i, 0, area);
    return iova;
  }

  /** iopt_area_fill_domain(): the area's pages, from the process or from its file. */
  private pinArea(a: Area): Pin {
    const length = Number(a.last - a.start + 1n);
    return a.file === null ? Pin.user(this.k, a.uptr, length, a.write, false) : Pin.file(this.k, a.file.backing, a.file.offset, length);
  }

  /** iopt_unmap_iova_range(): whole areas only; none at all is ENOENT. */
  unmap(start: bigint, last: bigint): bigint {
    let unmapped = 0n;
    for (;;) {
      const a = this.areas.find((x) => x.start <= last && x.last >= start);
      if (a === undefined) break;
      if (a.start < start || a.last > last) fail('ENOENT', 'the range cuts a mapping');
      this.areas.splice(this.areas.indexOf(a), 1);
      a.pin?.release();
      unmapped += a.last - a.start + 1n;
    }
    if (unmapped === 0n) fail('ENOENT', 'no mapping in the range');
    return unmapped;
  }

  unmapAll(): bigint {
    let n = 0n;
    for (const a of this.areas.splice(0)) {
      a.pin?.release();
      n += a.last - a.start + 1n;
    }
    return n;
  }

  ranges(): Range[] {
    return this.holes(this.reserved, 0n, ULONG_MAX);
  }

  reserve(start: bigint, last: bigint, owner: object): void {
    if (this.intersects(this.areas, start, last) || this.intersects(this.allowed, start, last)) {
      fail('EADDRINUSE', `reserved IOVA [0x${start.toString(16)}, 0x${last.toString(16)}] is already mapped or allowed`);
    }
    this.reserved.push({ start, last, owner });
  }

  unreserve(owner: object): void {
    for (let i = this.reserved.length - 1; i >= 0; i--) if (this.reserved[i]!.owner === owner) this.reserved.splice(i, 1);
  }

  /** iopt_table_add_domain(): alignment, aperture, then fill (pin) every area. */
  addDomain(hwpt: Hwpt): void {
    const { pageSizes, aperture } = this.k.config.iommu;
    const newAlign = ffs(pageSizes) > this.alignment ? ffs(pageSizes) : this.alignment;
    if (newAlign !== this.alignment) {
      const m = newAlign - 1n;
      if (this.areas.some((a) => (a.start & m) !== 0n || ((a.last - a.start + 1n) & m) !== 0n || ((a.uptr % PAGE) & m) !== 0n)) {
        fail('EADDRINUSE', `existing mappings are not aligned to the IOMMU page ${newAlign}`);
      }
    }
    try {
      if (aperture.start !== 0n) this.reserve(0n, aperture.start - 1n, hwpt);
      if (aperture.end !== ULONG_MAX) this.reserve(aperture.end + 1n, ULONG_MAX, hwpt);
      if (this.domains.length === 0) {
        const pinned: Area[] = [];
        try {
          for (const a of this.areas) {
            a.pin = this.pinArea(a);
            pinned.push(a);
          }
        } catch (e) {
          for (const a of pinned) {
            a.pin?.release();
            a.pin = null;
          }
          throw e;
        }
      }
    } catch (e) {
      this.unreserve(hwpt);
      throw e;
    }
    this.alignment = newAlign;
    this.domains.push(hwpt);
  }

  removeDomain(hwpt: Hwpt): void {
    this.domains.splice(this.domains.indexOf(hwpt), 1);
    if (this.domains.length === 0) {
      for (const a of this.areas) {
        a.pin?.release();
        a.pin = null;
      }
    }
    this.unreserve(hwpt);
    this.alignment = this.domains.length > 0 ? ffs(this.k.config.iommu.pageSizes) : this.disableLargePages ? PAGE : 1n;
  }

  /** What the device reaches through a domain of this IOAS. */
  access(iova: bigint, length: number, isWrite: boolean): { area: Area; off: number; take: number }[] {
    const out: { area: Area; off: number; take: number }[] = [];
    let at = iova;
    const end = iova + BigInt(length);
    while (at < end) {
      const a = this.areas.find((x) => at >= x.start && at <= x.last);
      if (a === undefined || a.pin === null) fail('EFAULT', `IOMMU fault: IOVA 0x${at.toString(16)} is not mapped`);
      if (isWrite ? !a.write : !a.read)
        fail('EFAULT', `IOMMU fault: IOVA 0x${at.toString(16)} is not ${isWrite ? 'writable' : 'readable'} by the device`);
      const stop = end <= a.last ? end : a.last + 1n;
      out.push({ area: a, off: Number(at - a.start), take: Number(stop - at) });
      at = stop;
    }
    return out;
  }
}

/** An automatic hardware page table: the IOMMU domain devices attached to an IOAS share. */
export class Hwpt implements DmaSpace {
  readonly kind = 'hwpt';
  readonly devices = new Set<FakePciDevice>();

  constructor(
    readonly id: number,
    readonly ioas: Ioas,
  ) {}

  read(iova: bigint, length: number): Uint8Array {
    const out = new Uint8Array(length);
    let pos = 0;
    for (const p of this.ioas.access(iova, length, false)) {
      out.set(p.area.pin!.read(p.off, p.take), pos);
      pos += p.take;
    }
    return out;
  }

  write(iova: bigint, bytes: Uint8Array): void {
    let pos = 0;
    for (const p of this.ioas.access(iova, bytes.byteLength, true)) {
      p.area.pin!.write(p.off, bytes.subarray(pos, pos + p.take));
      pos += p.take;
    }
  }
}

/** A device bound to this context (iommufd_device): its id is the devid BIND returns. */
export class IdevObj {
  readonly kind = 'device';
  hwpt: Hwpt | null = null;
  constructor(
    readonly id: number,
    readonly device: FakePciDevice,
  ) {}
}

type IObj = Ioas | Hwpt | IdevObj;

interface OpSpec {
  readonly layout: StructLayout;
  readonly min: number;
  readonly run: (k: Uint8Array, mem: UserMemory, usize: number) => void;
}

export class IommufdFile extends FakeFile {
  readonly kind = 'iommufd';
  readonly objects = new Map<number, IObj>();
  private accountMm = false;

  constructor(
    private readonly k: KernelCore,
    path: string,
    accessMode: number,
  ) {
    super(path, accessMode);
  }

  protected override release(): void {
    // Bound devices hold a file reference, so only IOASes are left here.
    for (const o of this.objects.values()) if (o instanceof Ioas) o.unmapAll();
    this.objects.clear();
  }

  /** xa_alloc with XA_FLAGS_ALLOC1: the lowest free id from 1. */
  allocId(): number {
    let id = 1;
    while (this.objects.has(id)) id++;
    return id;
  }

  private ioasOf(id: number): Ioas {
    const o = this.objects.get(id);
    if (!(o instanceof Ioas)) fail('ENOENT', `no IOAS ${id}`);
    return o;
  }

  // ---- device binding (vfio_iommufd_physical_bind / attach / detach / unbind) ----

  bind(dev: FakePciDevice, claim: () => void): IdevObj {
    claim();
    const obj = new IdevObj(this.allocId(), dev);
    this.objects.set(obj.id, obj);
    return obj;
  }

  unbind(obj: IdevObj, release: () => void): void {
    if (obj.hwpt !== null) this.detach(obj);
    this.objects.delete(obj.id);
    release();
  }

  /** Attaches (or replaces) to `ptId`; returns the HWPT id written back to pt_id. */
  attach(obj: IdevObj, ptId: number): number {
    const target = this.objects.get(ptId);
    if (target === undefined) fail('ENOENT', `no object ${ptId}`);
    if (target instanceof IdevObj) fail('EINVAL', `object ${ptId} is a device, not an IOAS or HWPT`);
    const ioas = target instanceof Ioas ? target : target.ioas;
    if (obj.hwpt !== null && obj.hwpt.ioas === ioas) return obj.hwpt.id;
    const old = obj.hwpt;
    // Replace: the new attachment is made before the old one is dropped.
    let hwpt = target instanceof Hwpt ? target : ioas.domains[0];
    const reserveDev = (): void => {
      for (const r of this.k.config.iommu.reserved) ioas.reserve(r.start, r.end, obj);
    };
    if (hwpt === undefined) {
      const created = new Hwpt(this.allocId(), ioas);
      this.objects.set(created.id, created);
      try {
        reserveDev();
        ioas.addDomain(created);
      } catch (e) {
        ioas.unreserve(obj);
        this.objects.delete(created.id);
        throw e;
      }
      hwpt = created;
    } else {
      reserveDev();
    }
    hwpt.devices.add(obj.device);
    obj.hwpt = hwpt;
    if (old !== null) this.dropAttachment(obj.device, obj, old);
    return hwpt.id;
  }

  detach(obj: IdevObj): void {
    if (obj.hwpt === null) return;
    const old = obj.hwpt;
    obj.hwpt = null;
    this.dropAttachment(obj.device, obj, old);
  }

  private dropAttachment(dev: FakePciDevice, owner: object, hwpt: Hwpt): void {
    hwpt.devices.delete(dev);
    hwpt.ioas.unreserve(owner);
    if (hwpt.devices.size === 0) {
      hwpt.ioas.removeDomain(hwpt);
      this.objects.delete(hwpt.id);
    }
  }

  /** Whether a device of IOMMU group `groupDevices` is bound here (iommufd_ctx_has_group). */
  hasDeviceOf(devices: readonly FakePciDevice[]): boolean {
    for (const o of this.objects.values()) if (o instanceof IdevObj && devices.includes(o.device)) return true;
    return false;
  }

  devidOf(dev: FakePciDevice): number | null {
    for (const o of this.objects.values()) if (o instanceof IdevObj && o.device === dev) return o.id;
    return null;
  }

  // ---- ioctls ----

  override ioctl(request: number, arg: IoctlArg): number {
    const nr = request & 0xff;
    if (nr < IOMMUFD_CMD_BASE) return this.vfioCompat(request, arg);
    const op = this.ops().get(request);
    const mem = arg.mem();
    const usize = new DataView(mem.copyIn(0, 4).buffer).getUint32(0, true);
    if (op === undefined) fail('ENOTTY', `iommufd request 0x${request.toString(16)} is not modeled by the fake`);
    if (usize < op.min) fail('EINVAL', `size ${usize} is below ${op.min}`);
    const k = copyStructFromUser(mem, op.layout, usize);
    op.run(k, mem, usize);
    return 0;
  }

  /** iommufd_vfio_ioctl(): the VFIO container compatibility ioctls the fake answers. */
  private vfioCompat(request: number, arg: IoctlArg): number {
    if (request === VFIO_GET_API_VERSION) return VFIO_API_VERSION;
    if (request === VFIO_CHECK_EXTENSION) {
      const v = arg.value;
      return v === BigInt(VFIO_TYPE1_IOMMU) || v === BigInt(VFIO_TYPE1v2_IOMMU) || v === BigInt(VFIO_UNMAP_ALL)
        ? 1
        : v === BigInt(VFIO_NOIOMMU_IOMMU)
          ? 0
          : 0;
    }
    fail('ENOTTY', 'iommufd VFIO compatibility ioctls are not modeled by the fake');
  }

  /** iommufd_ucmd_respond(): the struct goes back, at most as long as the user's. */
  private respond(mem: UserMemory, k: Uint8Array, usize: number): void {
    mem.copyOut(0, k.subarray(0, Math.min(usize, k.byteLength)));
  }

  private ops(): Map<number, OpSpec> {
    const m = new Map<number, OpSpec>();
    const add = (req: number, layout: StructLayout, last: string, run: OpSpec['run']): void => {
      m.set(req, { layout, min: offsetofend(layout, last), run });
    };
    add(IOMMU_DESTROY, iommu_destroy, 'id', (k) => this.destroy(get(iommu_destroy, k, 'id')));
    add(IOMMU_IOAS_ALLOC, iommu_ioas_alloc, 'out_ioas_id', (k, mem, usize) => {
      if (get(iommu_ioas_alloc, k, 'flags') !== 0) fail('EOPNOTSUPP', 'IOAS_ALLOC flags must be 0');
      const ioas = new Ioas(this.k, this.allocId());
      set(iommu_ioas_alloc, k, 'out_ioas_id', ioas.id);
      this.respond(mem, k, usize);
      this.objects.set(ioas.id, ioas);
    });
    add(IOMMU_IOAS_MAP, iommu_ioas_map, 'iova', (k, mem, usize) => {
      const L = iommu_ioas_map;
      const c = read(L, k);
      if (c.flags & ~(IOMMU_IOAS_MAP_FIXED_IOVA | IOMMU_IOAS_MAP_WRITEABLE | IOMMU_IOAS_MAP_READABLE) || c.__reserved) {
        fail('EOPNOTSUPP', 'unknown map flags or nonzero __reserved');
      }
      if (c.iova >= ULONG_MAX || c.length >= ULONG_MAX) fail('EOVERFLOW', 'iova or length too large');
      if (!(c.flags & (IOMMU_IOAS_MAP_WRITEABLE | IOMMU_IOAS_MAP_READABLE))) fail('EINVAL', 'a mapping must be READABLE and/or WRITEABLE');
      const ioas = this.ioasOf(c.ioas_id);
      const fixed = (c.flags & IOMMU_IOAS_MAP_FIXED_IOVA) !== 0 ? c.iova : null;
      const iova = ioas.map(
        c.user_va,
        c.length,
        fixed,
        (c.flags & IOMMU_IOAS_MAP_READABLE) !== 0,
        (c.flags & IOMMU_IOAS_MAP_WRITEABLE) !== 0,
      );
      set(L, k, 'iova', iova);
      this.respond(mem, k, usize);
    });
    // iommufd_ioas_map_file(), Linux 6.13+: before, the request is unknown (ENOTTY).
    if (kernelAtLeast(this.k.config, 6, 13)) {
      add(IOMMU_IOAS_MAP_FILE, iommu_ioas_map_file, 'iova', (k, mem, usize) => {
        const L = iommu_ioas_map_file;
        const c = read(L, k);
        if (c.flags & ~(IOMMU_IOAS_MAP_FIXED_IOVA | IOMMU_IOAS_MAP_WRITEABLE | IOMMU_IOAS_MAP_READABLE)) {
          fail('EOPNOTSUPP', 'unknown map flags');
        }
        if (c.iova >= ULONG_MAX || c.length >= ULONG_MAX) fail('EOVERFLOW', 'iova or length too large');
        if (!(c.flags & (IOMMU_IOAS_MAP_WRITEABLE | IOMMU_IOAS_MAP_READABLE)))
          fail('EINVAL', 'a mapping must be READABLE and/or WRITEABLE');
        const ioas = this.ioasOf(c.ioas_id);
        if (c.length === 0n) fail('EINVAL', 'length is zero');
        const f = this.k.fds.lookup(c.fd);
        if (f === undefined) fail('EBADF', `fd ${c.fd} is not open`);
        // memfd_pin_folios() pins shmem and hugetlbfs files only.
        if (!(f instanceof MemfdFile)) fail('EINVAL', 'only memfd (shmem, hugetlbfs) files can be mapped by file');
        if (c.start > BigInt(f.size)) fail('EINVAL', 'start is past the end of the file');
        const fixed = (c.flags & IOMMU_IOAS_MAP_FIXED_IOVA) !== 0 ? c.iova : null;
        const iova = ioas.map(
          c.start,
          c.length,
          fixed,
          (c.flags & IOMMU_IOAS_MAP_READABLE) !== 0,
          (c.flags & IOMMU_IOAS_MAP_WRITEABLE) !== 0,
          { backing: f.backing, offset: Number(c.start) },
        );
        set(L, k, 'iova', iova);
        this.respond(mem, k, usize);
      });
    }
    add(IOMMU_IOAS_UNMAP, iommu_ioas_unmap, 'length', (k, mem, usize) => {
      const L = iommu_ioas_unmap;
      const c = read(L, k);
      const ioas = this.ioasOf(c.ioas_id);
      let unmapped: bigint;
      if (c.iova === 0n && c.length === U64_MAX) unmapped = ioas.unmapAll();
      else {
        if (c.iova >= ULONG_MAX || c.length >= ULONG_MAX) fail('EOVERFLOW', 'iova or length too large');
        if (c.length === 0n) fail('EINVAL', 'length is zero');
        if (c.iova + c.length - 1n > ULONG_MAX) fail('EOVERFLOW', 'range wraps');
        unmapped = ioas.unmap(c.iova, c.iova + c.length - 1n);
      }
      set(L, k, 'length', unmapped);
      this.respond(mem, k, usize);
    });
    add(IOMMU_IOAS_IOVA_RANGES, iommu_ioas_iova_ranges, 'out_iova_alignment', (k, mem, usize) => {
      const L = iommu_ioas_iova_ranges;
      if (get(L, k, '__reserved') !== 0) fail('EOPNOTSUPP', '__reserved must be 0');
      const ioas = this.ioasOf(get(L, k, 'ioas_id'));
      const max = get(L, k, 'num_iovas');
      const out = new PointerMemory(this.k.space, get(L, k, 'allowed_iovas'));
      const ranges = ioas.ranges();
      ranges.forEach((r, i) => {
        if (i < max) {
          const e = new Uint8Array(iommu_iova_range.size);
          write(iommu_iova_range, e, { start: r.start, last: r.last });
          out.copyOut(i * iommu_iova_range.size, e);
        }
      });
      set(L, k, 'num_iovas', ranges.length);
      set(L, k, 'out_iova_alignment', ioas.alignment);
      this.respond(mem, k, usize);
      if (ranges.length > max) fail('EMSGSIZE', `${ranges.length} ranges, room for ${max} (num_iovas set)`);
    });
    add(IOMMU_IOAS_ALLOW_IOVAS, iommu_ioas_allow_iovas, 'allowed_iovas', (k) => {
      const L = iommu_ioas_allow_iovas;
      if (get(L, k, '__reserved') !== 0) fail('EOPNOTSUPP', '__reserved must be 0');
      const ioas = this.ioasOf(get(L, k, 'ioas_id'));
      const src = new PointerMemory(this.k.space, get(L, k, 'allowed_iovas'));
      const list: Range[] = [];
      for (let i = 0; i < get(L, k, 'num_iovas'); i++) {
        const r = read(iommu_iova_range, src.copyIn(i * iommu_iova_range.size, iommu_iova_range.size));
        if (r.start >= r.last) fail('EINVAL', 'allowed range start >= last');
        if (list.some((x) => x.start <= r.last && x.last >= r.start)) fail('EINVAL', 'allowed ranges overlap');
        list.push({ start: r.start, last: r.last });
      }
      if (list.some((a) => ioas.reserved.some((r) => r.start <= a.last && r.last >= a.start)))
        fail('EADDRINUSE', 'an allowed range is reserved');
      ioas.allowed = list;
    });
    add(IOMMU_OPTION, iommu_option, 'val64', (k, mem) => {
      const L = iommu_option;
      const c = read(L, k);
      if (c.__reserved) fail('EOPNOTSUPP', '__reserved must be 0');
      let val: bigint;
      if (c.option_id === IOMMU_OPTION_RLIMIT_MODE) {
        if (c.object_id) fail('EOPNOTSUPP', 'RLIMIT_MODE is global (object_id 0)');
        if (c.op === IOMMU_OPTION_OP_GET) val = this.accountMm ? 1n : 0n;
        else if (c.op === IOMMU_OPTION_OP_SET) {
          if (this.k.uid() !== 0) fail('EPERM', 'RLIMIT_MODE needs CAP_SYS_RESOURCE');
          if (this.objects.size > 0) fail('EBUSY', 'RLIMIT_MODE can only change on an empty context');
          if (c.val64 > 1n) fail('EINVAL', 'RLIMIT_MODE is 0 or 1');
          this.accountMm = c.val64 === 1n;
          val = c.val64;
        } else fail('EOPNOTSUPP', 'unknown op');
      } else if (c.option_id === IOMMU_OPTION_HUGE_PAGES) {
        const ioas = this.ioasOf(c.object_id);
        if (c.op === IOMMU_OPTION_OP_GET) val = ioas.disableLargePages ? 0n : 1n;
        else if (c.op === IOMMU_OPTION_OP_SET) {
          if (c.val64 > 1n) fail('EINVAL', 'HUGE_PAGES is 0 or 1');
          if (c.val64 === 0n && ioas.domains.length > 0 && ioas.areas.length > 0)
            fail('EINVAL', 'cannot disable huge pages with mappings in a domain');
          ioas.disableLargePages = c.val64 === 0n;
          if (ioas.domains.length === 0) ioas.alignment = ioas.disableLargePages ? PAGE : 1n;
          val = c.val64;
        } else fail('EOPNOTSUPP', 'unknown op');
      } else fail('EOPNOTSUPP', `unknown option ${c.option_id}`);
      const v = new Uint8Array(8);
      new DataView(v.buffer).setBigUint64(0, val, true);
      mem.copyOut(L.fields.val64.offset, v);
    });
    return m;
  }

  /** IOMMU_DESTROY: an object still in use (an attached IOAS, a bound device) is EBUSY. */
  private destroy(id: number): void {
    const o = this.objects.get(id);
    if (o === undefined) fail('ENOENT', `no object ${id}`);
    if (o instanceof IdevObj) fail('EBUSY', `object ${id} is a device bound by VFIO`);
    if (o instanceof Hwpt && o.devices.size > 0) fail('EBUSY', `HWPT ${id} has devices attached`);
    if (o instanceof Ioas && o.domains.length > 0) fail('EBUSY', `IOAS ${id} has devices attached`);
    if (o instanceof Ioas) o.unmapAll();
    this.objects.delete(id);
  }
}
