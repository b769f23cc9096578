/**
 * The floor benchmarks (bench/floors/*.cu: `npm run bench -- decode-floor`,
 * `gate-floor`) are compiled by nvcc on the GPU machine at run time, against
 * the kernels' own PTX wrappers (native/kernels/common/). Compiling them here
 * keeps a change to those headers from breaking them unnoticed; they cannot
 * run without a GPU.
 */
import { existsSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

import { expect, it } from 'vitest';

import { runCommand } from './helpers/child-process.js';

const root = fileURLToPath(new URL('..', import.meta.url));
const floorsDir = join(root, 'bench', 'floors');
const floors = readdirSync(floorsDir).filter((f) => f.endsWith('.cu')).sort();
const candidates = [process.env.CUDA_HOME && join(process.env.CUDA_HOME, 'bin', 'nvcc'), '/usr/local/cuda/bin/nvcc'];
const nvcc = candidates.find((p): p is string => !!p && existsSync(p));

it('finds the floor benchmarks', () => {
  expect(floors).toEqual(expect.arrayContaining(['decode_step.cu', 'gate_step.cu']));
});

for (const file of floors) {
  it.skipIf(!nvcc)(`bench/floors/${file} compiles for sm_90a${nvcc ? '' : ' (skipped: no nvcc in CUDA_HOME or /usr/local/cuda)'}`, async () => {
    const dir = mkdtempSync(join(tmpdir(), 'moba-floor-build-'));
    try {
      const built = await runCommand(nvcc!, ['-O3', '-std=c++17', '-gencode=arch=compute_90a,code=sm_90a', '-I',
        join(root, 'native', 'kernels'), '-c', '-o', join(dir, 'floor.o'), join(floorsDir, file)]);
      expect(built.status, built.out).toBe(0);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }, 300_000);
}
