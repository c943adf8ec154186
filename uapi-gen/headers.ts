// Finds the kernel uapi headers to generate from. They are never vendored
// into the repository (they are the kernel's code); instead the newest
// `linux-libc-dev` is downloaded from Debian sid into a per-user cache and
// unpacked there, or the caller names a directory with `--headers DIR`.
//
// Guarantees:
// - The machine's apt configuration is never touched: apt-get runs with a
//   private sources file, lists and cache under the cache directory.
// - A cached, unpacked version is reused as is; the network is needed only to
//   learn the newest version and to download a version not cached yet.
// - The cache entry becomes visible only once fully unpacked (unpack into a
//   temporary directory, then rename), so an interrupted run leaves no half
//   tree that a later run would trust.
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { join, resolve } from 'node:path';

export interface HeaderSource {
  /** Directory with linux/vfio.h (and asm/ for x86-64 when from the package). */
  readonly includeDir: string;
  /** Extra include directories gcc needs (the multiarch asm directory). */
  readonly extraIncludeDirs: readonly string[];
  /** The stamp written into the generated modules. */
  readonly stamp: string;
}

export class HeaderError extends Error {
  override name = 'HeaderError';
}

const PACKAGE = 'linux-libc-dev';
const MIRROR = 'http://deb.debian.org/debian';
const SUITE = 'sid';
const KEYRING = '/usr/share/keyrings/debian-archive-keyring.gpg';
const MULTIARCH = 'x86_64-linux-gnu';

/** `${XDG_CACHE_HOME:-~/.cache}/vfio/uapi`. */
export function cacheRoot(): string {
  const xdg = process.env['XDG_CACHE_HOME'];
  return join(xdg !== undefined && xdg !== '' ? xdg : join(homedir(), '.cache'), 'vfio', 'uapi');
}

export function stampFor(version: string): string {
  return `${PACKAGE} ${version}`;
}

/** The source for a cached package version, or undefined if it is not cached. */
export function cachedSource(version: string): HeaderSource | undefined {
  const root = join(cacheRoot(), version);
  const includeDir = join(root, 'usr', 'include');
  if (!existsSync(join(includeDir, 'linux', 'vfio.h'))) return undefined;
  return { includeDir, extraIncludeDirs: [join(includeDir, MULTIARCH)], stamp: stampFor(version) };
}

/** A directory given on the command line; stamped from its linux/version.h. */
export function directorySource(dir: string): HeaderSource {
  const includeDir = resolve(dir);
  if (!existsSync(join(includeDir, 'linux', 'vfio.h'))) {
    throw new HeaderError(`${includeDir} has no linux/vfio.h (pass the include directory, e.g. /usr/include)`);
  }
  let kernel = 'unknown';
  const versionH = join(includeDir, 'linux', 'version.h');
  if (existsSync(versionH)) {
    const text = readFileSync(versionH, 'utf8');
    const part = (n: string): string | undefined => new RegExp(`#define LINUX_VERSION_${n}\\s+(\\d+)`).exec(text)?.[1];
    const [a, b, c] = [part('MAJOR'), part('PATCHLEVEL'), part('SUBLEVEL')];
    if (a !== undefined && b !== undefined && c !== undefined) kernel = `${a}.${b}.${c}`;
  }
  const multiarch = join(includeDir, MULTIARCH);
  return {
    includeDir,
    extraIncludeDirs: existsSync(multiarch) ? [multiarch] : [],
    stamp: `linux uapi headers ${kernel} (--headers)`,
  };
}

function aptOptions(root: string): string[] {
  const sources = join(root, 'apt', 'sources.list');
  return [
    '-o',
    `Dir::Etc::SourceList=${sources}`,
    '-o',
    'Dir::Etc::SourceParts=-',
    '-o',
    `Dir::State::Lists=${join(root, 'apt', 'lists')}`,
    '-o',
    `Dir::Cache=${join(root, 'apt', 'cache')}`,
    // The private lists belong to whoever runs the generator; as root, apt would
    // otherwise drop to the _apt user, which cannot write them.
    '-o',
    'APT::Sandbox::User=root',
    '-q',
  ];
}

function run(cmd: string, args: string[], cwd?: string): string {
  try {
    return execFileSync(cmd, args, { cwd, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
  } catch (err) {
    const e = err as { stderr?: string; message: string };
    // The last argument names the action (`update`, `linux-libc-dev=7.2.13-1`, the .deb).
    throw new HeaderError(`${cmd} ${args[args.length - 1] ?? ''} failed: ${(e.stderr ?? e.message).trim()}`);
  }
}

/** Asks Debian sid (through a private apt state) for the newest version. */
function newestVersion(root: string): string {
  mkdirSync(join(root, 'apt', 'lists', 'partial'), { recursive: true });
  mkdirSync(join(root, 'apt', 'cache', 'archives', 'partial'), { recursive: true });
  writeFileSync(join(root, 'apt', 'sources.list'), `deb [signed-by=${KEYRING}] ${MIRROR} ${SUITE} main\n`);
  const opts = aptOptions(root);
  run('apt-get', [...opts, 'update']);
  // `madison` lists only what the repositories offer, never the installed package.
  const listed = run('apt-cache', [...opts, 'madison', PACKAGE]);
  const versions = [...listed.matchAll(/^\s*\S+\s*\|\s*(\S+)\s*\|.*Packages$/gm)].map((m) => m[1]!);
  const version = versions.sort(compareDebianVersions).pop();
  if (version === undefined) throw new HeaderError(`Debian ${SUITE} lists no ${PACKAGE}`);
  return version;
}

function download(root: string, version: string): HeaderSource {
  const work = join(root, `.download-${process.pid}`);
  rmSync(work, { recursive: true, force: true });
  mkdirSync(work, { recursive: true });
  try {
    run('apt-get', [...aptOptions(root), 'download', `${PACKAGE}=${version}`], work);
    const deb = readdirSync(work).find((f) => f.endsWith('.deb'));
    if (deb === undefined) throw new HeaderError(`apt-get download left no .deb in ${work}`);
    const tree = join(work, 'tree');
    run('dpkg-deb', ['-x', join(work, deb), tree]);
    writeFileSync(join(tree, 'VERSION'), `${version}\n`);
    const target = join(root, version);
    rmSync(target, { recursive: true, force: true });
    renameSync(tree, target);
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
  const source = cachedSource(version);
  if (source === undefined) throw new HeaderError(`${PACKAGE} ${version} has no linux/vfio.h`);
  return source;
}

/** Versions present in the cache (unordered). */
export function cachedVersions(): string[] {
  const root = cacheRoot();
  if (!existsSync(root)) return [];
  return readdirSync(root).filter((d) => !d.startsWith('.') && d !== 'apt' && cachedSource(d) !== undefined);
}

/**
 * The newest linux-libc-dev in Debian sid, downloaded into the cache unless
 * already there. With `offline`, or when apt cannot reach the mirror, falls
 * back to the newest cached version (saying so on stderr).
 */
export function newestSource(opts: { offline?: boolean } = {}): HeaderSource {
  const root = cacheRoot();
  mkdirSync(root, { recursive: true });
  let version: string | undefined;
  if (!opts.offline) {
    try {
      version = newestVersion(root);
    } catch (err) {
      process.stderr.write(`uapi: cannot ask Debian for the newest ${PACKAGE} (${(err as Error).message}); trying the cache\n`);
    }
  }
  if (version === undefined) {
    const cached = cachedVersions().sort(compareDebianVersions);
    version = cached[cached.length - 1];
    if (version === undefined) throw new HeaderError(`no cached ${PACKAGE} in ${root} and no network: pass --headers DIR`);
    process.stderr.write(`uapi: using cached ${PACKAGE} ${version}\n`);
  }
  return cachedSource(version) ?? download(root, version);
}

/** dpkg's own version ordering (`dpkg --compare-versions`). */
function compareDebianVersions(a: string, b: string): number {
  if (a === b) return 0;
  try {
    execFileSync('dpkg', ['--compare-versions', a, 'lt', b], { stdio: 'ignore' });
    return -1;
  } catch {
    return 1;
  }
}

/** Parses the version out of a stamp written by `stampFor`, if it is one. */
export function versionOfStamp(stamp: string): string | undefined {
  return stamp.startsWith(`${PACKAGE} `) ? stamp.slice(PACKAGE.length + 1) : undefined;
}
