// mobaGate speed: batch 2, 16 heads, head dim 128, bf16, random q and k,
// N = 8K/32K/128K tokens per sequence, configs (chunkSize, topK) = (128, 8)
// and (512, 3). Prints a table and writes bench/results/gate-<time>.json.
// `--inputs drift` adds a component shared by every query and a key offset
// that grows along the sequence, as real keys often carry: scores then rise
// with the block index and many blocks score close to the selection
// threshold, which is where an approximate-then-certify gate pays most.
//
//   npm run bench -- gate [--n 8192,32768] [--configs 128:8,512:3] [--reps 20] [--backend cuda]
//                         [--inputs random,drift] [--dim 64]
import { mobaGate, openDevice } from '../dist/index.js';
import { median, randomBf16, writeResults } from './_common.js';

const args = process.argv.slice(2);
const opt = (name, fallback) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? args[i + 1] : fallback;
};
const Ns = opt('n', '8192,32768,131072').split(',').map(Number);
const configs = opt('configs', '128:8,512:3').split(',').map((s) => s.split(':').map(Number));
const reps = Number(opt('reps', '20'));
const backend = opt('backend', 'cuda');
const inputKinds = opt('inputs', 'random').split(',');
const batch = 2;
const heads = 16;
const headDim = Number(opt('dim', '128'));

const device = openDevice({ backend });
console.log(`mobaGate on ${device.name} (${device.backend}), batch ${batch}, ${heads} heads, head dim ${headDim}, bf16, ${reps} reps`);
/** q (or k, with `drift`) as bf16 data: random, plus +-1 per dimension in q and +-1.5 t/N in the key at position t. */
function inputOf(kind, N, seed, isKey) {
  const bits = randomBf16(batch * N * heads * headDim, seed);
  if (kind === 'random') return bits;
  const widened = new Uint32Array(bits.length);
  for (let i = 0; i < bits.length; i++) widened[i] = bits[i] << 16;
  const x = new Float32Array(widened.buffer);
  const rowLen = heads * headDim;
  for (let i = 0; i < x.length; i++) {
    const sign = (i % headDim) % 2 ? 1 : -1;
    x[i] += isKey ? ((1.5 * (Math.floor(i / rowLen) % N)) / N) * sign : sign;
  }
  return x;
}

const rows = [];
const cases = inputKinds.flatMap((kind) => Ns.map((N) => [kind, N]));
for (const [kind, N] of cases) {
  const total = batch * N;
  const q = device.tensor(inputOf(kind, N, 0x9e3779b9 ^ N, false), { dtype: 'bf16', shape: [total, heads, headDim] });
  const k = device.tensor(inputOf(kind, N, 0x85ebca6b ^ N, true), { dtype: 'bf16', shape: [total, heads, headDim] });
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
    const bytes = 2 * total * heads * headDim * 2; // q and k read once
    rows.push({ inputs: kind, N, chunkSize, topK, medianMs: median(times), pipelinedMs: pipelined, qkTBps: bytes / (pipelined * 1e-3) / 1e12 });
  }
  q.dispose();
  k.dispose();
}
device.dispose();

const pad = (s, n) => String(s).padStart(n);
console.log(`${pad('inputs', 7)} ${pad('N', 7)} ${pad('(B, K)', 10)} ${pad('median ms', 10)} ${pad('per call ms', 12)} ${pad('q+k TB/s', 9)}`);
for (const r of rows) {
  console.log(`${pad(r.inputs, 7)} ${pad(r.N, 7)} ${pad(`(${r.chunkSize}, ${r.topK})`, 10)} ${pad(r.medianMs.toFixed(3), 10)} ${pad(r.pipelinedMs.toFixed(3), 12)} ${pad(r.qkTBps.toFixed(2), 9)}`);
}
writeResults('gate', { date: new Date().toISOString(), device: device.name, batch, heads, headDim, rows });
