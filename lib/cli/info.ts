// `vfio info <address>`: what VFIO says about one device — its mode, IOMMU
// group and members, device flags, every region with its flags and
// capabilities, every interrupt index with its count, and the IOVA ranges of
// its container. The device is opened (and released before the command
// exits), so it must be bound to vfio-pci and not in use by another process.
import { CliFailure, flag, pciAddress, stringOption } from './args.js';
import type { Command } from './command.js';
import { EXIT } from './command.js';
import { inspectDevice } from './devices.js';
import { bytes, className, flagNames, hex, json, table } from './format.js';
import { deviceJson } from './ls.js';
import type { IrqInfo, IrqKind } from '../device/irqs.js';
import type { RegionInfo } from '../device/region-info.js';
import type { DeviceInfo } from '../core/device.js';
import type { IommuInfo } from '../core/container/backend.js';
import type { Vfio } from '../core/context.js';
import { VfioError } from '../base/errors.js';
import { iommufdNode } from '../host/paths.js';
import {
  VFIO_DEVICE_FLAGS_AMBA,
  VFIO_DEVICE_FLAGS_AP,
  VFIO_DEVICE_FLAGS_CAPS,
  VFIO_DEVICE_FLAGS_CCW,
  VFIO_DEVICE_FLAGS_CDX,
  VFIO_DEVICE_FLAGS_FSL_MC,
  VFIO_DEVICE_FLAGS_PCI,
  VFIO_DEVICE_FLAGS_PLATFORM,
  VFIO_DEVICE_FLAGS_RESET,
  VFIO_DEVICE_INFO_CAP_PCI_ATOMIC_COMP,
  VFIO_DEVICE_INFO_CAP_ZPCI_BASE,
  VFIO_DEVICE_INFO_CAP_ZPCI_GROUP,
  VFIO_DEVICE_INFO_CAP_ZPCI_PFIP,
  VFIO_DEVICE_INFO_CAP_ZPCI_UTIL,
  VFIO_IRQ_INFO_AUTOMASKED,
  VFIO_IRQ_INFO_EVENTFD,
  VFIO_IRQ_INFO_MASKABLE,
  VFIO_IRQ_INFO_NORESIZE,
  VFIO_REGION_INFO_CAP_MSIX_MAPPABLE,
  VFIO_REGION_INFO_CAP_NVLINK2_LNKSPD,
  VFIO_REGION_INFO_CAP_NVLINK2_SSATGT,
  VFIO_REGION_INFO_CAP_SPARSE_MMAP,
  VFIO_REGION_INFO_CAP_TYPE,
  VFIO_REGION_INFO_FLAG_CAPS,
  VFIO_REGION_INFO_FLAG_MMAP,
  VFIO_REGION_INFO_FLAG_READ,
  VFIO_REGION_INFO_FLAG_WRITE,
} from '../uapi/vfio.js';

const DEVICE_FLAGS = {
  [VFIO_DEVICE_FLAGS_RESET]: 'reset',
  [VFIO_DEVICE_FLAGS_PCI]: 'pci',
  [VFIO_DEVICE_FLAGS_PLATFORM]: 'platform',
  [VFIO_DEVICE_FLAGS_AMBA]: 'amba',
  [VFIO_DEVICE_FLAGS_CCW]: 'ccw',
  [VFIO_DEVICE_FLAGS_AP]: 'ap',
  [VFIO_DEVICE_FLAGS_FSL_MC]: 'fsl-mc',
  [VFIO_DEVICE_FLAGS_CAPS]: 'caps',
  [VFIO_DEVICE_FLAGS_CDX]: 'cdx',
};
const DEVICE_CAPS: Readonly<Record<number, string>> = {
  [VFIO_DEVICE_INFO_CAP_ZPCI_BASE]: 'zpci-base',
  [VFIO_DEVICE_INFO_CAP_ZPCI_GROUP]: 'zpci-group',
  [VFIO_DEVICE_INFO_CAP_ZPCI_UTIL]: 'zpci-util',
  [VFIO_DEVICE_INFO_CAP_ZPCI_PFIP]: 'zpci-pfip',
  [VFIO_DEVICE_INFO_CAP_PCI_ATOMIC_COMP]: 'pci-atomic-comp',
};
const REGION_FLAGS = {
  [VFIO_REGION_INFO_FLAG_READ]: 'read',
  [VFIO_REGION_INFO_FLAG_WRITE]: 'write',
  [VFIO_REGION_INFO_FLAG_MMAP]: 'mmap',
  [VFIO_REGION_INFO_FLAG_CAPS]: 'caps',
};
const REGION_CAPS: Readonly<Record<number, string>> = {
  [VFIO_REGION_INFO_CAP_SPARSE_MMAP]: 'sparse-mmap',
  [VFIO_REGION_INFO_CAP_TYPE]: 'type',
  [VFIO_REGION_INFO_CAP_MSIX_MAPPABLE]: 'msix-mappable',
  [VFIO_REGION_INFO_CAP_NVLINK2_SSATGT]: 'nvlink2-ssatgt',
  [VFIO_REGION_INFO_CAP_NVLINK2_LNKSPD]: 'nvlink2-lnkspd',
};
const IRQ_FLAGS = {
  [VFIO_IRQ_INFO_EVENTFD]: 'eventfd',
  [VFIO_IRQ_INFO_MASKABLE]: 'maskable',
  [VFIO_IRQ_INFO_AUTOMASKED]: 'automasked',
  [VFIO_IRQ_INFO_NORESIZE]: 'noresize',
};
const IRQ_KINDS: readonly IrqKind[] = ['intx', 'msi', 'msix', 'err', 'req'];

function capName(names: Readonly<Record<number, string>>, id: number): string {
  return names[id] ?? `cap${id}`;
}

/** A capability of a region, with what it says when we know how to read it. */
function regionCaps(r: RegionInfo): string[] {
  return r.capabilities.map((c) => {
    if (c.id === VFIO_REGION_INFO_CAP_SPARSE_MMAP && r.sparseAreas !== null) {
      return `sparse-mmap[${r.sparseAreas.map((a) => `${hex(a.offset)}+${hex(a.size)}`).join(',')}]`;
    }
    if (c.id === VFIO_REGION_INFO_CAP_TYPE && r.type !== null) {
      return `type=${hex(r.type.type)}/${hex(r.type.subtype)}${r.type.vendorId === null ? '' : ` vendor=${hex(r.type.vendorId, 4)}`}`;
    }
    return capName(REGION_CAPS, c.id);
  });
}

interface Details {
  readonly device: DeviceInfo;
  readonly regions: readonly RegionInfo[];
  readonly irqs: readonly IrqInfo[];
  /** null in no-IOMMU mode, where there is no IOMMU to ask. */
  readonly iommu: IommuInfo | null;
}

export const info: Command = {
  name: 'info',
  summary: 'regions, interrupts, mode, IOMMU group and IOVA ranges of a device',
  usage: 'info <address> [--vf-token UUID] [--json]',
  help: `Shows what VFIO says about a device bound to vfio-pci:

  mode          cdev, group or noiommu (VFIO_MODE=... forces one), and the /dev
                nodes it uses
  container     who serves it: iommufd (cdev), or in group mode the legacy
                container (vfio_iommu_type1) or iommufd's compat container
  sr-iov        for a PF: its VFs; for a VF: its PF
  iommu group   its number, whether it is viable, every member with its driver
  device        VFIO device flags and capabilities, region and IRQ counts
  regions       index, name, size, flags (read, write, mmap, caps) and
                capabilities (sparse-mmap areas, type, msix-mappable)
  irqs          each interrupt index with its vector count and flags
  iova ranges   where the IOMMU accepts DMA mappings (not in noiommu mode)

The device is opened to ask, and released before the command exits (vfio-pci
may reset it on open). It fails when the device is not bound to vfio-pci, its
group is not viable, or another process has it open.

Options:
  --vf-token UUID
                the VF token, for a VF whose PF is on vfio-pci (or such a PF
                while its VFs are open): vfio-pci opens it only with it
  --json        one JSON object: the fields of \`vfio ls --json\` plus
                "containerKind",
                "info" ({ flags, flagNames, numRegions, numIrqs, capabilities }),
                "regions", "irqs" and "iova" ({ ranges: [{ start, last }],
                granule, pageSizes } as 0x hex strings, or null)

Example:
  vfio info 0000:00:03.0`,
  options: { json: { type: 'boolean' }, 'vf-token': { type: 'string' } },
  positionals: { min: 1, max: 1, names: '<address>' },
  run(args, env) {
    const address = pciAddress(args.positionals[0] as string);
    const vfToken = stringOption(args, 'vf-token');
    const v = env.vfio();
    const report = inspectDevice(env.roots, v, address);
    if (!report.vfio) {
      const bound = report.driver === null ? 'no driver is bound' : `it is bound to ${report.driver}`;
      throw new CliFailure(`${address} is not managed by VFIO (${bound}): bind it with \`vfio bind ${address}\``);
    }
    const details = ask(v, address, vfToken);
    if (flag(args, 'json')) {
      env.out(
        json({
          ...deviceJson(report),
          mode: details.mode,
          containerKind: details.containerKind,
          info: { ...details.device, flagNames: flagNames(details.device.flags, DEVICE_FLAGS) },
          regions: details.regions.map((r) => ({ ...r, flagNames: flagNames(r.flags, REGION_FLAGS), capabilityNames: regionCaps(r) })),
          irqs: details.irqs.map((i) => ({ ...i, flagNames: flagNames(i.flags, IRQ_FLAGS) })),
          iova: details.iommu,
        }),
      );
      return EXIT.ok;
    }
    const group =
      report.iommuGroup === null
        ? 'none'
        : `${report.noiommu ? 'noiommu-' : ''}${report.iommuGroup} (${report.viable === true ? 'viable' : 'NOT viable'})`;
    // The /dev nodes the mode goes through.
    const nodes = (details.mode === 'cdev' ? [report.cdevNode, iommufdNode(env.roots)] : [report.groupNode]).filter((n) => n !== null);
    const d = details.device;
    const ids = `${hex(report.vendor, 4).slice(2)}:${hex(report.device, 4).slice(2)}`;
    let text = `${address}  ${ids}  ${className(report.class)} (class ${hex(report.class, 6)})\n`;
    text += `  driver       ${report.driver}\n`;
    text += `  mode         ${details.mode} (${nodes.join(', ')})\n`;
    text += `  container    ${CONTAINER_KINDS[details.containerKind]}\n`;
    if (report.sriov !== null) {
      const vfs = report.sriov.vfs.length === 0 ? '' : `: ${report.sriov.vfs.join(', ')}`;
      text += `  sr-iov       PF with ${report.sriov.numVfs} of ${report.sriov.totalVfs} VFs${vfs}\n`;
    }
    if (report.physfn !== null) text += `  sr-iov       VF of ${report.physfn}\n`;
    text += `  iommu group  ${group}\n`;
    for (const m of report.groupMembers)
      text += `    ${m.address}  ${m.driver ?? '(no driver)'}${m.address === address ? '  (this device)' : ''}\n`;
    text += `  device       flags ${hex(d.flags)} [${flagNames(d.flags, DEVICE_FLAGS).join(', ')}], `;
    text += `${d.numRegions} regions, ${d.numIrqs} irq indexes`;
    text += d.capabilities.length === 0 ? '\n' : `, caps: ${d.capabilities.map((c) => capName(DEVICE_CAPS, c.id)).join(', ')}\n`;
    text += '\nregions:\n';
    text += indent(
      table(
        ['INDEX', 'NAME', 'SIZE', 'OFFSET', 'FLAGS', 'CAPS'],
        details.regions.map((r) => [
          String(r.index),
          r.name,
          bytes(r.size),
          r.size === 0 ? '-' : hex(r.fdOffset),
          r.size === 0 ? '-' : flagNames(r.flags, REGION_FLAGS).join(','),
          regionCaps(r).join(' ') || '-',
        ]),
      ),
    );
    text += '\nirqs:\n';
    text += indent(
      table(
        ['INDEX', 'KIND', 'COUNT', 'FLAGS'],
        details.irqs.map((i) => [String(i.index), i.kind, String(i.count), flagNames(i.flags, IRQ_FLAGS).join(',') || '-']),
      ),
    );
    text += '\niova ranges:\n';
    if (details.iommu === null) {
      text += '  none: no-IOMMU mode, the device sees physical addresses\n';
    } else {
      for (const r of details.iommu.ranges) text += `  ${hex(r.start, 16)} - ${hex(r.last, 16)}\n`;
      text += `  granule ${bytes(Number(details.iommu.granule))}`;
      text += details.iommu.pageSizes === null ? '\n' : `, page sizes ${hex(details.iommu.pageSizes)}\n`;
    }
    env.out(text);
    return EXIT.ok;
  },
};

type ContainerKind = Vfio['defaultContainer']['containerKind'];

const CONTAINER_KINDS: Readonly<Record<ContainerKind, string>> = {
  iommufd: 'iommufd (/dev/iommu)',
  legacy: 'the legacy VFIO container (vfio)',
  'iommufd-compat': "iommufd's VFIO compat container (CONFIG_IOMMUFD_VFIO_CONTAINER)",
};

function indent(text: string): string {
  return text.replace(/^(?=.)/gm, '  ');
}

/** Opens the device, asks everything, releases it. */
function ask(v: Vfio, address: string, vfToken: string | undefined): Details & { mode: string; containerKind: ContainerKind } {
  using dev = v.openDevice(address, vfToken === undefined ? {} : { vfToken });
  const irqs: IrqInfo[] = [];
  for (const kind of IRQ_KINDS) {
    try {
      irqs.push(dev.irqs.info(kind));
    } catch (err) {
      // An index the device lacks (ERR on conventional PCI) is left out.
      if (err instanceof VfioError && err.code === 'ENOTSUP') continue;
      throw err;
    }
  }
  return {
    mode: dev.mode,
    containerKind: dev.container.containerKind,
    device: dev.info(),
    regions: dev.regions(),
    irqs,
    iommu: dev.container.dmaMode === 'identity' ? null : dev.container.iommuInfo(),
  };
}
