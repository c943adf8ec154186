// Pages pinned for DMA: what vfio_pin_pages_remote() (type1) and
// iopt_area_fill_domain() (iommufd) hold while a mapping exists. A pin keeps
// the memory itself alive, not the process mapping: munmap of pinned memory
// leaves the pages (and the device's view of them) in place until the DMA
// mapping goes, exactly as the kernel does.
import type { KernelCore } from './core.js';
import { fail } from './errors.js';
import { PAGE_SIZE, type Backing, type Segment } from './memory.js';

function pagesSpanned(offset: number, length: number): number {
  if (length === 0) return 0;
  return Math.floor((offset + length - 1) / PAGE_SIZE) - Math.floor(offset / PAGE_SIZE) + 1;
}

export class Pin {
  readonly pages: number;
  private live = true;

  /** Pins the user range [addr, addr+length). EFAULT on a hole; ENOMEM over RLIMIT_MEMLOCK. */
  static user(k: KernelCore, addr: bigint, length: number, write: boolean, allowPfnmap: boolean): Pin {
    const segs = k.space.segments(addr, length, { read: true, write, pfnmap: allowPfnmap });
    const pin = new Pin(k, segs);
    k.space.touch(addr, length);
    return pin;
  }

  /**
   * Pins [offset, offset + length) of a file's pages (IOMMU_IOAS_MAP_FILE,
   * memfd_pin_folios): the pages of the file, whoever maps them. EINVAL past
   * the file's end.
   */
  static file(k: KernelCore, backing: Backing, offset: number, length: number): Pin {
    if (offset + length > backing.byteLength) fail('EINVAL', `[${offset}, +${length}) is past the end of the file`);
    return new Pin(k, [{ backing, offset, length, pfnmap: false }]);
  }

  private constructor(
    private readonly k: KernelCore,
    readonly segments: readonly Segment[],
  ) {
    this.pages = segments.reduce((n, s) => n + (s.pfnmap ? 0 : pagesSpanned(s.offset, s.length)), 0);
    k.chargeLocked(this.pages);
    for (const s of segments) s.backing.hold();
    k.pinnedPages += this.pages;
  }

  get length(): number {
    return this.segments.reduce((n, s) => n + s.length, 0);
  }

  release(): void {
    if (!this.live) return;
    this.live = false;
    this.k.pinnedPages -= this.pages;
    this.k.unchargeLocked(this.pages);
    for (const s of this.segments) s.backing.drop();
  }

  /** The piece of pinned memory at byte `off` of the pinned range, up to `len` bytes. */
  private locate(off: number, len: number): { bytes: Uint8Array; take: number } {
    let at = off;
    for (const s of this.segments) {
      if (at < s.length) {
        const take = Math.min(len, s.length - at);
        if (!s.backing.alive) fail('EFAULT', 'pinned memory is gone (fake kernel bug)');
        return { bytes: new Uint8Array(s.backing.buffer, s.offset + at, take), take };
      }
      at -= s.length;
    }
    fail('EFAULT', `offset ${off} is past the pinned range`);
  }

  read(off: number, len: number): Uint8Array {
    const out = new Uint8Array(len);
    let done = 0;
    while (done < len) {
      const { bytes, take } = this.locate(off + done, len - done);
      out.set(bytes, done);
      done += take;
    }
    return out;
  }

  write(off: number, data: Uint8Array): void {
    let done = 0;
    while (done < data.byteLength) {
      const { bytes, take } = this.locate(off + done, data.byteLength - done);
      bytes.set(data.subarray(done, done + take));
      done += take;
    }
  }

  /** The physical address of byte `off` (what the IOMMU translates an IOVA to). */
  physAt(off: number): bigint {
    let at = off;
    for (const s of this.segments) {
      if (at < s.length) {
        const byte = s.offset + at;
        return (s.backing.pfn(Math.floor(byte / PAGE_SIZE)) << 12n) + BigInt(byte % PAGE_SIZE);
      }
      at -= s.length;
    }
    fail('EFAULT', `offset ${off} is past the pinned range`);
  }
}
