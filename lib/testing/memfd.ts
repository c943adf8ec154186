// memfd_create(2): an anonymous file whose pages mmap shares. Sized with
// ftruncate; MFD_HUGETLB files are sized and mapped in 2 MiB huge pages.
//
// Seals (mm/memfd.c): a memfd made without MFD_ALLOW_SEALING starts with
// F_SEAL_SEAL (nothing can be added); F_ADD_SEALS is EPERM once F_SEAL_SEAL
// is set; F_SEAL_SHRINK / F_SEAL_GROW make ftruncate, and writes past the
// end, EPERM for every fd of the file. A mapping past the end of a file that
// shrank faults (SIGBUS on the real kernel; the fake's view() says so with
// EFAULT). Not modelled: F_SEAL_WRITE / F_SEAL_FUTURE_WRITE (EINVAL here).
import { fail } from './errors.js';
import { FakeFile, type MmapRequest, type MmapTarget } from './files.js';
import type { KernelCore } from './core.js';
import { Backing, PAGE_SIZE } from './memory.js';
import { F_SEAL_GROW, F_SEAL_SEAL, F_SEAL_SHRINK, O_RDWR } from '../libc/sys.js';

/** The seals the fake models. */
const MODELLED_SEALS = F_SEAL_SEAL | F_SEAL_SHRINK | F_SEAL_GROW;

/** How large a memfd may grow in the fake (its ArrayBuffer reserves this much address space). */
export const MEMFD_MAX_BYTES = 1 << 30;

export class MemfdFile extends FakeFile {
  readonly kind = 'memfd';
  override readonly positional = true;
  readonly backing: Backing;
  private pos = 0;
  /** F_SEAL_* in force. */
  private sealBits: number;

  constructor(
    private readonly k: KernelCore,
    readonly name: string,
    readonly hugeSize: number,
    allowSealing = false,
  ) {
    super(null, O_RDWR);
    this.sealBits = allowSealing ? 0 : F_SEAL_SEAL;
    this.backing = new Backing('memfd', 0, k.phys, hugeSize, null, MEMFD_MAX_BYTES);
    this.backing.hold();
  }

  protected override release(): void {
    this.backing.drop();
  }

  get size(): number {
    return this.backing.byteLength;
  }

  get seals(): number {
    return this.sealBits;
  }

  addSeals(seals: number): void {
    if (!this.writable) fail('EPERM', 'F_ADD_SEALS needs a writable fd');
    if ((seals & ~MODELLED_SEALS) !== 0) fail('EINVAL', `seals 0x${seals.toString(16)}: the fake models SEAL, SHRINK and GROW only`);
    if ((this.sealBits & F_SEAL_SEAL) !== 0) fail('EPERM', 'the memfd is sealed against new seals (F_SEAL_SEAL)');
    this.sealBits |= seals;
  }

  override ftruncate(length: bigint): void {
    if (!this.writable) fail('EINVAL', 'ftruncate of a file not open for writing');
    if (length < 0n) fail('EINVAL', 'negative length');
    const size = BigInt(this.size);
    if (length < size && (this.sealBits & F_SEAL_SHRINK) !== 0) fail('EPERM', 'the memfd is sealed against shrinking');
    if (length > size && (this.sealBits & F_SEAL_GROW) !== 0) fail('EPERM', 'the memfd is sealed against growing');
    if (this.hugeSize > 0 && length % BigInt(this.hugeSize) !== 0n) {
      fail('EINVAL', `hugetlbfs files are sized in ${this.hugeSize}-byte pages`);
    }
    if (length > BigInt(MEMFD_MAX_BYTES)) fail('EFBIG', `the fake's memfds hold at most ${MEMFD_MAX_BYTES} bytes`);
    this.backing.resize(Number(length));
  }

  private io(buf: Uint8Array, at: number, write: boolean): number {
    if (this.hugeSize > 0 && write) fail('EINVAL', 'hugetlbfs files cannot be written with write(2)');
    if (write) {
      // Growing by a write is ftruncate's rule too (F_SEAL_GROW: EPERM).
      if (at + buf.byteLength > this.size) this.ftruncate(BigInt(at + buf.byteLength));
      new Uint8Array(this.backing.buffer, at, buf.byteLength).set(buf);
      return buf.byteLength;
    }
    const n = Math.max(0, Math.min(buf.byteLength, this.size - at));
    buf.set(new Uint8Array(this.backing.buffer, at, n));
    return n;
  }

  override read(buf: Uint8Array): number {
    const n = this.io(buf, this.pos, false);
    this.pos += n;
    return n;
  }

  override write(buf: Uint8Array): number {
    const n = this.io(buf, this.pos, true);
    this.pos += n;
    return n;
  }

  override pread(buf: Uint8Array, offset: bigint): number {
    if (offset < 0n) fail('EINVAL', 'negative offset');
    return this.io(buf, Number(offset), false);
  }

  override pwrite(buf: Uint8Array, offset: bigint): number {
    if (offset < 0n) fail('EINVAL', 'negative offset');
    return this.io(buf, Number(offset), true);
  }

  override mmap(req: MmapRequest): MmapTarget {
    if (this.hugeSize > 0) {
      if (req.offset % BigInt(this.hugeSize) !== 0n) fail('EINVAL', 'hugetlb mmap offset is not huge-page aligned');
      this.reserveHugePages(Number(req.offset) + req.length);
    }
    return { backing: this.backing, offset: Number(req.offset), pfnmap: false, hugeSize: this.hugeSize };
  }

  private hugeCharged = 0;

  /** hugetlb_reserve_pages(): the file's pages come out of the free pool at mmap. */
  private reserveHugePages(bytes: number): void {
    const need = Math.ceil(bytes / this.hugeSize);
    const more = need - this.hugeCharged;
    if (more <= 0) return;
    if (this.k.hugepagesFree < more) fail('ENOMEM', `${more} huge pages needed, ${this.k.hugepagesFree} free`);
    this.k.hugepagesFree -= more;
    this.hugeCharged = need;
    this.backing.onFree = () => {
      this.k.hugepagesFree += this.hugeCharged;
    };
  }
}

export { PAGE_SIZE };
