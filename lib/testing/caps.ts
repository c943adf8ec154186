// VFIO capability chains (vfio_info_cap_add / vfio_info_cap_shift): each
// capability starts with a vfio_info_cap_header, is padded to 8 bytes, and
// `next` holds the offset (from the start of the user's info struct) of the
// following one, 0 for the last.
import { write, type StructLayout, type PartialValues } from '../uapi/codec.js';
import { vfio_info_cap_header } from '../uapi/vfio.js';

export class CapChain {
  private readonly parts: Uint8Array[] = [];

  /** Adds a capability: `layout` starts with a `header`; `extra` bytes follow it (flexible arrays). */
  add<L extends StructLayout>(layout: L, id: number, version: number, values: PartialValues<L>, extra = 0): Uint8Array {
    const size = (layout.size + extra + 7) & ~7;
    const bytes = new Uint8Array(size);
    write(layout, bytes, values);
    write(vfio_info_cap_header, bytes, { id, version, next: 0 });
    this.parts.push(bytes);
    return bytes;
  }

  get size(): number {
    return this.parts.reduce((n, p) => n + p.byteLength, 0);
  }

  /** The chain placed at byte `base` of the user's struct, `next` offsets shifted accordingly. */
  encode(base: number): Uint8Array {
    const out = new Uint8Array(this.size);
    let at = 0;
    this.parts.forEach((p, i) => {
      out.set(p, at);
      const next = i + 1 < this.parts.length ? base + at + p.byteLength : 0;
      write(vfio_info_cap_header, out, { next }, at);
      at += p.byteLength;
    });
    return out;
  }
}
