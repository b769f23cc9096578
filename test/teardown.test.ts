/**
 * A process ends cleanly however many devices it opened. At exit Node frees
 * every device's completion channel itself, and a device collected after that
 * must not touch its channel (that used to abort the process with SIGABRT as
 * soon as two devices had existed), and work completing while a worker's
 * environment is torn down must not throw out of its callback (that aborted
 * too). Each case runs in a child process.
 */
import { it } from 'vitest';

import { distEntry as entry, expectCleanExit, terminatedWorkers } from './helpers/child-process.js';

const cases: [string, string][] = [
  ['two devices alive at exit', `
    const a = openDevice({ backend: 'cpu' });
    const b = openDevice({ backend: 'cpu' });
    const t = b.tensor(new Float32Array([1, 2, 3, 4]), { dtype: 'f32', shape: [4] });`],
  ['a device disposed, then a second one opened and disposed', `
    openDevice({ backend: 'cpu' }).dispose();
    openDevice({ backend: 'cpu' }).dispose();`],
  ['three devices, one with work still queued at exit', `
    const devices = [0, 1, 2].map(() => openDevice({ backend: 'cpu' }));
    const t = devices[1].tensor(new Float32Array(1 << 16).fill(1.5), { dtype: 'f32', shape: [1 << 16] });
    void t.toArray();
    devices[0].dispose();`],
  ['a worker with two devices and queued work, terminated', `
    const { Worker } = await import('node:worker_threads');
    const w = new Worker(\`
      import { parentPort } from 'node:worker_threads';
      import { openDevice } from ${JSON.stringify(entry)};
      const a = openDevice({ backend: 'cpu' });
      const b = openDevice({ backend: 'cpu' });
      const t = b.tensor(new Float32Array(1 << 16).fill(2), { dtype: 'f32', shape: [1 << 16] });
      void t.toArray();
      parentPort.postMessage('queued');
      setInterval(() => {}, 1000);\`, { eval: true, execArgv: ['--input-type=module'] });
    await new Promise((resolve) => w.once('message', resolve));
    await w.terminate();
    void openDevice;`],
  // Completions that reach a worker's environment while it is torn down, when
  // settling their promises fails, used to abort the process.
  ['workers terminated while 64 reads each complete', terminatedWorkers('cpu', 8, 8, 8)],
];

it.each(cases)('%s: the process exits with code 0', (_, body) => expectCleanExit(body));
