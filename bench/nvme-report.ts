// The NVMe cases of `npm run bench`: 4 KiB random reads by the TypeScript
// driver (examples/nvme through the library) and by the guest kernel's nvme
// driver under fio, in the same VM boot (bench/guest/nvme.sh). This module
// turns their `BENCH-NVME {json}` lines into results and a table.

/** One measured configuration on one side. */
export interface NvmeSample {
  readonly impl: 'ts' | 'kernel';
  readonly qd: number;
  readonly completions: 'interrupt' | 'poll';
  readonly ios: number;
  readonly seconds: number;
  readonly iops: number;
  readonly p50us: number;
  readonly p99us: number;
}

/** Both sides of one configuration, and TS/kernel for IOPS (higher is better for TS). */
export interface NvmeResult {
  readonly qd: number;
  readonly completions: 'interrupt' | 'poll';
  readonly ts: NvmeSample | null;
  readonly kernel: NvmeSample | null;
  /** ts.iops / kernel.iops; the target is >= 1 (SPDK's headline: a userspace driver at least matches the kernel). */
  readonly ratio: number | null;
  readonly met: boolean | null;
}

/** The configurations measured, in table order. */
export const NVME_CONFIGS = [
  { qd: 1, completions: 'interrupt' },
  { qd: 1, completions: 'poll' },
  { qd: 32, completions: 'interrupt' },
  { qd: 32, completions: 'poll' },
] as const;

/** The `BENCH-NVME` lines of a run's output. */
export function parseNvme(stdout: string): NvmeSample[] {
  const out: NvmeSample[] = [];
  for (const line of stdout.split('\n')) {
    if (!line.startsWith('BENCH-NVME ')) continue;
    const s = JSON.parse(line.slice('BENCH-NVME '.length)) as NvmeSample;
    if ((s.impl === 'ts' || s.impl === 'kernel') && Number.isFinite(s.iops)) out.push(s);
  }
  return out;
}

/** Pairs the two sides per configuration (the last sample of each, if a case ran twice). */
export function nvmeResults(samples: readonly NvmeSample[]): NvmeResult[] {
  return NVME_CONFIGS.map(({ qd, completions }) => {
    const pick = (impl: 'ts' | 'kernel'): NvmeSample | null =>
      samples.filter((s) => s.impl === impl && s.qd === qd && s.completions === completions).at(-1) ?? null;
    const ts = pick('ts');
    const kernel = pick('kernel');
    const ratio = ts !== null && kernel !== null && kernel.iops > 0 ? Math.round((ts.iops / kernel.iops) * 100) / 100 : null;
    return { qd, completions, ts, kernel, ratio, met: ratio === null ? null : ratio >= 1 };
  });
}

/** A Markdown table of the results. */
export function nvmeTable(results: readonly NvmeResult[]): string {
  const k = (n: number): string => (n >= 1000 ? `${(n / 1000).toFixed(1)}k` : String(n));
  const rows = results.map((r) => {
    const side = (s: NvmeSample | null): [string, string] => (s === null ? ['–', '–'] : [k(s.iops), `${s.p50us} / ${s.p99us} µs`]);
    const [tsIops, tsLat] = side(r.ts);
    const [kIops, kLat] = side(r.kernel);
    const how = r.completions === 'poll' ? 'polled (kernel: poll queue + fio --hipri)' : 'interrupt (MSI-X)';
    const met = r.met === null ? '–' : r.met ? 'yes' : '**NO**';
    return `| QD${r.qd} | ${how} | ${tsIops} | ${kIops} | ${r.ratio ?? '–'} | ${met} | ${tsLat} | ${kLat} |`;
  });
  return [
    '| depth | completions | TS IOPS | kernel IOPS | TS/kernel | >= 1 | TS p50 / p99 | kernel p50 / p99 |',
    '| ----- | ----------- | ------- | ----------- | --------- | ---- | ------------ | ---------------- |',
    ...rows,
  ].join('\n');
}

const START = '<!-- bench-nvme:start (written by npm run bench) -->';
const END = '<!-- bench-nvme:end -->';

/** `doc` with the block between the NVMe markers replaced, or null when it has none. */
export function publishNvme(doc: string, block: string): string | null {
  const start = doc.indexOf(START);
  const end = doc.indexOf(END);
  if (start < 0 || end < start) return null;
  return `${doc.slice(0, start + START.length)}\n${block}\n${doc.slice(end)}`;
}
