/**
 * Arrays on a SharedArrayBuffer: tensor data is accepted (copied at the
 * call), and cuSeqlens that another thread rewrites while ops are enqueued
 * never reach the kernels unchecked (they are checked and used as a private
 * copy; a change between the check and the kernels' reads used to crash the
 * process). The race runs in a child process.
 */
import { expect, it } from 'vitest';

import { flashAttention, openDevice } from '../lib/index.js';
import { distEntry as entry, runModule } from './helpers/child-process.js';
import { expectMobaError } from './helpers/errors.js';

it('tensor data on a SharedArrayBuffer uploads like any other array', async () => {
  using device = openDevice({ backend: 'cpu' });
  const values = [1.5, -2, 3.25, 0.125];
  for (const dtype of ['f32', 'bf16', 'f16'] as const) {
    const data = new Float32Array(new SharedArrayBuffer(16));
    data.set(values);
    using t = device.tensor(data, { dtype, shape: [4] });
    data.fill(7);  // after the call: not seen
    expect(Array.from(await t.toArray())).toEqual(values);
  }
  const ints = new Int32Array(new SharedArrayBuffer(8));
  ints.set([3, -4]);
  using ti = device.tensor(ints, { dtype: 'i32', shape: [2] });
  expect(Array.from(await ti.toArray())).toEqual([3, -4]);
});

it('cuSeqlensQ rewritten by another thread while ops are enqueued: EINVAL or a correct op, never a crash', () => {
  const source = `
    import { Worker } from 'node:worker_threads';
    import { openDevice, mobaAttention, flashAttention, MobaError } from ${JSON.stringify(entry)};
    const device = openDevice({ backend: 'cpu' });
    const T = 64, D = 8;
    const x = new Float32Array(T * D).map((_, i) => Math.sin(i));
    const q = device.tensor(x, { dtype: 'bf16', shape: [T, 1, D] });
    const cuQ = new Int32Array(new SharedArrayBuffer(8));
    cuQ[1] = T;
    const w = new Worker(\`
      import { workerData } from 'node:worker_threads';
      const c = new Int32Array(workerData);
      const end = Date.now() + 1500;
      while (Date.now() < end) for (let i = 0; i < 1000; i++) { c[1] = ${'${T}'}; c[1] = 50000000; }
      c[1] = ${'${T}'};\`, { eval: true, workerData: cuQ.buffer, execArgv: ['--input-type=module'] });
    await new Promise((r) => setTimeout(r, 20));
    let ran = 0, refused = 0;
    const end = Date.now() + 1200;
    while (Date.now() < end) {
      for (let i = 0; i < 100; i++) {
        try {
          (i % 2 ? flashAttention(q, q, q, { cuSeqlensQ: cuQ, causal: true })
                 : mobaAttention(q, q, q, { cuSeqlensQ: cuQ, chunkSize: 16, topK: 2 })).dispose();
          ran++;
        } catch (e) {
          if (!(e instanceof MobaError) || e.code !== 'EINVAL') throw e;
          refused++;
        }
      }
      await device.synchronize();
    }
    await new Promise((r) => w.on('exit', r));
    console.log('end of script', ran, refused);
  `;
  const r = runModule(source);
  expect(r.stdout, r.stderr).toContain('end of script');
  expect({ status: r.status, signal: r.signal }).toEqual({ status: 0, signal: null });
});

it('a Proxy of an Int32Array is refused as cuSeqlens', () => {
  using device = openDevice({ backend: 'cpu' });
  using q = device.tensor(new Float32Array(4 * 8).fill(0.5), { dtype: 'bf16', shape: [4, 1, 8] });
  const err = expectMobaError(() => flashAttention(q, q, q, { cuSeqlensQ: new Proxy(new Int32Array([0, 4]), {}) }), 'EINVAL');
  expect(err.message).toMatch(/^Expected an Int32Array of prefix sums \[batch\+1\] for cuSeqlensQ/);
});
