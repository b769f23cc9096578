/**
 * flashAttention and mobaAttention, written once and run on every backend:
 * fresh random inputs (rounded to the dtype, so the float64 reference sees
 * exactly what the kernels see), outputs poisoned before every launch,
 * compared with lib/reference by relative L2 error (bound from the dtype and
 * at most twice the error of a same-precision naive computation), lse to
 * 1e-3, and bit-identical output on a repeated run.
 *
 * The CUDA backend runs the grid (batch 1/4/7 with random varlen
 * splits, heads 1/2/4/8, seqlen 512/1024/2048, chunk 128/256/1024, topK
 * 2/3/4, head dim 128), sampled so every value comes up in every run, plus
 * head dim 64, GQA 4:1 and 8:1, f16, chunked queries, sequences shorter than
 * a block and of length 1, odd chunk sizes. The CPU backend runs the same
 * cases on smaller shapes.
 */
import { expect, it } from 'vitest';

import { flashAttention, mobaAttention, mobaGate, reference, type Device, type DType, type Tensor } from '../../lib/index.js';
import { gateTieBand, randn, relL2, reportSeedOnFailure, rngFor, roundToBf16, roundToF16, seedNote, shuffle, type Rng } from './random.js';

export interface AttentionCase {
  name: string;
  dtype: DType;
  headDim: number;
  numQHeads: number;
  numKVHeads: number;
  /** Query and key prefix sums (queries are each sequence's last positions). */
  cuSeqlensQ: Int32Array;
  cuSeqlensK: Int32Array;
  /** MoBA when set, else dense flash attention. */
  moba?: { chunkSize: number; topK: number };
  causal?: boolean;
  softmaxScale?: number;
}

/** Splits `total` tokens into `batch` random lengths (each >= 1 when possible). */
export function splitLengths(total: number, batch: number, rng: Rng): Int32Array {
  const cuts = [0, total];
  for (let i = 1; i < batch; i++) cuts.push(rng.int(Math.min(1, total), Math.max(0, total - 1)));
  cuts.sort((a, b) => a - b);
  return Int32Array.from(cuts);
}

/** Keeps the last Lq_b of every sequence's Lk_b positions as queries (often 1 or all). */
export function chunkQueries(cuK: Int32Array, rng: Rng): Int32Array {
  const cuQ = new Int32Array(cuK.length);
  for (let b = 0; b + 1 < cuK.length; b++) {
    const lk = cuK[b + 1]! - cuK[b]!;
    const r = rng.next();
    const lq = r < 0.25 ? Math.min(1, lk) : r < 0.4 ? lk : rng.int(0, lk);
    cuQ[b + 1] = cuQ[b]! + lq;
  }
  return cuQ;
}

/** Random lengths in [minLen, maxLen] as prefix sums. */
export function randomLengths(batch: number, minLen: number, maxLen: number, rng: Rng): Int32Array {
  const cu = new Int32Array(batch + 1);
  for (let b = 0; b < batch; b++) cu[b + 1] = cu[b]! + rng.int(minLen, maxLen);
  return cu;
}

const round = (x: Float32Array, dtype: DType): Float32Array => (dtype === 'bf16' ? roundToBf16(x) : roundToF16(x));

interface Inputs {
  q: Float32Array;
  k: Float32Array;
  v: Float32Array;
}

function makeInputs(c: AttentionCase, rng: Rng): Inputs {
  const totalQ = c.cuSeqlensQ[c.cuSeqlensQ.length - 1]!;
  const totalK = c.cuSeqlensK[c.cuSeqlensK.length - 1]!;
  return {
    q: round(randn(totalQ * c.numQHeads * c.headDim, rng), c.dtype),
    k: round(randn(totalK * c.numKVHeads * c.headDim, rng), c.dtype),
    v: round(randn(totalK * c.numKVHeads * c.headDim, rng), c.dtype),
  };
}

interface DeviceResult {
  out: Float32Array;
  lse: Float32Array;
}

async function runOnDevice(device: Device, c: AttentionCase, x: Inputs): Promise<DeviceResult> {
  const totalQ = c.cuSeqlensQ[c.cuSeqlensQ.length - 1]!;
  const totalK = c.cuSeqlensK[c.cuSeqlensK.length - 1]!;
  using q = device.tensor(x.q, { dtype: c.dtype, shape: [totalQ, c.numQHeads, c.headDim] });
  using k = device.tensor(x.k, { dtype: c.dtype, shape: [totalK, c.numKVHeads, c.headDim] });
  using v = device.tensor(x.v, { dtype: c.dtype, shape: [totalK, c.numKVHeads, c.headDim] });
  const common = { cuSeqlensQ: c.cuSeqlensQ, cuSeqlensK: c.cuSeqlensK, softmaxScale: c.softmaxScale, returnLse: true as const };
  const r = c.moba
    ? mobaAttention(q, k, v, { ...common, chunkSize: c.moba.chunkSize, topK: c.moba.topK })
    : flashAttention(q, k, v, { ...common, causal: c.causal ?? false });
  using out = r.out;
  using lse = r.lse;
  return { out: (await out.toArray()) as Float32Array, lse: (await lse.toArray()) as Float32Array };
}

/**
 * Rows (head, row) whose device gate differs from the float64 reference gate.
 * A difference is only acceptable at a near-tie of gate scores (fp32 kernels
 * against float64): those rows are left out of the attention comparison.
 */
async function gateDisagreements(device: Device, c: AttentionCase, x: Inputs): Promise<Set<number>> {
  const skip = new Set<number>();
  const m = c.moba!;
  const totalQ = c.cuSeqlensQ[c.cuSeqlensQ.length - 1]!;
  const totalK = c.cuSeqlensK[c.cuSeqlensK.length - 1]!;
  const shape = { numQHeads: c.numQHeads, numKVHeads: c.numKVHeads, headDim: c.headDim };
  const opts = { ...shape, cuSeqlensQ: c.cuSeqlensQ, cuSeqlensK: c.cuSeqlensK, chunkSize: m.chunkSize, topK: m.topK };
  const refGate = reference.mobaGate(x.q, x.k, opts);
  using q = device.tensor(x.q, { dtype: c.dtype, shape: [totalQ, c.numQHeads, c.headDim] });
  using k = device.tensor(x.k, { dtype: c.dtype, shape: [totalK, c.numKVHeads, c.headDim] });
  using g = mobaGate(q, k, { cuSeqlensQ: c.cuSeqlensQ, cuSeqlensK: c.cuSeqlensK, chunkSize: m.chunkSize, topK: m.topK });
  const devGate = (await g.toArray()) as Int32Array;
  let centroids: reference.CentroidResult | undefined;
  for (let h = 0; h < c.numQHeads; h++) {
    for (let row = 0; row < totalQ; row++) {
      const off = (h * totalQ + row) * m.topK;
      const a = Array.from(refGate.subarray(off, off + m.topK));
      const b = Array.from(devGate.subarray(off, off + m.topK));
      if (a.every((e, i) => e === b[i])) continue;
      centroids ??= reference.blockCentroids(x.k, { cuSeqlensK: c.cuSeqlensK, numKVHeads: c.numKVHeads, headDim: c.headDim, chunkSize: m.chunkSize });
      const scores = reference.gateScores(x.q, x.k, { ...opts, centroids }, h, row);
      const { threshold, tol } = gateTieBand(scores, Math.min(m.topK - 1, scores.length));
      const differing = a.filter((e) => e >= 0 && e < scores.length && !b.includes(e))
        .concat(b.filter((e) => e >= 0 && e < scores.length && !a.includes(e)));
      for (const j of differing) {
        expect(Math.abs(scores[j]! - threshold), `gate differs away from a tie at head ${h} row ${row}, ${seedNote}`)
          .toBeLessThanOrEqual(tol);
      }
      skip.add(h * totalQ + row);
    }
  }
  return skip;
}

/**
 * The same attention in the input precision, done naively: float64 scores,
 * softmax probabilities rounded to the dtype, P V accumulated exactly, the
 * output rounded to the dtype. Computed for `rows` (h * totalQ + row) only.
 */
function naiveRows(c: AttentionCase, x: Inputs, selected: Int32Array | null, rows: number[]): Map<number, Float64Array> {
  const D = c.headDim;
  const Hq = c.numQHeads;
  const group = Hq / c.numKVHeads;
  const totalQ = c.cuSeqlensQ[c.cuSeqlensQ.length - 1]!;
  const scale = c.softmaxScale ?? 1 / Math.sqrt(D);
  const result = new Map<number, Float64Array>();
  const one = new Float32Array(1);
  const r16 = (v: number): number => {
    one[0] = v;
    return round(one, c.dtype)[0]!;
  };
  for (const id of rows) {
    const h = Math.floor(id / totalQ);
    const row = id % totalQ;
    let b = 0;
    while (c.cuSeqlensQ[b + 1]! <= row) b++;
    const lq = c.cuSeqlensQ[b + 1]! - c.cuSeqlensQ[b]!;
    const lk = c.cuSeqlensK[b + 1]! - c.cuSeqlensK[b]!;
    const t = lk - lq + (row - c.cuSeqlensQ[b]!);
    const keys: number[] = [];
    if (c.moba) {
      const { chunkSize: B, topK } = c.moba;
      for (let i = 0; i < topK; i++) {
        const j = selected![(h * totalQ + row) * topK + i]!;
        if (j < 0) break;
        for (let s = j * B; s < Math.min((j + 1) * B, t + 1); s++) keys.push(s);
      }
    } else {
      const end = c.causal ? t + 1 : lk;
      for (let s = 0; s < end; s++) keys.push(s);
    }
    const kvh = Math.floor(h / group);
    const qOff = (row * Hq + h) * D;
    const sc = keys.map((s) => {
      const kOff = ((c.cuSeqlensK[b]! + s) * c.numKVHeads + kvh) * D;
      let dot = 0;
      for (let d = 0; d < D; d++) dot += x.q[qOff + d]! * x.k[kOff + d]!;
      return dot * scale;
    });
    const mx = Math.max(...sc);
    const e = sc.map((s) => Math.exp(s - mx));
    const sum = e.reduce((p, q) => p + q, 0);
    const out = new Float64Array(D);
    keys.forEach((s, i) => {
      const p = r16(e[i]! / sum);
      const vOff = ((c.cuSeqlensK[b]! + s) * c.numKVHeads + kvh) * D;
      for (let d = 0; d < D; d++) out[d]! += p * x.v[vOff + d]!;
    });
    for (let d = 0; d < D; d++) out[d] = keys.length ? r16(out[d]!) : 0;
    result.set(id, out);
  }
  return result;
}

function relL2Rows(a: ArrayLike<number>, ref: ArrayLike<number>, ids: number[], totalQ: number, Hq: number, D: number): number {
  let num = 0;
  let den = 0;
  for (const id of ids) {
    const h = Math.floor(id / totalQ);
    const off = ((id % totalQ) * Hq + h) * D;
    for (let d = 0; d < D; d++) {
      const diff = a[off + d]! - ref[off + d]!;
      num += diff * diff;
      den += ref[off + d]! * ref[off + d]!;
    }
  }
  return den === 0 ? Math.sqrt(num) : Math.sqrt(num / den);
}

/** Runs one case on the device and checks it against the float64 reference. */
export async function checkAttentionCase(device: Device, c: AttentionCase, rng: Rng): Promise<void> {
  const x = makeInputs(c, rng);
  const D = c.headDim;
  const Hq = c.numQHeads;
  const totalQ = c.cuSeqlensQ[c.cuSeqlensQ.length - 1]!;
  const shape = { numQHeads: Hq, numKVHeads: c.numKVHeads, headDim: D };
  const varlen = { cuSeqlensQ: c.cuSeqlensQ, cuSeqlensK: c.cuSeqlensK };
  const ref = c.moba
    ? reference.mobaAttention(x.q, x.k, x.v, { ...shape, ...varlen, ...c.moba, softmaxScale: c.softmaxScale })
    : reference.flashAttention(x.q, x.k, x.v, { ...shape, ...varlen, causal: c.causal ?? false, softmaxScale: c.softmaxScale });

  const first = await runOnDevice(device, c, x);
  const second = await runOnDevice(device, c, x);
  const label = `${c.name}, ${seedNote}`;
  expect(Buffer.compare(Buffer.from(first.out.buffer), Buffer.from(second.out.buffer)), `repeat run differs: ${label}`).toBe(0);
  expect(Buffer.compare(Buffer.from(first.lse.buffer), Buffer.from(second.lse.buffer)), `repeat lse differs: ${label}`).toBe(0);

  // Rows to compare: all, except MoBA rows whose gate flipped at a near-tie.
  const skip = c.moba ? await gateDisagreements(device, c, x) : new Set<number>();
  const ids: number[] = [];
  for (let id = 0; id < Hq * totalQ; id++) if (!skip.has(id)) ids.push(id);
  expect(skip.size, `near-tie gate flips: ${label}`).toBeLessThanOrEqual(Math.max(2, ids.length / 1000));

  for (let i = 0; i < first.out.length; i++) {
    if (!Number.isFinite(first.out[i]!)) throw new Error(`out[${i}] = ${first.out[i]} (unwritten or NaN): ${label}`);
  }
  const err = relL2Rows(first.out, ref.out, ids, totalQ, Hq, D);
  const bound = c.dtype === 'bf16' ? 1e-2 : 2e-3;
  expect(err, `relative L2 error of out: ${label}`).toBeLessThanOrEqual(bound);

  // Against a same-precision naive computation on a sample of rows.
  const sample: number[] = [];
  for (let i = 0; i < Math.min(192, ids.length); i++) sample.push(ids[rng.int(0, ids.length - 1)]!);
  const selected = c.moba ? reference.mobaGate(x.q, x.k, { ...shape, ...varlen, ...c.moba }) : null;
  const naive = naiveRows(c, x, selected, sample);
  const naiveOut = new Float64Array(ref.out.length);
  for (const [id, row] of naive) naiveOut.set(row, ((id % totalQ) * Hq + Math.floor(id / totalQ)) * D);
  const naiveErr = relL2Rows(naiveOut, ref.out, sample, totalQ, Hq, D);
  const ourErr = relL2Rows(first.out, ref.out, sample, totalQ, Hq, D);
  expect(ourErr, `error vs 2x naive ${c.dtype} (${naiveErr.toExponential(2)}): ${label}`).toBeLessThanOrEqual(2 * naiveErr + 1e-6);

  let lseErr = 0;
  for (const id of ids) {
    const h = Math.floor(id / totalQ);
    const r = ref.lse[h * totalQ + (id % totalQ)]!;
    const got = first.lse[h * totalQ + (id % totalQ)]!;
    if (r === -Infinity && got === -Infinity) continue;
    lseErr = Math.max(lseErr, Math.abs(got - r));
    if (Number.isNaN(got)) lseErr = Infinity;
  }
  expect(lseErr, `lse error: ${label}`).toBeLessThanOrEqual(1e-3);
}

type Scale = 'cpu' | 'cuda';

/** The cases: full sizes on CUDA, smaller ones on the CPU backend. */
export function attentionCases(scale: Scale, rng: Rng): AttentionCase[] {
  const small = scale === 'cpu';
  const cases: AttentionCase[] = [];
  const dense = (name: string, o: Omit<AttentionCase, 'name'>) => cases.push({ name: `dense ${name}`, ...o });
  const moba = (name: string, o: Omit<AttentionCase, 'name'>) => cases.push({ name: `moba ${name}`, ...o });
  const n = (x: number) => (small ? Math.max(1, Math.round(x / 4)) : x);

  // Dense flash attention.
  {
    const cu = splitLengths(n(2048), 4, rng);
    dense('bf16 d128 causal b4 h4', { dtype: 'bf16', headDim: 128, numQHeads: 4, numKVHeads: 4, cuSeqlensQ: cu, cuSeqlensK: cu, causal: true });
    const cuK = randomLengths(3, 1, n(700), rng);
    dense('bf16 d128 full GQA 4:1 chunked', { dtype: 'bf16', headDim: 128, numQHeads: 8, numKVHeads: 2, cuSeqlensQ: chunkQueries(cuK, rng), cuSeqlensK: cuK, causal: false });
    const cuK2 = randomLengths(7, 1, n(500), rng);
    dense('f16 d64 causal GQA 8:1 chunked scale 0.2', { dtype: 'f16', headDim: 64, numQHeads: 8, numKVHeads: 1, cuSeqlensQ: chunkQueries(cuK2, rng), cuSeqlensK: cuK2, causal: true, softmaxScale: 0.2 });
    const cu3 = randomLengths(6, 1, 5, rng);
    dense('bf16 d64 full lengths 1..5', { dtype: 'bf16', headDim: 64, numQHeads: 2, numKVHeads: 2, cuSeqlensQ: cu3, cuSeqlensK: cu3, causal: false });
  }

  // The MoBA reference code's grid, sampled: 9 cases in which every batch,
  // heads, seqlen, chunk and topK value occurs (a fresh pairing every run).
  const batches = [1, 4, 7];
  const heads = [1, 2, 4, 8];
  const seqlens = [512, 1024, 2048];
  const chunks = [128, 256, 1024];
  const topKs = [2, 3, 4];
  const perm = <T>(a: T[]): T[] => shuffle(a.slice(), rng);
  const [pb, ph, ps, pc, pk] = [perm(batches), perm(heads), perm(seqlens), perm(chunks), perm(topKs)];
  for (let i = 0; i < 9; i++) {
    const batch = pb[i % 3]!;
    // Keep the float64 reference affordable: 8 heads only with short sequences.
    const seqlen = ps[(i + Math.floor(i / 3)) % 3]!;
    let h = ph[i % 4]!;
    if (h * seqlen > 8192) h = Math.max(1, Math.floor(8192 / seqlen));
    const chunkSize = small ? Math.max(16, pc[i % 3]! / 4) : pc[i % 3]!;
    const topK = pk[(i + 1) % 3]!;
    const cu = splitLengths(n(seqlen), batch, rng);
    moba(`grid bf16 d128 b${batch} h${h} n${n(seqlen)} (${chunkSize},${topK})`, {
      dtype: 'bf16', headDim: 128, numQHeads: h, numKVHeads: h, cuSeqlensQ: cu, cuSeqlensK: cu, moba: { chunkSize, topK },
    });
  }

  // Beyond the grid.
  {
    const cuK = splitLengths(n(1800), 3, rng);
    moba('bf16 d64 GQA 4:1 chunked (100,3)', { dtype: 'bf16', headDim: 64, numQHeads: 8, numKVHeads: 2, cuSeqlensQ: chunkQueries(cuK, rng), cuSeqlensK: cuK, moba: { chunkSize: small ? 25 : 100, topK: 3 } });
    const cu2 = splitLengths(n(1200), 2, rng);
    moba('f16 d128 GQA 8:1 (48,4)', { dtype: 'f16', headDim: 128, numQHeads: 8, numKVHeads: 1, cuSeqlensQ: cu2, cuSeqlensK: cu2, moba: { chunkSize: small ? 12 : 48, topK: 4 } });
    const cu3 = randomLengths(8, 1, 70, rng);
    moba('bf16 d128 sequences shorter than a block, length 1 (64,2)', { dtype: 'bf16', headDim: 128, numQHeads: 2, numKVHeads: 2, cuSeqlensQ: cu3, cuSeqlensK: cu3, moba: { chunkSize: 64, topK: 2 } });
    const cu4 = splitLengths(n(1024), 2, rng);
    moba('bf16 d128 topK covers every block (dense path)', { dtype: 'bf16', headDim: 128, numQHeads: 2, numKVHeads: 2, cuSeqlensQ: cu4, cuSeqlensK: cu4, moba: { chunkSize: small ? 64 : 256, topK: 8 } });
    const cuK5 = splitLengths(n(2048), 2, rng);
    moba('f16 d64 chunked odd chunk (257,2) scale 0.5', { dtype: 'f16', headDim: 64, numQHeads: 4, numKVHeads: 4, cuSeqlensQ: chunkQueries(cuK5, rng), cuSeqlensK: cuK5, moba: { chunkSize: small ? 65 : 257, topK: 2 }, softmaxScale: 0.5 });
    const cu6 = splitLengths(n(1500), 3, rng);
    moba('bf16 d128 topK 8 of many blocks (64,8)', { dtype: 'bf16', headDim: 128, numQHeads: 2, numKVHeads: 1, cuSeqlensQ: cu6, cuSeqlensK: cu6, moba: { chunkSize: small ? 16 : 64, topK: 8 } });
    const cu7 = splitLengths(n(1800), 2, rng);
    moba('f16 d64 topK 130 of many blocks (4,130)', { dtype: 'f16', headDim: 64, numQHeads: 4, numKVHeads: 2, cuSeqlensQ: cu7, cuSeqlensK: cu7, moba: { chunkSize: small ? 1 : 4, topK: 130 } });
  }
  return cases;
}

/** Registers one test per case; `only` keeps the cases whose name starts with it. */
export function defineAttentionTests(open: () => Device, scale: Scale, only?: 'dense' | 'moba'): void {
  reportSeedOnFailure();
  const rng = rngFor(`attention cases ${scale}`);
  for (const c of attentionCases(scale, rng)) {
    if (only && !c.name.startsWith(only)) continue;
    it(c.name, async () => {
      using device = open();
      await checkAttentionCase(device, c, rngFor(`${scale} ${c.name}`));
    });
  }

  // A NaN in a query row makes that row's scores NaN: its out and its lse are
  // NaN, as in the reference (lse -inf would claim the row attended to no key);
  // every other row is as without it.
  it(`a NaN query element: that row's out and lse are NaN, the others unchanged (${only ?? 'dense and moba'})`, async () => {
    using device = open();
    const r = rngFor(`${scale} NaN query row`);
    const base = { dtype: 'bf16' as const, headDim: 64, numQHeads: 2, numKVHeads: 1 };
    const cu = Int32Array.from([0, 300, 700]);
    const kinds: AttentionCase[] = [
      { ...base, name: 'dense causal', cuSeqlensQ: cu, cuSeqlensK: cu, causal: true },
      { ...base, name: 'moba', cuSeqlensQ: cu, cuSeqlensK: cu, moba: { chunkSize: 64, topK: 3 } },
    ];
    for (const c of kinds) {
      if (only && !c.name.startsWith(only)) continue;
      const x = makeInputs(c, r);
      const clean = await runOnDevice(device, c, x);
      const bad = 555; // row 555, head 1
      x.q[(bad * 2 + 1) * 64 + 7] = NaN;
      const got = await runOnDevice(device, c, x);
      for (let row = 0; row < 700; row++) {
        for (let h = 0; h < 2; h++) {
          const isBad = row === bad && h === 1;
          const o = got.out.subarray((row * 2 + h) * 64, (row * 2 + h + 1) * 64);
          const want = clean.out.subarray((row * 2 + h) * 64, (row * 2 + h + 1) * 64);
          const lse = got.lse[h * 700 + row]!;
          if (isBad) {
            expect(o.every(Number.isNaN), `${c.name}: the NaN row's out`).toBe(true);
            expect(lse, `${c.name}: the NaN row's lse`).toBeNaN();
          } else if (!o.every((v, i) => Object.is(v, want[i])) || !Object.is(lse, clean.lse[h * 700 + row])) {
            throw new Error(`${c.name}: row ${row} head ${h} changed by another row's NaN`);
          }
        }
      }
    }
  });
}

export type { Tensor };
