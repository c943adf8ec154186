// What the VFIO parts of the fake (group, device fd, hot reset) need to see of
// the whole machine. The FakeKernel implements it.
import type { FakePciDevice, DeviceHost } from './device.js';
import type { DeviceFile } from './device-file.js';
import type { IommuGroup, VfioGroup } from './group.js';

export interface VfioHost extends DeviceHost {
  /** Every PCI device, VFIO-bound or not, by address. */
  readonly pciDevices: ReadonlyMap<string, FakePciDevice>;
  vfioGroupOf(dev: FakePciDevice): VfioGroup | null;
  iommuGroupOf(dev: FakePciDevice): IommuGroup | null;
  /** Device files that bound their device through BIND_IOMMUFD. */
  readonly cdevBindings: Map<FakePciDevice, DeviceFile>;
  /** A device file let go of its device (open_count dropped): a pending unbind may finish. */
  deviceReleased(dev: FakePciDevice): void;
}
