// The floor of a batch-1 moba (512, 3) decode step at 128K: the step's
// structure (wait for the grid ahead, read the union, look up its pages,
// stream 18.9 MB of K and V, the gate's hand-off between CTAs, the split-KV
// merge) with no attention math, from bench/floors/decode_step.cu, which this
// compiles with nvcc (sm_90a) and runs. What a real step costs against it:
// `npm run bench -- decode --cases moba`. Writes bench/results/decode-floor-<time>.json.
//
//   npm run bench -- decode-floor
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { benchDir, rootDir, writeResults } from './_common.js';

const candidates = [process.env.CUDA_HOME && join(process.env.CUDA_HOME, 'bin', 'nvcc'), '/usr/local/cuda/bin/nvcc', 'nvcc'];
const nvcc = candidates.find((p) => p && (p === 'nvcc' || existsSync(p)));
const dir = mkdtempSync(join(tmpdir(), 'moba-floor-'));
const exe = join(dir, 'decode_step');
const build = spawnSync(nvcc, ['-O3', '-std=c++17', '-gencode=arch=compute_90a,code=sm_90a',
  '-I', join(rootDir, 'native', 'kernels'), '-o', exe, join(benchDir, 'floors', 'decode_step.cu')], { encoding: 'utf8' });
if (build.status !== 0) {
  rmSync(dir, { recursive: true, force: true });
  console.error(`decode-floor: nvcc failed (${nvcc}):\n${build.stderr ?? build.error}`);
  process.exit(1);
}
const run = spawnSync(exe, [], { encoding: 'utf8' });
rmSync(dir, { recursive: true, force: true });
process.stdout.write(run.stdout);
if (run.status !== 0) {
  console.error(`decode-floor: the benchmark failed:\n${run.stderr}`);
  process.exit(1);
}
const rows = run.stdout.split('\n').map((l) => l.split('|').map((c) => c.trim())).filter((c) => c.length === 4 && c[1] !== 'best');
const variants = rows.map(([name, best, worst, tbps]) => ({ name, bestUs: Number(best), worstUs: Number(worst), tbps: Number(tbps) || null }));
console.log(`results: ${writeResults('decode-floor', { header: run.stdout.split('\n')[0], variants })}`);
