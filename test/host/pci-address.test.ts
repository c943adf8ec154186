// PCI address validation: strict, before any path is built.
import t from 'tap';
import { canonicalPciAddress, parsePciAddress } from '../../lib/host/pci-address.js';
import { VfioError } from '../../lib/base/errors.js';

t.test('full and short forms normalise to the sysfs spelling', async (t) => {
  t.equal(canonicalPciAddress('0000:00:03.0'), '0000:00:03.0');
  t.equal(canonicalPciAddress('00:03.0'), '0000:00:03.0');
  t.equal(canonicalPciAddress('0000:AF:1F.7'), '0000:af:1f.7');
  t.equal(canonicalPciAddress('10000:00:00.0'), '10000:00:00.0', 'VMD domains have 5 digits');
  t.equal(canonicalPciAddress('00000:00:02.1'), '0000:00:02.1', 'a padded domain is canonicalised');
  t.same(parsePciAddress('0001:02:03.4'), { domain: 1, bus: 2, slot: 3, fn: 4, canonical: '0001:02:03.4' });
});

t.test('anything else is EINVAL, before touching the filesystem', async (t) => {
  const bad: unknown[] = [
    '',
    ' 0000:00:03.0',
    '0000:00:03.0 ',
    '0000:00:03.0\n',
    '0000:00:03',
    '0000:00:03.8',
    '0000:00:20.0', // slot above 0x1f
    '000:00:03.0',
    '0000:0:03.0',
    '0000:00:03.0/..',
    '../0000:00:03.0',
    '../../etc/passwd',
    '0000:00:03.0/driver',
    '0000:00:03.0:1',
    '0000:00:03.0.1',
    '0000/00/03.0',
    '0x00:03.0',
    'zz:03.0',
    '00:03.0\u0000',
    'device',
    3,
    null,
    undefined,
    { toString: () => '0000:00:03.0' },
  ];
  for (const input of bad) {
    t.throws(() => parsePciAddress(input), { name: 'VfioError', code: 'EINVAL', errno: 22 }, JSON.stringify(String(input)));
  }
});

t.test('the error says what was wrong and what is expected', async (t) => {
  const err = t.throws(() => parsePciAddress('../x'));
  t.ok(err instanceof VfioError);
  t.match((err as VfioError).message, /not a PCI address: "\.\.\/x" \(expected 0000:00:03\.0 or 00:03\.0\)/);
});
