// What `vfio bind` remembers so that `vfio unbind` can put a device back:
// its driver and driver_override before the bind. One small JSON file,
// `<stateDir>/bind-state.json` (default /run/vfio: it lives as long as the
// bindings do, and a reboot clears both), written atomically (a temporary
// file renamed over the old one) so a crash never leaves half a file.
//
// Guarantees:
// - A device's first remembered state is kept: binding an already remembered
//   device again does not overwrite what it had before the first bind.
// - Driver names read back are checked to be plain names before they are put
//   into a sysfs path.
import { mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { CliFailure } from './args.js';

export interface Remembered {
  /** The driver bound before `vfio bind`, or null when none was. */
  readonly driver: string | null;
  /** driver_override before `vfio bind`, or null when it was unset. */
  readonly driverOverride: string | null;
}

export type BindState = Record<string, Remembered>;

/** A driver name as sysfs spells it: never a path. */
export function isDriverName(name: string): boolean {
  return /^[A-Za-z0-9_.+-]+$/.test(name) && name !== '.' && name !== '..';
}

function stateFile(dir: string): string {
  return join(dir, 'bind-state.json');
}

function valid(entry: unknown): entry is Remembered {
  if (typeof entry !== 'object' || entry === null) return false;
  const { driver, driverOverride } = entry as Record<string, unknown>;
  const ok = (v: unknown): boolean => v === null || (typeof v === 'string' && isDriverName(v));
  return ok(driver) && ok(driverOverride);
}

/**
 * The remembered states (empty when there is no file yet).
 * @throws CliFailure the file exists but cannot be read or is not ours.
 */
export function loadBindState(dir: string): BindState {
  const path = stateFile(dir);
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return {};
    throw new CliFailure(`cannot read ${path}: ${(err as NodeJS.ErrnoException).code ?? String(err)}`);
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch {
    throw new CliFailure(`${path} is not valid JSON: remove it (the previous drivers it remembered are then forgotten)`);
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) {
    throw new CliFailure(`${path} does not hold a bind state: remove it`);
  }
  const out: BindState = {};
  for (const [address, entry] of Object.entries(parsed)) {
    if (!valid(entry)) throw new CliFailure(`${path} holds a bad entry for ${address}: remove it`);
    out[address] = { driver: entry.driver, driverOverride: entry.driverOverride };
  }
  return out;
}

/**
 * Writes the states (creating the directory).
 * @throws CliFailure when it cannot (binding needs root: /run is root's).
 */
export function saveBindState(dir: string, state: BindState): void {
  const path = stateFile(dir);
  try {
    mkdirSync(dir, { recursive: true, mode: 0o755 });
    const tmp = `${path}.${process.pid}.tmp`;
    writeFileSync(tmp, JSON.stringify(state, null, 2) + '\n', { mode: 0o644 });
    renameSync(tmp, path);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code ?? String(err);
    throw new CliFailure(`cannot write ${path}: ${code}${code === 'EACCES' ? ' (binding drivers needs root: run with sudo)' : ''}`);
  }
}
