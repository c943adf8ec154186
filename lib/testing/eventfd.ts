// eventfd(2): a 64-bit counter. read() takes it (or 1 in semaphore mode),
// write() adds to it, poll() says whether it is readable. The kernel side
// (an interrupt trigger) signals it like eventfd_signal().
import { POLLERR, POLLIN, POLLOUT, O_RDWR } from '../libc/sys.js';
import { fail } from './errors.js';
import { FakeFile } from './files.js';

const ULLONG_MAX = 0xffffffffffffffffn;

export class EventFdFile extends FakeFile {
  readonly kind = 'eventfd';
  private count: bigint;

  constructor(
    initval: number,
    private readonly semaphore: boolean,
    nonblock: boolean,
  ) {
    super(null, O_RDWR, nonblock);
    this.count = BigInt(initval);
  }

  get counter(): bigint {
    return this.count;
  }

  override read(buf: Uint8Array): number {
    if (buf.byteLength < 8) fail('EINVAL', 'eventfd reads need an 8-byte buffer');
    if (this.count === 0n) {
      if (this.nonblock) fail('EAGAIN', 'eventfd counter is zero');
      // The real read would sleep until someone signals; in a single-threaded
      // test nobody can, so the process would hang. Say so instead.
      fail('EDEADLK', 'blocking read of an empty eventfd: the real kernel would block this thread forever');
    }
    const v = this.semaphore ? 1n : this.count;
    this.count -= v;
    new DataView(buf.buffer, buf.byteOffset, 8).setBigUint64(0, v, true);
    this.notify();
    return 8;
  }

  override write(buf: Uint8Array): number {
    if (buf.byteLength < 8) fail('EINVAL', 'eventfd writes need an 8-byte buffer');
    const v = new DataView(buf.buffer, buf.byteOffset, 8).getBigUint64(0, true);
    if (v === ULLONG_MAX) fail('EINVAL', 'eventfd cannot be written 0xffffffffffffffff');
    if (ULLONG_MAX - 1n - this.count < v) {
      if (this.nonblock) fail('EAGAIN', 'eventfd counter would overflow');
      fail('EDEADLK', 'blocking eventfd write that would overflow: the real kernel would block forever');
    }
    this.count += v;
    this.notify();
    return 8;
  }

  override poll(): number {
    let mask = 0;
    if (this.count > 0n) mask |= POLLIN;
    if (this.count === ULLONG_MAX) mask |= POLLERR;
    if (ULLONG_MAX - 1n > this.count) mask |= POLLOUT;
    return mask;
  }

  /** What a kernel-side waiter (virqfd) does: consume the count; true if there was one. */
  take(): boolean {
    if (this.count === 0n) return false;
    this.count = 0n;
    this.notify();
    return true;
  }

  /** eventfd_signal(): what an interrupt does. Saturates instead of failing. */
  signal(n = 1n): void {
    this.count = ULLONG_MAX - this.count < n ? ULLONG_MAX : this.count + n;
    this.notify();
  }
}
