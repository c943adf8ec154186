// `vfio ls`: every PCI device with its driver, IOMMU group, whether the group
// is viable, and the VFIO mode of the VFIO-managed ones. Reads sysfs and /dev
// only: it needs no privilege and opens no device.
import { flag } from './args.js';
import type { Command } from './command.js';
import { EXIT } from './command.js';
import { inspectDevice, pciAddresses, type DeviceReport } from './devices.js';
import { className, hex, json, table } from './format.js';

/** The JSON form of a device: ids as hex strings, the way sysfs spells them. */
export function deviceJson(d: DeviceReport): Record<string, unknown> {
  return {
    address: d.address,
    vendor: hex(d.vendor, 4),
    device: hex(d.device, 4),
    class: hex(d.class, 6),
    className: className(d.class),
    driver: d.driver,
    vfio: d.vfio,
    iommuGroup: d.iommuGroup,
    noiommu: d.noiommu,
    viable: d.viable,
    blockers: d.blockers,
    groupMembers: d.groupMembers,
    mode: d.mode,
    modeError: d.modeError,
    groupNode: d.groupNode,
    cdevNode: d.cdevNode,
    sriov: d.sriov,
    physfn: d.physfn,
  };
}

export const ls: Command = {
  name: 'ls',
  summary: 'list PCI devices: driver, IOMMU group, viability, VFIO mode',
  usage: 'ls [--vfio] [--json]',
  help: `Lists every PCI device in sysfs, one line each:

  ADDRESS       the PCI address (domain:bus:slot.function)
  ID            vendor:device
  CLASS         the PCI base class
  DRIVER        the bound driver, or - when none is
  GROUP         the IOMMU group (noiommu-N for a no-IOMMU group), or - when none
  VIABLE        yes when no device of the group is on a host driver that does
                DMA (a group must be viable before VFIO can hand it out); - when
                the device has no group
  MODE          for devices bound to vfio-pci: the VFIO mode it would be driven
                in (cdev, group or noiommu), or ! when no mode is available
                (\`vfio doctor\` says why)
  SR-IOV        only when the machine has SR-IOV devices: "PF n/total" for a
                physical function (VFs it has / can have), "VF of <pf>" for a
                virtual function (\`vfio sriov <pf>\` lists and creates them)

Options:
  --vfio        only devices bound to vfio-pci (or a vfio-pci variant driver)
  --json        a JSON array instead of the table: ids as "0x" hex strings,
                blockers and groupMembers as [{ address, driver }], and
                modeError saying why mode is null for a vfio-pci device,
                sriov ({ totalVfs, numVfs, vfs }) for a PF and physfn for a VF

Reads sysfs and /dev only: needs no privilege, opens no device.`,
  options: { vfio: { type: 'boolean' }, json: { type: 'boolean' } },
  positionals: { min: 0, max: 0, names: 'no argument' },
  run(args, env) {
    const v = env.vfio();
    const devices = pciAddresses(env.roots)
      .map((a) => inspectDevice(env.roots, v, a))
      .filter((d) => !flag(args, 'vfio') || d.vfio);
    if (flag(args, 'json')) {
      env.out(json(devices.map(deviceJson)));
      return EXIT.ok;
    }
    if (devices.length === 0) {
      env.out(flag(args, 'vfio') ? 'no device is bound to vfio-pci (bind one with `vfio bind <address>`)\n' : 'no PCI devices in sysfs\n');
      return EXIT.ok;
    }
    // The SR-IOV column only where there is SR-IOV to show.
    const sriov = devices.some((d) => d.sriov !== null || d.physfn !== null);
    const rows = devices.map((d) => [
      d.address,
      `${d.vendor.toString(16).padStart(4, '0')}:${d.device.toString(16).padStart(4, '0')}`,
      className(d.class),
      d.driver ?? '-',
      d.iommuGroup === null ? '-' : d.noiommu ? `noiommu-${d.iommuGroup}` : String(d.iommuGroup),
      d.viable === null ? '-' : d.viable ? 'yes' : 'no',
      d.vfio ? (d.mode ?? '!') : '',
      ...(sriov ? [d.sriov !== null ? `PF ${d.sriov.numVfs}/${d.sriov.totalVfs}` : d.physfn !== null ? `VF of ${d.physfn}` : ''] : []),
    ]);
    const heads = ['ADDRESS', 'ID', 'CLASS', 'DRIVER', 'GROUP', 'VIABLE', 'MODE', ...(sriov ? ['SR-IOV'] : [])];
    env.out(table(heads, rows));
    return EXIT.ok;
  },
};
