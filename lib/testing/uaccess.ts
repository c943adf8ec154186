// copy_from_user / copy_to_user for the fake kernel. An ioctl's argument is
// user memory: either the Uint8Array the caller passed (exactly its bytes are
// accessible) or, for pointers inside a struct, fake process memory named by
// address. Touching a byte outside either is EFAULT, as in the kernel.
//
// Every struct is decoded and encoded through the generated layouts and the
// codec (lib/uapi): the fake never hand-types an offset.
import { get, read, type StructLayout } from '../uapi/codec.js';
import { fail } from './errors.js';

/** User memory as the kernel reaches it: byte copies that fault with EFAULT. */
export interface UserMemory {
  /** copy_from_user: `len` bytes at `off`. */
  copyIn(off: number, len: number): Uint8Array;
  /** copy_to_user: `bytes` at `off`. */
  copyOut(off: number, bytes: Uint8Array): void;
}

/** The ioctl argument buffer: offsets are from its start. */
export class ArgMemory implements UserMemory {
  constructor(private readonly buf: Uint8Array) {}

  get length(): number {
    return this.buf.byteLength;
  }

  copyIn(off: number, len: number): Uint8Array {
    if (off < 0 || len < 0 || off + len > this.buf.byteLength) {
      fail('EFAULT', `copy_from_user of [${off}, ${off + len}) past the ${this.buf.byteLength}-byte argument`);
    }
    // A copy, never a view: the kernel works on its own copy (and Buffer#slice would share memory).
    return new Uint8Array(this.buf.subarray(off, off + len));
  }

  copyOut(off: number, bytes: Uint8Array): void {
    if (off < 0 || off + bytes.byteLength > this.buf.byteLength) {
      fail('EFAULT', `copy_to_user of [${off}, ${off + bytes.byteLength}) past the ${this.buf.byteLength}-byte argument`);
    }
    this.buf.set(bytes, off);
  }
}

/** What a kernel needs from process memory to follow a user pointer. */
export interface AddressAccess {
  readUser(addr: bigint, len: number): Uint8Array;
  writeUser(addr: bigint, bytes: Uint8Array): void;
}

/** User memory at a user pointer: offsets are from `base`. */
export class PointerMemory implements UserMemory {
  constructor(
    private readonly space: AddressAccess,
    private readonly base: bigint,
  ) {}

  copyIn(off: number, len: number): Uint8Array {
    return this.space.readUser(this.base + BigInt(off), len);
  }

  copyOut(off: number, bytes: Uint8Array): void {
    this.space.writeUser(this.base + BigInt(off), bytes);
  }
}

/** offsetofend(struct, field) from a generated layout. */
export function offsetofend(layout: StructLayout, field: string): number {
  const f = layout.fields[field];
  if (f === undefined) throw new TypeError(`${layout.name} has no field ${field}`);
  const width = typeof f.type === 'string' ? { u8: 1, s8: 1, u16: 2, s16: 2, u32: 4, s32: 4, u64: 8, s64: 8 }[f.type] : f.type.size;
  return f.offset + width * (f.count ?? 1);
}

/**
 * The kernel's local copy of a struct: `layout.size` bytes, the first `minsz`
 * copied from user memory at `off` (EFAULT if they are not all there), the
 * rest zero, as `struct x info = {}` followed by copy_from_user(minsz).
 */
export function copyStructIn(mem: UserMemory, layout: StructLayout, minsz: number, off = 0): Uint8Array {
  const k = new Uint8Array(layout.size);
  k.set(mem.copyIn(off, minsz), 0);
  return k;
}

/** copy_to_user of the first `n` bytes of a kernel-side struct. */
export function copyStructOut(mem: UserMemory, kbuf: Uint8Array, n: number, off = 0): void {
  mem.copyOut(off, kbuf.subarray(0, n));
}

/**
 * copy_struct_from_user(): the kernel knows `ksize` bytes of the struct, the
 * user says `usize`. A shorter user struct is zero-extended; a longer one is
 * accepted only if every byte past `ksize` is zero (else E2BIG).
 */
export function copyStructFromUser(mem: UserMemory, layout: StructLayout, usize: number): Uint8Array {
  const k = new Uint8Array(layout.size);
  if (usize <= layout.size) {
    k.set(mem.copyIn(0, usize), 0);
    return k;
  }
  const all = mem.copyIn(0, usize);
  for (let i = layout.size; i < usize; i++) {
    if (all[i] !== 0) fail('E2BIG', `${layout.name}: byte ${i} past the kernel's ${layout.size}-byte struct is not zero`);
  }
  k.set(all.subarray(0, layout.size), 0);
  return k;
}

export { get, read };
