// The borrower's side: turns decoded grants into the library's own objects in
// a Vfio context of this process or thread — a borrowed Container per lent
// container, Devices on lent device fds, DmaBuffers on lent memfds — and
// closes them all together.
//
// Guarantees:
// - An fd is adopted (removed from the message's FdSlots) only once the
//   object that closes it holds it, so a failure half-way leaks nothing:
//   the caller closes the rest with FdSlots.closeRest().
// - A borrowed Container never changes the lender's setup (see
//   lib/core/container/container.ts); its DMA allocations come only from the IOVA
//   windows the lender reserved for it.
// - An imported buffer is a separate mapping of the lender's memfd (same
//   pages), mapped here and unmapped by free(); its IOVA is the lender's
//   mapping, which the borrower cannot change (map/unmap: ENOTSUP). The
//   lender must keep that mapping while borrowers use it. Its memfd must be
//   sealed at its size (lib/core/dma.ts SHARED_MEMFD_SEALS), else it is
//   refused: nobody can then truncate it under a mapping (SIGBUS).
import { teardown, withUnwind } from '../base/cleanup.js';
import type { Container } from '../core/container/container.js';
import type { Vfio } from '../core/context.js';
import type { Device } from '../core/device.js';
import { DmaBuffer, SHARED_MEMFD_SEALS, type DmaOwner } from '../core/dma.js';
import { closedError, usageError } from '../base/errors.js';
import { MAP_POPULATE, MAP_SHARED, PROT_READ, PROT_WRITE } from '../libc/sys.js';
import type { BufferGrant, ContainerGrant, DeviceGrant, WindowGrant } from './grants.js';
import { protocolError, type FdSlots } from './protocol.js';

export class Borrower {
  /** The lender's container index -> our borrowed Container. */
  private readonly containers = new Map<number, Container>();
  private readonly buffers = new Set<DmaBuffer>();
  private closedFlag = false;

  constructor(
    private readonly v: Vfio,
    /** Who lends, for messages ("the primary (pid 41)", "the main thread"). */
    readonly lender: string,
  ) {}

  get closed(): boolean {
    return this.closedFlag;
  }

  /** Our borrowed container for the lender's container `index`, if granted. */
  container(index: number): Container | undefined {
    const c = this.containers.get(index);
    return c === undefined || c.closed ? undefined : c;
  }

  /** The lender's index of one of our borrowed containers. */
  indexOf(c: Container): number | undefined {
    for (const [i, mine] of this.containers) if (mine === c) return i;
    return undefined;
  }

  /**
   * A borrowed Container for the lender's container `index`.
   * @throws VfioError EPROTO already granted; ECLOSED.
   */
  adoptContainer(index: number, grant: ContainerGrant, fds: FdSlots): Container {
    this.checkOpen();
    if (this.container(index) !== undefined) throw protocolError(`container ${index} granted twice`);
    const c =
      grant.mode === 'cdev'
        ? this.v.adoptContainer({ mode: 'cdev', iommufd: grant.iommufd.fd, ioasId: grant.ioasId })
        : this.v.adoptContainer({ mode: grant.mode, containerFd: grant.containerFd.fd, iommuType: grant.iommuType });
    fds.adopt(grant.mode === 'cdev' ? grant.iommufd.slot : grant.containerFd.slot);
    withUnwind((u) => {
      u.defer(() => c.close());
      if (grant.mode !== 'cdev') {
        for (const g of grant.groups) {
          c.adoptGroup(g.group, g.fd);
          fds.adopt(g.slot);
        }
      }
    });
    this.containers.set(index, c);
    return c;
  }

  /**
   * Opens a lent device in our container for the lender's container `index`.
   * `onRelease` runs when the Device is released.
   * @throws VfioError EPROTO the container was not granted; EEXIST/EBUSY
   *   the device is already here; ECLOSED.
   */
  adoptDevice(index: number, grant: DeviceGrant, fds: FdSlots, onRelease: () => void): Device {
    this.checkOpen();
    const c = this.container(index);
    if (c === undefined) throw protocolError(`device ${grant.address} lent in container ${index}, which was not granted`);
    if (grant.groupFd !== null) {
      c.adoptGroup(grant.group, grant.groupFd.fd);
      fds.adopt(grant.groupFd.slot);
    }
    const base = { address: grant.address, fd: grant.fd.fd, group: grant.group };
    c.adoptDevice(grant.devId === null ? base : { ...base, devId: grant.devId, node: grant.path }, onRelease);
    fds.adopt(grant.fd.slot);
    return c.openAssigned(grant.address);
  }

  /**
   * An IOVA window the lender reserved in its container `index`.
   * @throws VfioError EPROTO the container was not granted; ECLOSED.
   */
  adoptWindow(index: number, w: WindowGrant): Container {
    this.checkOpen();
    const c = this.container(index);
    if (c === undefined) throw protocolError(`IOVA window in container ${index}, which was not granted`);
    c.addIovaWindow({ start: w.start, last: w.last }, w.granule);
    return c;
  }

  /**
   * Maps a lent buffer's memfd here (the same pages as the lender's) and
   * closes the memfd (the mapping keeps the file). `sys` and the page size
   * come from container `index`, which must be granted.
   * @throws VfioError EPROTO the container was not granted, or the memfd is
   *   smaller than the grant says; ECLOSED; any errno of pread/mmap/close.
   */
  adoptBuffer(index: number, grant: BufferGrant, fds: FdSlots): DmaBuffer {
    this.checkOpen();
    const c = this.container(index);
    if (c === undefined) throw protocolError(`buffer "${grant.name}" in container ${index}, which was not granted`);
    const { sys } = c.kernelEnv;
    const memfd = grant.memfd.fd;
    // A mapping past the end of the file would SIGBUS on first touch. The
    // seals fix the size for every holder (so it cannot shrink later, under
    // this mapping or the lender's); then it must hold the whole buffer.
    const seals = sys.getSeals(memfd);
    if ((seals & SHARED_MEMFD_SEALS) !== SHARED_MEMFD_SEALS) {
      throw protocolError(
        `buffer "${grant.name}": its memfd is not sealed against shrinking and growing (seals 0x${seals.toString(16)}); ` +
          'mapping it would let any holder make this process SIGBUS',
      );
    }
    const probe = new Uint8Array(1);
    if (sys.pread(memfd, probe, BigInt(grant.size - 1)) !== 1) {
      throw protocolError(`buffer "${grant.name}": its memfd is smaller than the ${grant.size} bytes granted`);
    }
    const vaddr = sys.mmap(grant.size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, memfd, 0n);
    fds.adopt(grant.memfd.slot);
    // SAFETY: the mapping holds the file; the buffer unmaps it in free().
    const buf = new DmaBuffer(
      sys,
      new LentBufferOwner(`buffer "${grant.name}" lent by ${this.lender}`, this.buffers),
      vaddr,
      grant.size,
      -1,
      grant.hugepages,
    );
    this.buffers.add(buf);
    buf.setIova(grant.iova);
    // After the buffer owns the mapping: a failing close still frees the fd.
    sys.close(memfd);
    return buf;
  }

  /** Frees imported buffers and closes every borrowed container (and its devices). Idempotent; throws the first error. */
  close(): void {
    this.closedFlag = true;
    const steps: (() => void)[] = [];
    for (const buf of [...this.buffers]) steps.push(() => buf.free());
    for (const c of this.containers.values()) steps.push(() => c.close());
    teardown(steps);
    this.containers.clear();
  }

  private checkOpen(): void {
    if (this.closedFlag) throw closedError(`what ${this.lender} lent`);
  }
}

/** The DmaOwner of an imported buffer: its IOVA is the lender's mapping, not ours to change. */
class LentBufferOwner implements DmaOwner {
  constructor(
    readonly label: string,
    private readonly registry: Set<DmaBuffer>,
  ) {}

  mapBuffer(_buf: DmaBuffer): bigint {
    throw usageError('ENOTSUP', `${this.label}: its lender maps it; the IOVA cannot be changed here`);
  }

  unmapBuffer(buf: DmaBuffer): void {
    // free() forgets the IOVA; the lender's mapping stays (it is the lender's).
    if (buf.live) throw usageError('ENOTSUP', `${this.label}: its lender maps it; free() it instead`);
    buf.setIova(null);
  }

  forgetBuffer(buf: DmaBuffer): void {
    this.registry.delete(buf);
  }
}
