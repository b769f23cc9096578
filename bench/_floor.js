// What the floor benchmarks (bench/floors/*.cu) share: each is one CUDA
// program, compiled with nvcc for sm_90a against the kernels' PTX headers
// (native/kernels/common/) and run once; it prints a header line and a
// table of `name | best | worst | rate` rows.
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { benchDir, rootDir } from './_common.js';

/** The nvcc to use: in CUDA_HOME, else the toolkit's usual place; undefined if neither has one. */
export function findNvcc() {
  return [process.env.CUDA_HOME && join(process.env.CUDA_HOME, 'bin', 'nvcc'), '/usr/local/cuda/bin/nvcc']
    .find((p) => p && existsSync(p));
}

/** nvcc's arguments for bench/floors/<source> into `out` (an object file where compileOnly). */
export function floorNvccArgs(source, out, compileOnly = false) {
  return ['-O3', '-std=c++17', '-gencode=arch=compute_90a,code=sm_90a', '-I', join(rootDir, 'native', 'kernels'),
    ...(compileOnly ? ['-c'] : []), '-o', out, join(benchDir, 'floors', source)];
}

/**
 * Builds bench/floors/<source>, runs it (at most timeoutMs), echoes its
 * output and returns it; a failed build or run ends the process with a
 * message naming `bench`.
 */
export function buildAndRunFloor(bench, source, timeoutMs = 600_000) {
  const nvcc = findNvcc() ?? 'nvcc';
  const dir = mkdtempSync(join(tmpdir(), 'moba-floor-'));
  const exe = join(dir, 'floor');
  const build = spawnSync(nvcc, floorNvccArgs(source, exe), { encoding: 'utf8' });
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
