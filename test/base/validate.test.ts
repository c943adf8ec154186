import t, { type Test } from 'tap';
import { VfioError } from '../../lib/base/errors.js';
import {
  describe,
  ownEntry,
  validateBigInt,
  validateBoolean,
  validateBytes,
  validateFunction,
  validateInteger,
  validateOneOf,
  validateOptions,
  validateSpan,
  validateString,
} from '../../lib/base/validate.js';

/** Runs fn, expects a VfioError EINVAL, returns its detail. */
function einval(t: Test, fn: () => unknown): string {
  try {
    fn();
  } catch (e) {
    t.ok(e instanceof VfioError, 'a VfioError');
    t.equal((e as VfioError).code, 'EINVAL');
    return (e as VfioError).detail ?? '';
  }
  t.fail('did not throw');
  return '';
}

t.test('describe never calls into the value', async (t) => {
  const hostile = new Proxy(
    {},
    {
      get() {
        throw new Error('trap ran');
      },
      getPrototypeOf() {
        throw new Error('trap ran');
      },
    },
  );
  t.equal(describe(hostile), 'an object');
  t.equal(describe({ toString: () => 'x' }), 'an object');
  t.equal(describe([1]), 'an array');
  t.equal(describe('2'), 'the string "2"');
  t.equal(describe('a'.repeat(100)), `the string "${'a'.repeat(40)}…"`);
  t.equal(describe(1.5), '1.5');
  t.equal(describe(-0), '-0');
  t.equal(describe(3n), '3n');
  t.equal(describe(null), 'null');
  t.equal(describe(undefined), 'undefined');
  t.equal(describe(Symbol('s')), 'a symbol');
  t.equal(
    describe(() => 0),
    'a function',
  );
  t.equal(describe(true), 'true');
});

t.test('validateInteger: numbers only, bounds inclusive, one wording', async (t) => {
  validateInteger(0, 'n');
  validateInteger(5, 'n', 0, 5);
  validateInteger(Number.MAX_SAFE_INTEGER, 'n');
  t.equal(
    einval(t, () => validateInteger('2', 'count')),
    'count must be a non-negative integer, got the string "2"',
  );
  t.equal(
    einval(t, () => validateInteger(1.5, 'count', 1)),
    'count must be a positive integer, got 1.5',
  );
  t.equal(
    einval(t, () => validateInteger(6, 'bar', 0, 5)),
    'bar must be an integer from 0 to 5, got 6',
  );
  t.equal(
    einval(t, () => validateInteger(-1, 'x', 2)),
    'x must be an integer >= 2, got -1',
  );
  einval(t, () => validateInteger(2 ** 53, 'n'));
  einval(t, () => validateInteger(Number.NaN, 'n'));
  einval(t, () => validateInteger(Number.POSITIVE_INFINITY, 'n'));
  einval(t, () => validateInteger(1n, 'n'));
  einval(t, () => validateInteger(null, 'n'));
  einval(t, () => validateInteger(new Number(1), 'n'));
  const err = (() => {
    try {
      validateInteger(-1, 'offset', 0, 10, { device: '0000:00:03.0' });
    } catch (e) {
      return e as VfioError;
    }
  })();
  t.equal(err?.device, '0000:00:03.0', 'the device is in the error');
  t.equal(err?.message, 'EINVAL (device 0000:00:03.0: offset must be an integer from 0 to 10, got -1)');
});

t.test('validateBigInt', async (t) => {
  validateBigInt(0n, 'iova');
  validateBigInt(2n ** 64n - 1n, 'iova', 0n, 2n ** 64n - 1n);
  t.equal(
    einval(t, () => validateBigInt(4096, 'iova')),
    'iova must be a non-negative bigint, got 4096',
  );
  t.equal(
    einval(t, () => validateBigInt(0n, 'size', 1n)),
    'size must be a positive bigint, got 0n',
  );
  t.equal(
    einval(t, () => validateBigInt(2n ** 64n, 'iova', 0n, 2n ** 64n - 1n)),
    `iova must be a bigint from 0 to ${2n ** 64n - 1n}, got ${2n ** 64n}n`,
  );
  einval(t, () => validateBigInt(-1n, 'iova'));
});

t.test('strings, booleans, functions, choices', async (t) => {
  validateString('', 's');
  t.equal(
    einval(t, () => validateString('', 's', {}, true)),
    's must be a non-empty string, got the string ""',
  );
  t.equal(
    einval(t, () => validateString(123, 'path')),
    'path must be a string, got 123',
  );
  validateBytes(new Uint8Array(1), 'src');
  validateBytes(Buffer.alloc(1), 'src');
  t.equal(
    einval(t, () => validateBytes(null, 'src')),
    'src must be a Uint8Array, got null',
  );
  einval(t, () => validateBytes(new Uint16Array(1), 'src'));
  validateBoolean(false, 'b');
  t.equal(
    einval(t, () => validateBoolean(1, 'shareable')),
    'shareable must be true or false, got 1',
  );
  validateFunction(() => 0, 'cb');
  t.equal(
    einval(t, () => validateFunction(null, 'cb')),
    'cb must be a function, got null',
  );
  validateOneOf('msi', 'kind', ['intx', 'msi', 'msix']);
  t.equal(
    einval(t, () => validateOneOf('toString', 'kind', ['intx', 'msi'])),
    'kind must be one of "intx", "msi", got the string "toString"',
  );
  einval(t, () => validateOneOf(1, 'width', [8, 16]));
  validateOneOf(8, 'width', [8, 16]);
});

t.test('validateOptions: undefined or a plain object', async (t) => {
  t.same(validateOptions(undefined), {});
  const o = { a: 1 };
  t.equal(validateOptions(o), o);
  t.equal(
    einval(t, () => validateOptions(null as unknown as object)),
    'options must be an object or undefined, got null',
  );
  einval(t, () => validateOptions([] as unknown as object, 'opts'));
  einval(t, () => validateOptions(5 as unknown as object, 'opts'));
});

t.test('ownEntry ignores the prototype', async (t) => {
  const table: Record<string, number> = { intx: 0, msi: 1 };
  t.equal(ownEntry(table, 'msi'), 1);
  for (const k of ['toString', '__proto__', 'constructor', 'hasOwnProperty']) t.equal(ownEntry(table, k), undefined, k);
  t.equal(ownEntry(table, 1), undefined);
  t.equal(ownEntry(table, { toString: () => 'msi' }), undefined, 'no coercion');
});

t.test('validateSpan', async (t) => {
  validateSpan(0, 4096, 4096, 'buffer');
  validateSpan(4096, 0, 4096, 'buffer');
  t.equal(
    einval(t, () => validateSpan(1, 4096, 4096, 'DMA buffer')),
    '[1, 1+4096) is outside the 4096-byte DMA buffer',
  );
  t.equal(
    einval(t, () => validateSpan(0, 2 ** 40, 4096, 'DMA buffer')),
    `[0, 0+${2 ** 40}) is outside the 4096-byte DMA buffer`,
  );
  t.equal(
    einval(t, () => validateSpan(0, null, 4096, 'buf')),
    'length must be a non-negative integer, got null',
  );
  t.equal(
    einval(t, () => validateSpan('0', 1, 4096, 'buf')),
    'offset must be a non-negative integer, got the string "0"',
  );
});
