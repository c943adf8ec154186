// The count queue under IrqVector.events(): counts summed between reads, one
// pending read, ending with and without an error, the hooks, and the
// invariant that no count is lost or doubled whatever the interleaving.
import t from 'tap';
import fc from 'fast-check';
import { CountQueue } from '../../lib/base/count-queue.js';

/** Whether `p` has settled, after the microtasks queued so far ran. */
async function settled<T>(p: Promise<T>): Promise<boolean> {
  let done = false;
  p.then(
    () => (done = true),
    () => (done = true),
  );
  await new Promise((r) => setImmediate(r));
  return done;
}

t.test('counts pushed between reads are summed into the next read', async (t) => {
  const q = new CountQueue();
  q.push(1);
  q.push(2);
  t.same(await q.next(), { value: 3, done: false });
  q.push(4);
  t.same(await q.next(), { value: 4, done: false });
});

t.test('a waiting read takes the next push alone; the waiting hook brackets it', async (t) => {
  const seen: boolean[] = [];
  const q = new CountQueue({ waiting: (w) => seen.push(w) });
  const p = q.next();
  t.same(seen, [true], 'the read waits');
  t.notOk(await settled(p));
  q.push(5);
  t.same(seen, [true, false]);
  t.same(await p, { value: 5, done: false });
  q.push(6);
  t.same(await q.next(), { value: 6, done: false }, 'the second push was kept, not given to the first read');
  t.same(seen, [true, false], 'a read that does not wait does not touch the hook');
});

t.test('poll runs only before a read would wait, and what it pushes settles that read at once', async (t) => {
  let polls = 0;
  let arrived = 0;
  const waiting: boolean[] = [];
  const q = new CountQueue({
    poll: () => {
      polls++;
      if (arrived > 0) q.push(arrived);
      arrived = 0;
    },
    waiting: (w) => waiting.push(w),
  });
  arrived = 2;
  t.same(await q.next(), { value: 2, done: false });
  t.equal(polls, 1);
  t.same(waiting, [], 'it never waited');
  q.push(1);
  t.same(await q.next(), { value: 1, done: false });
  t.equal(polls, 1, 'not polled when something was pending');
  const p = q.next();
  t.equal(polls, 2);
  const busy = q.next();
  t.equal(polls, 2, 'not polled while another read waits');
  await t.rejects(busy, { code: 'EBUSY' });
  q.end();
  t.same(await p, { value: undefined, done: true });
  t.same(await q.next(), { value: undefined, done: true });
  t.equal(polls, 2, 'not polled once ended');
});

t.test('end without an error: a waiting read is done; pending counts are still delivered first', async (t) => {
  let ended = 0;
  const q = new CountQueue({ ended: () => ended++ });
  const p = q.next();
  q.end();
  t.same(await p, { value: undefined, done: true });
  t.equal(ended, 1);
  t.ok(q.ended);

  const r = new CountQueue();
  r.push(3);
  r.end();
  r.end(new Error('ignored: only the first end counts'));
  r.push(9);
  t.same(await r.next(), { value: 3, done: false }, 'pushed before the end');
  t.same(await r.next(), { value: undefined, done: true }, 'pushed after the end is ignored');
});

t.test('end with an error: a waiting read rejects; otherwise the next read does, once', async (t) => {
  const boom = new Error('boom');
  const q = new CountQueue();
  const p = q.next();
  q.end(boom);
  await t.rejects(p, boom);
  t.same(await q.next(), { value: undefined, done: true });

  const r = new CountQueue();
  r.push(2);
  r.end(boom);
  await t.rejects(r.next(), boom, 'the failure comes first');
  t.same(await r.next(), { value: 2, done: false }, 'then what was pushed before it');
  t.same(await r.next(), { value: undefined, done: true });
});

t.test('a second read while one waits is refused with the busy hook error', async (t) => {
  const q = new CountQueue({ busy: () => Object.assign(new Error('mine'), { code: 'EBUSY' }) });
  const p = q.next();
  await t.rejects(q.next(), { message: 'mine', code: 'EBUSY' });
  q.push(1);
  t.same(await p, { value: 1, done: false }, 'the first read is unaffected');
});

t.test('the iterator: for await ends at end(); return() ends the queue', async (t) => {
  const q = new CountQueue();
  const it = q.iterator();
  t.notOk('push' in it, 'the producer side is not exposed');
  q.push(1);
  setImmediate(() => {
    q.push(2);
    setImmediate(() => q.end());
  });
  const got: number[] = [];
  for await (const n of it) got.push(n);
  t.same(got, [1, 2]);

  let ended = 0;
  const r = new CountQueue({ ended: () => ended++ });
  const rit = r.iterator();
  for await (const n of (r.push(7), rit)) {
    t.equal(n, 7);
    break;
  }
  t.equal(ended, 1, 'break called return()');
  t.ok(r.ended);
});

t.test('no count is lost or doubled, whatever the interleaving of pushes, polls, reads and the end', async () => {
  type Op = { push: number } | { poll: number } | 'read' | 'end';
  const op = fc.oneof(
    fc.record({ push: fc.integer({ min: 1, max: 5 }) }),
    fc.record({ poll: fc.integer({ min: 1, max: 5 }) }),
    fc.constant<'read'>('read'),
    fc.constant<'end'>('end'),
  );
  await fc.assert(
    fc.asyncProperty(fc.array(op, { maxLength: 40 }), async (ops: Op[]) => {
      // `arrived` plays the eventfd: counts that poll() finds and pushes.
      let arrived = 0;
      let pushed = 0;
      let delivered = 0;
      const q = new CountQueue({
        poll: () => {
          if (arrived > 0) {
            pushed += arrived;
            q.push(arrived);
            arrived = 0;
          }
        },
      });
      const reads: Promise<void>[] = [];
      let reading = false;
      const read = (): void => {
        reading = true;
        reads.push(
          q.next().then((r) => {
            reading = false;
            if (r.done !== true) delivered += r.value;
          }),
        );
      };
      for (const o of ops) {
        if (o === 'read') {
          if (!reading) read();
        } else if (o === 'end') {
          q.end();
        } else if ('push' in o) {
          if (!q.ended) pushed += o.push;
          q.push(o.push);
        } else {
          arrived += o.poll;
        }
        await Promise.resolve();
      }
      q.end();
      await Promise.all(reads);
      // Drain: what is left is delivered once, then done.
      for (;;) {
        const r = await q.next();
        if (r.done === true) break;
        delivered += r.value;
      }
      return delivered === pushed;
    }),
  );
});
