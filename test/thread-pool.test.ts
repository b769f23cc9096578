/**
 * The CPU backend's thread pool when a chunk throws (out of memory inside an
 * op, say): the exception must reach the caller after every worker has left
 * the job, and the pool must keep working. A small C++ program
 * (test/native/thread_pool_check.cc) is built against the pool's source and run.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

import { expect, it } from 'vitest';

const root = fileURLToPath(new URL('..', import.meta.url));
const cxx = process.env.CXX || 'g++';

it('a throwing chunk reaches the caller once the workers are out of the job; the pool runs on', () => {
  const dir = mkdtempSync(join(tmpdir(), 'moba-pool-'));
  try {
    const exe = join(dir, 'thread_pool_check');
    execFileSync(cxx, ['-std=c++17', '-O1', '-pthread', '-o', exe,
      join(root, 'test/native/thread_pool_check.cc'), join(root, 'native/cpu/thread_pool.cc')], { stdio: 'pipe' });
    const r = spawnSync(exe, { encoding: 'utf8', timeout: 60_000 });
    expect({ status: r.status, signal: r.signal, stdout: r.stdout }).toEqual({ status: 0, signal: null, stdout: 'ok\n' });
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
