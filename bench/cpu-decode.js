// Decode over the paged cache on the CPU backend: one step of `batch`
// sequences of N cached tokens, 32 query / 8 KV heads, head dim 128, bf16 (or f16),
// pages of 64, key sums per 512; 'full' and 'moba' (512, 3). Median of 5
// awaited attend() calls, and a checksum of the output (to compare builds).
// --dtype f16 takes the same values rounded to f16 (a cache of f16 pages).
//
//   npm run bench -- cpu-decode [--n 16384,131072] [--batch 1] [--dtype bf16|f16]
import { KVCache, MobaAttention, openDevice } from '../dist/index.js';
import { median, parseArgs, randomBf16 } from './_common.js';

const opts = parseArgs(process.argv.slice(2));
const sizes = String(opts.n ?? '16384,131072').split(',').map(Number);
const batch = Number(opts.batch ?? 1);
const dtype = opts.dtype ?? 'bf16';
if (dtype !== 'bf16' && dtype !== 'f16') throw new Error(`--dtype: bf16 or f16, not ${dtype}`);
// Random normal values in the bench's dtype: bf16 bits as they are, or widened and rounded to f16.
const values = (n, seed, shape) => {
  const bits = randomBf16(n, seed);
  if (dtype === 'bf16') return device.tensor(bits, { dtype, shape });
  const wide = new Uint32Array(bits.length);
  for (let i = 0; i < bits.length; i++) wide[i] = bits[i] << 16;
  return device.tensor(new Float32Array(wide.buffer), { dtype, shape });
};
const [HQ, HKV, D] = [32, 8, 128];
const device = openDevice({ backend: 'cpu' });
console.log(`decode on ${device.name}: ${HQ} / ${HKV} heads, head dim ${D}, ${dtype}, pages of 64`);
for (const n of sizes) {
  const cache = new KVCache(device, {
    numLayers: 1, numPages: (Math.ceil(n / 64) + 1) * batch, pageSize: 64, chunkSize: 512, numKVHeads: HKV, headDim: D, dtype,
  });
  const seqs = Array.from({ length: batch }, () => cache.addSequence());
  {
    const prompt = cache.plan(seqs.map((seq) => ({ seq, newTokens: n })), { maxDecodeTokens: 0 });
    const k = values(batch * n * HKV * D, 1, [batch * n, HKV, D]);
    cache.append(0, prompt, k, k);
    k.dispose();
  }
  const plan = cache.plan(seqs.map((seq) => ({ seq, newTokens: 1 })));
  const kv = values(batch * HKV * D, 2, [batch, HKV, D]);
  cache.append(0, plan, kv, kv);
  const q = values(batch * HQ * D, 3, [batch, HQ, D]);
  for (const decode of ['full', 'moba']) {
    const layer = new MobaAttention(device, { numQHeads: HQ, numKVHeads: HKV, headDim: D, chunkSize: 512, topK: 3, dtype, decode });
    const times = [];
    let out = null;
    for (let i = 0; i < 5; i++) {
      out?.dispose();
      const t = performance.now();
      out = layer.attend(cache, 0, plan, q);
      await out.toArray();
      times.push(performance.now() - t);
    }
    const v = await out.toArray();
    out.dispose();
    let checksum = 0;
    for (let i = 0; i < v.length; i++) checksum += v[i] * ((i % 7) + 1);
    console.log(`${decode.padEnd(4)} ${batch} x ${n}: ${median(times).toFixed(2)} ms, checksum ${checksum.toFixed(4)}`);
    layer.dispose();
  }
  q.dispose();
  kv.dispose();
  cache.dispose();
}
