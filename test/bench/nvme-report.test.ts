// The NVMe half of `npm run bench`: BENCH-NVME lines paired per
// configuration, the TS/kernel ratio and its target, the table, and the
// README markers it is published between.
import t from 'tap';
import { nvmeResults, nvmeTable, parseNvme, publishNvme } from '../../bench/nvme-report.js';

const line = (o: object) => `BENCH-NVME ${JSON.stringify(o)}`;
const out = [
  'bench: nvme TS QD1 interrupt',
  line({ impl: 'ts', qd: 1, completions: 'interrupt', ios: 8700, seconds: 1, iops: 8700, p50us: 110, p99us: 180 }),
  line({ impl: 'kernel', qd: 1, completions: 'interrupt', ios: 10500, seconds: 1, iops: 10500, p50us: 90, p99us: 150 }),
  line({ impl: 'ts', qd: 32, completions: 'poll', ios: 101000, seconds: 1, iops: 101000, p50us: 300, p99us: 500 }),
  line({ impl: 'kernel', qd: 32, completions: 'poll', ios: 52000, seconds: 1, iops: 52000, p50us: 600, p99us: 900 }),
  'BENCH {"impl":"c"}',
].join('\n');

t.test('pairs the sides, computes TS/kernel and whether it is >= 1', async (t) => {
  const samples = parseNvme(out);
  t.equal(samples.length, 4, 'only BENCH-NVME lines');
  const r = nvmeResults(samples);
  t.same(
    r.map((x) => [x.qd, x.completions, x.ratio, x.met]),
    [
      [1, 'interrupt', 0.83, false],
      [1, 'poll', null, null],
      [32, 'interrupt', null, null],
      [32, 'poll', 1.94, true],
    ],
  );
  const text = nvmeTable(r);
  t.match(text, /\| QD1 \| interrupt \(MSI-X\) \| 8\.7k \| 10\.5k \| 0\.83 \| \*\*NO\*\* \| 110 \/ 180 µs \| 90 \/ 150 µs \|/);
  t.match(text, /\| QD1 \| polled .* \| – \| – \| – \| – \|/, 'a configuration not measured says so');
});

t.test('publishes between its markers only', async (t) => {
  const doc = 'a\n<!-- bench-nvme:start (written by npm run bench) -->\nold\n<!-- bench-nvme:end -->\nb\n';
  t.equal(publishNvme(doc, 'new'), 'a\n<!-- bench-nvme:start (written by npm run bench) -->\nnew\n<!-- bench-nvme:end -->\nb\n');
  t.equal(publishNvme('no markers', 'new'), null);
});
