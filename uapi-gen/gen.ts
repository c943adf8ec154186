// `npm run uapi:gen`: generates lib/uapi/vfio.ts and lib/uapi/iommufd.ts from
// the kernel's <linux/vfio.h> and <linux/iommufd.h>.
//
//   node dist/uapi-gen/uapi-gen/gen.js [--headers DIR] [--offline] [--out DIR]
//
// Without --headers it uses the newest linux-libc-dev from Debian sid (see
// ./headers.ts). --out defaults to lib/uapi of this repository.
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseHeader } from './cparse.js';
import { emitModule } from './emit.js';
import { directorySource, newestSource, type HeaderSource } from './headers.js';
import { buildModel, type UapiModel } from './model.js';
import { isMain, repoRoot } from './paths.js';

/** The headers generated from, by short name; each becomes lib/uapi/<name>.ts. */
export const HEADERS = ['vfio', 'iommufd'] as const;

export interface Generated {
  readonly model: UapiModel;
  /** Module text by short header name. */
  readonly modules: ReadonlyMap<string, string>;
}

export function generate(source: HeaderSource): Generated {
  const parsed = HEADERS.map((h) => parseHeader(readFileSync(join(source.includeDir, 'linux', `${h}.h`), 'utf8'), h));
  const model = buildModel(parsed);
  const modules = new Map(HEADERS.map((h) => [h, emitModule(model, h, source.stamp)] as const));
  return { model, modules };
}

export interface CliOptions {
  headers?: string;
  offline: boolean;
  out?: string;
}

export function parseArgs(argv: readonly string[], allowed: readonly string[]): CliOptions {
  const opts: CliOptions = { offline: false };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    const value = (): string => {
      const v = argv[++i];
      if (v === undefined) throw new Error(`${a} needs a value`);
      return v;
    };
    if (!allowed.includes(a)) throw new Error(`unknown option ${a} (options: ${allowed.join(' ')})`);
    if (a === '--headers') opts.headers = value();
    else if (a === '--out') opts.out = value();
    else if (a === '--offline') opts.offline = true;
  }
  return opts;
}

export function resolveSource(opts: CliOptions): HeaderSource {
  return opts.headers !== undefined ? directorySource(opts.headers) : newestSource({ offline: opts.offline });
}

function main(): void {
  const opts = parseArgs(process.argv.slice(2), ['--headers', '--offline', '--out']);
  const source = resolveSource(opts);
  const { model, modules } = generate(source);
  const out = opts.out ?? join(repoRoot(), 'lib', 'uapi');
  for (const [name, text] of modules) writeFileSync(join(out, `${name}.ts`), text);
  const ioctls = model.constants.filter((c) => c.ioctl).length;
  process.stdout.write(
    `uapi:gen: ${source.stamp}: ${model.records.length} structs/unions, ${ioctls} ioctls, ` +
      `${model.constants.length - ioctls} constants -> ${[...modules.keys()].map((n) => join(out, `${n}.ts`)).join(', ')}\n`,
  );
  for (const s of model.skipped) process.stdout.write(`uapi:gen: not a constant: ${s.name} (${s.file}.h, ${s.reason})\n`);
}

if (isMain(import.meta.url)) {
  try {
    main();
  } catch (err) {
    process.stderr.write(`uapi:gen: ${(err as Error).message}\n`);
    process.exitCode = 1;
  }
}
