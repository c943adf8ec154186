// One connected vfio-share socket (AF_UNIX, SOCK_SEQPACKET, non-blocking):
// sends and receives whole protocol messages with their fds.
//
// Guarantees:
// - Never blocks the event loop: sends and receives are MSG_DONTWAIT, and
//   waiting for a message is a poll(2) on a libuv pool thread
//   (sys.pollAsync) with a deadline.
// - Received fds are the caller's (as FdSlots) only when the message is
//   well formed; a message that is cut (MSG_TRUNC / MSG_CTRUNC), not JSON or
//   not vfio-share has its fds closed here and is an EPROTO error.
// - sendmsg uses MSG_NOSIGNAL: a peer that went away is an EPIPE error,
//   never a SIGPIPE that kills the process.
// - Every received fd is close-on-exec (MSG_CMSG_CLOEXEC).
import { VfioError, usageError } from '../base/errors.js';
import { MSG_CMSG_CLOEXEC, MSG_CTRUNC, MSG_DONTWAIT, MSG_NOSIGNAL, MSG_TRUNC, POLLIN, type Fd, type Sys } from '../libc/sys.js';
import { FdSlots, MAX_MESSAGE_BYTES, MAX_MESSAGE_FDS, PROTOCOL, PROTOCOL_VERSION, isObject, protocolError, type Json } from './protocol.js';

/** A received message: its JSON and the fds it carried (owned by the caller). */
export interface Incoming {
  readonly msg: Json;
  readonly fds: FdSlots;
}

export class Channel {
  private fdSlot: Fd;
  private readonly buf: Buffer;

  /** Takes ownership of the connected socket `fd`. */
  constructor(
    private readonly sys: Sys,
    fd: Fd,
    /** Who is at the other end, for messages ("the primary", "secondary pid 42"). */
    readonly peer: string,
    /** Largest message accepted from the peer (a longer one is EPROTO). */
    private readonly maxBytes = MAX_MESSAGE_BYTES,
  ) {
    this.fdSlot = fd;
    // One byte more: a message that fills it was longer than allowed.
    this.buf = Buffer.alloc(maxBytes + 1);
  }

  get closed(): boolean {
    return this.fdSlot === -1;
  }

  /** The socket fd (for a poll over many channels). */
  get fd(): Fd {
    if (this.fdSlot === -1) throw usageError('ENOTCONN', `the connection to ${this.peer} is closed`);
    return this.fdSlot;
  }

  /**
   * Sends `msg` (the protocol envelope is added) with `fds`.
   * @throws VfioError EMSGSIZE too big; EPIPE/ECONNRESET the peer is gone;
   *   EAGAIN the peer is not reading (its socket buffer is full); ENOTCONN closed.
   */
  send(msg: Json, fds: readonly Fd[] = []): void {
    const bytes = Buffer.from(JSON.stringify({ protocol: PROTOCOL, version: PROTOCOL_VERSION, ...msg }));
    if (bytes.length > MAX_MESSAGE_BYTES)
      throw usageError('EMSGSIZE', `a ${bytes.length}-byte vfio-share message (at most ${MAX_MESSAGE_BYTES})`);
    if (fds.length > MAX_MESSAGE_FDS)
      throw usageError('EMSGSIZE', `${fds.length} fds in one vfio-share message (at most ${MAX_MESSAGE_FDS})`);
    this.sys.sendmsg(this.fd, bytes, fds, MSG_NOSIGNAL | MSG_DONTWAIT);
  }

  /**
   * The next message if one is queued: a message, 'empty' (nothing yet) or
   * 'eof' (the peer closed its end and everything it sent was read).
   * @throws VfioError EPROTO a malformed message (its fds closed); ENOTCONN
   *   closed; any errno of recvmsg.
   */
  receive(): Incoming | 'empty' | 'eof' {
    let got;
    try {
      got = this.sys.recvmsg(this.fd, this.buf, MAX_MESSAGE_FDS, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
    } catch (err) {
      if (err instanceof VfioError && err.code === 'EAGAIN') return 'empty';
      if (err instanceof VfioError && err.code === 'ECONNRESET') return 'eof';
      throw err;
    }
    const slots = new FdSlots(got.fds, (fd) => this.sys.close(fd));
    // SEQPACKET: 0 bytes is end of file (no one sends empty messages).
    if (got.bytes === 0 && got.fds.length === 0) return 'eof';
    try {
      if ((got.flags & MSG_CTRUNC) !== 0) throw protocolError(`a message from ${this.peer} carried more than ${MAX_MESSAGE_FDS} fds`);
      if ((got.flags & MSG_TRUNC) !== 0 || got.bytes > this.maxBytes) {
        throw protocolError(`a message from ${this.peer} is longer than ${this.maxBytes} bytes`);
      }
      let msg: unknown;
      try {
        msg = JSON.parse(this.buf.toString('utf8', 0, got.bytes));
      } catch {
        throw protocolError(`a message from ${this.peer} is not JSON`);
      }
      if (!isObject(msg) || msg['protocol'] !== PROTOCOL) throw protocolError(`${this.peer} does not speak ${PROTOCOL}`);
      if (typeof msg['version'] !== 'number' || !Number.isSafeInteger(msg['version'])) {
        throw protocolError(`a message from ${this.peer} has no protocol version`);
      }
      return { msg, fds: slots };
    } catch (err) {
      slots.closeRest();
      throw err;
    }
  }

  /**
   * Waits (without blocking the event loop) for the next message until
   * `deadline` (Date.now() milliseconds).
   * @throws VfioError ECONNRESET the peer closed the connection; ETIMEDOUT
   *   nothing came in time; as receive().
   */
  async next(deadline: number, what: string): Promise<Incoming> {
    for (;;) {
      const got = this.receive();
      if (got === 'eof') throw usageError('ECONNRESET', `${this.peer} closed the connection while ${what} (it exited or stopped serving)`);
      if (got !== 'empty') return got;
      const remaining = deadline - Date.now();
      if (remaining <= 0) throw usageError('ETIMEDOUT', `no answer from ${this.peer} while ${what}`);
      await this.sys.pollAsync([{ fd: this.fd, events: POLLIN }], Math.min(remaining, 2 ** 31 - 1));
    }
  }

  /** Closes the socket; the peer sees end of file. Idempotent. */
  close(): void {
    const fd = this.fdSlot;
    if (fd === -1) return;
    this.fdSlot = -1;
    this.sys.close(fd);
  }
}
