// The kernel features of issue 13 that `vfio doctor` reports one by one:
// which container serves /dev/vfio/vfio, SR-IOV (PFs and vfio-pci's
// enable_sriov), the VF token in the cdev bind (Linux 6.17) and
// IOMMU_IOAS_MAP_FILE (Linux 6.13). From the filesystem and the kernel
// release only: nothing is opened. The library itself tries MAP_FILE and
// remembers the answer; the release is what tells the VF-token flag apart
// (an older kernel answers it with a plain EINVAL).
import { existsSync, readFileSync, readlinkSync } from 'node:fs';
import { basename, join } from 'node:path';
import { pciAddresses } from './devices.js';
import type { CliEnv } from './env.js';
import { kernelRelease, releaseAtLeast, type KernelRelease } from '../host/kernel.js';
import { groupContainerKind } from '../host/mode.js';
import { iommufdNode, pciDeviceDir } from '../host/paths.js';
import { sriovOf } from '../host/sriov.js';

export interface FeatureCheck {
  readonly name: string;
  readonly status: 'ok' | 'info';
  readonly message: string;
  readonly fix?: string;
}

function driverOf(env: CliEnv, address: string): string | null {
  try {
    return basename(readlinkSync(join(pciDeviceDir(env.roots, address), 'driver')));
  } catch {
    return null;
  }
}

function containerCheck(env: CliEnv): FeatureCheck {
  const kind = groupContainerKind(env.roots);
  if (kind === null) return { name: 'container-kind', status: 'info', message: 'no /dev/vfio/vfio: group mode has no container' };
  if (kind === 'legacy') {
    return { name: 'container-kind', status: 'ok', message: '/dev/vfio/vfio is the legacy VFIO container (vfio_iommu_type1)' };
  }
  return {
    name: 'container-kind',
    status: 'ok',
    message:
      "/dev/vfio/vfio is iommufd's compat container (CONFIG_IOMMUFD_VFIO_CONTAINER): group mode runs on its Type1v2 emulation, " +
      'which lacks VFIO_UPDATE_VADDR, dirty tracking and P2P mappings of device BARs (this library uses none of them)',
  };
}

function sriovCheck(env: CliEnv): FeatureCheck {
  const pfs = pciAddresses(env.roots).flatMap((a) => {
    const s = sriovOf(env.roots, a);
    return s === null ? [] : [{ address: a, s }];
  });
  let param: string | null;
  try {
    param = readFileSync(join(env.roots.sysfs, 'module', 'vfio_pci', 'parameters', 'enable_sriov'), 'utf8').trim();
  } catch {
    param = null;
  }
  const enable = `vfio-pci enable_sriov=${param ?? 'absent'}`;
  if (pfs.length === 0) return { name: 'sriov', status: 'info', message: `no SR-IOV physical function on this machine (${enable})` };
  const list = pfs.map((p) => `${p.address} (${p.s.numVfs}/${p.s.totalVfs} VFs)`).join(', ');
  const onVfio = pfs.some((p) => /vfio/.test(driverOf(env, p.address) ?? ''));
  if (onVfio && param !== 'Y') {
    return {
      name: 'sriov',
      status: 'info',
      message: `SR-IOV PFs: ${list}; ${enable}: a PF on vfio-pci cannot create VFs`,
      fix: 'echo 1 | sudo tee /sys/module/vfio_pci/parameters/enable_sriov (or boot with vfio_pci.enable_sriov=1)',
    };
  }
  return { name: 'sriov', status: 'ok', message: `SR-IOV PFs: ${list}; ${enable} (\`vfio sriov <pf>\` lists and creates VFs)` };
}

function releaseText(r: KernelRelease | null): string {
  return r === null ? 'a kernel of unknown release' : `Linux ${r.text}`;
}

function vfTokenCheck(release: KernelRelease | null): FeatureCheck {
  if (release !== null && releaseAtLeast(release, 6, 17)) {
    return {
      name: 'vf-token-cdev',
      status: 'ok',
      message: `VF tokens in the cdev bind (VFIO_DEVICE_BIND_FLAG_TOKEN): ${releaseText(release)}`,
    };
  }
  return {
    name: 'vf-token-cdev',
    status: 'info',
    message: `no VF token in the cdev bind on ${releaseText(release)} (needs 6.17+): open VFs with a token in group mode`,
  };
}

function mapFileCheck(env: CliEnv, release: KernelRelease | null): FeatureCheck {
  if (!existsSync(iommufdNode(env.roots))) {
    return { name: 'map-file', status: 'info', message: 'no iommufd: IOMMU_IOAS_MAP_FILE (cdev mode, 6.13+) does not apply' };
  }
  if (release !== null && releaseAtLeast(release, 6, 13)) {
    return {
      name: 'map-file',
      status: 'ok',
      message: `IOMMU_IOAS_MAP_FILE: ${releaseText(release)} maps shareable DMA buffers by memfd and offset in cdev mode`,
    };
  }
  return {
    name: 'map-file',
    status: 'info',
    message: `no IOMMU_IOAS_MAP_FILE on ${releaseText(release)} (needs 6.13+): cdev mode maps DMA buffers by address`,
  };
}

/** One check per feature, in a fixed order. */
export function featureChecks(env: CliEnv): FeatureCheck[] {
  const release = kernelRelease(env.roots);
  return [containerCheck(env), sriovCheck(env), vfTokenCheck(release), mapFileCheck(env, release)];
}
