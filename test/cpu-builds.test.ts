/**
 * The CPU backend's tile loop (attendRows, attendRowsHalf: every CPU
 * attention, chunked prefill and decode) is built for several instruction
 * sets and picked at load time (native/cpu/simd_clones.h). Results must not
 * depend on the machine: a small C++ program (test/native/attend_rows_check.cc)
 * is built against the loop's source as shipped and once for each set alone,
 * and every build must print the same hash of its results. Builds for sets
 * this CPU lacks cannot run here; the test names the ones it ran.
 */
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

import { expect, it } from 'vitest';

import { runCommand } from './helpers/child-process.js';

const root = fileURLToPath(new URL('..', import.meta.url));
const cxx = process.env.CXX || 'g++';

function cpuFlags(): Set<string> {
  try {
    const line = readFileSync('/proc/cpuinfo', 'utf8').split('\n').find((l) => l.startsWith('flags'));
    return new Set((line ?? '').split(':')[1]?.trim().split(/\s+/) ?? []);
  } catch {
    return new Set();
  }
}

const x86Linux = process.platform === 'linux' && process.arch === 'x64';
const flags = cpuFlags();
const avx512 = ['avx512f', 'avx512bw', 'avx512cd', 'avx512dq', 'avx512vl'].every((f) => flags.has(f));
// -U__linux__ turns the load-time choice off, leaving one body built for the given flags.
const builds: { name: string; flags: string[] }[] = [
  { name: 'as shipped', flags: [] },
  ...(x86Linux ? [{ name: 'SSE2 alone', flags: ['-U__linux__'] }] : []),
  ...(x86Linux && flags.has('avx2') ? [{ name: 'AVX2 alone', flags: ['-U__linux__', '-mavx2'] }] : []),
  ...(x86Linux && avx512
    ? [{ name: 'AVX-512 body alone', flags: ['-U__linux__', '-march=x86-64-v4', '-DMOBA_CPU_WIDE_ONLY=true'] }]
    : []),
];

it(`the CPU tile loop gives the same bits in every build (${builds.map((b) => b.name).join(', ')})`, async () => {
  const dir = mkdtempSync(join(tmpdir(), 'moba-builds-'));
  try {
    const results = await Promise.all(builds.map(async (b, i) => {
      const exe = join(dir, `check${i}`);
      const built = await runCommand(cxx, ['-std=gnu++17', '-O2', '-ffp-contract=off', ...b.flags, '-o', exe,
        join(root, 'test/native/attend_rows_check.cc'), join(root, 'native/cpu/online_softmax.cc'),
        join(root, 'native/common/dtype.cc')]);
      expect(built.status, `${b.name}: ${built.out}`).toBe(0);
      const ran = await runCommand(exe, []);
      expect(ran.status, `${b.name}: ${ran.out}`).toBe(0);
      return { name: b.name, hash: ran.out.trim() };
    }));
    expect(results[0]!.hash).toMatch(/^hash [0-9a-f]{16} \(\d+ cases\)$/);
    for (const r of results) expect(r.hash, r.name).toBe(results[0]!.hash);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}, 300_000);
