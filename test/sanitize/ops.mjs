// Every kernel family of the package on small shapes, each op run twice: the
// two outputs must be bit-identical and finite (rows given NaN/Inf excepted).
// Small enough to run under compute-sanitizer, which is what it is for:
//
//   for t in memcheck racecheck initcheck synccheck; do
//     compute-sanitizer --tool $t node test/sanitize/ops.mjs; done
//   MOBA_ATTN_KERNEL=sm80 compute-sanitizer --tool racecheck node test/sanitize/ops.mjs
//
// MOBA_SANITIZE_BACKEND=cpu runs it on the CPU backend; MOBA_SANITIZE_ONLY=text
// runs only the cases whose name contains it. Exits 1 if any op differs
// between its runs or gives an unexpected non-finite value.
import { KVCache, MobaAttention, flashAttention, mobaAttention, mobaGate, openDevice } from '../../dist/index.js';
import { makeRng } from '../helpers/rng.mjs';

const device = openDevice({ backend: process.env.MOBA_SANITIZE_BACKEND || 'cuda' });
const rng = makeRng(Number(process.env.MOBA_SEED || 12345));
const randn = (n) => Float32Array.from({ length: n }, () => rng.normal());
const prefix = (lens) => Int32Array.from([0, ...lens.map((_, i) => lens.slice(0, i + 1).reduce((x, y) => x + y, 0))]);
const only = process.env.MOBA_SANITIZE_ONLY ?? '';
const upload = (data, dtype, shape) => device.tensor(data, { dtype, shape });

let ran = 0;
let bad = 0;
async function compare(name, a, b, { nonFiniteOk = false } = {}) {
  const [x, y] = [await a.toArray(), await b.toArray()];
  let differ = 0;
  let nonFinite = 0;
  for (let i = 0; i < x.length; i++) {
    if (!Object.is(x[i], y[i])) differ++;
    if (!Number.isFinite(x[i])) nonFinite++;
  }
  const ok = differ === 0 && (nonFiniteOk || nonFinite === 0);
  ran++;
  if (!ok) bad++;
  console.log(`${ok ? 'OK ' : 'BAD'} ${name}: ${x.length} values, ${differ} differ, ${nonFinite} non-finite`);
}
/** Runs `op` twice and compares every returned tensor. */
async function twice(name, op, opts) {
  const [a, b] = [op(), op()];
  const parts = (r) => (r.out ? [r.out, r.lse] : [r]);
  const [pa, pb] = [parts(a), parts(b)];
  for (let i = 0; i < pa.length; i++) await compare(i ? `${name} (lse)` : name, pa[i], pb[i], opts);
  for (const t of [...pa, ...pb]) t.dispose();
}

// The ops on contiguous tensors: gate (topK 1, lists of 8, 16 and 24, the
// large-topK kernel, the exact kernel for rows with NaN/Inf), sparse and dense
// MoBA attention, flash attention.
const opCases = [
  // name, query lengths, key lengths (chunked queries), Hq, Hkv, D, dtype, chunkSize, topK
  ['GQA 4:1, bf16, D 128, (64, 3)', [700, 1300], null, 8, 2, 128, 'bf16', 64, 3],
  ['f16, D 64, (128, 8)', [2100, 333], null, 4, 4, 64, 'f16', 128, 8],
  ['chunked queries, (100, 12)', [300, 257], [1800, 1257], 4, 1, 128, 'bf16', 100, 12],
  ['topK 40 (large-topK kernel), D 64', [1500], null, 2, 2, 64, 'bf16', 48, 40],
  ['topK 64 (large-topK kernel), chunked, D 128', [200, 90], [1400, 1090], 4, 2, 128, 'f16', 16, 64],
  ['topK 200 (large-topK kernel, 32-row CTAs), D 128', [1400], null, 2, 1, 128, 'bf16', 4, 200],
  ['f16, (512, 3)', [3000], null, 2, 1, 128, 'f16', 512, 3],
  ['blocks of 16, lengths 5 and 1', [900, 5, 1], null, 2, 2, 128, 'bf16', 16, 2],
  ['topK 1 (own block, nothing scored), chunked', [300, 1], [1800, 700], 4, 2, 128, 'bf16', 64, 1],
];
for (const [name, lensQ, lensK, Hq, Hkv, D, dtype, chunkSize, topK] of opCases) {
  if (!name.includes(only)) continue;
  const cuSeqlensQ = prefix(lensQ);
  const cuSeqlensK = prefix(lensK ?? lensQ);
  const tq = cuSeqlensQ[lensQ.length];
  const tk = cuSeqlensK[lensQ.length];
  const qData = randn(tq * Hq * D);
  const q = upload(qData, dtype, [tq, Hq, D]);
  const k = upload(randn(tk * Hkv * D), dtype, [tk, Hkv, D]);
  const v = upload(randn(tk * Hkv * D), dtype, [tk, Hkv, D]);
  const gate = { cuSeqlensQ, cuSeqlensK, chunkSize, topK };
  await twice(`mobaGate, ${name}`, () => mobaGate(q, k, gate));
  await twice(`mobaAttention, ${name}`, () => mobaAttention(q, k, v, { ...gate, returnLse: true }));
  for (const causal of [true, false]) {
    await twice(`flashAttention causal ${causal}, ${name}`, () =>
      flashAttention(q, k, v, { cuSeqlensQ, cuSeqlensK, causal, returnLse: causal }));
  }
  // A NaN and an Inf in q: those rows take the gate's exact kernel and give NaN outputs.
  qData[3] = NaN;
  qData[Hq * D * 5 + 7] = Infinity;
  const qBad = upload(qData, dtype, [tq, Hq, D]);
  await twice(`mobaGate with NaN/Inf in q, ${name}`, () => mobaGate(qBad, k, gate));
  await twice(`mobaAttention with NaN/Inf in q, ${name}`, () => mobaAttention(qBad, k, v, gate), { nonFiniteOk: true });
  for (const t of [q, k, v, qBad]) t.dispose();
}

// The KV cache: appends, the gather of chunked prefill, decode of 1 and 4
// tokens with the full and moba policies, key sums per page and per block,
// forks (copy-on-write of a shared partial page).
const kvCases = [
  // name, pageSize, key-sum block (cache chunkSize), layer chunkSize, topK
  ['pages of 16, sums per block of 128', 16, 128, 128, 3],
  ['pages of 64, sums per page, blocks of 512', 64, 64, 512, 3],
  ['pages of 16, sums per page, blocks of 64', 16, 16, 64, 8],
];
for (const [name, pageSize, sumChunk, chunkSize, topK] of kvCases) {
  if (!name.includes(only)) continue;
  const [Hq, Hkv, D, dtype] = [16, 4, 128, 'bf16'];
  const cache = new KVCache(device, { numLayers: 2, numPages: 2048, pageSize, chunkSize: sumChunk, numKVHeads: Hkv, headDim: D, dtype });
  const layers = ['full', 'moba'].map((decode) => new MobaAttention(device, { numQHeads: Hq, numKVHeads: Hkv, headDim: D, chunkSize, topK, decode, dtype }));
  const seqs = [cache.addSequence(), cache.addSequence(), cache.addSequence()];
  const rows = (n, H) => upload(randn(n * H * D), dtype, [n, H, D]);
  // Prefill in two chunks (the second mixed with decode rows), forks, then decode steps
  // (entries: [index into seqs, new tokens]; seqs[3] is the fork).
  const steps = [
    [[0, 3000], [1, 1100], [2, 37]],
    [[0, 333], [1, 1], [2, 1]],
    'fork',
    [[0, 1], [1, 4], [2, 1], [3, 1]],
    [[0, 4], [1, 1], [2, 2], [3, 1]],
  ];
  for (let s = 0; s < steps.length; s++) {
    if (steps[s] === 'fork') {
      seqs.push(cache.fork(seqs[1]));
      continue;
    }
    const plan = cache.plan(steps[s].map(([i, newTokens]) => ({ seq: seqs[i], newTokens })));
    const n = plan.numRows;
    const q = rows(n, Hq);
    for (let l = 0; l < layers.length; l++) {
      const [k, v] = [rows(n, Hkv), rows(n, Hkv)];
      const out = layers[l].forward(cache, l, plan, q, k, v);
      const [a, b] = [layers[l].attend(cache, l, plan, q), layers[l].attend(cache, l, plan, q)];
      const what = `${name}, step ${s} (${n} rows), ${layers[l].decode} decode`;
      await compare(`attend() twice, ${what}`, a, b);
      await compare(`forward() against attend(), ${what}`, out, a);
      for (const t of [k, v, out, a, b]) t.dispose();
    }
    q.dispose();
  }
  for (const l of layers) l.dispose();
  cache.dispose();
}

await device.synchronize();
console.log(`${ran} checks on ${device.backend}, ${bad} bad`);
device.dispose();
process.exit(bad ? 1 : 0);
