/**
 * Small C++ check programs (test/native/*_check.cc): built with the host
 * compiler (CXX, else g++) against the project's sources, in a temporary
 * directory, then run; each prints "ok" and exits 0 when its checks hold.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = fileURLToPath(new URL('../..', import.meta.url));
const cxx = process.env.CXX || 'g++';

export interface CheckRun {
  status: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
}

/** Compiles `sources` (paths from the project root) with `flags` into `name`, runs it, and removes it. */
export function buildAndRunCheck(name: string, sources: readonly string[], flags: readonly string[]): CheckRun {
  const dir = mkdtempSync(join(tmpdir(), `moba-${name}-`));
  try {
    const exe = join(dir, name);
    execFileSync(cxx, ['-std=c++17', ...flags, '-pthread', '-o', exe, ...sources.map((s) => join(root, s))], { stdio: 'pipe' });
    const r = spawnSync(exe, { encoding: 'utf8', timeout: 60_000 });
    return { status: r.status, signal: r.signal, stdout: r.stdout };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
