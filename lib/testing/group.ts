// IOMMU groups and VFIO groups (drivers/vfio/group.c, container.c, and the
// DMA-ownership rules of drivers/iommu/iommu.c).
//
// An IommuGroup is the isolation unit: devices bound to a kernel driver hold
// it as DMA-API users, so nobody else may claim DMA ownership (EPERM). A
// VfioGroup exists for an IOMMU group with a VFIO-bound device: /dev/vfio/N
// (or noiommu-N), opened at most once, never while a device of it is bound
// through its cdev.
import {
  vfio_group_status,
  VFIO_GROUP_FLAGS_CONTAINER_SET,
  VFIO_GROUP_FLAGS_VIABLE,
  VFIO_GROUP_GET_DEVICE_FD,
  VFIO_GROUP_GET_STATUS,
  VFIO_GROUP_SET_CONTAINER,
  VFIO_GROUP_UNSET_CONTAINER,
} from '../uapi/vfio.js';
import { get, set } from '../uapi/codec.js';
import { O_RDWR } from '../libc/sys.js';
import { ContainerFile, type Container } from './container.js';
import type { FakePciDevice } from './device.js';
import { DeviceFile } from './device-file.js';
import { fail } from './errors.js';
import { FakeFile, type IoctlArg } from './files.js';
import { IommufdFile } from './iommufd.js';
import { matchDeviceName } from './sriov.js';
import { copyStructIn, copyStructOut, offsetofend } from './uaccess.js';
import type { VfioHost } from './vfio-host.js';

export class IommuGroup {
  /** Users of the group's DMA: kernel drivers (owner null) or one claimer. */
  ownerCnt: number;
  owner: object | null = null;

  constructor(
    readonly id: number,
    readonly devices: readonly FakePciDevice[],
  ) {
    // Every device bound to a kernel driver uses the DMA API: it counts as a user.
    this.ownerCnt = devices.filter((d) => d.desc.driver !== null && !/vfio/.test(d.desc.driver)).length;
  }

  get claimed(): boolean {
    return this.ownerCnt > 0;
  }

  /** iommu_group_claim_dma_owner(): the group path takes the whole group. */
  claimGroup(owner: object): void {
    if (this.ownerCnt > 0) fail('EPERM', `IOMMU group ${this.id} is in use (a kernel driver or another owner)`);
    this.owner = owner;
    this.ownerCnt = 1;
  }

  releaseGroup(): void {
    this.owner = null;
    this.ownerCnt = 0;
  }

  /** iommu_device_claim_dma_owner(): the cdev path claims per device; one owner per group. */
  claimDevice(owner: object): void {
    if (this.ownerCnt > 0) {
      if (this.owner !== owner) fail('EPERM', `IOMMU group ${this.id} is owned by someone else`);
      this.ownerCnt++;
      return;
    }
    this.owner = owner;
    this.ownerCnt = 1;
  }

  releaseDevice(): void {
    if (--this.ownerCnt === 0) this.owner = null;
  }
}

export class VfioGroup {
  openedFile: GroupFile | null = null;
  container: Container | null = null;
  /** 1 while in a container, +1 per device opened through it (vfio_group_use_container). */
  containerUsers = 0;
  /** Devices of this group bound through their cdev (vfio_device_block_group). */
  cdevDeviceOpenCnt = 0;

  constructor(
    readonly iommu: IommuGroup,
    readonly noiommu: boolean,
    /** The VFIO devices of the group. */
    readonly devices: readonly FakePciDevice[],
  ) {}

  get id(): number {
    return this.iommu.id;
  }

  get name(): string {
    return this.noiommu ? `noiommu-${this.id}` : String(this.id);
  }

  /** vfio_group_has_iommu(). */
  get hasIommu(): boolean {
    return this.container !== null;
  }
}

export class GroupFile extends FakeFile {
  readonly kind = 'group';

  constructor(
    private readonly host: VfioHost,
    readonly group: VfioGroup,
    path: string,
    accessMode: number,
  ) {
    super(path, accessMode);
  }

  /** vfio_group_fops_open(). */
  static open(host: VfioHost, group: VfioGroup, path: string, accessMode: number): GroupFile {
    if (group.noiommu && host.uid() !== 0) fail('EPERM', 'no-IOMMU groups need CAP_SYS_RAWIO');
    if (group.cdevDeviceOpenCnt > 0) fail('EBUSY', `a device of group ${group.name} is bound through its cdev`);
    if (group.openedFile !== null) fail('EBUSY', `group ${group.name} is already open`);
    const f = new GroupFile(host, group, path, accessMode);
    group.openedFile = f;
    return f;
  }

  protected override release(): void {
    // Device fds hold a group file reference, so no device is open here.
    if (this.group.container !== null) this.group.container.detachGroup(this.group);
    this.group.openedFile = null;
  }

  override ioctl(request: number, arg: IoctlArg): number {
    switch (request) {
      case VFIO_GROUP_GET_DEVICE_FD:
        return this.getDeviceFd(arg);
      case VFIO_GROUP_GET_STATUS:
        return this.getStatus(arg);
      case VFIO_GROUP_SET_CONTAINER:
        return this.setContainer(arg);
      case VFIO_GROUP_UNSET_CONTAINER:
        return this.unsetContainer();
      default:
        fail('ENOTTY', `request 0x${request.toString(16)} is not a group ioctl`);
    }
  }

  private getStatus(arg: IoctlArg): number {
    const mem = arg.mem();
    const minsz = offsetofend(vfio_group_status, 'flags');
    const k = copyStructIn(mem, vfio_group_status, minsz);
    if (get(vfio_group_status, k, 'argsz') < minsz) fail('EINVAL', 'argsz too small');
    let flags = 0;
    if (this.group.hasIommu) flags |= VFIO_GROUP_FLAGS_CONTAINER_SET | VFIO_GROUP_FLAGS_VIABLE;
    else if (!this.group.iommu.claimed) flags |= VFIO_GROUP_FLAGS_VIABLE;
    set(vfio_group_status, k, 'flags', flags);
    copyStructOut(mem, k, minsz);
    return 0;
  }

  private setContainer(arg: IoctlArg): number {
    const fd = new DataView(arg.mem().copyIn(0, 4).buffer).getInt32(0, true);
    const f = this.host.fds.lookup(fd);
    if (f === undefined) fail('EBADF', `fd ${fd} is not open`);
    if (this.group.hasIommu) fail('EINVAL', `group ${this.group.name} is already in a container`);
    if (f instanceof ContainerFile) {
      f.container.attachGroup(this.group);
      return 0;
    }
    if (f instanceof IommufdFile) {
      // The kernel would use iommufd's VFIO compatibility here; the fake does not model it.
      fail('EBADFD', 'iommufd as a group container (VFIO compat) is not modeled by the fake');
    }
    fail('EBADFD', `fd ${fd} is neither a container nor an iommufd`);
  }

  private unsetContainer(): number {
    const c = this.group.container;
    if (c === null) fail('EINVAL', `group ${this.group.name} is not in a container`);
    if (this.group.containerUsers !== 1) fail('EBUSY', `devices of group ${this.group.name} are open`);
    c.detachGroup(this.group);
    return 0;
  }

  private getDeviceFd(arg: IoctlArg): number {
    // strndup_user(arg, PAGE_SIZE)
    const mem = arg.mem();
    const bytes: number[] = [];
    for (;;) {
      if (bytes.length >= this.host.config.pageSize) fail('EINVAL', 'device name longer than a page');
      const b = mem.copyIn(bytes.length, 1)[0]!;
      if (b === 0) break;
      bytes.push(b);
    }
    const name = Buffer.from(bytes).toString('latin1');
    // vfio_device_get_from_name(): the first device whose match() says yes;
    // a match() error (a bad or missing VF token) ends the search.
    const dev = this.group.devices.find((d) => matchDeviceName(d, name));
    if (dev === undefined) fail('ENODEV', `group ${this.group.name} has no device ${JSON.stringify(name)}`);
    this.host.fds.reserve();
    const file = DeviceFile.openFromGroup(this.host, dev, this);
    return this.host.fds.install(file);
  }

  /** vfio_group_use_container(): a device's first open through this group. */
  useContainer(): void {
    const c = this.group.container;
    if (c === null || c.driver === null) fail('EINVAL', `group ${this.group.name} has no container with an IOMMU set`);
    if (this.group.noiommu && this.host.uid() !== 0) fail('EPERM', 'no-IOMMU devices need CAP_SYS_RAWIO');
    this.get();
    this.group.containerUsers++;
  }

  unuseContainer(): void {
    this.group.containerUsers--;
    this.put();
  }
}

export { O_RDWR };
