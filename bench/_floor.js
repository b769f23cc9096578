// What the floor benchmarks (bench/floors/*.cu) share: each is one CUDA
// program, compiled with nvcc for sm_90a against the kernels' PTX headers
// (native/kernels/common/) and run once; it prints a header line and a
// table of `name | best | worst | rate` rows.
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { benchDir, rootDir } from './_common.js';

/**
 * Builds bench/floors/<source>, runs it (at most timeoutMs), echoes its
 * output and returns it; a failed build or run ends the process with a
 * message naming `bench`.
 */
export function buildAndRunFloor(bench, source, timeoutMs = 600_000) {
  const candidates = [process.env.CUDA_HOME && join(process.env.CUDA_HOME, 'bin', 'nvcc'), '/usr/local/cuda/bin/nvcc', 'nvcc'];
  const nvcc = candidates.find((p) => p && (p === 'nvcc' || existsSync(p)));
  const dir = mkdtempSync(join(tmpdir(), 'moba-floor-'));
  const exe = join(dir, 'floor');
  const build = spawnSync(nvcc, ['-O3', '-std=c++17', '-gencode=arch=compute_90a,code=sm_90a',
    '-I', join(rootDir, 'native', 'kernels'), '-o', exe, join(benchDir, 'floors', source)], { encoding: 'utf8' });
  if (build.status !== 0) {
    rmSync(dir, { recursive: true, force: true });
    console.error(`${bench}: nvcc failed (${nvcc}):\n${build.stderr ?? build.error}`);
    process.exit(1);
  }
  const run = spawnSync(exe, [], { encoding: 'utf8', timeout: timeoutMs });
  rmSync(dir, { recursive: true, force: true });
  process.stdout.write(run.stdout ?? '');
  if (run.status !== 0) {
    console.error(`${bench}: the benchmark failed:\n${run.stderr ?? run.error}`);
    process.exit(1);
  }
  return run.stdout;
}

/** The table rows of a floor's output, as [name, best, worst, rate] strings. */
export function floorRows(output) {
  return output.split('\n').map((l) => l.split('|').map((c) => c.trim())).filter((c) => c.length === 4 && c[1] !== 'best');
}
