// The running kernel's release, for the features that only a version tells
// apart without trying them: the VF token in the cdev bind
// (VFIO_DEVICE_BIND_FLAG_TOKEN, Linux 6.17) is one, because a kernel
// without it answers the flag with the same EINVAL it gives for other
// reasons.
import { readFileSync } from 'node:fs';
import { osReleaseFile, type Roots } from './paths.js';

export interface KernelRelease {
  /** As the kernel says it (`6.12.43+deb13-amd64`). */
  readonly text: string;
  readonly major: number;
  readonly minor: number;
}

/** The running kernel's release from /proc/sys/kernel/osrelease, or null when it cannot be read or parsed. */
export function kernelRelease(roots: Roots): KernelRelease | null {
  let text: string;
  try {
    text = readFileSync(osReleaseFile(roots), 'utf8').trim();
  } catch {
    return null;
  }
  const m = /^(\d+)\.(\d+)/.exec(text);
  return m === null ? null : { text, major: Number(m[1]), minor: Number(m[2]) };
}

/** Whether `release` is at least major.minor. */
export function releaseAtLeast(release: KernelRelease, major: number, minor: number): boolean {
  return release.major > major || (release.major === major && release.minor >= minor);
}
