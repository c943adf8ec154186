// The legacy container /dev/vfio/vfio (drivers/vfio/container.c) and its two
// IOMMU drivers: vfio_iommu_type1 (vfio_iommu_type1.c) and vfio-noiommu.
//
// A container lives while its file or any group in it holds a reference; the
// IOMMU driver is set (SET_IOMMU) only once a group is in it, and released
// with all its DMA mappings when the last group leaves.
import {
  vfio_iommu_type1_dma_map,
  vfio_iommu_type1_dma_unmap,
  vfio_iommu_type1_info,
  vfio_iommu_type1_info_cap_iova_range,
  vfio_iommu_type1_info_cap_migration,
  vfio_iommu_type1_info_dma_avail,
  vfio_iova_range,
  VFIO_API_VERSION,
  VFIO_CHECK_EXTENSION,
  VFIO_DMA_CC_IOMMU,
  VFIO_DMA_MAP_FLAG_READ,
  VFIO_DMA_MAP_FLAG_VADDR,
  VFIO_DMA_MAP_FLAG_WRITE,
  VFIO_DMA_UNMAP_FLAG_ALL,
  VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP,
  VFIO_DMA_UNMAP_FLAG_VADDR,
  VFIO_GET_API_VERSION,
  VFIO_IOMMU_GET_INFO,
  VFIO_IOMMU_INFO_CAPS,
  VFIO_IOMMU_INFO_PGSIZES,
  VFIO_IOMMU_MAP_DMA,
  VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE,
  VFIO_IOMMU_TYPE1_INFO_CAP_MIGRATION,
  VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL,
  VFIO_IOMMU_UNMAP_DMA,
  VFIO_NOIOMMU_IOMMU,
  VFIO_SET_IOMMU,
  VFIO_TYPE1_IOMMU,
  VFIO_TYPE1v2_IOMMU,
  VFIO_UNMAP_ALL,
  VFIO_UPDATE_VADDR,
} from '../uapi/vfio.js';
import { IOMMUFD_CMD_BASE } from '../uapi/iommufd.js';
import { get, set, write } from '../uapi/codec.js';
import { CapChain } from './caps.js';
import type { KernelCore } from './core.js';
import type { DmaSpace } from './device.js';
import { fail } from './errors.js';
import { FakeFile, type IoctlArg } from './files.js';
import type { VfioGroup } from './group.js';
import { Pin } from './pin.js';
import { copyStructIn, copyStructOut, offsetofend, type UserMemory } from './uaccess.js';

const U64_MAX = (1n << 64n) - 1n;
/** DIRTY_BITMAP_SIZE_MAX: bytes of a dirty bitmap for INT_MAX pages. */
const DIRTY_BITMAP_SIZE_MAX = 0x10000000n;

interface Dma {
  readonly iova: bigint;
  readonly size: bigint;
  vaddr: bigint;
  readonly read: boolean;
  readonly write: boolean;
  readonly pin: Pin;
  vaddrInvalid: boolean;
}

/** An IOMMU driver as vfio's container sees it. */
interface IommuDriver {
  readonly name: 'type1' | 'noiommu';
  ioctl(request: number, arg: IoctlArg): number;
  checkExtension(arg: bigint): number;
  attachGroup(group: VfioGroup): void;
  detachGroup(group: VfioGroup): void;
  release(): void;
}

/** vfio_iommu_type1: one IOMMU domain shared by every group (the fake has one IOMMU). */
export class Type1 implements IommuDriver, DmaSpace {
  readonly name = 'type1';
  /** Sorted by iova. */
  private readonly dmas: Dma[] = [];
  private dmaAvail: number;
  private groups = 0;
  private iovaRanges: { start: bigint; end: bigint }[] = [];

  constructor(
    private readonly k: KernelCore,
    readonly v2: boolean,
  ) {
    this.dmaAvail = k.config.dmaEntryLimit;
  }

  /** Smallest IOMMU page size: mappings are aligned to it. */
  private get pgsize(): bigint {
    const b = this.k.config.iommu.pageSizes;
    return b & -b;
  }

  /**
   * vfio_iommu_type1_check_extension(); `iommu` is null before SET_IOMMU.
   * With the `type1: 'v1'` option the driver does not offer
   * VFIO_TYPE1v2_IOMMU (as before Linux 3.15, which added it); every other
   * answer stays 6.12's (the driver behind it is 6.12's).
   */
  static checkExtension(k: KernelCore, iommu: Type1 | null, arg: bigint): number {
    switch (arg) {
      case BigInt(VFIO_TYPE1v2_IOMMU):
        return k.config.type1v2 ? 1 : 0;
      case BigInt(VFIO_TYPE1_IOMMU):
      case BigInt(VFIO_UNMAP_ALL):
        return 1;
      case BigInt(VFIO_UPDATE_VADDR):
        // iommufd's compat container never offers VFIO_DMA_MAP_FLAG_VADDR
        // (iommufd_vfio_check_extension).
        return iommu !== null && k.config.containerKind === 'legacy' ? 1 : 0;
      case BigInt(VFIO_DMA_CC_IOMMU):
        return iommu !== null ? 1 : 0;
      default:
        return 0;
    }
  }

  checkExtension(arg: bigint): number {
    return Type1.checkExtension(this.k, this, arg);
  }

  attachGroup(_group: VfioGroup): void {
    if (this.groups++ === 0) {
      // vfio_iommu_iova_get_copy(): the aperture minus the reserved regions.
      const { aperture, reserved } = this.k.config.iommu;
      let ranges = [{ start: aperture.start, end: aperture.end }];
      for (const r of reserved) {
        ranges = ranges.flatMap((x) => {
          if (r.end < x.start || r.start > x.end) return [x];
          const out: { start: bigint; end: bigint }[] = [];
          if (r.start > x.start) out.push({ start: x.start, end: r.start - 1n });
          if (r.end < x.end) out.push({ start: r.end + 1n, end: x.end });
          return out;
        });
      }
      this.iovaRanges = ranges;
    }
  }

  detachGroup(_group: VfioGroup): void {
    this.groups--;
  }

  /** Driver release: every mapping is unmapped and unpinned. */
  release(): void {
    for (const d of this.dmas.splice(0)) d.pin.release();
  }

  ioctl(request: number, arg: IoctlArg): number {
    switch (request) {
      case VFIO_CHECK_EXTENSION:
        return this.checkExtension(arg.value);
      case VFIO_IOMMU_GET_INFO:
        return this.getInfo(arg.mem());
      case VFIO_IOMMU_MAP_DMA:
        return this.mapDma(arg.mem());
      case VFIO_IOMMU_UNMAP_DMA:
        return this.unmapDma(arg.mem());
      default:
        fail('ENOTTY', `request 0x${request.toString(16)} is not a type1 ioctl (dirty tracking is not modeled)`);
    }
  }

  private getInfo(mem: UserMemory): number {
    const L = vfio_iommu_type1_info;
    const minsz = offsetofend(L, 'iova_pgsizes');
    const k = copyStructIn(mem, L, minsz);
    const argsz = get(L, k, 'argsz');
    if (argsz < minsz) fail('EINVAL', 'argsz too small');
    const outsz = Math.min(argsz, L.size);
    const caps = new CapChain();
    caps.add(vfio_iommu_type1_info_cap_migration, VFIO_IOMMU_TYPE1_INFO_CAP_MIGRATION, 1, {
      flags: 0,
      pgsize_bitmap: this.k.config.iommu.pageSizes,
      max_dirty_bitmap_size: DIRTY_BITMAP_SIZE_MAX,
    });
    caps.add(vfio_iommu_type1_info_dma_avail, VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL, 1, { avail: this.dmaAvail });
    const R = vfio_iommu_type1_info_cap_iova_range;
    const cap = caps.add(
      R,
      VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE,
      1,
      { nr_iovas: this.iovaRanges.length },
      this.iovaRanges.length * vfio_iova_range.size,
    );
    this.iovaRanges.forEach((r, i) => write(vfio_iova_range, cap, { start: r.start, end: r.end }, R.size + i * vfio_iova_range.size));
    write(L, k, { flags: VFIO_IOMMU_INFO_PGSIZES | VFIO_IOMMU_INFO_CAPS, iova_pgsizes: this.k.config.iommu.pageSizes, cap_offset: 0 });
    if (argsz < L.size + caps.size) {
      set(L, k, 'argsz', L.size + caps.size);
    } else {
      mem.copyOut(L.size, caps.encode(L.size));
      set(L, k, 'cap_offset', L.size);
    }
    copyStructOut(mem, k, outsz);
    return 0;
  }

  private find(iova: bigint, size: bigint): Dma | undefined {
    return this.dmas.find((d) => iova < d.iova + d.size && iova + size > d.iova);
  }

  /** vfio_find_dma(iova, 0): the mapping containing `iova`. */
  private containing(iova: bigint): Dma | undefined {
    return this.dmas.find((d) => iova >= d.iova && iova < d.iova + d.size);
  }

  private iovaValid(start: bigint, end: bigint): boolean {
    return this.iovaRanges.length === 0 || this.iovaRanges.some((r) => start >= r.start && end <= r.end);
  }

  private mapDma(mem: UserMemory): number {
    const L = vfio_iommu_type1_dma_map;
    const minsz = offsetofend(L, 'size');
    const k = copyStructIn(mem, L, minsz);
    const m = {
      argsz: get(L, k, 'argsz'),
      flags: get(L, k, 'flags'),
      vaddr: get(L, k, 'vaddr'),
      iova: get(L, k, 'iova'),
      size: get(L, k, 'size'),
    };
    const mask = VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE | VFIO_DMA_MAP_FLAG_VADDR;
    if (m.argsz < minsz || m.flags & ~mask) fail('EINVAL', 'argsz too small or unknown flags');
    const write_ = (m.flags & VFIO_DMA_MAP_FLAG_WRITE) !== 0;
    const read_ = (m.flags & VFIO_DMA_MAP_FLAG_READ) !== 0;
    const setVaddr = (m.flags & VFIO_DMA_MAP_FLAG_VADDR) !== 0;
    if ((read_ || write_) === setVaddr) fail('EINVAL', 'a mapping needs READ and/or WRITE, or VADDR alone');
    const pg = this.pgsize;
    if (m.size === 0n || (m.size | m.iova | m.vaddr) % pg !== 0n)
      fail('EINVAL', `size, iova and vaddr must be multiples of 0x${pg.toString(16)}`);
    if (m.iova + m.size - 1n > U64_MAX || m.vaddr + m.size - 1n > U64_MAX) fail('EINVAL', 'the range wraps');
    const existing = this.find(m.iova, m.size);
    if (setVaddr) {
      if (existing === undefined) fail('ENOENT', 'no mapping to update');
      if (!existing.vaddrInvalid || existing.iova !== m.iova || existing.size !== m.size)
        fail('EINVAL', 'VADDR update must match an invalidated mapping exactly');
      existing.vaddr = m.vaddr;
      existing.vaddrInvalid = false;
      return 0;
    }
    if (existing !== undefined) fail('EEXIST', `IOVA [0x${m.iova.toString(16)}, +0x${m.size.toString(16)}) overlaps a mapping`);
    if (this.dmaAvail === 0) fail('ENOSPC', 'dma_entry_limit reached');
    if (!this.iovaValid(m.iova, m.iova + m.size - 1n)) fail('EINVAL', 'IOVA range outside the IOMMU aperture or in a reserved region');
    // vfio_pin_map_dma(): device memory (VM_PFNMAP, a BAR mapping) is allowed: peer-to-peer DMA.
    const pin = Pin.user(this.k, m.vaddr, Number(m.size), write_, true);
    const dma: Dma = { iova: m.iova, size: m.size, vaddr: m.vaddr, read: read_, write: write_, pin, vaddrInvalid: false };
    let i = 0;
    while (i < this.dmas.length && this.dmas[i]!.iova < dma.iova) i++;
    this.dmas.splice(i, 0, dma);
    this.dmaAvail--;
    return 0;
  }

  private unmapDma(mem: UserMemory): number {
    const L = vfio_iommu_type1_dma_unmap;
    const minsz = offsetofend(L, 'size');
    const k = copyStructIn(mem, L, minsz);
    const flags = get(L, k, 'flags');
    const mask = VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP | VFIO_DMA_UNMAP_FLAG_VADDR | VFIO_DMA_UNMAP_FLAG_ALL;
    if (get(L, k, 'argsz') < minsz || flags & ~mask) fail('EINVAL', 'argsz too small or unknown flags');
    if (flags & VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP) {
      if (flags & (VFIO_DMA_UNMAP_FLAG_ALL | VFIO_DMA_UNMAP_FLAG_VADDR)) fail('EINVAL', 'GET_DIRTY_BITMAP with ALL or VADDR');
      fail('EINVAL', 'dirty page tracking is not enabled');
    }
    const iova = get(L, k, 'iova');
    let size = get(L, k, 'size');
    const all = (flags & VFIO_DMA_UNMAP_FLAG_ALL) !== 0;
    const invalidate = (flags & VFIO_DMA_UNMAP_FLAG_VADDR) !== 0;
    const pg = this.pgsize;
    if (iova % pg !== 0n) fail('EINVAL', 'iova is not page aligned');
    if (all) {
      if (iova !== 0n || size !== 0n) fail('EINVAL', 'UNMAP_FLAG_ALL needs iova and size 0');
      size = U64_MAX;
    } else if (size === 0n || size % pg !== 0n || iova + size - 1n > U64_MAX) {
      fail('EINVAL', 'size is zero, unaligned or wraps');
    }
    // Type1v2: an unmap may not bisect a mapping (vfio_dma_do_unmap).
    if (this.v2 && !all) {
      const first = this.containing(iova);
      if (first !== undefined && first.iova !== iova) fail('EINVAL', 'the range starts inside a mapping');
      const last = this.containing(iova + size - 1n);
      if (last !== undefined && last.iova + last.size !== iova + size) fail('EINVAL', 'the range ends inside a mapping');
    }
    let unmapped = 0n;
    for (const d of [...this.dmas]) {
      if (d.iova + d.size <= iova) continue;
      if (d.iova >= iova + size) break;
      // Type1 (v1): a request starting inside a mapping unmaps nothing more (size 0 reported for it).
      if (!this.v2 && iova > d.iova) break;
      if (invalidate) {
        if (d.vaddrInvalid) fail('EINVAL', 'vaddr already invalidated');
        d.vaddrInvalid = true;
        unmapped += d.size;
        continue;
      }
      unmapped += d.size;
      this.dmas.splice(this.dmas.indexOf(d), 1);
      d.pin.release();
      this.dmaAvail++;
    }
    set(L, k, 'size', unmapped);
    copyStructOut(mem, k, minsz);
    return 0;
  }

  private translate(iova: bigint, length: number, isWrite: boolean): { dma: Dma; off: number; take: number }[] {
    const out: { dma: Dma; off: number; take: number }[] = [];
    let at = iova;
    const end = iova + BigInt(length);
    while (at < end) {
      const d = this.containing(at);
      if (d === undefined) fail('EFAULT', `IOMMU fault: IOVA 0x${at.toString(16)} is not mapped`);
      if (isWrite ? !d.write : !d.read)
        fail('EFAULT', `IOMMU fault: IOVA 0x${at.toString(16)} is not ${isWrite ? 'writable' : 'readable'} by the device`);
      if (d.vaddrInvalid) fail('EFAULT', `IOVA 0x${at.toString(16)}: vaddr invalidated (the kernel would block)`);
      const stop = end < d.iova + d.size ? end : d.iova + d.size;
      out.push({ dma: d, off: Number(at - d.iova), take: Number(stop - at) });
      at = stop;
    }
    return out;
  }

  read(iova: bigint, length: number): Uint8Array {
    const out = new Uint8Array(length);
    let pos = 0;
    for (const p of this.translate(iova, length, false)) {
      out.set(p.dma.pin.read(p.off, p.take), pos);
      pos += p.take;
    }
    return out;
  }

  write(iova: bigint, bytes: Uint8Array): void {
    let pos = 0;
    for (const p of this.translate(iova, bytes.byteLength, true)) {
      p.dma.pin.write(p.off, bytes.subarray(pos, pos + p.take));
      pos += p.take;
    }
  }

  get mappings(): number {
    return this.dmas.length;
  }
}

/** vfio-noiommu: no translation; only CHECK_EXTENSION answers. */
class NoIommu implements IommuDriver {
  readonly name = 'noiommu';
  constructor(private readonly k: KernelCore) {}
  static checkExtension(k: KernelCore, arg: bigint): number {
    return k.config.noiommuParam && arg === BigInt(VFIO_NOIOMMU_IOMMU) ? 1 : 0;
  }
  checkExtension(arg: bigint): number {
    return NoIommu.checkExtension(this.k, arg);
  }
  ioctl(request: number, arg: IoctlArg): number {
    if (request === VFIO_CHECK_EXTENSION) return this.checkExtension(arg.value);
    fail('ENOTTY', 'the no-IOMMU driver has no DMA ioctls');
  }
  attachGroup(): void {}
  detachGroup(): void {}
  release(): void {}
}

/** A registered IOMMU driver: how SET_IOMMU and CHECK_EXTENSION see it before it is opened. */
interface DriverClass {
  readonly noiommu: boolean;
  check(arg: bigint): number;
  /** ops->open(arg). */
  open(arg: bigint): IommuDriver;
}

export class Container {
  readonly groups: VfioGroup[] = [];
  driver: IommuDriver | null = null;
  noiommu = false;

  constructor(private readonly k: KernelCore) {}

  get type1(): Type1 | null {
    return this.driver instanceof Type1 ? this.driver : null;
  }

  /** The registered drivers, newest first (list_add): type1 (if loaded), then vfio-noiommu. */
  private drivers(): DriverClass[] {
    const k = this.k;
    const out: DriverClass[] = [];
    if (k.config.type1) {
      out.push({
        noiommu: false,
        check: (arg) => Type1.checkExtension(k, null, arg),
        open: (arg) => new Type1(k, arg === BigInt(VFIO_TYPE1v2_IOMMU)),
      });
    }
    out.push({
      noiommu: true,
      check: (arg) => NoIommu.checkExtension(k, arg),
      open: (arg) => {
        if (arg !== BigInt(VFIO_NOIOMMU_IOMMU)) fail('EINVAL', 'vfio-noiommu opened with another type');
        if (k.uid() !== 0) fail('EPERM', 'vfio-noiommu needs CAP_SYS_RAWIO');
        return new NoIommu(k);
      },
    });
    return out;
  }

  checkExtension(arg: bigint): number {
    if (this.driver !== null) return this.driver.checkExtension(arg);
    let ret = 0;
    for (const d of this.drivers()) {
      if (this.groups.length > 0 && d.noiommu !== this.noiommu) continue;
      ret = d.check(arg);
      if (ret > 0) break;
    }
    return ret;
  }

  setIommu(arg: bigint): number {
    if (this.groups.length === 0 || this.driver !== null) fail('EINVAL', 'SET_IOMMU needs a group in the container, and only once');
    let err: unknown = null;
    for (const d of this.drivers()) {
      if (d.noiommu !== this.noiommu) continue;
      if (d.check(arg) <= 0) continue;
      try {
        const drv = d.open(arg);
        for (const g of this.groups) drv.attachGroup(g);
        this.driver = drv;
        return 0;
      } catch (e) {
        err = e;
      }
    }
    if (err !== null) throw err;
    fail('ENODEV', `no IOMMU driver supports type ${arg}`);
  }

  /** vfio_container_attach_group(). */
  attachGroup(group: VfioGroup): void {
    if (group.noiommu && this.k.uid() !== 0) fail('EPERM', 'no-IOMMU groups need CAP_SYS_RAWIO');
    if (this.groups.length > 0 && this.noiommu !== group.noiommu) fail('EPERM', 'no-IOMMU and IOMMU groups cannot share a container');
    if (!group.noiommu) group.iommu.claimGroup(group);
    this.driver?.attachGroup(group);
    group.container = this;
    group.containerUsers = 1;
    this.noiommu = group.noiommu;
    this.groups.push(group);
  }

  /** vfio_group_detach_container(): the last group out releases the IOMMU driver. */
  detachGroup(group: VfioGroup): void {
    this.driver?.detachGroup(group);
    if (!group.noiommu) group.iommu.releaseGroup();
    group.container = null;
    group.containerUsers = 0;
    this.groups.splice(this.groups.indexOf(group), 1);
    if (this.driver !== null && this.groups.length === 0) {
      this.driver.release();
      this.driver = null;
    }
  }
}

export class ContainerFile extends FakeFile {
  readonly kind = 'container';
  readonly container: Container;

  constructor(
    private readonly k: KernelCore,
    path: string,
    accessMode: number,
  ) {
    super(path, accessMode);
    this.container = new Container(k);
  }

  override ioctl(request: number, arg: IoctlArg): number {
    // iommufd serves the compat container with its own fops: its own
    // commands (numbers from IOMMUFD_CMD_BASE) reach iommufd, whose object
    // table has nothing this fake file could name (ENOENT); the legacy
    // container passes them to its IOMMU driver (EINVAL before SET_IOMMU,
    // ENOTTY from type1).
    if (this.k.config.containerKind === 'iommufd-compat' && (request & 0xff) >= IOMMUFD_CMD_BASE) {
      fail('ENOENT', 'iommufd (VFIO compat container): no object with that id');
    }
    switch (request) {
      case VFIO_GET_API_VERSION:
        return VFIO_API_VERSION;
      case VFIO_CHECK_EXTENSION:
        return this.container.checkExtension(arg.value);
      case VFIO_SET_IOMMU:
        return this.container.setIommu(arg.value);
      default:
        // Unknown requests pass through to the IOMMU driver once one is set; before that, EINVAL.
        if (this.container.driver === null) fail('EINVAL', 'no IOMMU driver set (VFIO_SET_IOMMU first)');
        return this.container.driver.ioctl(request, arg);
    }
  }
}
