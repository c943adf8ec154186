// Lists every PCI device with its IOMMU group, driver, the VFIO mode it would
// be driven in, and whether its group is viable (usable by VFIO: no device of
// the group is on a host driver that does DMA). Reads sysfs only.
//
//   npm run examples:list-devices            (any user)
//   npm run examples:list-devices -- --json
//
// In your own project, import from 'vfio' instead of '../lib/index.js'.
import { readdirSync, readlinkSync } from 'node:fs';
import { basename, join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import { vfio, VfioError, type PciDeviceDescription, type Vfio } from '../lib/index.js';

interface Row {
  readonly address: string;
  readonly id: string;
  readonly driver: string | null;
  readonly iommuGroup: number | null;
  /** 'cdev' | 'group' | 'noiommu' for a device bound to vfio-pci; why not otherwise. */
  readonly mode: string;
  readonly viable: boolean | null;
}

/** The driver bound to a device, from its sysfs `driver` link. */
function driverOf(sysfs: string, address: string): string | null {
  try {
    return basename(readlinkSync(join(sysfs, 'bus', 'pci', 'devices', address, 'driver')));
  } catch {
    return null;
  }
}

/**
 * A group is viable when each of its devices is unbound, on a VFIO driver, or
 * on a driver that never does DMA for the kernel (pci-stub; pcieport on bridges).
 */
function groupViable(sysfs: string, desc: PciDeviceDescription): boolean | null {
  if (desc.iommuGroup === null) return null;
  const members = readdirSync(join(sysfs, 'kernel', 'iommu_groups', String(desc.iommuGroup), 'devices'));
  return members.every((m) => {
    const driver = driverOf(sysfs, m);
    return driver === null || /vfio/.test(driver) || driver === 'pci-stub' || driver === 'pcieport';
  });
}

function describe(ctx: Vfio, sysfs: string, address: string): Row {
  const desc = ctx.describeDevice(address);
  let mode: string;
  if (desc.driver === null || !/vfio/.test(desc.driver)) {
    mode = '-';
  } else {
    try {
      mode = ctx.getMode(address);
    } catch (err) {
      // ENXIO: bound to vfio-pci, but no VFIO interface can reach it here.
      if (!(err instanceof VfioError)) throw err;
      mode = `(${err.code})`;
    }
  }
  const hex4 = (n: number): string => n.toString(16).padStart(4, '0');
  return {
    address: desc.address,
    id: `${hex4(desc.vendor)}:${hex4(desc.device)}`,
    driver: desc.driver,
    iommuGroup: desc.iommuGroup,
    mode,
    viable: groupViable(sysfs, desc),
  };
}

/** Runs the example; returns the exit code. `ctx` and `sysfs` are the real machine's unless a test gives others. */
export function main(argv: readonly string[], ctx: Vfio = vfio, sysfs = '/sys', log: (line: string) => void = console.log): number {
  let json: boolean;
  try {
    const { values } = parseArgs({ args: [...argv], options: { json: { type: 'boolean' } } });
    json = values.json === true;
  } catch (err) {
    console.error(`list-devices: ${(err as Error).message}\nusage: list-devices [--json]`);
    return 2;
  }
  const rows = readdirSync(join(sysfs, 'bus', 'pci', 'devices'))
    .sort()
    .map((address) => describe(ctx, sysfs, address));
  if (json) {
    log(JSON.stringify(rows, null, 2));
    return 0;
  }
  const cells = rows.map((r) => [
    r.address,
    r.id,
    r.driver ?? '-',
    r.iommuGroup === null ? '-' : String(r.iommuGroup),
    r.mode,
    r.viable === null ? '-' : r.viable ? 'yes' : 'no',
  ]);
  const header = ['ADDRESS', 'ID', 'DRIVER', 'IOMMU GROUP', 'VFIO MODE', 'GROUP VIABLE'];
  const widths = header.map((h, i) => Math.max(h.length, ...cells.map((c) => (c[i] as string).length)));
  for (const line of [header, ...cells])
    log(
      line
        .map((c, i) => c.padEnd(widths[i] as number))
        .join('  ')
        .trimEnd(),
    );
  return 0;
}

// Run when executed directly (node dist/examples/list-devices.js), not when imported.
if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  process.exitCode = main(process.argv.slice(2));
}
