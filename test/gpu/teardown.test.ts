/**
 * The CUDA side of test/teardown.test.ts: a process ends cleanly when CUDA
 * devices are alive at exit, and when workers holding CUDA devices are
 * terminated while their reads complete (the waiter thread then posts
 * completions into an environment being torn down). Each case runs in a
 * child process.
 */
import { it } from 'vitest';

import { describeCuda } from '../helpers/backends.js';
import { expectCleanExit, terminatedWorkers } from '../helpers/child-process.js';

const cases: [string, string][] = [
  ['two CUDA devices alive at exit, one with a read queued', `
    const a = openDevice({ backend: 'cuda' });
    const b = openDevice({ backend: 'cuda' });
    void b.tensor(new Float32Array(1 << 20).fill(1), { dtype: 'f32', shape: [1 << 20] }).toArray();`],
  ['workers with CUDA devices terminated while 64 reads each complete', terminatedWorkers('cuda', 4, 10, 10)],
];

describeCuda('CUDA devices at exit and in terminated workers', () => {
  it.each(cases)('%s: the process exits with code 0', (_, body) => expectCleanExit(body));
});
