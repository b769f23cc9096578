// mobaGate speed: batch 2, 16 heads, head dim 128, bf16, random q and k,
// N = 8K/32K/128K tokens per sequence, configs (chunkSize, topK) = (128, 8)
// and (512, 3). Prints a table and writes bench/results/gate-<time>.json.
//
//   npm run bench -- gate [--n 8192,32768] [--configs 128:8,512:3] [--reps 20] [--backend cuda]
import { mobaGate, openDevice } from '../dist/index.js';
import { randomBf16, writeResults } from './_common.js';

const args = process.argv.slice(2);
const opt = (name, fallback) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? args[i + 1] : fallback;
};
const Ns = opt('n', '8192,32768,131072').split(',').map(Number);
const configs = opt('configs', '128:8,512:3').split(',').map((s) => s.split(':').map(Number));
const reps = Number(opt('reps', '20'));
const backend = opt('backend', 'cuda');
const batch = 2;
const heads = 16;
const headDim = 128;

const device = openDevice({ backend });
console.log(`mobaGate on ${device.name} (${device.backend}), batch ${batch}, ${heads} heads, head dim ${headDim}, bf16, ${reps} reps`);
const rows = [];
for (const N of Ns) {
  const total = batch * N;
  const q = device.tensor(randomBf16(total * heads * headDim, 0x9e3779b9 ^ N), { dtype: 'bf16', shape: [total, heads, headDim] });
  const k = device.tensor(randomBf16(total * heads * headDim, 0x85ebca6b ^ N), { dtype: 'bf16', shape: [total, heads, headDim] });
  const cu = new Int32Array([0, N, 2 * N]);
  for (const [chunkSize, topK] of configs) {
    const run = () => mobaGate(q, k, { cuSeqlensQ: cu, chunkSize, topK });
    for (let w = 0; w < 3; w++) run().dispose();
    await device.synchronize();
    const times = [];
    for (let r = 0; r < reps; r++) {
      const t0 = performance.now();
      const out = run();
      await device.synchronize();
      times.push(performance.now() - t0);
      out.dispose();
    }
    // Back to back: the stream stays busy, so this is device time per call.
    const t0 = performance.now();
    for (let r = 0; r < reps; r++) run().dispose();
    await device.synchronize();
    const pipelined = (performance.now() - t0) / reps;
    times.sort((a, b) => a - b);
    const median = times[Math.floor(times.length / 2)];
    const bytes = 2 * total * heads * headDim * 2; // q and k read once
    rows.push({ N, chunkSize, topK, medianMs: median, pipelinedMs: pipelined, qkTBps: bytes / (pipelined * 1e-3) / 1e12 });
  }
  q.dispose();
  k.dispose();
}
device.dispose();

const pad = (s, n) => String(s).padStart(n);
console.log(`${pad('N', 7)} ${pad('(B, K)', 10)} ${pad('median ms', 10)} ${pad('per call ms', 12)} ${pad('q+k TB/s', 9)}`);
for (const r of rows) {
  console.log(`${pad(r.N, 7)} ${pad(`(${r.chunkSize}, ${r.topK})`, 10)} ${pad(r.medianMs.toFixed(3), 10)} ${pad(r.pipelinedMs.toFixed(3), 12)} ${pad(r.qkTBps.toFixed(2), 9)}`);
}
writeResults('gate', { date: new Date().toISOString(), device: device.name, batch, heads, headDim, rows });
