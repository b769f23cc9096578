/**
 * The CPU backend's block selection (the gate, and MoBA attention and decode
 * on the CPU) against a plain sort of the same fp32 scores: a small C++
 * program (test/native/select_blocks_check.cc) built against
 * native/cpu/moba_select.cc drives every way the selection can go, with
 * ties, NaN, infinities and signed zeros.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

import { expect, it } from 'vitest';

const root = fileURLToPath(new URL('..', import.meta.url));
const cxx = process.env.CXX || 'g++';

it('selects the best blocks of a row exactly as a full sort does, for row lengths around every switch of method', () => {
  const dir = mkdtempSync(join(tmpdir(), 'moba-select-'));
  try {
    const exe = join(dir, 'select_blocks_check');
    execFileSync(cxx, ['-std=c++17', '-O2', '-pthread', '-o', exe, join(root, 'test/native/select_blocks_check.cc'),
      join(root, 'native/cpu/moba_select.cc'), join(root, 'native/cpu/thread_pool.cc')], { stdio: 'pipe' });
    const r = spawnSync(exe, { encoding: 'utf8', timeout: 60_000 });
    expect({ status: r.status, signal: r.signal, stdout: r.stdout }).toEqual({ status: 0, signal: null, stdout: 'ok\n' });
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}, 120_000);
