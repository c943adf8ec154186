// Watches an eventfd from the event loop itself: libuv's own epoll waits for
// it on the main thread, as it waits for sockets, so an interrupt costs one
// wake-up of the thread that runs its handler — against two (a pool thread's
// poll(2), then a hand-off to the loop) for ./eventfd-poller.ts. Under
// emulation, where a cross-thread wake-up is an emulated IPI, that is most of
// an interrupt's latency (measured in the VM tier's guest: ~35 µs against
// ~250 µs).
//
// How: Node has no public way to watch an arbitrary fd, and `net.Socket({fd})`
// refuses an eventfd (libuv cannot guess its type). The pipe handle behind
// `net.Socket` does not care: `uv_pipe_open` takes any fd and reads it as a
// stream. An eventfd read returns its 8-byte counter and clears it, and EAGAIN
// ends a read burst as on an empty socket. The handle is used directly, not
// through `net.Socket`: its read start/stop are exactly "watch"/"leave the
// counts in the eventfd", and the stream machinery would cost more than the
// rest of the path. The pieces come from `process.binding` ('pipe_wrap' for
// the handle, 'stream_wrap' for the shared array where a read's length is
// left), bindings Node keeps for compatibility (DEP0111, documentation-only;
// with `--pending-deprecation` Node warns once). `available()` checks every
// piece; where one is missing or refused (another Node, the permission model,
// `--throw-deprecation`), the caller falls back to the poll thread.
//
// Guarantees:
// - The watcher reads a dup of the caller's fd; close() closes that dup
//   (libuv closes it synchronously inside uv_close), and the caller's fd
//   stays the caller's. The dup shares the open file, so the caller's fd
//   becomes O_NONBLOCK too (the library makes its eventfds non-blocking).
// - Stopped, the handle neither reads (counts stay in the eventfd) nor keeps
//   the process alive (unref'd); started, both.
// - No callback after stop() or close() returns, and no count is lost: a
//   stopped handle does not read (see onread).
// - A listener that throws surfaces as an uncaught exception, as from an
//   EventEmitter, and the watch goes on (`deliver`).
import { VfioError } from '../base/errors.js';
import { deliver } from './eventfd-poller.js';
import type { EventfdWatch, EventfdWatcher, Fd, Sys } from './sys.js';

/** The slice of Node's internal pipe handle used here (a LibuvStreamWrap). */
interface PipeHandle {
  /** uv_pipe_open: 0, or a negative errno. */
  open(fd: number): number;
  /** uv_read_start / uv_read_stop: 0, or a negative errno. */
  readStart(): number;
  readStop(): number;
  ref(): void;
  unref(): void;
  close(): void;
  /**
   * Called with the chunk's ArrayBuffer; its length and offset are in the
   * state array. Node asserts (aborts the process) unless it is a function.
   */
  onread: (buffer: ArrayBuffer | undefined) => void;
}

interface Bindings {
  readonly Pipe: new (type: number) => PipeHandle;
  readonly socketType: number;
  readonly state: Int32Array;
  readonly lengthSlot: number;
  readonly offsetSlot: number;
}

/** libuv's UV_EOF. */
const UV_EOF = -4095;

let bindings: Bindings | null | undefined;

function load(): Bindings | null {
  if (bindings !== undefined) return bindings;
  bindings = null;
  try {
    const binding = (process as unknown as { binding(name: string): Record<string, unknown> }).binding;
    const pipe = binding('pipe_wrap') as { Pipe?: unknown; constants?: { SOCKET?: unknown } };
    const stream = binding('stream_wrap') as { streamBaseState?: unknown; kReadBytesOrError?: unknown; kArrayBufferOffset?: unknown };
    const Pipe = pipe.Pipe;
    const proto = typeof Pipe === 'function' ? (Pipe.prototype as Record<string, unknown>) : undefined;
    if (
      proto !== undefined &&
      typeof pipe.constants?.SOCKET === 'number' &&
      stream.streamBaseState instanceof Int32Array &&
      typeof stream.kReadBytesOrError === 'number' &&
      typeof stream.kArrayBufferOffset === 'number' &&
      ['open', 'readStart', 'readStop', 'ref', 'unref', 'close'].every((m) => typeof proto[m] === 'function')
    ) {
      bindings = {
        Pipe: Pipe as Bindings['Pipe'],
        socketType: pipe.constants.SOCKET,
        state: stream.streamBaseState,
        lengthSlot: stream.kReadBytesOrError,
        offsetSlot: stream.kArrayBufferOffset,
      };
    }
  } catch {
    // Refused (permission model, --throw-deprecation) or gone: the fallback serves.
  }
  return bindings;
}

/** Whether this Node lets an eventfd be watched on the event loop. */
export function available(): boolean {
  return load() !== null;
}

/** A uv error (negative errno) as a VfioError. */
function uvError(rc: number, syscall: string, detail: string): VfioError {
  return new VfioError({ errno: -rc, syscall, detail });
}

/**
 * A watcher of `fd` on the event loop (see the module comment); null when not
 * available here (nothing was opened then), so the caller can fall back.
 */
export function watchOnEventLoop(sys: Sys, fd: Fd, w: EventfdWatch): EventfdWatcher | null {
  const b = load();
  if (b === null) return null;
  const own = sys.dup(fd);
  const handle = new b.Pipe(b.socketType);
  const rc = handle.open(own);
  if (rc !== 0) {
    // Not taken by libuv: still ours to close.
    handle.close();
    sys.close(own);
    throw uvError(rc, 'uv_pipe_open', `cannot watch eventfd ${fd} on the event loop`);
  }
  handle.unref();
  let started = false;
  let closed = false;
  const close = (): void => {
    if (closed) return;
    closed = true;
    started = false;
    // uv_close: stops reading and closes `own` before returning.
    handle.close();
  };
  handle.onread = (buffer) => {
    // SAFETY: the length and offset are what libuv's read wrote into the
    // shared state array just before this call; `buffer` is a fresh copy
    // of the bytes read, owned by this callback.
    const nread = b.state[b.lengthSlot]!;
    const offset = b.state[b.offsetSlot]!;
    if (closed) return;
    if (nread < 0) {
      // An eventfd never reads as end of file; any error ends the watch.
      const err =
        nread === UV_EOF
          ? new VfioError({ code: 'EIO', syscall: 'read', detail: `eventfd ${fd} read as end of file` })
          : uvError(nread, 'read', `watching eventfd ${fd} failed`);
      close();
      deliver(() => w.onError(err));
      return;
    }
    // A stopped handle does not read: uv_read_stop clears the reading flag
    // that libuv's read loop checks before each read(2), so `started` is
    // always true here and no count is dropped by the check below.
    if (buffer === undefined || nread < 8) return;
    // Each read(2) of an eventfd yields its 8-byte counter (little-endian on
    // every platform the library runs on); coalesced reads are summed.
    const words = new Uint32Array(buffer, offset, nread >>> 2);
    let n = 0;
    for (let i = 0; i + 1 < words.length; i += 2) n += words[i]! + words[i + 1]! * 2 ** 32;
    if (n > 0 && started) deliver(() => w.onCount(n));
  };
  return {
    start: () => {
      if (started || closed) return;
      const r = handle.readStart();
      if (r !== 0) {
        const err = uvError(r, 'uv_read_start', `cannot watch eventfd ${fd} on the event loop`);
        close();
        deliver(() => w.onError(err));
        return;
      }
      handle.ref();
      started = true;
    },
    stop: () => {
      if (!started || closed) return;
      started = false;
      handle.readStop();
      handle.unref();
    },
    close,
  };
}
