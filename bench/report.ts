// Turns the `BENCH` lines both programs print into the statistics, the
// targets of issue 7 and the table: pure functions, no I/O.
//
// Statistics: every sample of a (mode, case, implementation) over all rounds
// is pooled (a sample is one batch's time per operation, or one interrupt's
// latency); the ratio is TS median / C median. Medians, not means: the VM
// runs under TCG next to other work, and a median ignores the batches an
// unrelated stall landed in; min–max shows how wide the spread was.

export type Impl = 'c' | 'ts';

export interface Sample {
  readonly impl: Impl;
  readonly mode: string;
  readonly case: string;
  readonly unit: 'op' | 'event';
  readonly samples: readonly number[];
}

export interface Stats {
  readonly n: number;
  readonly median: number;
  readonly min: number;
  readonly max: number;
  /** Only for per-event cases (interrupt latency). */
  readonly p99: number | null;
}

export interface Target {
  /** The ratio must be at most this. */
  readonly max: number;
  /** What the ratio is of, when it is not TS median / C median. */
  readonly of?: string;
}

export interface CaseResult {
  readonly mode: string;
  readonly case: string;
  readonly unit: 'op' | 'event';
  readonly c: Stats | null;
  readonly ts: Stats | null;
  /** TS median / C median (null when one side has no result). */
  readonly ratio: number | null;
  /**
   * TS min / C min: the fastest batch of each side. Interference only ever
   * adds time, so on a loaded machine this is the closer estimate of what
   * each side costs by itself; reported next to the median ratio.
   */
  readonly minRatio: number | null;
  readonly target: Target | null;
  /** null without a target or a ratio. */
  readonly met: boolean | null;
  readonly note: string;
}

export interface CaseSpec {
  readonly name: string;
  /** What the case measures, for the table's legend and the README. */
  readonly what: string;
  readonly target: Target | null;
  /** Only the TypeScript side has it (no C counterpart). */
  readonly tsOnly?: boolean;
}

/** Every case, in table order, with issue 7's targets. */
export const CASES: readonly CaseSpec[] = [
  { name: 'region-info', what: 'VFIO_DEVICE_GET_REGION_INFO of BAR0, decoded', target: { max: 1.15 } },
  { name: 'dma-4k', what: 'map + unmap of a 4 KiB DMA buffer (TS: IOVA from the allocator)', target: { max: 1.15 } },
  { name: 'dma-2m', what: 'map + unmap of a 2 MiB DMA buffer', target: { max: 1.15 } },
  { name: 'mmio-read32', what: "32-bit read of edu's BAR0 (mapped)", target: { max: 1.5 } },
  { name: 'mmio-write32', what: "32-bit write of edu's BAR0 (mapped)", target: { max: 1.5 } },
  { name: 'ram-read32', what: 'the same read on RAM-backed mapped memory (Region.read32)', target: { max: 3 } },
  { name: 'ram-write32', what: 'the same write on RAM-backed mapped memory (Region.write32)', target: { max: 3 } },
  { name: 'ram-views-read32', what: 'info: the RAM read through Region.views() (typed array, no checks)', target: null },
  { name: 'ffi-floor', what: "info: getuid(2), the cheapest system call (TS: the library's koffi binding)", target: null },
  {
    name: 'irq',
    what: "edu raises MSI (0x60) until the handler runs, MSI on the waiter's CPU; TS: events() iterator, C: poll(2)",
    target: { max: 2 },
  },
  { name: 'irq-remote', what: 'the same with the MSI on the other CPU (the waiter sleeps until woken)', target: { max: 2 } },
  { name: 'irq-wait', what: 'info: the same with one vector.wait() per interrupt', target: null },
  { name: 'bring-up', what: 'create container, assign, open, info, map BAR0, enable MSI', target: { max: 3 } },
  { name: 'first-bring-up', what: 'info: the first bring-up of a process (TS: loads koffi)', target: null },
  { name: 'import', what: 'info: `import` of the library (TS only)', target: null, tsOnly: true },
  {
    name: 'lib-region-info',
    what: "info, host only: the library's own cost of regionInfo (fake kernel, ioctl stubbed: no kernel, no FFI)",
    target: null,
    tsOnly: true,
  },
  {
    name: 'lib-dma-4k-group',
    what: "info, host only: the library's own cost of a map + unmap, group backend (ioctls stubbed)",
    target: null,
    tsOnly: true,
  },
  {
    name: 'lib-dma-4k-cdev',
    what: "info, host only: the library's own cost of a map + unmap, cdev backend (ioctls stubbed)",
    target: null,
    tsOnly: true,
  },
  {
    name: 'lib-dma-2m-group',
    what: "info, host only: the library's own cost of a map + unmap of a 2 MiB huge-page buffer, group backend (ioctls stubbed)",
    target: null,
    tsOnly: true,
  },
  {
    name: 'lib-dma-2m-cdev',
    what: "info, host only: the library's own cost of a map + unmap of a 2 MiB huge-page buffer, cdev backend (ioctls stubbed)",
    target: null,
    tsOnly: true,
  },
  {
    name: 'lib-bring-up-group',
    what: "info, host only: the library's own cost of a bring-up, group mode (fake kernel; time inside its system calls subtracted)",
    target: null,
    tsOnly: true,
  },
  {
    name: 'lib-bring-up-cdev',
    what: "info, host only: the library's own cost of a bring-up, cdev mode (fake kernel; time inside its system calls subtracted)",
    target: null,
    tsOnly: true,
  },
  { name: 'scale-1k', what: 'one map + unmap with 1,000 buffers mapped at once', target: null },
  { name: 'scale-10k', what: 'one map + unmap with 10,000 buffers mapped at once', target: null },
];

/**
 * The scaling target: the library's own per-op cost (its allocator and
 * bookkeeping: TS median minus C median, which is the kernel's and the
 * machine's share) at 10,000 live mappings / at 1,000.
 */
export const SCALE_TARGET: Target = { max: 1.3, of: '(TS - C) per op at 10k / at 1k' };

export interface ScaleResult {
  readonly mode: string;
  /** TS median per op at 10k / at 1k. */
  readonly ts: number | null;
  /** The same for C: how the kernel's own cost grows, for comparison. */
  readonly c: number | null;
  /** (TS - C) at 10k / (TS - C) at 1k: the library's share; what the target is about. */
  readonly library: number | null;
  readonly target: Target;
  readonly met: boolean | null;
}

export function stats(values: readonly number[], percentile99: boolean): Stats {
  const sorted = [...values].sort((a, b) => a - b);
  const n = sorted.length;
  if (n === 0) throw new Error('no samples');
  const mid = Math.floor(n / 2);
  const median = n % 2 === 1 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
  // Nearest-rank p99.
  const p99 = percentile99 ? sorted[Math.min(n - 1, Math.ceil(0.99 * n) - 1)]! : null;
  return { n, median, min: sorted[0]!, max: sorted[n - 1]!, p99 };
}

/** Parses the `BENCH {json}` lines of a run's output; other lines are ignored. */
export function parseSamples(output: string): Sample[] {
  const out: Sample[] = [];
  for (const line of output.split('\n')) {
    if (!line.startsWith('BENCH {')) continue;
    const s = JSON.parse(line.slice('BENCH '.length)) as Sample;
    if ((s.impl !== 'c' && s.impl !== 'ts') || !Array.isArray(s.samples)) throw new Error(`bad BENCH line: ${line}`);
    out.push(s);
  }
  return out;
}

/** Parses the `BENCH-ENV {json}` lines (the guest's state before and after). */
export function parseEnv(output: string): Record<string, unknown>[] {
  return output
    .split('\n')
    .filter((l) => l.startsWith('BENCH-ENV {'))
    .map((l) => JSON.parse(l.slice('BENCH-ENV '.length)) as Record<string, unknown>);
}

export function summarize(samples: readonly Sample[], modes: readonly string[], cases: readonly CaseSpec[]): CaseResult[] {
  const pool = new Map<string, { unit: 'op' | 'event'; values: number[] }>();
  for (const s of samples) {
    const key = `${s.mode}\0${s.case}\0${s.impl}`;
    const entry = pool.get(key) ?? { unit: s.unit, values: [] };
    entry.values.push(...s.samples);
    pool.set(key, entry);
  }
  const results: CaseResult[] = [];
  for (const mode of modes) {
    for (const spec of cases) {
      const side = (impl: Impl): { unit: 'op' | 'event'; st: Stats } | null => {
        const e = pool.get(`${mode}\0${spec.name}\0${impl}`);
        return e === undefined || e.values.length === 0 ? null : { unit: e.unit, st: stats(e.values, e.unit === 'event') };
      };
      const c = side('c');
      const ts = side('ts');
      const ratio = c !== null && ts !== null ? ts.st.median / c.st.median : null;
      const minRatio = c !== null && ts !== null ? ts.st.min / c.st.min : null;
      const met = spec.target === null || ratio === null ? null : ratio <= spec.target.max;
      results.push({
        mode,
        case: spec.name,
        unit: ts?.unit ?? c?.unit ?? 'op',
        c: c?.st ?? null,
        ts: ts?.st ?? null,
        ratio,
        minRatio,
        target: spec.target,
        met,
        note: spec.what,
      });
    }
  }
  return results;
}

export function scaling(results: readonly CaseResult[], modes: readonly string[]): ScaleResult[] {
  return modes.map((mode) => {
    const get = (name: string): CaseResult | undefined => results.find((r) => r.mode === mode && r.case === name);
    const k1 = get('scale-1k');
    const k10 = get('scale-10k');
    const growth = (a: Stats | null | undefined, b: Stats | null | undefined): number | null =>
      a != null && b != null ? b.median / a.median : null;
    const ts = growth(k1?.ts, k10?.ts);
    const own = (r: CaseResult | undefined): number | null => (r?.ts != null && r.c != null ? r.ts.median - r.c.median : null);
    const own1 = own(k1);
    const own10 = own(k10);
    const library = own1 !== null && own10 !== null && own1 > 0 ? own10 / own1 : null;
    return {
      mode,
      ts,
      c: growth(k1?.c, k10?.c),
      library,
      target: SCALE_TARGET,
      met: library === null ? null : library <= SCALE_TARGET.max,
    };
  });
}

/** The cases that run natively on the host (mode `host`): no device needed. */
export function isHostCase(name: string): boolean {
  return name.startsWith('ram-') || name.startsWith('ffi-') || name.startsWith('lib-');
}

/** Cases (and sides) that produced no result: a broken benchmark, not a slow one. */
export function missing(results: readonly CaseResult[], cases: readonly CaseSpec[]): string[] {
  const out: string[] = [];
  for (const r of results) {
    const spec = cases.find((c) => c.name === r.case);
    if (r.ts === null) out.push(`${r.mode}/${r.case} (ts)`);
    if (r.c === null && spec?.tsOnly !== true) out.push(`${r.mode}/${r.case} (c)`);
  }
  return out;
}

/** 1234.5 ns as `1.23 µs`; three significant digits. */
export function formatNs(ns: number): string {
  const [v, unit] = ns >= 1e9 ? [ns / 1e9, 's'] : ns >= 1e6 ? [ns / 1e6, 'ms'] : ns >= 1e3 ? [ns / 1e3, 'µs'] : [ns, 'ns'];
  return `${v >= 100 ? v.toFixed(0) : v >= 10 ? v.toFixed(1) : v.toFixed(2)} ${unit}`;
}

function spread(s: Stats | null): string {
  return s === null ? '–' : `${formatNs(s.min)}–${formatNs(s.max)}`;
}

function verdict(met: boolean | null): string {
  return met === null ? '' : met ? 'yes' : '**NO**';
}

/** The results as a Markdown table (what `npm run bench` prints and bench/README.md shows). */
export function table(results: readonly CaseResult[], scale: readonly ScaleResult[]): string {
  const rows: string[][] = [
    ['mode', 'case', 'C median', 'TS median', 'TS/C', 'target', 'met', 'C min–max', 'TS min–max', 'min TS/C', 'p99 C / TS'],
  ];
  for (const r of results) {
    rows.push([
      r.mode,
      r.case,
      r.c === null ? '–' : formatNs(r.c.median),
      r.ts === null ? '–' : formatNs(r.ts.median),
      r.ratio === null ? '–' : r.ratio.toFixed(2),
      r.target === null ? '' : `<= ${r.target.max}`,
      verdict(r.met),
      spread(r.c),
      spread(r.ts),
      r.minRatio === null ? '' : r.minRatio.toFixed(2),
      r.c?.p99 != null && r.ts?.p99 != null ? `${formatNs(r.c.p99)} / ${formatNs(r.ts.p99)}` : '',
    ]);
  }
  for (const s of scale) {
    rows.push([
      s.mode,
      'scale 10k/1k',
      s.c === null ? '–' : `C ${s.c.toFixed(2)}x`,
      s.ts === null ? '–' : `TS ${s.ts.toFixed(2)}x`,
      s.library === null ? '–' : `lib ${s.library.toFixed(2)}x`,
      `TS-C <= ${s.target.max}x`,
      verdict(s.met),
      '',
      '',
      '',
      '',
    ]);
  }
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((row) => row[i]!.length)));
  const line = (row: string[]): string => `| ${row.map((cell, i) => cell.padEnd(widths[i]!)).join(' | ')} |`;
  return [line(rows[0]!), `| ${widths.map((w) => '-'.repeat(w)).join(' | ')} |`, ...rows.slice(1).map(line)].join('\n');
}

/** Where `npm run bench` publishes its latest table inside a Markdown file. */
export const TABLE_START = '<!-- bench-table:start (written by npm run bench) -->';
export const TABLE_END = '<!-- bench-table:end -->';

/**
 * `doc` with the text between the TABLE_START and TABLE_END lines replaced by
 * `block`; null when the markers are missing or out of order (the file is
 * then left as it is, and the run says so).
 */
export function publishBetweenMarkers(doc: string, block: string): string | null {
  const start = doc.indexOf(TABLE_START);
  const end = doc.indexOf(TABLE_END);
  if (start < 0 || end < start) return null;
  return `${doc.slice(0, start + TABLE_START.length)}\n${block}\n${doc.slice(end)}`;
}
