/**
 * `npm start`: prints what `moba-cuda info` prints, then runs every op on a
 * small random batch and checks it against the float64 reference.
 */
import { flashAttention, mobaAttention } from './attention.js';
import { openDevice } from './device.js';
import { mobaGate } from './gating.js';
import { formatInfo, infoReport } from './info.js';
import * as reference from './reference/index.js';

function randn(n: number, seed: number): Float32Array {
  let s = seed >>> 0;
  const next = () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = Math.sqrt(-2 * Math.log(1 - next())) * Math.cos(2 * Math.PI * next());
  return out;
}

function relL2(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let num = 0;
  let den = 0;
  for (let i = 0; i < a.length; i++) {
    num += (a[i]! - b[i]!) ** 2;
    den += b[i]! ** 2;
  }
  return Math.sqrt(num / den);
}

async function main(): Promise<void> {
  console.log(formatInfo(infoReport()));
  console.log();
  using device = openDevice();
  const numQHeads = 8;
  const numKVHeads = 2;
  const headDim = 64;
  const cuSeqlens = new Int32Array([0, 700, 1000]);
  const total = 1000;
  const chunkSize = 128;
  const topK = 3;
  const seed = Date.now() >>> 0;
  const qHost = randn(total * numQHeads * headDim, seed);
  const kHost = randn(total * numKVHeads * headDim, seed + 1);
  const vHost = randn(total * numKVHeads * headDim, seed + 2);
  using q = device.tensor(qHost, { dtype: 'bf16', shape: [total, numQHeads, headDim] });
  using k = device.tensor(kHost, { dtype: 'bf16', shape: [total, numKVHeads, headDim] });
  using v = device.tensor(vHost, { dtype: 'bf16', shape: [total, numKVHeads, headDim] });
  // The reference sees exactly the bf16 values the device holds.
  const [qr, kr, vr] = await Promise.all([q.toArray(), k.toArray(), v.toArray()]);
  const shape = { numQHeads, numKVHeads, headDim, cuSeqlensQ: cuSeqlens };

  const t0 = performance.now();
  using idx = mobaGate(q, k, { cuSeqlensQ: cuSeqlens, chunkSize, topK });
  using out = mobaAttention(q, k, v, { cuSeqlensQ: cuSeqlens, chunkSize, topK });
  using dense = flashAttention(q, k, v, { cuSeqlensQ: cuSeqlens, causal: true });
  const [gotIdx, gotMoba, gotDense] = await Promise.all([idx.toArray(), out.toArray(), dense.toArray()]);
  const ms = performance.now() - t0;

  const refIdx = reference.mobaGate(qr, kr, { ...shape, chunkSize, topK });
  let same = 0;
  for (let i = 0; i < refIdx.length; i++) if (refIdx[i] === gotIdx[i]) same++;
  const refMoba = reference.mobaAttention(qr, kr, vr, { ...shape, chunkSize, topK });
  const refDense = reference.flashAttention(qr, kr, vr, { ...shape, causal: true });
  console.log(`batch of 2 sequences (700 + 300 tokens), ${numQHeads} query / ${numKVHeads} KV heads, head dim ${headDim}, bf16`);
  console.log(`mobaGate (chunk ${chunkSize}, topK ${topK}): ${same}/${refIdx.length} indices equal the float64 reference`);
  console.log(`mobaAttention: relative L2 error vs float64 reference ${relL2(gotMoba, refMoba.out).toExponential(2)}`);
  console.log(`flashAttention (causal): relative L2 error vs float64 reference ${relL2(gotDense, refDense.out).toExponential(2)}`);
  console.log(`three ops on ${device.backend}: ${ms.toFixed(1)} ms including read-back`);
}

main().catch((err: unknown) => {
  console.error(err);
  process.exitCode = 1;
});
