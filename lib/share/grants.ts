// Grants: what a lender hands a borrower (another process, over the socket,
// or another thread, in a ticket), as the typed wire records of
// ./protocol.ts. The lender side encodes them from its Container (fds become
// slots of the outgoing message); the borrower side decodes them, checking
// every field, into records with the fds it received.
//
// Mode-specific state is explicit per mode: cdev grants carry the iommufd
// and the IOAS id; group and no-IOMMU grants the container fd, the IOMMU
// type the lender set, and the groups with their fds.
import type { Container, LentDevice } from '../core/container/container.js';
import { HUGE_PAGE_SIZE, type DmaBuffer } from '../core/dma.js';
import { closedError, usageError } from '../base/errors.js';
import type { Fd } from '../libc/sys.js';
import { VFIO_NOIOMMU_IOMMU, VFIO_TYPE1v2_IOMMU } from '../uapi/vfio.js';
import {
  arr,
  big,
  bool,
  int,
  intOrNull,
  obj,
  protocolError,
  str,
  type FdSlots,
  type OutgoingFds,
  type WireBuffer,
  type WireContainer,
  type WireDevice,
  type WireWindow,
} from './protocol.js';

// --- lender side ------------------------------------------------------------

/**
 * The grant of container `c`: its kernel state, its fds as slots of `out`.
 * Also returns the group numbers it carried (group modes).
 * @throws VfioError ECLOSED the container is closed; EINVAL group mode
 *   before any device is assigned (the IOMMU type is not set yet, so a
 *   borrower could not map anything).
 */
export function encodeContainer(c: Container, out: OutgoingFds): { wire: WireContainer; groups: number[] } {
  if (c.closed) throw closedError(c.label);
  const k = c.kernelState;
  if (k.mode === 'cdev') return { wire: { mode: 'cdev', iommufd: out.slot(k.iommufd), ioasId: k.ioasId }, groups: [] };
  if (!k.iommuSet) throw usageError('EINVAL', `${c.label} has no IOMMU set yet: assign a device to it before sharing it`);
  const groups = k.groups.map((g) => ({ group: g.group, fd: out.slot(g.fd) }));
  return {
    wire: { mode: k.mode, containerFd: out.slot(k.containerFd), iommuType: k.iommuType, groups },
    groups: k.groups.map((g) => g.group),
  };
}

/** The grant of a lent device; `groupFd` (group modes) when the borrower does not hold its group yet. */
export function encodeDevice(d: LentDevice, groupFd: Fd | null, out: OutgoingFds): WireDevice {
  return {
    address: d.address,
    fd: out.slot(d.fd),
    group: d.group,
    devId: d.devId,
    groupFd: groupFd === null ? null : out.slot(groupFd),
    path: d.path,
  };
}

/**
 * The grant of a shareable buffer: its memfd, size, IOVA, and whether it is
 * on huge pages (the borrower's DmaBuffer says so too).
 * @throws VfioError ECLOSED freed; EINVAL not shareable or not mapped.
 */
export function encodeBuffer(name: string, buf: DmaBuffer, out: OutgoingFds): WireBuffer {
  const memfd = buf.memfd;
  const iova = buf.iova;
  return { name, memfd: out.slot(memfd), size: buf.size, iova: iova.toString(), hugepages: buf.hugepages };
}

export function encodeWindow(iova: bigint, size: bigint, granule: bigint): WireWindow {
  return { start: iova.toString(), last: (iova + size - 1n).toString(), granule: granule.toString() };
}

// --- borrower side ----------------------------------------------------------

/** A decoded container grant: fds are this process's (still owned by the slots until adopted). */
export type ContainerGrant =
  | { readonly mode: 'cdev'; readonly iommufd: { readonly slot: number; readonly fd: Fd }; readonly ioasId: number }
  | {
      readonly mode: 'group' | 'noiommu';
      readonly containerFd: { readonly slot: number; readonly fd: Fd };
      readonly iommuType: number;
      readonly groups: readonly { readonly group: number; readonly slot: number; readonly fd: Fd }[];
    };

export interface DeviceGrant {
  readonly address: string;
  readonly fd: { readonly slot: number; readonly fd: Fd };
  readonly group: number;
  readonly devId: number | null;
  readonly groupFd: { readonly slot: number; readonly fd: Fd } | null;
  readonly path: string;
}

export interface BufferGrant {
  readonly name: string;
  readonly memfd: { readonly slot: number; readonly fd: Fd };
  readonly size: number;
  readonly iova: bigint;
  /**
   * 2 MiB huge pages (a hugetlbfs memfd). Nothing more to do for the IOVA:
   * it is the lender's mapping (2 MiB-aligned when the lender let allocDma
   * choose it), which the borrower uses as it is and cannot change.
   */
  readonly hugepages: boolean;
}

export interface WindowGrant {
  readonly start: bigint;
  readonly last: bigint;
  readonly granule: bigint;
}

const IOMMU_TYPES: Readonly<Record<'group' | 'noiommu', readonly number[]>> = {
  group: [VFIO_TYPE1v2_IOMMU],
  noiommu: [VFIO_NOIOMMU_IOMMU],
};

const PCI_ADDRESS = /^[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$/;

function slotOf(o: Record<string, unknown>, key: string, what: string, fds: FdSlots): { slot: number; fd: Fd } {
  const slot = int(o, key, what);
  return { slot, fd: fds.fd(slot, `${what}.${key}`) };
}

/** @throws VfioError EPROTO anything that is not a well-formed container grant. */
export function decodeContainer(v: unknown, fds: FdSlots): ContainerGrant {
  const o = obj(v, 'container');
  const mode = o['mode'];
  if (mode === 'cdev') {
    const ioasId = int(o, 'ioasId', 'container');
    if (ioasId === 0) throw protocolError('container.ioasId 0 is not an IOAS id');
    return { mode, iommufd: slotOf(o, 'iommufd', 'container', fds), ioasId };
  }
  if (mode === 'group' || mode === 'noiommu') {
    const iommuType = int(o, 'iommuType', 'container');
    if (!IOMMU_TYPES[mode].includes(iommuType)) throw protocolError(`container.iommuType ${iommuType} is not a ${mode}-mode IOMMU type`);
    const seen = new Set<number>();
    const groups = arr(o, 'groups', 'container').map((g, i) => {
      const go = obj(g, `container.groups[${i}]`);
      const group = int(go, 'group', `container.groups[${i}]`);
      if (seen.has(group)) throw protocolError(`container.groups lists group ${group} twice`);
      seen.add(group);
      return { group, ...slotOf(go, 'fd', `container.groups[${i}]`, fds) };
    });
    return { mode, containerFd: slotOf(o, 'containerFd', 'container', fds), iommuType, groups };
  }
  throw protocolError(`container.mode ${JSON.stringify(mode)} is not cdev, group or noiommu`);
}

/** @throws VfioError EPROTO anything that is not a well-formed device grant for a container of `mode`. */
export function decodeDevice(v: unknown, fds: FdSlots, mode: ContainerGrant['mode']): DeviceGrant {
  const o = obj(v, 'device');
  const address = str(o, 'address', 'device');
  if (!PCI_ADDRESS.test(address)) throw protocolError(`device.address ${JSON.stringify(address)} is not a canonical PCI address`);
  const devId = intOrNull(o, 'devId', 'device');
  if ((mode === 'cdev') !== (devId !== null))
    throw protocolError(`device.devId must be ${mode === 'cdev' ? 'set' : 'null'} in ${mode} mode`);
  const groupSlot = intOrNull(o, 'groupFd', 'device');
  if (mode === 'cdev' && groupSlot !== null) throw protocolError('device.groupFd must be null in cdev mode');
  return {
    address,
    fd: slotOf(o, 'fd', 'device', fds),
    group: int(o, 'group', 'device'),
    devId,
    groupFd: groupSlot === null ? null : { slot: groupSlot, fd: fds.fd(groupSlot, 'device.groupFd') },
    path: str(o, 'path', 'device'),
  };
}

/** @throws VfioError EPROTO anything that is not a well-formed buffer grant. */
export function decodeBuffer(v: unknown, fds: FdSlots, pageSize: number): BufferGrant {
  const o = obj(v, 'buffer');
  const size = int(o, 'size', 'buffer');
  const hugepages = bool(o, 'hugepages', 'buffer');
  const unit = hugepages ? HUGE_PAGE_SIZE : pageSize;
  if (size === 0 || size % unit !== 0) throw protocolError(`buffer.size ${size} is not a whole number of ${hugepages ? 'huge ' : ''}pages`);
  return { name: str(o, 'name', 'buffer'), memfd: slotOf(o, 'memfd', 'buffer', fds), size, iova: big(o, 'iova', 'buffer'), hugepages };
}

/** @throws VfioError EPROTO anything that is not a well-formed IOVA window. */
export function decodeWindow(v: unknown): WindowGrant {
  const o = obj(v, 'window');
  const start = big(o, 'start', 'window');
  const last = big(o, 'last', 'window');
  const granule = big(o, 'granule', 'window');
  if (granule === 0n || (granule & (granule - 1n)) !== 0n) throw protocolError(`window.granule ${granule} is not a power of two`);
  if (last < start || start % granule !== 0n || (last + 1n) % granule !== 0n)
    throw protocolError('window is empty or not aligned to its granule');
  return { start, last, granule };
}
