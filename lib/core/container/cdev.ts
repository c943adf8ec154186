// The IOMMUFD container: /dev/iommu with one IOAS (I/O address space), and
// each device opened through its own cdev node /dev/vfio/devices/vfioN.
//
// Kernel rules this follows (drivers/vfio/device_cdev.c,
// drivers/iommu/iommufd/):
// - A cdev fd can do nothing but VFIO_DEVICE_BIND_IOMMUFD until it is bound;
//   closing the fd unbinds it (there is no unbind ioctl).
// - VFIO_DEVICE_ATTACH_IOMMUFD_PT puts the bound device behind the IOAS;
//   VFIO_DEVICE_DETACH_IOMMUFD_PT (or the close) takes it out.
// - The IOAS holds mappings whether or not a device is attached, so this
//   backend's mappings are live from creation. Its IOVA ranges narrow as
//   devices attach and widen as they detach: callers re-read them.
// - IOMMU_IOAS_UNMAP of a range holding no mapping is ENOENT.
// - Structs grow over kernel versions: every `size`/`argsz` is set to the
//   size of the layout this module encodes, with the fields it does not use
//   left zero, which every kernel that knows the ioctl accepts.
//
// Guarantees: `open` and `attach` leave nothing open after a failure;
// `detach` and `close` run every step and throw the first error.
//
// A borrowed backend (`adopt`, for lib/share) holds an iommufd another process
// or thread lent, with the id of its IOAS: the same open file, so the same
// IOAS (ids are per iommufd file), where it maps and unmaps. It never changes
// the setup: no bind or attach (devices come lent, already attached), no
// detach (closing a lent device fd only drops this holder), no IOMMU_DESTROY.
import { teardown, withUnwind, type Unwind } from '../../base/cleanup.js';
import { ioctl, openFile, type IoctlContext } from '../../uapi/ioctl.js';
import { closedError, usageError, VfioError } from '../../base/errors.js';
import { MAP_ANONYMOUS, MAP_PRIVATE, O_CLOEXEC, O_RDWR, PROT_READ, PROT_WRITE, type Fd, type Sys } from '../../libc/sys.js';
import type { IovaRange } from '../iova-allocator.js';
import { iommufdNode, type Roots } from '../../host/paths.js';
import { groupBlockers, notViableDetail, type PciDeviceLocation } from '../../host/sysfs.js';
import * as codec from '../../uapi/codec.js';
import {
  IOMMU_IOAS_MAP_FIXED_IOVA,
  IOMMU_IOAS_MAP_READABLE,
  IOMMU_IOAS_MAP_WRITEABLE,
  iommu_destroy,
  iommu_ioas_alloc,
  iommu_ioas_iova_ranges,
  iommu_ioas_map,
  iommu_ioas_map_file,
  iommu_ioas_unmap,
  iommu_iova_range,
} from '../../uapi/iommufd.js';
import {
  VFIO_DEVICE_BIND_FLAG_TOKEN,
  vfio_device_attach_iommufd_pt,
  vfio_device_bind_iommufd,
  vfio_device_detach_iommufd_pt,
} from '../../uapi/vfio.js';
import { kernelRelease, releaseAtLeast } from '../../host/kernel.js';
import { explainTokenRefusal, type VfToken } from '../vf-token.js';
import { unmapMismatch, type AttachedDevice, type ContainerBackend, type IommuInfo, type MappedFile } from './backend.js';

// The fields map and unmap write on every call, looked up once.
const MAP_SIZE = codec.fieldRef(iommu_ioas_map, 'size');
const MAP_FLAGS = codec.fieldRef(iommu_ioas_map, 'flags');
const MAP_IOAS = codec.fieldRef(iommu_ioas_map, 'ioas_id');
const MAP_VA = codec.fieldRef(iommu_ioas_map, 'user_va');
const MAP_LENGTH = codec.fieldRef(iommu_ioas_map, 'length');
const MAP_IOVA = codec.fieldRef(iommu_ioas_map, 'iova');
const MAP_FILE_SIZE = codec.fieldRef(iommu_ioas_map_file, 'size');
const MAP_FILE_FLAGS = codec.fieldRef(iommu_ioas_map_file, 'flags');
const MAP_FILE_IOAS = codec.fieldRef(iommu_ioas_map_file, 'ioas_id');
const MAP_FILE_FD = codec.fieldRef(iommu_ioas_map_file, 'fd');
const MAP_FILE_START = codec.fieldRef(iommu_ioas_map_file, 'start');
const MAP_FILE_LENGTH = codec.fieldRef(iommu_ioas_map_file, 'length');
const MAP_FILE_IOVA = codec.fieldRef(iommu_ioas_map_file, 'iova');
const UNMAP_SIZE = codec.fieldRef(iommu_ioas_unmap, 'size');
const UNMAP_IOAS = codec.fieldRef(iommu_ioas_unmap, 'ioas_id');
const UNMAP_IOVA = codec.fieldRef(iommu_ioas_unmap, 'iova');
const UNMAP_LENGTH = codec.fieldRef(iommu_ioas_unmap, 'length');
// The fields of the setup ioctls (each container and device makes them once,
// but setting devices up is what drivers do over and over).
const IOAS_ALLOC_SIZE = codec.fieldRef(iommu_ioas_alloc, 'size');
const IOAS_ALLOC_ID = codec.fieldRef(iommu_ioas_alloc, 'out_ioas_id');
const BIND_ARGSZ = codec.fieldRef(vfio_device_bind_iommufd, 'argsz');
const BIND_IOMMUFD = codec.fieldRef(vfio_device_bind_iommufd, 'iommufd');
const BIND_DEVID = codec.fieldRef(vfio_device_bind_iommufd, 'out_devid');
const BIND_FLAGS = codec.fieldRef(vfio_device_bind_iommufd, 'flags');
const BIND_TOKEN_PTR = codec.fieldRef(vfio_device_bind_iommufd, 'token_uuid_ptr');
const ATTACH_ARGSZ = codec.fieldRef(vfio_device_attach_iommufd_pt, 'argsz');
const ATTACH_PT = codec.fieldRef(vfio_device_attach_iommufd_pt, 'pt_id');

/** A device bound to this iommufd and attached to its IOAS. */
export interface CdevDevice extends AttachedDevice {
  /** The device's id inside the iommufd (out_devid of the bind). */
  readonly devId: number;
  readonly node: string;
}

export class CdevBackend implements ContainerBackend {
  readonly mode = 'cdev' as const;
  readonly dmaMode = 'iommu' as const;
  readonly iommuLive = true;
  /** The iommufd (/dev/iommu); -1 once closed. */
  iommufd: Fd;
  /** The container's IOAS. */
  readonly ioasId: number;
  /**
   * One page the kernel writes query results into (IOMMU_IOAS_IOVA_RANGES
   * takes a user pointer). Mapped by the first query and kept until close(),
   * so that later queries neither map nor unmap memory; null when not mapped.
   */
  private scratch: { addr: bigint; length: number } | null = null;
  /**
   * The arguments of IOMMU_IOAS_MAP and IOMMU_IOAS_UNMAP: one buffer each for
   * the backend's life instead of one per call (map + unmap is a driver's
   * hot path). Safe to reuse: the ioctl is synchronous and JavaScript runs
   * one call at a time on this thread (a worker has its own backend); each
   * buffer is zeroed and written whole before every ioctl, and the kernel's
   * answer (the unmapped length) is read before the method returns.
   */
  private readonly mapArg = new Uint8Array(iommu_ioas_map.size);
  private readonly unmapArg = new Uint8Array(iommu_ioas_unmap.size);
  private readonly mapFileArg = new Uint8Array(iommu_ioas_map_file.size);
  /** What a failed map/unmap names: the iommufd node. */
  private readonly dmaCtx: IoctlContext;

  private constructor(
    private readonly sys: Sys,
    private readonly roots: Roots,
    private readonly node: string,
    iommufd: Fd,
    ioasId: number,
    private readonly pageSize: number,
    /** Lent by another process or thread (see `adopt`): use the setup, never change it. */
    readonly borrowed = false,
  ) {
    this.iommufd = iommufd;
    this.ioasId = ioasId;
    this.dmaCtx = { path: node };
  }

  /**
   * A borrowed backend on a lent iommufd whose IOAS `ioasId` the lender
   * allocated. It owns `iommufd` from now on. Issues no system call.
   */
  static adopt(sys: Sys, roots: Roots, pageSize: number, iommufd: Fd, ioasId: number): CdevBackend {
    return new CdevBackend(sys, roots, iommufdNode(roots), iommufd, ioasId, pageSize, true);
  }

  /**
   * Opens /dev/iommu and allocates the container's IOAS. With `iommufdOf`
   * (the iommufd of another container) the IOAS is allocated in that same
   * iommufd file instead, through a dup of it: one iommufd holding several
   * IOAS, as DPDK does, whose ids are then unique across those containers.
   * Each container destroys its own IOAS at close (IOMMU_DESTROY), since
   * closing its fd alone frees nothing while another container holds the file.
   * @throws VfioError any errno of open(2), fcntl or IOMMU_IOAS_ALLOC; nothing stays open.
   */
  static open(sys: Sys, roots: Roots, pageSize: number, iommufdOf?: Fd): CdevBackend {
    const node = iommufdNode(roots);
    return withUnwind((u) => {
      const fd = iommufdOf === undefined ? openFile(sys, node, O_RDWR | O_CLOEXEC) : sys.dup(iommufdOf);
      u.defer(() => sys.close(fd));
      // Zeroed: flags 0 and the fields this module does not use.
      const arg = new Uint8Array(iommu_ioas_alloc.size);
      codec.setField(IOAS_ALLOC_SIZE, arg, iommu_ioas_alloc.size);
      ioctl(sys, fd, 'IOMMU_IOAS_ALLOC', arg, { path: node });
      // No destroy step needed on a later failure: nothing can fail after
      // the allocation.
      return new CdevBackend(sys, roots, node, fd, codec.getField(IOAS_ALLOC_ID, arg), pageSize);
    });
  }

  attach(desc: PciDeviceLocation, vfToken: VfToken | null = null): CdevDevice {
    const address = desc.address;
    if (this.borrowed) {
      throw usageError('ENOTSUP', 'a borrowed container cannot set devices up: the process that lent it assigns them', { device: address });
    }
    if (desc.cdevNode === null || desc.iommuGroup === null) {
      throw usageError('ENODEV', 'the device has no VFIO cdev node', { device: address });
    }
    const node = desc.cdevNode;
    const group = desc.iommuGroup;
    const sys = this.sys;
    return withUnwind((u) => {
      const fd = openFile(sys, node, O_RDWR | O_CLOEXEC, address);
      // Closing the cdev fd unbinds and detaches: the one undo step needed.
      u.defer(() => sys.close(fd));
      const ctx = { path: node, device: address };
      // Zeroed: flags 0 and the fields this module does not use.
      const bind = new Uint8Array(vfio_device_bind_iommufd.size);
      codec.setField(BIND_ARGSZ, bind, vfio_device_bind_iommufd.size);
      codec.setField(BIND_IOMMUFD, bind, this.iommufd);
      try {
        if (vfToken === null) ioctl(sys, fd, 'VFIO_DEVICE_BIND_IOMMUFD', bind, ctx);
        else this.bindWithToken(fd, bind, vfToken, ctx);
      } catch (err) {
        throw this.explainBindFailure(err, desc, vfToken);
      }
      const attach = new Uint8Array(vfio_device_attach_iommufd_pt.size);
      codec.setField(ATTACH_ARGSZ, attach, vfio_device_attach_iommufd_pt.size);
      codec.setField(ATTACH_PT, attach, this.ioasId);
      ioctl(sys, fd, 'VFIO_DEVICE_ATTACH_IOMMUFD_PT', attach, ctx);
      return { address, fd, group, node, devId: codec.getField(BIND_DEVID, bind) };
    });
  }

  /**
   * Two refusals of the bind mean "in use", and are said so with EBUSY (as
   * group mode says it), keeping the kernel's error as the cause:
   * - EPERM when a driver owns DMA for another device of the group: in the
   *   same words as group mode's viability check.
   * - EINVAL when the device is already open through another cdev file, in
   *   this process or another (vfio_df_open: only the group path may open a
   *   device twice). The argument here is well-formed and the file fresh, so
   *   that is the one EINVAL left (seen on Linux 6.12 in the VM tier).
   */
  private explainBindFailure(err: unknown, desc: PciDeviceLocation, vfToken: VfToken | null): unknown {
    if (!(err instanceof VfioError)) return err;
    if (err.code === 'EINVAL' && vfToken !== null) {
      // A kernel before 6.17 refuses any bind flag with EINVAL, before it
      // looks at anything else: the token cannot be passed there.
      const release = kernelRelease(this.roots);
      if (release === null || !releaseAtLeast(release, 6, 17)) {
        return new VfioError({
          code: 'ENOTSUP',
          syscall: 'ioctl',
          request: 'VFIO_DEVICE_BIND_IOMMUFD',
          device: desc.address,
          path: desc.cdevNode ?? undefined,
          detail:
            'a VF token in the cdev bind (VFIO_DEVICE_BIND_FLAG_TOKEN) needs Linux 6.17 or later; ' +
            `this kernel is ${release?.text ?? 'of unknown release'}: ` +
            'open the device in group mode, which takes the token on every kernel',
          cause: err,
        });
      }
    }
    if (err.code === 'EACCES' || (err.code === 'EINVAL' && vfToken !== null)) {
      const explained = explainTokenRefusal(err, this.roots, desc.address, vfToken, 'VFIO_DEVICE_BIND_IOMMUFD');
      if (explained !== err) return explained;
    }
    let detail: string;
    if (err.code === 'EPERM' && groupBlockers(this.roots, desc).length > 0) detail = notViableDetail(this.roots, desc);
    else if (err.code === 'EINVAL')
      detail =
        'the device is already open through another VFIO cdev file (in this or another process); cdev mode allows one open at a time';
    else return err;
    return new VfioError({
      code: 'EBUSY',
      syscall: 'ioctl',
      request: 'VFIO_DEVICE_BIND_IOMMUFD',
      device: desc.address,
      path: desc.cdevNode ?? undefined,
      detail,
      cause: err,
    });
  }

  /**
   * VFIO_DEVICE_BIND_IOMMUFD with VFIO_DEVICE_BIND_FLAG_TOKEN: the kernel
   * reads the 16-byte token through token_uuid_ptr, so it goes in a page of
   * its own, mapped for the call and unmapped after it.
   */
  private bindWithToken(fd: Fd, bind: Uint8Array, vfToken: VfToken, ctx: IoctlContext): void {
    const page = this.sys.mmap(this.pageSize, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0n);
    try {
      // SAFETY: [page, page + 16) lies in the page mapped above, unmapped
      // only after the ioctl, which reads it synchronously.
      this.sys.view(page, vfToken.bytes.length).set(vfToken.bytes);
      codec.setField(BIND_FLAGS, bind, VFIO_DEVICE_BIND_FLAG_TOKEN);
      codec.setField(BIND_TOKEN_PTR, bind, page);
      ioctl(this.sys, fd, 'VFIO_DEVICE_BIND_IOMMUFD', bind, ctx);
    } finally {
      this.sys.munmap(page, this.pageSize);
    }
  }

  detach(dev: AttachedDevice): void {
    // A lent device stays attached for its lender: drop our fd only.
    if (this.borrowed) return this.sys.close(dev.fd);
    const node = (dev as CdevDevice).node;
    const ctx = { path: node, device: dev.address };
    teardown([
      () => {
        const arg = codec.alloc(vfio_device_detach_iommufd_pt, { argsz: vfio_device_detach_iommufd_pt.size, flags: 0 });
        ioctl(this.sys, dev.fd, 'VFIO_DEVICE_DETACH_IOMMUFD_PT', arg, ctx);
      },
      // Unbinds (and detaches, if the ioctl above failed).
      () => this.sys.close(dev.fd),
    ]);
  }

  pruneDropsIommu(): boolean {
    return false;
  }

  pruneGroups(): void {
    // No groups in cdev mode.
  }

  iommuInfo(device?: string, u?: Unwind): IommuInfo {
    const ctx = { path: this.node, device };
    // The kernel writes the ranges through a user pointer, so they need
    // memory with an address: the backend's result page (256 ranges, far
    // more than any IOMMU reports), mapped by the first query and kept.
    // Should the kernel want more (EMSGSIZE), a mapping of the size it asked
    // for is made for the second try.
    if (this.iommufd === -1) throw closedError('iommufd container', { path: this.node, device });
    const first = withUnwind((own) => {
      if (this.scratch === null) {
        const addr = this.sys.mmap(this.pageSize, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0n);
        this.scratch = { addr, length: this.pageSize };
        // A failed query, or a failure of the caller's operation, leaves no
        // mapping behind.
        const undo = (): void => {
          // Once only: the query's own unwind and the caller's may both run.
          if (this.scratch?.addr !== addr) return;
          this.sys.munmap(addr, this.pageSize);
          this.scratch = null;
        };
        own.defer(undo);
        u?.defer(undo);
      }
      return this.queryRanges(this.scratch.addr, this.scratch.length, ctx);
    });
    if (typeof first !== 'number') return first;
    const length = Math.ceil((first * iommu_iova_range.size) / this.pageSize) * this.pageSize;
    const addr = this.sys.mmap(length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0n);
    let again: IommuInfo | number;
    try {
      again = this.queryRanges(addr, length, ctx);
    } finally {
      // SAFETY: queryRanges copied the ranges out and dropped its view.
      this.sys.munmap(addr, length);
    }
    if (typeof again === 'number') throw usageError('EIO', `IOMMU_IOAS_IOVA_RANGES keeps asking for more room (${again} ranges)`, ctx);
    return again;
  }

  /** One IOMMU_IOAS_IOVA_RANGES into [addr, addr + length): the answer, or the range count it wants room for. */
  private queryRanges(addr: bigint, length: number, ctx: { path: string; device?: string | undefined }): IommuInfo | number {
    const capacity = Math.floor(length / iommu_iova_range.size);
    const arg = codec.alloc(iommu_ioas_iova_ranges, {
      size: iommu_ioas_iova_ranges.size,
      ioas_id: this.ioasId,
      num_iovas: capacity,
      allowed_iovas: addr,
    });
    try {
      ioctl(this.sys, this.iommufd, 'IOMMU_IOAS_IOVA_RANGES', arg, ctx);
    } catch (err) {
      const wanted = codec.get(iommu_ioas_iova_ranges, arg, 'num_iovas');
      if (err instanceof VfioError && err.code === 'EMSGSIZE' && wanted > capacity) return wanted;
      throw err;
    }
    return this.decodeRanges(arg, addr, capacity);
  }

  private decodeRanges(arg: Buffer, addr: bigint, capacity: number): IommuInfo {
    const n = codec.get(iommu_ioas_iova_ranges, arg, 'num_iovas');
    if (n > capacity) throw usageError('EIO', `IOMMU_IOAS_IOVA_RANGES reported ${n} ranges for room of ${capacity}`);
    const alignment = codec.get(iommu_ioas_iova_ranges, arg, 'out_iova_alignment');
    // SAFETY: [addr, addr + n * size) lies in the page(s) mapped by the
    // caller, which unmaps them only after this copy.
    const bytes = Uint8Array.from(this.sys.view(addr, n * iommu_iova_range.size));
    const ranges: IovaRange[] = [];
    for (let i = 0; i < n; i++) {
      const r = codec.read(iommu_iova_range, bytes, i * iommu_iova_range.size);
      ranges.push({ start: r.start, last: r.last });
    }
    return { ranges, granule: alignment > 0n ? alignment : 1n, pageSizes: null };
  }

  /**
   * Whether IOMMU_IOAS_MAP_FILE exists (Linux 6.13+): null until the first
   * map of a file tries it, then remembered (a kernel without it answers
   * ENOTTY: the request number is past its table).
   */
  get mapsByFile(): boolean | null {
    return this.mapFileSupport;
  }
  private mapFileSupport: boolean | null = null;

  map(vaddr: bigint, iova: bigint, size: bigint, file?: MappedFile): void {
    if (file !== undefined && this.mapFileSupport !== false) {
      try {
        this.mapFile(file, iova, size);
        this.mapFileSupport = true;
        return;
      } catch (err) {
        if (!(err instanceof VfioError && err.code === 'ENOTTY' && this.mapFileSupport === null)) throw err;
        // No MAP_FILE here: map by address from now on.
        this.mapFileSupport = false;
      }
    }
    const arg = this.mapArg;
    arg.fill(0);
    codec.setField(MAP_SIZE, arg, iommu_ioas_map.size);
    codec.setField(MAP_FLAGS, arg, IOMMU_IOAS_MAP_FIXED_IOVA | IOMMU_IOAS_MAP_READABLE | IOMMU_IOAS_MAP_WRITEABLE);
    codec.setField(MAP_IOAS, arg, this.ioasId);
    codec.setField(MAP_VA, arg, vaddr);
    codec.setField(MAP_LENGTH, arg, size);
    codec.setField(MAP_IOVA, arg, iova);
    ioctl(this.sys, this.iommufd, 'IOMMU_IOAS_MAP', arg, this.dmaCtx);
  }

  /** IOMMU_IOAS_MAP_FILE: [file.offset, file.offset + size) of the memfd at `iova`. */
  private mapFile(file: MappedFile, iova: bigint, size: bigint): void {
    const arg = this.mapFileArg;
    arg.fill(0);
    codec.setField(MAP_FILE_SIZE, arg, iommu_ioas_map_file.size);
    codec.setField(MAP_FILE_FLAGS, arg, IOMMU_IOAS_MAP_FIXED_IOVA | IOMMU_IOAS_MAP_READABLE | IOMMU_IOAS_MAP_WRITEABLE);
    codec.setField(MAP_FILE_IOAS, arg, this.ioasId);
    codec.setField(MAP_FILE_FD, arg, file.fd);
    codec.setField(MAP_FILE_START, arg, file.offset);
    codec.setField(MAP_FILE_LENGTH, arg, size);
    codec.setField(MAP_FILE_IOVA, arg, iova);
    ioctl(this.sys, this.iommufd, 'IOMMU_IOAS_MAP_FILE', arg, this.dmaCtx);
  }

  unmap(iova: bigint, size: bigint): void {
    let unmapped: bigint;
    try {
      unmapped = this.unmapIoctl(iova, size);
    } catch (err) {
      // ENOENT: nothing mapped there. Reported as EIO, like Type1's
      // short unmap, so that callers see one answer in both modes.
      if (err instanceof VfioError && err.code === 'ENOENT') throw unmapMismatch('IOMMU_IOAS_UNMAP', this.node, iova, size, 0n, err);
      throw err;
    }
    if (unmapped !== size) throw unmapMismatch('IOMMU_IOAS_UNMAP', this.node, iova, size, unmapped);
  }

  /**
   * Unmaps whatever lies in [iova, iova + size) — any number of whole areas,
   * or none — and returns how many bytes the kernel unmapped (lib/share:
   * clearing an IOVA window a borrower may have left mappings in).
   */
  unmapRange(iova: bigint, size: bigint): bigint {
    try {
      return this.unmapIoctl(iova, size);
    } catch (err) {
      // ENOENT: nothing mapped there.
      if (err instanceof VfioError && err.code === 'ENOENT') return 0n;
      throw err;
    }
  }

  /** IOMMU_IOAS_UNMAP of [iova, iova + size): the length the kernel unmapped. */
  private unmapIoctl(iova: bigint, size: bigint): bigint {
    const arg = this.unmapArg;
    arg.fill(0);
    codec.setField(UNMAP_SIZE, arg, iommu_ioas_unmap.size);
    codec.setField(UNMAP_IOAS, arg, this.ioasId);
    codec.setField(UNMAP_IOVA, arg, iova);
    codec.setField(UNMAP_LENGTH, arg, size);
    ioctl(this.sys, this.iommufd, 'IOMMU_IOAS_UNMAP', arg, this.dmaCtx);
    return codec.getField(UNMAP_LENGTH, arg);
  }

  close(): void {
    const fd = this.iommufd;
    const steps: (() => void)[] = [];
    if (fd !== -1) {
      this.iommufd = -1;
      // The lender's IOAS is its to destroy.
      if (!this.borrowed) {
        steps.push(() => {
          const arg = codec.alloc(iommu_destroy, { size: iommu_destroy.size, id: this.ioasId });
          ioctl(this.sys, fd, 'IOMMU_DESTROY', arg, { path: this.node });
        });
      }
      // Frees whatever the destroy did not.
      steps.push(() => this.sys.close(fd));
    }
    const scratch = this.scratch;
    if (scratch !== null) {
      // Kept until munmap succeeds, so that a second close() retries it.
      steps.push(() => {
        this.sys.munmap(scratch.addr, scratch.length);
        this.scratch = null;
      });
    }
    teardown(steps);
  }
}
