// Prefill attention: MoBA (gate + sparse attention, as mobaAttention runs
// them) and our dense flashAttention against PyTorch's cuDNN attention timed
// in the same run. Standard shape: batch 2, 16 heads, head dim 128, bf16,
// causal. Two input kinds: independent random q/k/v (the targets hold for
// these) and queries with locality (a slowly drifting component shared by
// neighbouring queries, as in real models).
//
//   npm run bench -- prefill [--n 8192,32768,131072] [--configs 128:8,512:3,4096:12]
//                            [--batch 2] [--heads 16] [--dim 128] [--iters 5] [--no-torch]
//
// TFLOP/s counts the FLOPs actually needed: 4 * headDim per (query, head,
// visible key), with MoBA's visible keys read off the gate's selection.
import { flashAttention, mobaAttention, mobaGate, openDevice } from '../dist/index.js';
import { bf16Bits, fmt, makeNormal, parseArgs, printTable, randomBf16, runTorchSdpa, timeOp, writeResults } from './_common.js';

const opts = parseArgs(process.argv.slice(2));
const sizes = String(opts.n ?? '8192,32768,131072').split(',').map(Number);
const configs = String(opts.configs ?? '128:8,512:3,4096:12')
  .split(',')
  .map((s) => s.split(':').map(Number))
  .map(([chunkSize, topK]) => ({ chunkSize, topK }));
const batch = Number(opts.batch ?? 2);
const heads = Number(opts.heads ?? 16);
const dim = Number(opts.dim ?? 128);
const iters = Number(opts.iters ?? 5);

const device = openDevice();
console.log(`prefill on ${device.name} (${device.backend}): batch ${batch}, ${heads} heads, head dim ${dim}, bf16, causal`);

const torch = opts['no-torch'] ? { rows: null, reason: '--no-torch' } : runTorchSdpa(sizes, { batch, heads, dim });
if (!torch.rows) console.log(`PyTorch yardstick skipped: ${torch.reason}`);
const cudnnMs = (n) => torch.rows?.find((r) => r.backend === 'cudnn' && r.seqlen === n)?.ms ?? null;

/** Queries with locality: per (sequence, head) a random walk d_t shared by neighbours, plus noise. */
function localQueries(n, seed) {
  const normal = makeNormal(seed);
  const noise = randomBf16(batch * n * heads * dim, seed + 1);
  const noiseF = new Float32Array(new Uint32Array(1).buffer);
  const noiseU = new Uint32Array(noiseF.buffer);
  const q = new Uint16Array(batch * n * heads * dim);
  const rho = Math.exp(-1 / 1024);
  const drift = new Float32Array(heads * dim);
  for (let b = 0; b < batch; b++) {
    for (let i = 0; i < drift.length; i++) drift[i] = normal();
    for (let t = 0; t < n; t++) {
      const off = (b * n + t) * heads * dim;
      for (let i = 0; i < drift.length; i++) {
        // A fresh normal every 64 tokens, held in between: the drift moves slowly and cheaply.
        if ((t & 63) === 0) drift[i] = rho ** 64 * drift[i] + Math.sqrt(1 - rho ** 128) * normal();
        noiseU[0] = noise[off + i] << 16;
        q[off + i] = bf16Bits(0.8 * drift[i] + 0.6 * noiseF[0]);
      }
    }
  }
  return q;
}

/** Visible keys summed over (query, head) for MoBA's selection (indices [heads, totalQ, topK]). */
function mobaKeys(indices, n, { chunkSize, topK }) {
  let keys = 0;
  const totalQ = batch * n;
  for (let h = 0; h < heads; h++) {
    for (let row = 0; row < totalQ; row++) {
      const t = row % n;
      const off = (h * totalQ + row) * topK;
      for (let i = 0; i < topK; i++) {
        const j = indices[off + i];
        if (j < 0) break;
        keys += Math.min(chunkSize, t + 1 - j * chunkSize);
      }
    }
  }
  return keys;
}

const rows = [];
const report = (r) => {
  rows.push(r);
  console.log(`  N=${r.n} ${r.kind} ${r.method}: ${fmt.ms(r.ms)} ms` + (r.gateMs != null ? ` (gate alone ${fmt.ms(r.gateMs)} ms)` : '') +
    (r.tflops != null ? `, ${fmt.num(r.tflops)} TFLOP/s` : ''));
};
for (const n of sizes) {
  const totalQ = batch * n;
  const cu = Int32Array.from({ length: batch + 1 }, (_, b) => b * n);
  const shape = [totalQ, heads, dim];
  const count = totalQ * heads * dim;
  const k = device.tensor(randomBf16(count, 2 * n + 1), { dtype: 'bf16', shape });
  const v = device.tensor(randomBf16(count, 3 * n + 7), { dtype: 'bf16', shape });
  let denseMs = null;
  for (const kind of ['random', 'locality']) {
    const q = device.tensor(kind === 'random' ? randomBf16(count, n) : localQueries(n, n + 11), { dtype: 'bf16', shape });
    if (kind === 'random') {
      const ms = await timeOp(device, () => flashAttention(q, k, v, { cuSeqlensQ: cu, causal: true }), {
        warmup: 1, iters: n >= 131072 ? Math.min(iters, 3) : iters,
      });
      denseMs = ms;
      const flops = 4 * batch * heads * dim * (n * (n + 1)) / 2;
      report({ n, kind, method: 'dense (ours)', ms, tflops: flops / ms / 1e9, vsDense: 1, vsCudnn: cudnnMs(n) ? cudnnMs(n) / ms : null });
      if (cudnnMs(n)) report({ n, kind, method: 'dense cuDNN (PyTorch)', ms: cudnnMs(n), tflops: flops / cudnnMs(n) / 1e9, vsDense: ms / cudnnMs(n), vsCudnn: 1 });
    }
    for (const cfg of configs) {
      const opt = { cuSeqlensQ: cu, chunkSize: cfg.chunkSize, topK: cfg.topK };
      const gateMs = await timeOp(device, () => mobaGate(q, k, opt), { iters });
      const ms = await timeOp(device, () => mobaAttention(q, k, v, opt), { iters });
      const g = mobaGate(q, k, opt);
      const keys = mobaKeys(await g.toArray(), n, cfg);
      g.dispose();
      const flops = 4 * dim * keys;
      report({
        n, kind, method: `MoBA (${cfg.chunkSize}, ${cfg.topK})`, ms, gateMs, tflops: flops / ms / 1e9,
        keysPerQuery: keys / (totalQ * heads),
        vsDense: denseMs ? denseMs / ms : null, vsCudnn: cudnnMs(n) ? cudnnMs(n) / ms : null,
      });
    }
    q.dispose();
  }
  k.dispose();
  v.dispose();
}

console.log();
printTable(rows, [
  { title: 'N', format: (r) => r.n },
  { title: 'inputs', format: (r) => r.kind },
  { title: 'method', format: (r) => r.method },
  { title: 'ms', format: (r) => fmt.ms(r.ms) },
  { title: 'gate ms', format: (r) => fmt.ms(r.gateMs) },
  { title: 'keys/query', format: (r) => fmt.num(r.keysPerQuery) },
  { title: 'TFLOP/s', format: (r) => fmt.num(r.tflops) },
  { title: 'vs our dense', format: (r) => fmt.ratio(r.vsDense) },
  { title: 'vs cuDNN', format: (r) => fmt.ratio(r.vsCudnn) },
]);
const file = writeResults('prefill', {
  device: device.name, batch, heads, dim, dtype: 'bf16', causal: true, torch: torch.rows, torchSkipped: torch.reason, rows,
});
console.log(`\nwrote ${file}`);
device.dispose();
