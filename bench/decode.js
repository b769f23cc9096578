// Decode over the paged KV cache: achieved bandwidth of 'full' decode against
// the device copy bandwidth measured in the same run, 'moba' decode against
// 'full' at long context (and 'full' over just the moba union's token count),
// the host cost of one decode step, and the latency of a step whose output
// the host awaits.
//
//   npm run bench -- decode [--page-size 16] [--moba-page-sizes 16,64] [--moba-sum-blocks page,512]
//                           [--moba-shapes 1x131072,4x131072,16x32768] [--moba-layers 16] [--cases full,moba,host] [--quick]
//
// --moba-sum-blocks: the caches' key-sum blocks (KVCacheOptions.chunkSize) for
// the moba rows: 'page' (the default cache, one sum per page) and/or a token
// count (512: one sum per MoBA block).
// --moba-layers: for the moba rows with key sums per block, also a cache of
// this many layers stepped through one layer after another, as a model's
// decode step runs them (0: no such row).
//
// Shape: 32 query heads, 8 KV heads, head dim 128, bf16; one new token per
// sequence, so each step reads the whole cached K and V once.
import { KVCache, MobaAttention, openDevice } from '../dist/index.js';
import { median, randomBf16, writeResults } from './_common.js';

const args = process.argv.slice(2);
const opt = (name, fallback) => {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : fallback;
};
const quick = args.includes('--quick');
const cases = new Set(opt('--cases', 'full,moba,host').split(','));
const pageSize = Number(opt('--page-size', '16'));
const mobaPageSizes = opt('--moba-page-sizes', '16,64').split(',').map(Number);
const mobaShapes = opt('--moba-shapes', quick ? '1x8192' : '1x131072,4x131072,16x32768').split(',').map((x) => x.split('x').map(Number));
const mobaSumBlocks = opt('--moba-sum-blocks', 'page,512').split(',').map((x) => (x === 'page' ? undefined : Number(x)));
const mobaLayers = Number(opt('--moba-layers', quick ? '0' : '16'));
const HQ = 32;
const HKV = 8;
const D = 128;
const FILL_ROWS = 8192;
// The moba layer's block size and topK in every moba row.
const MOBA_CHUNK = 512;
const MOBA_TOPK = 3;

const device = openDevice({ backend: quick ? 'auto' : 'cuda' });
console.log(`device: ${device.name}${device.computeCapability ? ` (sm ${device.computeCapability})` : ''}`);

/** Median of `reps` timings, each the mean over `iters` back-to-back runs (GPU time when the host keeps ahead). */
async function timeOp(fn, { iters, reps = 5, warmup = 3 }) {
  for (let i = 0; i < warmup; i++) fn();
  await device.synchronize();
  const gpu = [];
  const host = [];
  for (let r = 0; r < reps; r++) {
    const t0 = process.hrtime.bigint();
    for (let i = 0; i < iters; i++) fn();
    const t1 = process.hrtime.bigint();
    await device.synchronize();
    const t2 = process.hrtime.bigint();
    gpu.push(Number(t2 - t0) / 1e3 / iters);
    host.push(Number(t1 - t0) / 1e3 / iters);
  }
  return { us: median(gpu), hostUs: median(host) };
}

function copyBandwidth() {
  const elems = quick ? 1 << 22 : 1 << 29; // 2 GiB of f32 per buffer
  const src = device.empty([elems], 'f32');
  const dst = device.empty([elems], 'f32');
  device.native.fill(src.buffer, elems, 4, 0x3f8ccccd);
  const bytes = elems * 4;
  return timeOp(() => device.native.copy(dst.buffer, 0, src.buffer, 0, bytes), { iters: quick ? 5 : 20 }).then((t) => {
    src.dispose();
    dst.dispose();
    return { ...t, tbps: (2 * bytes) / t.us / 1e6 };
  });
}

/** A cache holding `batch` sequences of `context` tokens (random K/V), the decode plan of one more token each. */
async function buildCache(batch, context, pageSizeHere, extraTokens = 0, sumBlock = undefined, numLayers = 1) {
  const pagesPerSeq = Math.ceil((context + 1 + extraTokens) / pageSizeHere);
  const cache = new KVCache(device, {
    numLayers, numPages: batch * pagesPerSeq + 8, pageSize: pageSizeHere, chunkSize: sumBlock,
    numKVHeads: HKV, headDim: D, dtype: 'bf16',
  });
  const k = device.tensor(randomBf16(FILL_ROWS * HKV * D, 1), { dtype: 'bf16', shape: [FILL_ROWS, HKV, D] });
  const v = device.tensor(randomBf16(FILL_ROWS * HKV * D, 2), { dtype: 'bf16', shape: [FILL_ROWS, HKV, D] });
  const seqs = Array.from({ length: batch }, () => cache.addSequence());
  // Fill in plans of FILL_ROWS rows: whole sequences or FILL_ROWS-token pieces of one.
  const queue = seqs.map((seq) => ({ seq, left: context }));
  while (queue.length > 0) {
    const entries = [];
    let rows = 0;
    while (queue.length > 0 && rows < FILL_ROWS) {
      const head = queue[0];
      const n = Math.min(head.left, FILL_ROWS - rows);
      entries.push({ seq: head.seq, newTokens: n });
      rows += n;
      head.left -= n;
      if (head.left === 0) queue.shift();
    }
    const plan = cache.plan(entries, { maxDecodeTokens: 0 });
    if (rows === FILL_ROWS) {
      for (let l = 0; l < numLayers; l++) cache.append(l, plan, k, v);
    } else {
      const kk = device.tensor(randomBf16(rows * HKV * D, 3), { dtype: 'bf16', shape: [rows, HKV, D] });
      for (let l = 0; l < numLayers; l++) cache.append(l, plan, kk, kk);
      kk.dispose();
    }
    plan.dispose();
  }
  k.dispose();
  v.dispose();
  const plan = cache.plan(seqs.map((seq) => ({ seq, newTokens: 1 })));
  const k1 = device.tensor(randomBf16(batch * HKV * D, 4), { dtype: 'bf16', shape: [batch, HKV, D] });
  for (let l = 0; l < numLayers; l++) cache.append(l, plan, k1, k1);
  k1.dispose();
  const q = device.tensor(randomBf16(batch * HQ * D, 5), { dtype: 'bf16', shape: [batch, HQ, D] });
  await device.synchronize();
  return { cache, plan, q, kvBytes: batch * (context + 1) * HKV * D * 2 * 2 };
}

function layer(decode, chunkSize = MOBA_CHUNK, topK = MOBA_TOPK) {
  return new MobaAttention(device, { numQHeads: HQ, numKVHeads: HKV, headDim: D, chunkSize, topK, decode, dtype: 'bf16' });
}

/** `l.attend()` over `steps` ({ env, q, layer }) in turn; the steps' caches hold the same number of tokens. */
async function timeDecode(l, steps) {
  const expected = quick ? 1000 : Math.max(20, steps[0].env.kvBytes / 3.5e6); // microseconds at ~3.5 TB/s
  // At most 600 ops per timing: more would fill the launch queue and make the host wait.
  const iters = Math.max(20, Math.min(600, Math.round(200000 / expected)));
  let i = 0;
  return timeOp(() => {
    const { env, q, layer: cacheLayer = 0 } = steps[i++ % steps.length];
    l.attend(env.cache, cacheLayer, env.plan, q).dispose();
  }, { iters });
}

/** Steps over one cache, with its own query or `queries` in turn. */
const stepsOf = (env, queries = [env.q]) => queries.map((q) => ({ env, q }));

// A moba step repeated with the same query reads the same union of blocks every time, and
// that union (about 19 MB at 1 x 128K) stays in the H200's 50 MB L2: such a step streams
// from L2, not HBM. A real decode has a new query every step. This many distinct queries
// cycle through more union bytes than L2 holds, so each step reads its blocks from HBM.
const FRESH_QUERIES = 16;

const results = { device: device.name, copy: null, full: [], moba: [], union: null, host: null };
results.copy = await copyBandwidth();
console.log(`device copy: ${results.copy.tbps.toFixed(2)} TB/s (read + write)`);

const shapes = !cases.has('full') ? [] : quick ? [[1, 4096], [4, 1024]] : [[1, 131072], [64, 4096], [16, 32768]];
const full = layer('full');
const rows = [];
for (const [batch, context] of shapes) {
  const env = await buildCache(batch, context, pageSize);
  const t = await timeDecode(full, stepsOf(env));
  const tbps = env.kvBytes / t.us / 1e6;
  const r = { batch, context, pageSize, us: t.us, hostUs: t.hostUs, tbps, ofCopy: tbps / results.copy.tbps };
  results.full.push(r);
  rows.push([`full ${batch} x ${context}`, pageSize, t.us.toFixed(1), tbps.toFixed(2), `${(100 * r.ofCopy).toFixed(1)}%`, t.hostUs.toFixed(1)]);
  env.plan.dispose();
  env.q.dispose();
  env.cache.dispose();
}

for (const mobaShape of cases.has('moba') ? mobaShapes : []) {
  for (const ps of mobaPageSizes) {
    for (const sumBlock of mobaSumBlocks) {
      const env = await buildCache(mobaShape[0], mobaShape[1], ps, 0, sumBlock);
      const f = await timeDecode(full, stepsOf(env));
      const moba = layer('moba');
      const fresh = Array.from({ length: FRESH_QUERIES }, (_, i) =>
        device.tensor(randomBf16(mobaShape[0] * HQ * D, 100 + i), { dtype: 'bf16', shape: [mobaShape[0], HQ, D] }));
      const m = await timeDecode(moba, stepsOf(env, fresh));
      const mSame = await timeDecode(moba, stepsOf(env));
      const sums = sumBlock ? `sums per ${sumBlock}` : 'sums per page';
      const r = { batch: mobaShape[0], context: mobaShape[1], pageSize: ps, sumBlock: sumBlock ?? ps, chunkSize: MOBA_CHUNK, topK: MOBA_TOPK,
        fullUs: f.us, mobaUs: m.us, mobaHostUs: m.hostUs, speedup: f.us / m.us, sameQueryUs: mSame.us };
      results.moba.push(r);
      rows.push([`full ${mobaShape[0]} x ${mobaShape[1]}`, ps, f.us.toFixed(1), (env.kvBytes / f.us / 1e6).toFixed(2),
        `${((100 * env.kvBytes) / f.us / 1e6 / results.copy.tbps).toFixed(1)}%`, f.hostUs.toFixed(1)]);
      const name = `moba (${MOBA_CHUNK}, ${MOBA_TOPK}) ${mobaShape[0]} x ${mobaShape[1]}, ${sums}`;
      rows.push([`${name}, a new query each step`, ps, m.us.toFixed(1), `${r.speedup.toFixed(1)}x faster`, '', m.hostUs.toFixed(1)]);
      rows.push([`${name}, the same query each step`, ps, mSame.us.toFixed(1), `${(f.us / mSame.us).toFixed(1)}x faster`, '',
        mSame.hostUs.toFixed(1)]);
      // One layer after another, each with a new query: nothing of the step before (its
      // union, the current block, the key sums, the page table's lines) is this step's.
      if (sumBlock && mobaLayers > 0) {
        const envL = await buildCache(mobaShape[0], mobaShape[1], ps, 0, sumBlock, mobaLayers);
        const layered = Array.from({ length: Math.max(mobaLayers, FRESH_QUERIES) }, (_, i) =>
          ({ env: envL, q: fresh[i % FRESH_QUERIES], layer: i % mobaLayers }));
        const fL = await timeDecode(full, layered);
        const mL = await timeDecode(moba, layered);
        r.layers = mobaLayers;
        r.layeredFullUs = fL.us;
        r.layeredMobaUs = mL.us;
        rows.push([`full ${mobaShape[0]} x ${mobaShape[1]}, ${mobaLayers} layers in turn`, ps, fL.us.toFixed(1),
          (envL.kvBytes / fL.us / 1e6).toFixed(2), `${((100 * envL.kvBytes) / fL.us / 1e6 / results.copy.tbps).toFixed(1)}%`, fL.hostUs.toFixed(1)]);
        rows.push([`${name}, ${mobaLayers} layers in turn, a new query each`, ps, mL.us.toFixed(1), `${(fL.us / mL.us).toFixed(1)}x faster`, '',
          mL.hostUs.toFixed(1)]);
        envL.plan.dispose();
        envL.q.dispose();
        envL.cache.dispose();
      }
      for (const t of fresh) t.dispose();
      moba.dispose();
      env.plan.dispose();
      env.q.dispose();
      env.cache.dispose();
    }
  }
}

// Full decode over as many tokens as the moba step reads on random data (the union of the
// query heads' topK blocks per KV head, sharing the current one: 9 blocks for (512, 3)), with
// no gate in front: what streaming the union's bytes costs by itself.
if (cases.has('moba') && !quick) {
  const unionTokens = (1 + (MOBA_TOPK - 1) * (HQ / HKV)) * MOBA_CHUNK;
  // Several caches of that size in turn, so that each step reads its bytes from HBM (one
  // alone would stay in L2), as well as one cache repeated.
  const envs = [];
  for (let i = 0; i < FRESH_QUERIES / 2; i++) envs.push(await buildCache(1, unionTokens - 1, pageSize, 0, MOBA_CHUNK));
  const t = await timeDecode(full, envs.flatMap((env) => stepsOf(env)));
  const tSame = await timeDecode(full, stepsOf(envs[0]));
  const tbps = envs[0].kvBytes / t.us / 1e6;
  results.union = { tokens: unionTokens, us: t.us, hostUs: t.hostUs, tbps, sameCacheUs: tSame.us };
  rows.push([`full 1 x ${unionTokens} (the moba union's tokens), ${envs.length} caches in turn`, pageSize, t.us.toFixed(1), tbps.toFixed(2),
    `${((100 * tbps) / results.copy.tbps).toFixed(1)}%`, t.hostUs.toFixed(1)]);
  rows.push([`full 1 x ${unionTokens}, one cache (in L2)`, pageSize, tSame.us.toFixed(1), (envs[0].kvBytes / tSame.us / 1e6).toFixed(2), '',
    tSame.hostUs.toFixed(1)]);
  for (const env of envs) {
    env.plan.dispose();
    env.q.dispose();
    env.cache.dispose();
  }
}

// Host cost of a small decode step: plan(), then forward() (append + attention) and attend() alone.
if (cases.has('host')) {
  const batch = 4;
  const n = quick ? 50 : 400;
  // forward() appends, and a layer takes a plan's K/V once: each timing round
  // plans a step, then runs it on every layer.
  const layers = 64;
  const rounds = 5;
  const env = await buildCache(batch, 1024, pageSize, n + rounds + 2, undefined, layers);
  const q = env.q;
  const kv = device.tensor(randomBf16(batch * HKV * D, 6), { dtype: 'bf16', shape: [batch, HKV, D] });
  const seqs = env.plan.sequences.map((s) => s.seq);
  const entries = seqs.map((seq) => ({ seq, newTokens: 1 }));
  env.plan.dispose();
  const cache = env.cache;
  const t0 = process.hrtime.bigint();
  let plan;
  for (let i = 0; i < n; i++) plan = cache.plan(entries);
  const planUs = Number(process.hrtime.bigint() - t0) / 1e3 / n;
  // forward() with a fresh output per call, and into one output tensor (no allocation per step).
  const outTensor = device.empty([batch, HQ, D], 'bf16');
  const timeForward = async (into) => {
    const gpu = [];
    const host = [];
    for (let r = -1; r < rounds; r++) {  // round -1 warms up
      const step = cache.plan(entries);
      await device.synchronize();
      const t1 = process.hrtime.bigint();
      if (into) for (let l = 0; l < layers; l++) full.forward(cache, l, step, q, kv, kv, outTensor);
      else for (let l = 0; l < layers; l++) full.forward(cache, l, step, q, kv, kv).dispose();
      const t2 = process.hrtime.bigint();
      await device.synchronize();
      const t3 = process.hrtime.bigint();
      if (r >= 0) {
        host.push(Number(t2 - t1) / 1e3 / layers);
        gpu.push(Number(t3 - t1) / 1e3 / layers);
      }
    }
    return { us: median(gpu), hostUs: median(host) };
  };
  const fwd = await timeForward(false);
  const fwdOut = await timeForward(true);
  plan = cache.plan(entries);
  cache.append(0, plan, kv, kv);
  const att = await timeOp(() => full.attend(cache, 0, plan, q).dispose(), { iters: n, warmup: 5 });
  const attOut = await timeOp(() => full.attend(cache, 0, plan, q, outTensor), { iters: n, warmup: 5 });
  // A step whose result the host waits for: enqueue to output on the host.
  const awaited = [];
  for (let i = 0; i < (quick ? 20 : 200); i++) {
    const t = process.hrtime.bigint();
    const out = full.attend(cache, 0, plan, q);
    await out.toArray();
    awaited.push(Number(process.hrtime.bigint() - t) / 1e3);
    out.dispose();
  }
  const awaitedUs = median(awaited);
  results.host = { batch, context: 1024, planUs, forwardHostUs: fwd.hostUs, forwardUs: fwd.us, attendHostUs: att.hostUs, attendUs: att.us,
    forwardIntoOutHostUs: fwdOut.hostUs, attendIntoOutHostUs: attOut.hostUs, awaitedUs };
  rows.push([`host: plan() of ${batch} seqs`, pageSize, '', '', '', planUs.toFixed(1)]);
  rows.push([`host: forward() (append and decode, one op)`, pageSize, fwd.us.toFixed(1), '', '', fwd.hostUs.toFixed(1)]);
  rows.push([`host: forward(..., out) (into one output tensor)`, pageSize, fwdOut.us.toFixed(1), '', '', fwdOut.hostUs.toFixed(1)]);
  rows.push([`host: attend() (decode op)`, pageSize, att.us.toFixed(1), '', '', att.hostUs.toFixed(1)]);
  rows.push([`host: attend(..., out) (into one output tensor)`, pageSize, attOut.us.toFixed(1), '', '', attOut.hostUs.toFixed(1)]);
  rows.push([`host: attend(), then await toArray() of its output`, pageSize, awaitedUs.toFixed(1), '', '', '']);
  outTensor.dispose();
  kv.dispose();
  q.dispose();
  cache.dispose();
}

const header = ['case', 'page', 'us/step', 'TB/s (KV read)', 'of copy', 'host us/call'];
const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => String(r[i]).length)));
const line = (r) => r.map((c, i) => String(c).padEnd(widths[i])).join(' | ');
console.log(`\n${line(header)}\n${widths.map((w) => '-'.repeat(w)).join('-|-')}`);
for (const r of rows) console.log(line(r));

writeResults('decode', results);
device.dispose();
