// `npm run bench [-- --quick] [--modes 'group cdev'] [--rounds N]`: the
// library against a C baseline, side by side in the VM tier's guest.
//
// Steps (the TypeScript, this file included, is compiled by the npm script
// before this runs, into bench/.build/js):
// 1. Compile bench/c/bench.c with gcc against the kernel uapi headers the
//    uapi generator caches (uapi-gen/headers.ts: the version stamped in
//    lib/uapi, else the newest from Debian); they are never copied here.
// 2. Boot the VM once per mode (test/vm/run.sh --exec) and run
//    bench/guest/run.sh there: C and TypeScript alternately, ROUNDS times.
// 3. Run the cases that need no device natively on the host (mode `host`):
//    the same script for ram-* and ffi-floor, and native-overhead.ts for
//    the library's own share of the ioctl-bound cases.
// 4. Pool the samples, print the table, write the JSON: bench/results.json
//    for a full run, bench/.build/results-quick.json for --quick (so that the
//    CI's quick run does not overwrite the published numbers).
//
// Exit status: 0 when every case produced results on both sides in every
// mode (targets are reported, not enforced: a VM under TCG next to other
// work is too noisy to gate CI on a ratio); 1 otherwise, 2 for bad arguments.
import { execFileSync, spawn } from 'node:child_process';
import { mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { cpus, loadavg } from 'node:os';
import { join } from 'node:path';
import { cachedSource, newestSource, versionOfStamp } from '../uapi-gen/headers.js';
import { repoRoot } from '../uapi-gen/paths.js';
import { UAPI_SOURCE } from '../lib/uapi/vfio.js';
import {
  CASES,
  isHostCase,
  missing,
  parseEnv,
  parseSamples,
  publishBetweenMarkers,
  scaling,
  summarize,
  table,
  type CaseResult,
  type ScaleResult,
} from './report.js';
import { nvmeResults, nvmeTable, parseNvme, publishNvme } from './nvme-report.js';

/** The modes of a full, published run. */
const DEFAULT_MODES = ['group', 'cdev'] as const;

interface Options {
  quick: boolean;
  modes: string[];
  rounds: number;
}

function usage(msg: string): never {
  process.stderr.write(`bench: ${msg}\nusage: npm run bench [-- --quick] [--modes 'group cdev'] [--rounds N]\n`);
  process.exit(2);
}

function parseArgs(argv: readonly string[]): Options {
  const o: Options = { quick: false, modes: [...DEFAULT_MODES], rounds: 0 };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    const value = (): string => argv[++i] ?? usage(`${a} needs a value`);
    if (a === '--quick') o.quick = true;
    else if (a === '--modes') o.modes = value().split(/[ ,]+/).filter(Boolean);
    else if (a === '--rounds') o.rounds = Number(value());
    else usage(`unknown argument ${a}`);
  }
  for (const m of o.modes) if (m !== 'group' && m !== 'cdev') usage(`mode ${m}: the benchmarks run in group and cdev modes`);
  if (o.modes.length === 0) usage('no mode');
  if (o.rounds === 0) o.rounds = o.quick ? 2 : 5;
  if (!Number.isInteger(o.rounds) || o.rounds < 1) usage(`bad --rounds ${o.rounds}`);
  return o;
}

/**
 * Iterations and batches per case and round. Sized so that one batch lasts
 * well over the clock's resolution in the guest, and a full run of both modes
 * takes ~10 minutes, --quick under two (both including the boots).
 */
function plan(quick: boolean): string[] {
  const q = (full: number, short: number): number => (quick ? short : full);
  return [
    `first-bring-up:1:1`,
    `bring-up:${q(10, 3)}:${q(5, 2)}`,
    `region-info:${q(1000, 200)}:${q(5, 3)}`,
    `dma-4k:${q(300, 50)}:${q(5, 3)}`,
    `dma-2m:${q(30, 5)}:${q(5, 3)}`,
    `mmio-read32:${q(20000, 2000)}:${q(5, 3)}`,
    `mmio-write32:${q(20000, 2000)}:${q(5, 3)}`,
    `ram-read32:${q(2000000, 200000)}:${q(5, 3)}`,
    `ram-write32:${q(2000000, 200000)}:${q(5, 3)}`,
    `ram-views-read32:${q(2000000, 200000)}:${q(5, 3)}`,
    `ffi-floor:${q(20000, 2000)}:${q(5, 3)}`,
    `irq:${q(400, 60)}:1`,
    `irq-remote:${q(400, 60)}:1`,
    `irq-wait:${q(200, 30)}:1`,
    // 10k first: its long batches leave the JIT warm for the short 1k ones,
    // whose own warm-up alone would not (their per-op time would be inflated).
    `scale-10k:10000:${q(3, 1)}`,
    `scale-1k:1000:${q(10, 3)}`,
  ];
}

/** Other QEMU processes on the host: the load the measurements shared the cores with. */
function otherVms(): number {
  let n = 0;
  for (const pid of readdirSync('/proc')) {
    if (!/^\d+$/.test(pid)) continue;
    try {
      if (readFileSync(`/proc/${pid}/comm`, 'utf8').startsWith('qemu-system')) n++;
    } catch {
      // The process ended while we looked.
    }
  }
  return n;
}

function hostState(): { loadavg: number[]; qemuProcesses: number } {
  return { loadavg: loadavg().map((l) => Math.round(l * 100) / 100), qemuProcesses: otherVms() };
}

function compileC(repo: string, out: string): string {
  const version = versionOfStamp(UAPI_SOURCE);
  const source = (version !== undefined ? cachedSource(version) : undefined) ?? newestSource();
  const includes = [source.includeDir, ...source.extraIncludeDirs].flatMap((d) => ['-I', d]);
  const args = ['-O2', '-std=gnu11', '-Wall', '-Wextra', '-Werror', ...includes, '-o', out, join(repo, 'bench/c/bench.c')];
  execFileSync('gcc', args, { stdio: ['ignore', 'inherit', 'inherit'] });
  return source.stamp;
}

/** Warm-up per case and side, in ms (see bench/guest/run.sh). */
function warmups(quick: boolean): { c: number; ts: number } {
  return quick ? { c: 50, ts: 400 } : { c: 300, ts: 3000 };
}

/** Runs `command args` in the checkout and collects its stdout (passing on all but the result lines). */
function runBench(
  repo: string,
  command: string,
  args: readonly string[],
  env: NodeJS.ProcessEnv,
): Promise<{ stdout: string; code: number }> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { cwd: repo, env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'inherit'] });
    let stdout = '';
    let partial = '';
    child.stdout.setEncoding('utf8');
    child.stdout.on('data', (chunk: string) => {
      stdout += chunk;
      // Pass anything that is not a result line through (the programs' own messages).
      const lines = (partial + chunk).split('\n');
      partial = lines.pop() ?? '';
      for (const l of lines) if (!l.startsWith('BENCH')) process.stdout.write(`${l}\n`);
    });
    child.on('error', reject);
    child.on('close', (code) => resolve({ stdout, code: code ?? 1 }));
  });
}

async function main(): Promise<number> {
  const opts = parseArgs(process.argv.slice(2));
  const repo = repoRoot();
  const build = join(repo, 'bench/.build');
  mkdirSync(build, { recursive: true });
  const headers = compileC(repo, join(build, 'bench-c'));
  process.stderr.write(`bench: C baseline compiled against ${headers}\n`);

  const cases = plan(opts.quick);
  const warm = warmups(opts.quick);
  const script = (rounds: number, list: readonly string[]): string[] => [
    'bench/guest/run.sh',
    String(rounds),
    String(warm.c),
    String(warm.ts),
    ...list,
  ];
  const hostBefore = hostState();
  const started = Date.now();
  // The host's load while the VMs run: sampled, since it is what the
  // numbers shared the two cores with (our own QEMU is one of the processes).
  const during: { t: number; load1: number; qemuProcesses: number }[] = [];
  const sampler = setInterval(() => {
    const s = hostState();
    during.push({ t: Math.round((Date.now() - started) / 1000), load1: s.loadavg[0]!, qemuProcesses: s.qemuProcesses });
  }, 15_000);
  // Per boot: generous, since other VMs may share the cores.
  const timeout = opts.quick ? 300 : 1500;
  const vm = await runBench(
    repo,
    'bash',
    [join(repo, 'test/vm/run.sh'), '--exec', ['bash', ...script(opts.rounds, cases)].join(' '), '--modes', opts.modes.join(' ')],
    {
      VFIO_VM_TIMEOUT: String(timeout),
    },
  );
  clearInterval(sampler);
  const hostAfter = hostState();
  // The cases that need no device once more natively on the host: no TCG
  // between the JIT's code and the CPU (in the VM their ratio is TCG's as
  // much as ours). Then the library's own share of the ioctl-bound cases
  // (bench/native-overhead.ts).
  const hostCases = cases.filter((c) => isHostCase(c.split(':')[0]!));
  const native = await runBench(repo, 'bash', script(opts.quick ? 1 : opts.rounds, hostCases), { VFIO_MODE: 'host', VFIO_VM_EDU: 'none' });
  const overhead = await runBench(
    repo,
    process.execPath,
    [join(build, 'js/bench/native-overhead.js'), String(opts.quick ? 5000 : 20000), String(opts.quick ? 3 : 10)],
    { BENCH_WARMUP_MS: String(opts.quick ? 300 : 2000) },
  );
  // NVMe: the TypeScript driver against the guest kernel's nvme driver under
  // fio, in one cdev boot (bench/guest/nvme.sh rebinds the device between them).
  const nvmeSeconds = opts.quick ? 2 : 10;
  const nvmeRun = await runBench(
    repo,
    'bash',
    [join(repo, 'test/vm/run.sh'), '--exec', `bash bench/guest/nvme.sh ${nvmeSeconds}`, '--modes', 'cdev'],
    { VFIO_VM_TIMEOUT: String(timeout) },
  );
  // Exit 3 from nvme.sh: the VM machine has no NVMe controller; reported as not measured, not a failure.
  const nvmeAbsentMachine = nvmeRun.code === 3;
  if (nvmeAbsentMachine) process.stderr.write('bench: nvme: the VM machine has no NVMe controller; the NVMe cases are not measured\n');
  const nvme = nvmeResults(parseNvme(nvmeRun.stdout));
  const nvmeText = nvmeTable(nvme);
  const seconds = Math.round((Date.now() - started) / 1000);
  const run = {
    stdout: vm.stdout + native.stdout + overhead.stdout,
    code: [vm.code, native.code, overhead.code, nvmeAbsentMachine ? 0 : nvmeRun.code].find((c) => c !== 0) ?? 0,
  };

  const samples = parseSamples(run.stdout);
  const results: CaseResult[] = [
    ...summarize(
      samples,
      opts.modes,
      CASES.filter((c) => !c.name.startsWith('lib-')),
    ),
    ...summarize(
      samples,
      ['host'],
      CASES.filter((c) => isHostCase(c.name)),
    ),
  ];
  const scale: ScaleResult[] = scaling(results, opts.modes);
  const text = table(results, scale);
  const absent = missing(results, CASES);

  const report = {
    generated: new Date().toISOString(),
    command: `npm run bench${opts.quick ? ' -- --quick' : ''}`,
    quick: opts.quick,
    rounds: opts.rounds,
    modes: [...opts.modes, 'host'],
    plan: cases,
    warmupMs: warm,
    seconds,
    uapiHeaders: headers,
    node: process.version,
    host: { cpus: cpus().length, before: hostBefore, during, after: hostAfter },
    guest: parseEnv(run.stdout),
    legend: Object.fromEntries(CASES.map((c) => [c.name, c.what])),
    cases: results,
    scaling: scale,
    table: text,
    missing: absent,
    nvme: { secondsPerCase: nvmeSeconds, mode: 'cdev', results: nvme, table: nvmeText },
  };
  const file = opts.quick ? join(build, 'results-quick.json') : join(repo, 'bench/results.json');
  writeFileSync(file, `${JSON.stringify(report, null, 2)}\n`);
  // A full run of the default modes is the published one: its table goes
  // into the READMEs, so that they always show the latest numbers.
  if (!opts.quick && opts.modes.join(' ') === DEFAULT_MODES.join(' ')) {
    const stamp =
      `Run of ${report.generated.slice(0, 10)}: \`${report.command}\`, ${opts.rounds} rounds per mode, ${seconds} s; ` +
      `host load ${hostBefore.loadavg[0]} before, ${hostAfter.loadavg[0]} after (${cpus().length} cores); ` +
      `guest kernel ${String(report.guest[0]?.['kernel'] ?? '?')}, Node ${process.version}. Times per operation (per interrupt for \`irq*\`).`;
    for (const doc of ['README.md', 'bench/README.md']) {
      const path = join(repo, doc);
      const updated = publishBetweenMarkers(readFileSync(path, 'utf8'), `${stamp}\n\n${text}`);
      if (updated === null) process.stderr.write(`bench: ${doc} has no table markers; not updated\n`);
      else writeFileSync(path, updated);
      const withNvme = publishNvme(
        readFileSync(path, 'utf8'),
        `Same run, cdev mode, ${nvmeSeconds} s per case: 4 KiB random reads.\n\n${nvmeText}`,
      );
      if (withNvme !== null) writeFileSync(path, withNvme);
    }
  }

  const targets = [...results.map((r) => r.met), ...scale.map((s) => s.met)].filter((m) => m !== null);
  const metCount = targets.filter((m) => m).length;
  process.stdout.write(`\n${text}\n\nNVMe, 4 KiB random reads (TS driver vs the kernel's nvme driver + fio):\n\n${nvmeText}\n\n`);
  const loads = during.map((d) => d.load1);
  const vms = during.map((d) => d.qemuProcesses);
  process.stdout.write(
    `bench: ${opts.rounds} rounds per mode, ${seconds} s. Host (${cpus().length} cores): load ${hostBefore.loadavg[0]} before, ` +
      (loads.length > 0 ? `${Math.min(...loads)}..${Math.max(...loads)} during, ` : '') +
      `${hostAfter.loadavg[0]} after; QEMU processes ${hostBefore.qemuProcesses} before` +
      (vms.length > 0 ? `, ${Math.min(...vms)}..${Math.max(...vms)} during (ours included)` : '') +
      '\n',
  );
  process.stdout.write(`bench: targets met ${metCount} of ${targets.length}; wrote ${file}\n`);
  if (run.code !== 0) process.stderr.write(`bench: the VM run exited with ${run.code}\n`);
  const nvmeAbsent = nvmeAbsentMachine
    ? []
    : nvme.filter((r) => r.ts === null || r.kernel === null).map((r) => `nvme QD${r.qd} ${r.completions}`);
  if (nvmeAbsent.length > 0) process.stderr.write(`bench: no result for ${nvmeAbsent.join(', ')}\n`);
  if (absent.length > 0 || nvmeAbsent.length > 0) {
    if (absent.length > 0) process.stderr.write(`bench: no result for ${absent.join(', ')}\n`);
    return 1;
  }
  return run.code === 0 ? 0 : 1;
}

process.exitCode = await main();
