// The fake kernel for tests: `new FakeKernel({ mode, devices })` gives a Sys,
// a /sys + /dev + /proc tree, fault injection and leak counts. See README.md.
export { FakeKernel, type FakeKernelOptions, type FaultMatch, type FaultRule, type Leaks, type FakeDeviceHandle } from './kernel.js';
export type { SyscallRecord, SysMethod } from './sys.js';
export type { FakeMode, IommuModel } from './core.js';
export {
  pciDevice,
  ConfigBuilder,
  type PciDeviceSpec,
  type PciDeviceDescription,
  type BarSpec,
  type IrqSpec,
  type RegionSpec,
} from './pci-spec.js';
export { edu, EDU_ID, type EduOptions } from './edu.js';
export { nvme, nvmeSriov, NVME_VENDOR, NVME_DEVICE, NVME_CLASS, NVME_STATUS, type NvmeOptions, type NvmeSriovOptions } from './nvme.js';
export type { DeviceModel, DeviceContext, IrqKind } from './device-model.js';
export { errnoNumber } from './errors.js';
