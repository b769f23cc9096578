// Chunked prefill over the paged KV cache: one step of C new tokens of a
// sequence whose first N tokens are cached (MobaAttention.attend on a prefill
// plan: the attention reads K/V in their pages), against mobaAttention on
// contiguous K/V of the same N + C tokens (the same attention without the
// cache). Also timed alone: the plan's key offsets in the pages (built once
// per plan, for every layer), and the copy of the whole sequence out of its
// pages into contiguous rows that reading in place replaces.
//
//   npm run bench -- chunked [--n 32768,131072] [--chunk 4096] [--configs 512:3,128:8] [--page-size 16]
//                            [--sum-block 512] [--iters 10] [--backend cpu] [--no-torch]
//
// On CUDA it also runs bench/torch_chunked.py (PyTorch's dense attention of
// the same new tokens over the same context, contiguous K/V) when python3 and
// PyTorch are there, and prints how many times faster attend() is.
//
// --sum-block: the cache's key-sum block (KVCacheOptions.chunkSize; default one
// sum per page). Equal to a config's chunkSize, the gate takes that layer's
// centroids from the sums instead of a pass over the cached keys.
//
// Shape: 32 query heads, 8 KV heads, head dim 128, bf16, one sequence.
import { KVCache, MobaAttention, mobaAttention, openDevice } from '../dist/index.js';
import { parseArgs, printTable, randomBf16, runTorchChunked, timeOp, writeResults } from './_common.js';

const opts = parseArgs(process.argv.slice(2));
const contexts = String(opts.n ?? '32768,131072').split(',').map(Number);
const C = Number(opts.chunk ?? 4096);
const configs = String(opts.configs ?? '512:3,128:8').split(',').map((c) => c.split(':').map(Number));
const pageSize = Number(opts['page-size'] ?? 16);
const sumBlock = opts['sum-block'] ? Number(opts['sum-block']) : undefined;
const iters = Number(opts.iters ?? 10);
const HQ = 32;
const HKV = 8;
const D = 128;
const FILL_ROWS = 8192;

const device = openDevice({ backend: opts.backend ?? 'cuda' });
const torch = opts['no-torch'] || device.backend !== 'cuda'
  ? { rows: null, reason: opts['no-torch'] ? '--no-torch' : 'not on CUDA' }
  : runTorchChunked(contexts, { chunk: C, heads: HQ, kvHeads: HKV, dim: D });
if (!torch.rows) console.log(`PyTorch counterpart skipped: ${torch.reason}`);
// The fastest PyTorch kernel for a context, whatever its mask.
const torchMs = (n) => {
  const ms = (torch.rows ?? []).filter((r) => r.cached === n).map((r) => r.ms);
  return ms.length ? Math.min(...ms) : null;
};
console.log(`device: ${device.name}${device.computeCapability ? ` (sm ${device.computeCapability})` : ''}`);

const rows = [];
for (const N of contexts) {
  const total = N + C;
  const cache = new KVCache(device, {
    numLayers: 1, numPages: Math.ceil(total / pageSize) + 8, pageSize, chunkSize: sumBlock, numKVHeads: HKV, headDim: D, dtype: 'bf16',
  });
  const seq = cache.addSequence();
  // The whole sequence's K and V, contiguous (also what fills the cache).
  const kAll = device.tensor(randomBf16(total * HKV * D, 1), { dtype: 'bf16', shape: [total, HKV, D] });
  const vAll = device.tensor(randomBf16(total * HKV * D, 2), { dtype: 'bf16', shape: [total, HKV, D] });
  const rowBytes = HKV * D * 2;
  const piece = (t, from, n) => {
    const p = device.empty([n, HKV, D], 'bf16');
    device.native.copy(p.buffer, 0, t.buffer, from * rowBytes, n * rowBytes);
    return p;
  };
  for (let at = 0; at < N; at += FILL_ROWS) {
    const n = Math.min(FILL_ROWS, N - at);
    const plan = cache.plan([{ seq, newTokens: n }], { maxDecodeTokens: 0 });
    const k = piece(kAll, at, n);
    const v = piece(vAll, at, n);
    cache.append(0, plan, k, v);
    k.dispose();
    v.dispose();
  }
  const plan = cache.plan([{ seq, newTokens: C }], { maxDecodeTokens: 0 });
  const kNew = piece(kAll, N, C);
  const vNew = piece(vAll, N, C);
  cache.append(0, plan, kNew, vNew);
  const q = device.tensor(randomBf16(C * HQ * D, 3), { dtype: 'bf16', shape: [C, HQ, D] });
  const kWs = device.empty([total, HKV, D], 'bf16');
  const vWs = device.empty([total, HKV, D], 'bf16');
  await device.synchronize();
  const gatherMs = await timeOp(device, () => cache.enqueueGather(0, plan, kWs, vWs), { warmup: 2, iters });
  const keyRows = device.empty([2 * total], 'i32');
  const keyRowsMs = await timeOp(device, () => cache.enqueueKeyRows(plan, keyRows), { warmup: 2, iters });
  keyRows.dispose();
  for (const [chunkSize, topK] of configs) {
    const layer = new MobaAttention(device, { numQHeads: HQ, numKVHeads: HKV, headDim: D, chunkSize, topK, dtype: 'bf16' });
    const attendMs = await timeOp(device, () => layer.attend(cache, 0, plan, q), { warmup: 2, iters });
    const cuSeqlensQ = Int32Array.from([0, C]);
    const cuSeqlensK = Int32Array.from([0, total]);
    const contiguousMs = await timeOp(device, () => mobaAttention(q, kAll, vAll, { cuSeqlensQ, cuSeqlensK, chunkSize, topK }), { warmup: 2, iters });
    rows.push({ N, C, pageSize, sumBlock: sumBlock ?? pageSize, chunkSize, topK, attendMs, contiguousMs, gatherMs, keyRowsMs });
    layer.dispose();
  }
  for (const t of [kAll, vAll, kNew, vNew, q, kWs, vWs]) t.dispose();
  cache.dispose();
}

printTable(rows, [
  { title: 'cached tokens', format: (r) => r.N },
  { title: 'new tokens', format: (r) => r.C },
  { title: 'page', format: (r) => r.pageSize },
  { title: 'sums per', format: (r) => r.sumBlock },
  { title: '(chunk, topK)', format: (r) => `(${r.chunkSize}, ${r.topK})` },
  { title: 'attend() over the cache, ms', format: (r) => r.attendMs.toFixed(3) },
  { title: 'mobaAttention on contiguous K/V, ms', format: (r) => r.contiguousMs.toFixed(3) },
  { title: 'cache over contiguous', format: (r) => `${(r.attendMs / r.contiguousMs).toFixed(2)}x` },
  { title: 'key offsets (once per plan), ms', format: (r) => r.keyRowsMs.toFixed(3) },
  { title: 'a gather of the sequence, ms', format: (r) => r.gatherMs.toFixed(3) },
  { title: 'PyTorch dense (fastest), ms', format: (r) => (torchMs(r.N) === null ? '-' : torchMs(r.N).toFixed(3)) },
  { title: 'attend() against PyTorch', format: (r) => (torchMs(r.N) === null ? '-' : `${(torchMs(r.N) / r.attendMs).toFixed(1)}x faster`) },
]);
writeResults('chunked', { device: device.name, heads: HQ, kvHeads: HKV, headDim: D, torch: torch.rows, torchSkipped: torch.reason, rows });
device.dispose();
