// A VFIO device file (vfio_device_file): what VFIO_GROUP_GET_DEVICE_FD
// returns, or what opening /dev/vfio/devices/vfioN gives. A cdev file can do
// nothing but VFIO_DEVICE_BIND_IOMMUFD until it is bound (EINVAL otherwise);
// then it attaches to an IOAS. Ioctls follow vfio_device_fops_unl_ioctl and
// vfio_pci_core_ioctl; read/write/mmap reach the device's regions.
import {
  vfio_device_attach_iommufd_pt,
  vfio_device_bind_iommufd,
  vfio_device_detach_iommufd_pt,
  vfio_device_feature,
  vfio_device_info,
  vfio_device_info_cap_pci_atomic_comp,
  vfio_irq_info,
  vfio_irq_set,
  vfio_pci_dependent_device,
  vfio_pci_hot_reset,
  vfio_pci_hot_reset_info,
  vfio_region_info,
  VFIO_DEVICE_ATTACH_IOMMUFD_PT,
  VFIO_DEVICE_ATTACH_PASID,
  VFIO_DEVICE_BIND_IOMMUFD,
  VFIO_DEVICE_DETACH_IOMMUFD_PT,
  VFIO_DEVICE_DETACH_PASID,
  VFIO_DEVICE_BIND_FLAG_TOKEN,
  VFIO_DEVICE_FEATURE,
  VFIO_DEVICE_FEATURE_PCI_VF_TOKEN,
  VFIO_DEVICE_FEATURE_GET,
  VFIO_DEVICE_FEATURE_MASK,
  VFIO_DEVICE_FEATURE_PROBE,
  VFIO_DEVICE_FEATURE_SET,
  VFIO_DEVICE_FLAGS_CAPS,
  VFIO_DEVICE_FLAGS_PCI,
  VFIO_DEVICE_FLAGS_RESET,
  VFIO_DEVICE_GET_INFO,
  VFIO_DEVICE_GET_IRQ_INFO,
  VFIO_DEVICE_GET_PCI_HOT_RESET_INFO,
  VFIO_DEVICE_GET_REGION_INFO,
  VFIO_DEVICE_INFO_CAP_PCI_ATOMIC_COMP,
  VFIO_DEVICE_PCI_HOT_RESET,
  VFIO_DEVICE_RESET,
  VFIO_DEVICE_SET_IRQS,
  VFIO_IRQ_INFO_AUTOMASKED,
  VFIO_IRQ_INFO_EVENTFD,
  VFIO_IRQ_INFO_MASKABLE,
  VFIO_IRQ_INFO_NORESIZE,
  VFIO_IRQ_SET_ACTION_TYPE_MASK,
  VFIO_IRQ_SET_DATA_BOOL,
  VFIO_IRQ_SET_DATA_EVENTFD,
  VFIO_IRQ_SET_DATA_NONE,
  VFIO_IRQ_SET_DATA_TYPE_MASK,
  VFIO_PCI_ATOMIC_COMP128,
  VFIO_PCI_ATOMIC_COMP32,
  VFIO_PCI_ATOMIC_COMP64,
  VFIO_PCI_DEVID_NOT_OWNED,
  VFIO_PCI_DEVID_OWNED,
  VFIO_PCI_ERR_IRQ_INDEX,
  VFIO_PCI_HOT_RESET_FLAG_DEV_ID,
  VFIO_PCI_HOT_RESET_FLAG_DEV_ID_OWNED,
  VFIO_PCI_INTX_IRQ_INDEX,
  VFIO_PCI_MSIX_IRQ_INDEX,
  VFIO_PCI_NUM_IRQS,
  VFIO_REGION_INFO_FLAG_CAPS,
} from '../uapi/vfio.js';
import { get, set, write } from '../uapi/codec.js';
import { O_RDWR } from '../libc/sys.js';
import { CapChain } from './caps.js';
import { REGION_SHIFT, type FakePciDevice } from './device.js';
import { fail } from './errors.js';
import { FakeFile, type IoctlArg, type MmapRequest, type MmapTarget } from './files.js';
import type { GroupFile, VfioGroup } from './group.js';
import { IommufdFile, type Hwpt, type IdevObj } from './iommufd.js';
import { copyStructFromUser, copyStructIn, copyStructOut, offsetofend, PointerMemory, type UserMemory } from './uaccess.js';
import { kernelAtLeast } from './core.js';
import { matchTokenUuid } from './sriov.js';
import type { VfioHost } from './vfio-host.js';

const U32_MAX = 0xffffffff;

export class DeviceFile extends FakeFile {
  readonly kind = 'device';
  override readonly positional = true;
  /** df->access_granted: the device is open for this file. */
  accessGranted = false;
  private binding: { ictx: IommufdFile; obj: IdevObj } | null = null;
  private pos = 0n;

  private constructor(
    private readonly host: VfioHost,
    readonly device: FakePciDevice,
    /** Opened through a group (GET_DEVICE_FD), or null for the cdev path. */
    readonly groupFile: GroupFile | null,
    path: string | null,
    accessMode: number,
  ) {
    super(path, accessMode);
  }

  /** vfio_device_open_file() + vfio_df_group_open(). */
  static openFromGroup(host: VfioHost, dev: FakePciDevice, groupFile: GroupFile): DeviceFile {
    if (!groupFile.group.hasIommu) fail('EINVAL', `group ${groupFile.group.name} has no container`);
    if (dev.openCount === 0) {
      groupFile.useContainer();
      dev.enable();
    }
    dev.openCount++;
    const f = new DeviceFile(host, dev, groupFile, null, O_RDWR);
    f.accessGranted = true;
    return f;
  }

  /** vfio_device_fops_cdev_open(): always succeeds; the device is not opened until BIND. */
  static openCdev(host: VfioHost, dev: FakePciDevice, path: string, accessMode: number): DeviceFile {
    return new DeviceFile(host, dev, null, path, accessMode);
  }

  /** The HWPT the bound device is attached to (its IOMMU domain), or null. */
  get hwpt(): Hwpt | null {
    return this.binding?.obj.hwpt ?? null;
  }

  private get group(): VfioGroup {
    const g = this.host.vfioGroupOf(this.device);
    if (g === null) throw new Error('fake kernel bug: a VFIO device without a group');
    return g;
  }

  protected override release(): void {
    if (this.groupFile !== null) {
      // vfio_df_group_close(): the last close disables the device and drops the container use.
      if (this.device.openCount === 1) {
        this.device.disable();
        this.groupFile.unuseContainer();
      }
      this.device.openCount--;
      this.host.deviceReleased(this.device);
      return;
    }
    this.unbind();
  }

  /** vfio_df_unbind_iommufd(). */
  private unbind(): void {
    if (!this.accessGranted || this.binding === null) return;
    const { ictx, obj } = this.binding;
    this.device.disable();
    this.device.openCount--;
    const iommu = this.host.iommuGroupOf(this.device)!;
    ictx.unbind(obj, () => iommu.releaseDevice());
    ictx.put();
    this.device.cdevOpened = false;
    this.host.cdevBindings.delete(this.device);
    this.group.cdevDeviceOpenCnt--;
    this.binding = null;
    this.accessGranted = false;
    this.host.deviceReleased(this.device);
  }

  override ioctl(request: number, arg: IoctlArg): number {
    if (request === VFIO_DEVICE_BIND_IOMMUFD) return this.bind(arg.mem());
    if (!this.accessGranted) fail('EINVAL', 'the device is not open for this file (VFIO_DEVICE_BIND_IOMMUFD first)');
    if (this.groupFile === null) {
      if (request === VFIO_DEVICE_ATTACH_IOMMUFD_PT) return this.attach(arg.mem());
      if (request === VFIO_DEVICE_DETACH_IOMMUFD_PT) return this.detach(arg.mem());
    }
    switch (request) {
      case VFIO_DEVICE_FEATURE:
        return this.feature(arg.mem());
      case VFIO_DEVICE_GET_INFO:
        return this.getInfo(arg.mem());
      case VFIO_DEVICE_GET_REGION_INFO:
        return this.getRegionInfo(arg.mem());
      case VFIO_DEVICE_GET_IRQ_INFO:
        return this.getIrqInfo(arg.mem());
      case VFIO_DEVICE_SET_IRQS:
        return this.setIrqs(arg.mem());
      case VFIO_DEVICE_RESET:
        if (!this.device.resetWorks) fail('EINVAL', 'the device has no reset method');
        this.device.functionReset();
        return 0;
      case VFIO_DEVICE_GET_PCI_HOT_RESET_INFO:
        return this.hotResetInfo(arg.mem());
      case VFIO_DEVICE_PCI_HOT_RESET:
        return this.hotReset(arg.mem());
      default:
        fail('ENOTTY', `request 0x${request.toString(16)} is not a vfio-pci device ioctl`);
    }
  }

  // ---- cdev: bind, attach, detach ----

  private bind(mem: UserMemory): number {
    const L = vfio_device_bind_iommufd;
    const minsz = offsetofend(L, 'out_devid');
    // 6.17 added the VF token (VFIO_DEVICE_BIND_FLAG_TOKEN, token_uuid_ptr)
    // and reads the struct with copy_struct_from_user(argsz); before, the
    // first minsz bytes with flags 0.
    const tokens = kernelAtLeast(this.host.config, 6, 17);
    let k: Uint8Array;
    if (tokens) {
      const usize = get(L, copyStructIn(mem, L, 4), 'argsz');
      if (usize < minsz) fail('EINVAL', 'argsz too small');
      k = copyStructFromUser(mem, L, usize);
    } else {
      k = copyStructIn(mem, L, minsz);
    }
    const validFlags = tokens ? VFIO_DEVICE_BIND_FLAG_TOKEN : 0;
    if (get(L, k, 'argsz') < minsz || (get(L, k, 'flags') & ~validFlags) !== 0 || get(L, k, 'iommufd') < 0) {
      fail('EINVAL', 'argsz too small, unknown flags set, or a negative iommufd');
    }
    if (this.groupFile !== null) fail('EINVAL', 'BIND_IOMMUFD is only for cdev device files');
    const group = this.group;
    if (group.openedFile !== null) fail('EBUSY', `group ${group.name} is open through /dev/vfio`);
    group.cdevDeviceOpenCnt++;
    try {
      if (this.accessGranted) fail('EINVAL', 'this file already bound its device');
      // vfio_df_check_token() (6.17+): vfio-pci checks the VF token as the group path does.
      if (tokens) {
        const withToken = (get(L, k, 'flags') & VFIO_DEVICE_BIND_FLAG_TOKEN) !== 0;
        const uuid = withToken ? new PointerMemory(this.host.space, get(L, k, 'token_uuid_ptr')).copyIn(0, 16) : null;
        matchTokenUuid(this.device, uuid);
      }
      const f = this.host.fds.lookup(get(L, k, 'iommufd'));
      if (f === undefined) fail('EBADF', 'iommufd is not an open fd');
      if (!(f instanceof IommufdFile)) fail('EBADFD', 'the fd is not /dev/iommu');
      // vfio_df_open(): only the group path may open a device twice.
      if (this.device.openCount !== 0) fail('EINVAL', 'the device is already open');
      const iommu = this.host.iommuGroupOf(this.device)!;
      const obj = f.bind(this.device, () => iommu.claimDevice(f));
      this.device.enable();
      this.device.openCount = 1;
      set(L, k, 'out_devid', obj.id);
      mem.copyOut(L.fields.out_devid.offset, k.subarray(L.fields.out_devid.offset, minsz));
      f.get();
      this.binding = { ictx: f, obj };
      this.device.cdevOpened = true;
      this.host.cdevBindings.set(this.device, this);
      this.accessGranted = true;
      return 0;
    } catch (e) {
      group.cdevDeviceOpenCnt--;
      throw e;
    }
  }

  private attach(mem: UserMemory): number {
    const L = vfio_device_attach_iommufd_pt;
    const minsz = offsetofend(L, 'pt_id');
    const k = copyStructIn(mem, L, minsz);
    const flags = get(L, k, 'flags');
    if (get(L, k, 'argsz') < minsz) fail('EINVAL', 'argsz too small');
    if (flags & ~VFIO_DEVICE_ATTACH_PASID) fail('EINVAL', 'unknown flags');
    if (flags & VFIO_DEVICE_ATTACH_PASID) fail('EOPNOTSUPP', 'the fake devices have no PASID support');
    const { ictx, obj } = this.binding!;
    const hwpt = ictx.attach(obj, get(L, k, 'pt_id'));
    set(L, k, 'pt_id', hwpt);
    mem.copyOut(L.fields.pt_id.offset, k.subarray(L.fields.pt_id.offset, minsz));
    return 0;
  }

  private detach(mem: UserMemory): number {
    const L = vfio_device_detach_iommufd_pt;
    const minsz = offsetofend(L, 'flags');
    const k = copyStructIn(mem, L, minsz);
    const flags = get(L, k, 'flags');
    if (get(L, k, 'argsz') < minsz) fail('EINVAL', 'argsz too small');
    if (flags & ~VFIO_DEVICE_DETACH_PASID) fail('EINVAL', 'unknown flags');
    if (flags & VFIO_DEVICE_DETACH_PASID) fail('EOPNOTSUPP', 'the fake devices have no PASID support');
    const { ictx, obj } = this.binding!;
    ictx.detach(obj);
    return 0;
  }

  // ---- vfio core and vfio-pci ioctls ----

  /** vfio_pci_core_feature_token(): SET only (a GET could leak the previous user's token). */
  private featureVfToken(mem: UserMemory, flags: number, argsz: number): number {
    const token = this.device.vfToken;
    if (token === null) fail('ENOTTY', `${this.device.address} is not an SR-IOV PF bound to vfio-pci`);
    // vfio_check_feature(flags, argsz, SET, sizeof(uuid))
    if (flags & VFIO_DEVICE_FEATURE_GET) fail('EINVAL', 'the VF token can only be set');
    if (flags & VFIO_DEVICE_FEATURE_PROBE) return 0;
    if (!(flags & VFIO_DEVICE_FEATURE_SET)) fail('EINVAL', 'neither GET nor SET');
    if (argsz < 16) fail('EINVAL', 'argsz leaves no room for the UUID');
    token.uuid = mem.copyIn(vfio_device_feature.fields.data.offset, 16).slice();
    return 0;
  }

  private feature(mem: UserMemory): number {
    const L = vfio_device_feature;
    const minsz = offsetofend(L, 'flags');
    const k = copyStructIn(mem, L, minsz);
    const flags = get(L, k, 'flags');
    if (get(L, k, 'argsz') < minsz) fail('EINVAL', 'argsz too small');
    if (flags & ~(VFIO_DEVICE_FEATURE_MASK | VFIO_DEVICE_FEATURE_SET | VFIO_DEVICE_FEATURE_GET | VFIO_DEVICE_FEATURE_PROBE))
      fail('EINVAL', 'unknown flags');
    if (!(flags & VFIO_DEVICE_FEATURE_PROBE) && flags & VFIO_DEVICE_FEATURE_SET && flags & VFIO_DEVICE_FEATURE_GET)
      fail('EINVAL', 'GET and SET together');
    if ((flags & VFIO_DEVICE_FEATURE_MASK) === VFIO_DEVICE_FEATURE_PCI_VF_TOKEN) {
      return this.featureVfToken(mem, flags, get(L, k, 'argsz') - minsz);
    }
    fail('ENOTTY', `feature ${flags & VFIO_DEVICE_FEATURE_MASK} is not supported by the fake device`);
  }

  private getInfo(mem: UserMemory): number {
    const L = vfio_device_info;
    const minsz = offsetofend(L, 'num_irqs');
    const k = copyStructIn(mem, L, minsz);
    const argsz = get(L, k, 'argsz');
    if (argsz < minsz) fail('EINVAL', 'argsz too small');
    let flags = VFIO_DEVICE_FLAGS_PCI | (this.device.resetWorks ? VFIO_DEVICE_FLAGS_RESET : 0);
    const caps = new CapChain();
    const cap2 = this.device.config.devcap2;
    const atomic =
      (cap2 & (1 << 7) ? VFIO_PCI_ATOMIC_COMP32 : 0) |
      (cap2 & (1 << 8) ? VFIO_PCI_ATOMIC_COMP64 : 0) |
      (cap2 & (1 << 9) ? VFIO_PCI_ATOMIC_COMP128 : 0);
    if (atomic) caps.add(vfio_device_info_cap_pci_atomic_comp, VFIO_DEVICE_INFO_CAP_PCI_ATOMIC_COMP, 1, { flags: atomic });
    write(L, k, { flags, num_regions: this.device.numRegions, num_irqs: VFIO_PCI_NUM_IRQS });
    if (caps.size > 0) {
      flags |= VFIO_DEVICE_FLAGS_CAPS;
      set(L, k, 'flags', flags);
      if (argsz < L.size + caps.size) set(L, k, 'argsz', L.size + caps.size);
      else {
        mem.copyOut(L.size, caps.encode(L.size));
        set(L, k, 'cap_offset', L.size);
      }
    }
    copyStructOut(mem, k, Math.min(argsz, L.size));
    return 0;
  }

  private getRegionInfo(mem: UserMemory): number {
    const L = vfio_region_info;
    const minsz = offsetofend(L, 'offset');
    const k = copyStructIn(mem, L, minsz);
    const argsz = get(L, k, 'argsz');
    if (argsz < minsz) fail('EINVAL', 'argsz too small');
    const index = get(L, k, 'index');
    const info = this.device.regionInfo(index);
    if (info === null) fail('EINVAL', `no region ${index}`);
    write(L, k, { offset: BigInt(index) << REGION_SHIFT, size: info.size, flags: info.flags });
    if (info.caps.size > 0) {
      set(L, k, 'flags', info.flags | VFIO_REGION_INFO_FLAG_CAPS);
      if (argsz < L.size + info.caps.size) {
        set(L, k, 'argsz', L.size + info.caps.size);
        set(L, k, 'cap_offset', 0);
      } else {
        mem.copyOut(L.size, info.caps.encode(L.size));
        set(L, k, 'cap_offset', L.size);
      }
    }
    copyStructOut(mem, k, minsz);
    return 0;
  }

  private getIrqInfo(mem: UserMemory): number {
    const L = vfio_irq_info;
    const minsz = offsetofend(L, 'count');
    const k = copyStructIn(mem, L, minsz);
    const index = get(L, k, 'index');
    if (get(L, k, 'argsz') < minsz || index >= VFIO_PCI_NUM_IRQS) fail('EINVAL', 'argsz too small or no such index');
    if (index === VFIO_PCI_ERR_IRQ_INDEX && !this.device.config.isPcie) fail('EINVAL', 'ERR needs a PCIe device');
    let flags = VFIO_IRQ_INFO_EVENTFD;
    if (index === VFIO_PCI_INTX_IRQ_INDEX) flags |= VFIO_IRQ_INFO_MASKABLE | VFIO_IRQ_INFO_AUTOMASKED;
    else if (index !== VFIO_PCI_MSIX_IRQ_INDEX || !this.device.desc.dynamicMsix) flags |= VFIO_IRQ_INFO_NORESIZE;
    write(L, k, { flags, count: this.device.config.irqCount(index) });
    copyStructOut(mem, k, minsz);
    return 0;
  }

  private setIrqs(mem: UserMemory): number {
    const L = vfio_irq_set;
    const minsz = offsetofend(L, 'count');
    const k = copyStructIn(mem, L, minsz);
    const h = {
      argsz: get(L, k, 'argsz'),
      flags: get(L, k, 'flags'),
      index: get(L, k, 'index'),
      start: get(L, k, 'start'),
      count: get(L, k, 'count'),
    };
    const max = this.device.config.irqCount(h.index);
    // vfio_set_irqs_validate_and_prepare()
    if (
      h.argsz < minsz ||
      h.index >= VFIO_PCI_NUM_IRQS ||
      h.count >= (U32_MAX - h.start) >>> 0 ||
      h.flags & ~(VFIO_IRQ_SET_DATA_TYPE_MASK | VFIO_IRQ_SET_ACTION_TYPE_MASK)
    ) {
      fail('EINVAL', 'argsz, index, count or flags out of range');
    }
    if (h.start >= max || h.start + h.count > max)
      fail('EINVAL', `vectors [${h.start}, ${h.start + h.count}) beyond the ${max} of index ${h.index}`);
    let size: number;
    switch (h.flags & VFIO_IRQ_SET_DATA_TYPE_MASK) {
      case VFIO_IRQ_SET_DATA_NONE:
        size = 0;
        break;
      case VFIO_IRQ_SET_DATA_BOOL:
        size = 1;
        break;
      case VFIO_IRQ_SET_DATA_EVENTFD:
        size = 4;
        break;
      default:
        fail('EINVAL', 'exactly one DATA_ type is needed');
    }
    let data: Uint8Array | null = null;
    if (size > 0) {
      if (h.argsz - minsz < h.count * size) fail('EINVAL', 'argsz does not cover the data');
      if (h.count * size > 0) data = mem.copyIn(minsz, h.count * size);
    }
    this.device.irqs.set(h.flags, h.index, h.start, h.count, data);
    return 0;
  }

  /** The devices a bus/slot reset of this device resets (VFIO-bound or not). */
  private affected(): FakePciDevice[] {
    const scope = this.device.desc.hotResetGroup;
    if (scope === null) fail('ENODEV', 'no slot or bus reset is possible for this device');
    return [...this.host.pciDevices.values()].filter((d) => d.desc.hotResetGroup === scope);
  }

  private hotResetInfo(mem: UserMemory): number {
    const L = vfio_pci_hot_reset_info;
    const D = vfio_pci_dependent_device;
    const minsz = offsetofend(L, 'count');
    const k = copyStructIn(mem, L, minsz);
    const argsz = get(L, k, 'argsz');
    if (argsz < minsz) fail('EINVAL', 'argsz too small');
    set(L, k, 'flags', 0);
    const devs = this.affected();
    if (devs.length > Math.floor((argsz - L.size) / D.size)) {
      set(L, k, 'count', devs.length);
      copyStructOut(mem, k, minsz);
      fail('ENOSPC', `${devs.length} affected devices do not fit (count set)`);
    }
    let flags = this.device.cdevOpened ? VFIO_PCI_HOT_RESET_FLAG_DEV_ID | VFIO_PCI_HOT_RESET_FLAG_DEV_ID_OWNED : 0;
    const out = new Uint8Array(devs.length * D.size);
    devs.forEach((d, i) => {
      const entry = { segment: d.desc.segment, bus: d.desc.bus, devfn: d.desc.devfn };
      if (flags & VFIO_PCI_HOT_RESET_FLAG_DEV_ID) {
        const devid = this.devidFor(d);
        if (devid === VFIO_PCI_DEVID_NOT_OWNED) flags &= ~VFIO_PCI_HOT_RESET_FLAG_DEV_ID_OWNED;
        write(D, out, { ...entry, devid: devid >>> 0 }, i * D.size);
      } else {
        const g = this.host.iommuGroupOf(d);
        if (g === null) fail('EPERM', `${d.address} has no IOMMU group (cannot reset non-isolated devices)`);
        write(D, out, { ...entry, group_id: g.id }, i * D.size);
      }
    });
    mem.copyOut(L.size, out);
    write(L, k, { count: devs.length, flags });
    copyStructOut(mem, k, minsz);
    return 0;
  }

  /** vfio_iommufd_get_dev_id() as GET_PCI_HOT_RESET_INFO reports it. */
  private devidFor(d: FakePciDevice): number {
    if (d.vfioIndex === null) return VFIO_PCI_DEVID_NOT_OWNED;
    const ictx = this.binding!.ictx;
    const id = ictx.devidOf(d);
    if (id !== null) return id;
    const g = this.host.iommuGroupOf(d);
    if (g !== null && ictx.hasDeviceOf(g.devices)) return VFIO_PCI_DEVID_OWNED;
    return VFIO_PCI_DEVID_NOT_OWNED;
  }

  private hotReset(mem: UserMemory): number {
    const L = vfio_pci_hot_reset;
    const minsz = offsetofend(L, 'count');
    const k = copyStructIn(mem, L, minsz);
    const count = get(L, k, 'count');
    if (get(L, k, 'argsz') < minsz || get(L, k, 'flags') !== 0) fail('EINVAL', 'argsz too small or flags set');
    if ((count !== 0) === this.device.cdevOpened) {
      fail(
        'EINVAL',
        this.device.cdevOpened ? 'cdev-opened devices pass an empty group fd array' : 'group-opened devices pass their group fds',
      );
    }
    const devs = this.affected();
    if (count === 0)
      return this.resetSet(devs, (d) => {
        const id = this.devidFor(d);
        return id > 0 || id === VFIO_PCI_DEVID_OWNED;
      });
    if (count > devs.length) fail('EINVAL', `${count} group fds for ${devs.length} affected devices`);
    const raw = mem.copyIn(L.size, count * 4);
    const groups: VfioGroup[] = [];
    for (let i = 0; i < count; i++) {
      const fd = new DataView(raw.buffer).getInt32(i * 4, true);
      const f = this.host.fds.lookup(fd);
      if (f === undefined) fail('EBADF', `group fd ${fd} is not open`);
      if (f.kind !== 'group') fail('EINVAL', `fd ${fd} is not a VFIO group`);
      groups.push((f as GroupFile).group);
    }
    return this.resetSet(devs, (d) => groups.includes(this.host.vfioGroupOf(d)!));
  }

  /** vfio_pci_dev_set_hot_reset(): every affected device must be VFIO's and owned by the caller. */
  private resetSet(devs: FakePciDevice[], owned: (d: FakePciDevice) => boolean): number {
    const foreign = devs.find((d) => d.vfioIndex === null);
    if (foreign !== undefined) fail('EINVAL', `${foreign.address} on the same bus is not bound to VFIO`);
    const notOwned = devs.find((d) => !owned(d));
    if (notOwned !== undefined) fail('EINVAL', `${notOwned.address} is not owned by the caller`);
    for (const d of devs) d.functionReset();
    return 0;
  }

  // ---- read / write / mmap ----

  private checkAccess(): void {
    if (!this.accessGranted) fail('EINVAL', 'the device is not open for this file');
  }

  override read(buf: Uint8Array): number {
    this.checkAccess();
    const n = this.device.rw(this.pos, buf, false);
    this.pos += BigInt(n);
    return n;
  }

  override write(buf: Uint8Array): number {
    this.checkAccess();
    const n = this.device.rw(this.pos, buf, true);
    this.pos += BigInt(n);
    return n;
  }

  override pread(buf: Uint8Array, offset: bigint): number {
    if (offset < 0n) fail('EINVAL', 'negative offset');
    this.checkAccess();
    return this.device.rw(offset, buf, false);
  }

  override pwrite(buf: Uint8Array, offset: bigint): number {
    if (offset < 0n) fail('EINVAL', 'negative offset');
    this.checkAccess();
    return this.device.rw(offset, buf, true);
  }

  override mmap(req: MmapRequest): MmapTarget {
    this.checkAccess();
    return this.device.mmap(req);
  }
}
