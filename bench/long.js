// One long sequence: MoBA prefill (gate included) and the gate alone on one
// sequence of --n tokens (default 1M), 32 query heads over 8 KV heads, head
// dim 128, bf16, so that q holds 2^32 elements. Uploading 4G random values
// would take minutes, so one period of random tokens (16,411, a prime: no two
// blocks of the sequence are alike) is uploaded and copied along the sequence
// on the device. Dense attention is not run at this size (its FLOPs grow with
// n^2). Prints the times and writes bench/results/long-<time>.json.
//
//   npm run bench -- long [--n 1048576] [--configs 512:3,128:8] [--iters 3]
import { mobaAttention, mobaGate, openDevice } from '../dist/index.js';
import { parseArgs, randomBf16, timeOp, writeResults } from './_common.js';

const opts = parseArgs(process.argv.slice(2));
const n = Number(opts.n ?? 1 << 20);
const configs = String(opts.configs ?? '512:3,128:8').split(',').map((c) => {
  const [chunkSize, topK] = c.split(':').map(Number);
  return { chunkSize, topK };
});
const iters = Number(opts.iters ?? 3);
const [HQ, HKV, D, PERIOD] = [32, 8, 128, 16411];

const device = openDevice();

/** A [n, heads, D] bf16 tensor: one uploaded period of random tokens, repeated on the device. */
function periodic(heads, seed) {
  const row = heads * D;
  const t = device.empty([n, heads, D], 'bf16');
  const period = Math.min(PERIOD, n);
  const src = device.tensor(randomBf16(period * row, seed), { dtype: 'bf16', shape: [period, heads, D] });
  for (let at = 0; at < n; at += period) {
    device.native.copy(t.buffer, at * row * 2, src.buffer, 0, Math.min(period, n - at) * row * 2);
  }
  src.dispose();
  return t;
}

const q = periodic(HQ, 1);
const k = periodic(HKV, 2);
const v = periodic(HKV, 3);
await device.synchronize();
console.log(`long prefill on ${device.name} (${device.backend}): one sequence of ${n} tokens, ${HQ} query / ${HKV} KV heads, ` +
  `head dim ${D}, bf16; q holds ${q.numel} elements`);
const cuSeqlensQ = Int32Array.from([0, n]);
const rows = [];
for (const { chunkSize, topK } of configs) {
  const o = { cuSeqlensQ, chunkSize, topK };
  const gateMs = await timeOp(device, () => mobaGate(q, k, o), { iters });
  const ms = await timeOp(device, () => mobaAttention(q, k, v, o), { iters });
  rows.push({ chunkSize, topK, ms, gateMs });
  console.log(`  MoBA (${chunkSize}, ${topK}): ${ms.toFixed(1)} ms (gate alone ${gateMs.toFixed(2)} ms)`);
}
for (const t of [q, k, v]) t.dispose();
writeResults('long', { date: new Date().toISOString(), device: device.name, n, numQHeads: HQ, numKVHeads: HKV, headDim: D, rows });
