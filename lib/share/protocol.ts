// The vfio-share wire protocol, version 1: what a primary (lib/share/server.ts)
// and a secondary (lib/share/secondary.ts) say to each other over an AF_UNIX
// SOCK_SEQPACKET socket, and the ticket a thread hands another
// (lib/share/thread.ts).
//
// One message is one sendmsg: UTF-8 JSON (at most MAX_MESSAGE_BYTES), with
// the fds it grants as SCM_RIGHTS. Every message carries
// `{ protocol: 'vfio-share', version: 1 }`. An fd field in the JSON is an
// index into the message's fd array ("slot"), never an fd number (numbers
// mean nothing in another process). BigInts (IOVAs, sizes) travel as decimal
// strings. Mode-specific kernel state travels as explicit typed fields, one
// shape per mode (WireContainer), and is validated field by field on
// arrival: nothing is reinterpreted from shared storage.
//
// Requests (secondary -> primary) have an `id`; the reply echoes it:
//   hello            { pid }                       -> { pid, containers, buffers }
//   attach-container { container }                 -> { container: WireContainer }
//   open-device      { address }                   -> { container: index, grant: WireContainer | null, device: WireDevice }
//   reserve-iova     { container, size, dmaLimit?, align? } -> { window: WireWindow }
//   import-buffer    { name }                      -> { container: index, buffer: WireBuffer }
// Notifications (no `id`, no reply):
//   release-device   { address }
// Replies: { id, ok: true, result } or { id, ok: false, error: { code, detail } }.
//
// Versioning: `hello` is the first message, and its shape never changes. A
// primary that does not speak the secondary's version answers EPROTONOSUPPORT
// (in its own version) and hangs up; a secondary that gets a reply of another
// version fails with EPROTONOSUPPORT too. A new version may change anything
// after `hello`.
import { usageError, VfioError } from '../base/errors.js';
import type { Fd } from '../libc/sys.js';

export const PROTOCOL = 'vfio-share';
/** The protocol version this library speaks. */
export const PROTOCOL_VERSION = 1;
/** Largest message (JSON bytes). */
export const MAX_MESSAGE_BYTES = 65536;
/** Most fds one message carries (each grant needs a few; well under SCM_MAX_FD). */
export const MAX_MESSAGE_FDS = 64;

/** A container as granted: the kernel state of its mode, fds as slots. */
export type WireContainer =
  | { readonly mode: 'cdev'; readonly iommufd: number; readonly ioasId: number }
  | {
      readonly mode: 'group' | 'noiommu';
      readonly containerFd: number;
      /** VFIO_TYPE1v2_IOMMU or VFIO_NOIOMMU_IOMMU: already set by the primary. */
      readonly iommuType: number;
      /** The groups in the container, each with its fd. */
      readonly groups: readonly { readonly group: number; readonly fd: number }[];
    };

/** A lent device. */
export interface WireDevice {
  readonly address: string;
  readonly fd: number;
  readonly group: number;
  /** cdev mode: the device id in the iommufd; null in group modes. */
  readonly devId: number | null;
  /** Group modes: the group's fd when the container grant did not carry it yet; else null. */
  readonly groupFd: number | null;
  /** The node the primary opened it through (for messages). */
  readonly path: string;
}

/** A shareable DMA buffer: its memfd, size, the IOVA it is mapped at, and whether its pages are 2 MiB huge pages. */
export interface WireBuffer {
  readonly name: string;
  readonly memfd: number;
  readonly size: number;
  readonly iova: string;
  /** The memfd is hugetlbfs (MFD_HUGETLB, 2 MiB): the size is a whole number of huge pages. */
  readonly hugepages: boolean;
}

/** An IOVA block reserved for the secondary, and the IOMMU granule to keep to. */
export interface WireWindow {
  readonly start: string;
  /** Inclusive. */
  readonly last: string;
  readonly granule: string;
}

/** The protocol's error for a message that does not follow it. */
export function protocolError(detail: string): VfioError {
  return usageError('EPROTO', `vfio-share: ${detail}`);
}

// --- reading untrusted JSON --------------------------------------------------

export type Json = Record<string, unknown>;

export function isObject(v: unknown): v is Json {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

export function obj(v: unknown, what: string): Json {
  if (!isObject(v)) throw protocolError(`${what} is not an object`);
  return v;
}

export function str(o: Json, key: string, what: string): string {
  const v = o[key];
  if (typeof v !== 'string') throw protocolError(`${what}.${key} is not a string`);
  return v;
}

/** A non-negative safe integer field. */
export function int(o: Json, key: string, what: string): number {
  const v = o[key];
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0) throw protocolError(`${what}.${key} is not a non-negative integer`);
  return v;
}

export function intOrNull(o: Json, key: string, what: string): number | null {
  return o[key] === null ? null : int(o, key, what);
}

/** A u64 sent as a decimal string. */
export function big(o: Json, key: string, what: string): bigint {
  const v = o[key];
  if (typeof v !== 'string' || !/^(0|[1-9][0-9]{0,19})$/.test(v) || BigInt(v) >= 1n << 64n) {
    throw protocolError(`${what}.${key} is not a decimal u64 string`);
  }
  return BigInt(v);
}

export function bigOrUndefined(o: Json, key: string, what: string): bigint | undefined {
  return o[key] === undefined ? undefined : big(o, key, what);
}

export function bool(o: Json, key: string, what: string): boolean {
  const v = o[key];
  if (typeof v !== 'boolean') throw protocolError(`${what}.${key} is not a boolean`);
  return v;
}

export function arr(o: Json, key: string, what: string): unknown[] {
  const v = o[key];
  if (!Array.isArray(v)) throw protocolError(`${what}.${key} is not an array`);
  return v;
}

// --- fd slots ------------------------------------------------------------------

/**
 * The fds that arrived with one message (or ticket), owned here until each
 * is adopted. Whatever was not adopted when the message is done with is
 * closed by `closeRest`, so a bad or half-used message leaks nothing.
 */
export class FdSlots {
  private readonly adopted = new Set<number>();
  /** Slots a grant named: a second grant naming one would make two owners of one fd. */
  private readonly named = new Set<number>();

  constructor(
    private readonly fds: readonly Fd[],
    private readonly close: (fd: Fd) => void,
  ) {}

  /** The fd in slot `index` (still owned here); each slot may be named once. */
  fd(index: number, what: string): Fd {
    const fd = this.fds[index];
    if (!Number.isSafeInteger(index) || fd === undefined)
      throw protocolError(`${what} names fd slot ${index}, the message carries ${this.fds.length}`);
    if (this.adopted.has(index) || this.named.has(index)) throw protocolError(`${what} names fd slot ${index}, which another grant names`);
    this.named.add(index);
    return fd;
  }

  /** Slot `index`'s fd now belongs to whoever took it. */
  adopt(index: number): void {
    this.adopted.add(index);
  }

  /** Closes every fd nobody adopted (errors ignored: the fds are gone either way). */
  closeRest(): void {
    this.fds.forEach((fd, i) => {
      if (this.adopted.has(i)) return;
      this.adopted.add(i);
      try {
        this.close(fd);
      } catch {
        // close(2) frees the fd even when it reports an error.
      }
    });
  }
}

/** Collects fds for an outgoing message; `slot(fd)` is the index to put in the JSON. */
export class OutgoingFds {
  readonly fds: Fd[] = [];

  slot(fd: Fd): number {
    if (this.fds.length >= MAX_MESSAGE_FDS) throw usageError('EMSGSIZE', `a vfio-share message carries at most ${MAX_MESSAGE_FDS} fds`);
    this.fds.push(fd);
    return this.fds.length - 1;
  }
}

// --- errors across the wire ---------------------------------------------------

/** The error part of a refusal reply. */
export function wireError(err: unknown): { code: string; detail: string; device?: string } {
  if (err instanceof VfioError) {
    return err.device === undefined ? { code: err.code, detail: err.message } : { code: err.code, detail: err.message, device: err.device };
  }
  return { code: 'EIO', detail: `the primary failed: ${String(err)}` };
}

/** The VfioError a secondary throws for a refusal reply. */
export function errorFromWire(v: unknown, op: string): VfioError {
  const e = obj(v, 'error');
  const code = str(e, 'code', 'error');
  const detail = str(e, 'detail', 'error');
  const device = typeof e['device'] === 'string' ? e['device'] : undefined;
  // Only an errno name or ECLOSED passes as the code; anything else (a newer
  // primary's code, or a hostile one such as 'toString') is kept in the words.
  if (code === 'ECLOSED' || /^E[A-Z0-9]{1,15}$/.test(code)) {
    try {
      return new VfioError({ code, detail: `the primary refused ${op}: ${detail}`, device });
    } catch {
      // Not an errno this Node knows: below.
    }
  }
  return new VfioError({ code: 'EIO', detail: `the primary refused ${op} with ${JSON.stringify(code)}: ${detail}`, device });
}
