// /proc/self/pagemap: one 64-bit entry per virtual page. Bit 63 says the page
// is present, bits 0-54 hold its page frame number, and since Linux 4.2 the
// PFN reads as 0 unless the reader has CAP_SYS_ADMIN (the fake: uid 0).
// Bit 61 marks file or shared-anonymous pages.
import { O_RDONLY } from '../libc/sys.js';
import type { KernelCore } from './core.js';
import { fail } from './errors.js';
import { FakeFile } from './files.js';
import { PAGE_SHIFT, PAGE_SIZE, USER_END } from './memory.js';

const PM_PRESENT = 1n << 63n;
const PM_FILE = 1n << 61n;
const PM_PFN_MASK = (1n << 55n) - 1n;

export class PagemapFile extends FakeFile {
  readonly kind = 'pagemap';
  override readonly positional = true;
  private pos = 0n;

  constructor(
    private readonly k: KernelCore,
    path: string,
  ) {
    super(path, O_RDONLY);
  }

  /** The entry for virtual page number `vpn`. */
  private entry(vpn: bigint): bigint {
    const addr = vpn << PAGE_SHIFT;
    const v = this.k.space.find(addr);
    if (v === undefined || !this.k.space.present.has(vpn)) return 0n;
    const byte = v.offset + Number(addr - v.start);
    const pfn = this.k.uid() === 0 ? v.backing.pfn(Math.floor(byte / PAGE_SIZE)) & PM_PFN_MASK : 0n;
    return PM_PRESENT | (v.shared || v.pfnmap ? PM_FILE : 0n) | pfn;
  }

  private fill(buf: Uint8Array, offset: bigint): number {
    // pagemap_read(): the position and the count must be multiples of 8.
    if (offset % 8n !== 0n || buf.byteLength % 8 !== 0) fail('EINVAL', 'pagemap is read in 8-byte entries');
    const dv = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
    let n = 0;
    for (let i = 0; i < buf.byteLength / 8; i++) {
      const vpn = offset / 8n + BigInt(i);
      if (vpn << PAGE_SHIFT >= USER_END) break;
      dv.setBigUint64(i * 8, this.entry(vpn), true);
      n += 8;
    }
    return n;
  }

  override read(buf: Uint8Array): number {
    const n = this.fill(buf, this.pos);
    this.pos += BigInt(n);
    return n;
  }

  override pread(buf: Uint8Array, offset: bigint): number {
    return this.fill(buf, offset);
  }
}
