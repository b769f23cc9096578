/**
 * The floor benchmarks (bench/floors/*.cu: `npm run bench -- decode-floor`,
 * `gate-floor`) are compiled by nvcc on the GPU machine at run time, against
 * the kernels' own PTX wrappers (native/kernels/common/). Compiling them here
 * keeps a change to those headers from breaking them unnoticed; they cannot
 * run without a GPU.
 */
import { mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

import { expect, it } from 'vitest';

import { findNvcc, floorNvccArgs } from '../bench/_floor.js';
import { runCommand } from './helpers/child-process.js';

const root = fileURLToPath(new URL('..', import.meta.url));
const floorsDir = join(root, 'bench', 'floors');
const floors = readdirSync(floorsDir).filter((f) => f.endsWith('.cu')).sort();
const nvcc: string | undefined = findNvcc();

it('finds the floor benchmarks', () => {
  expect(floors).toEqual(expect.arrayContaining(['decode_step.cu', 'gate_step.cu']));
});

for (const file of floors) {
  it.skipIf(!nvcc)(`bench/floors/${file} compiles for sm_90a${nvcc ? '' : ' (skipped: no nvcc in CUDA_HOME or /usr/local/cuda)'}`, async () => {
    const dir = mkdtempSync(join(tmpdir(), 'moba-floor-build-'));
    try {
      // The benchmark's own nvcc arguments, compiling only.
      const built = await runCommand(nvcc!, floorNvccArgs(file, join(dir, 'floor.o'), true));
      expect(built.status, built.out).toBe(0);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }, 300_000);
}
