// Where the repository is, wherever this module runs from (uapi-gen/*.ts under
// tap, or the compiled dist/uapi-gen/uapi-gen/*.js under npm scripts).
import { existsSync, readFileSync, realpathSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

/** The directory holding this package's package.json (name "vfio"). */
export function repoRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    const pkg = join(dir, 'package.json');
    if (existsSync(pkg) && (JSON.parse(readFileSync(pkg, 'utf8')) as { name?: string }).name === 'vfio') return dir;
    const up = dirname(dir);
    if (up === dir) throw new Error('uapi-gen: cannot find the vfio package root');
    dir = up;
  }
}

/** True when the module at `url` is the program node was started with. */
export function isMain(url: string): boolean {
  const entry = process.argv[1];
  return entry !== undefined && pathToFileURL(realpathSync(entry)).href === url;
}
