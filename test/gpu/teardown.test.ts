/**
 * The CUDA side of test/teardown.test.ts: a process ends cleanly when CUDA
 * devices are alive at exit, and when workers holding CUDA devices are
 * terminated while their reads complete (the waiter thread then posts
 * completions into an environment being torn down). Each case runs in a
 * child process.
 */
import { expect, it } from 'vitest';

import { describeCuda } from '../helpers/backends.js';
import { distEntry as entry, runModule } from '../helpers/child-process.js';

const cases: [string, string][] = [
  ['two CUDA devices alive at exit, one with a read queued', `
    const a = openDevice({ backend: 'cuda' });
    const b = openDevice({ backend: 'cuda' });
    void b.tensor(new Float32Array(1 << 20).fill(1), { dtype: 'f32', shape: [1 << 20] }).toArray();`],
  ['workers with CUDA devices terminated while 64 reads each complete', `
    const { Worker } = await import('node:worker_threads');
    for (let round = 0; round < 4; round++) {
      const w = new Worker(\`
        import { parentPort } from 'node:worker_threads';
        import { openDevice } from ${JSON.stringify(entry)};
        const devices = [openDevice({ backend: 'cuda' }), openDevice({ backend: 'cuda' })];
        for (let i = 0; i < 64; i++) {
          const n = 1 << (10 + (i % 10));
          void devices[i % 2].tensor(new Float32Array(n).fill(i), { dtype: 'f32', shape: [n] }).toArray();
        }
        parentPort.postMessage('queued');
        setInterval(() => {}, 1000);\`, { eval: true, execArgv: ['--input-type=module'] });
      await new Promise((resolve) => w.once('message', resolve));
      await w.terminate();
    }
    void openDevice;`],
];

describeCuda('CUDA devices at exit and in terminated workers', () => {
  it.each(cases)('%s: the process exits with code 0', (_, body) => {
    const r = runModule(`import { openDevice } from ${JSON.stringify(entry)};\n${body}\nconsole.log('end of script');\n`);
    expect(r.stdout, r.stderr).toContain('end of script');
    expect({ status: r.status, signal: r.signal, stderr: r.stderr }).toEqual({ status: 0, signal: null, stderr: '' });
  });
});
