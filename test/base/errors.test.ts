import t from 'tap';
import { VfioError, closedError, errnoName, errnoOf, sysError, usageError } from '../../lib/base/errors.js';

t.test('errno names and numbers agree with Node', async (t) => {
  t.equal(errnoOf('ENODEV'), 19);
  t.equal(errnoName(19), 'ENODEV');
  t.equal(errnoName(16), 'EBUSY');
  t.equal(errnoName(99999), 'E99999', 'unknown errno keeps its number');
  t.equal(errnoName(95), 'ENOTSUP', 'EOPNOTSUPP reads as Node names it');
  t.equal(errnoName(35), 'EDEADLK', 'libuv lacks it; os.constants has it');
  t.equal(errnoName(77), 'EBADFD', 'Linux-only');
  t.equal(errnoOf('EBADFD'), 77);
  t.throws(() => errnoOf('ENOTANERRNO'), TypeError);
  for (const name of ['toString', '__proto__', 'constructor', 'hasOwnProperty']) {
    t.throws(() => errnoOf(name), TypeError, `${name}: an Object.prototype member is no errno`);
  }
});

t.test('a system error reads like Node’s', async (t) => {
  const e = sysError('open', 16, { path: '/dev/vfio/3', device: '0000:00:03.0', detail: 'already open in another process' });
  t.ok(e instanceof Error && e instanceof VfioError);
  t.equal(e.name, 'VfioError');
  t.match(e, { code: 'EBUSY', errno: 16, syscall: 'open', path: '/dev/vfio/3', device: '0000:00:03.0' });
  t.equal(e.message, 'open /dev/vfio/3: EBUSY (device 0000:00:03.0: already open in another process)');
});

t.test('annotate adds what the caller knows and keeps what is set', async (t) => {
  const e = sysError('ioctl', 'EINVAL');
  t.equal(e.message, 'ioctl: EINVAL');
  t.equal(e.annotate({ request: 'VFIO_GROUP_SET_CONTAINER', device: '0000:00:03.0' }), e);
  t.equal(e.message, 'ioctl VFIO_GROUP_SET_CONTAINER: EINVAL (device 0000:00:03.0)');
  e.annotate({ device: '0000:00:04.0' });
  t.equal(e.device, '0000:00:03.0', 'first context wins');
});

t.test('library-level errors', async (t) => {
  const u = usageError('EINVAL', 'not a PCI address: "../x"');
  t.match(u, { code: 'EINVAL', errno: 22, syscall: undefined });
  t.equal(u.message, 'EINVAL (not a PCI address: "../x")');
  const c = closedError('container');
  t.match(c, { code: 'ECLOSED', errno: 0 });
  t.equal(c.message, 'ECLOSED (container is closed)');
  const withCause = new VfioError({ code: 'EIO', cause: new Error('inner') });
  t.equal((withCause.cause as Error).message, 'inner');
});
