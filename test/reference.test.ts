/**
 * Tests of the float64 reference (lib/reference). The reference is the ground
 * truth for the CUDA and CPU kernels, so it is checked here against hand
 * computations, against differently computed implementations, and against the
 * invariants of DESIGN.md section 1.
 */
import { describe, expect, it } from 'vitest';
import {
  blockCentroids,
  decodeAttention,
  flashAttention,
  gateScores,
  mobaAttention,
  mobaGate,
  type RefAttentionResult,
} from '../lib/reference/index.js';
import { expectMobaError } from './helpers/errors.js';
import {
  lengthsOf,
  makeRng,
  maxAbsDiff,
  randn,
  randomSeqlens,
  relL2,
  reportSeedOnFailure,
  rngFor,
  roundToBf16,
  roundToF16,
  seedNote,
  type Rng,
} from './helpers/random.js';

reportSeedOnFailure();

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

interface Inputs {
  q: Float32Array; // [totalQ, Hq, D]
  k: Float32Array; // [totalK, Hkv, D]
  v: Float32Array; // [totalK, Hkv, D]
  cuSeqlensQ: Int32Array;
  cuSeqlensK: Int32Array;
  numQHeads: number;
  numKVHeads: number;
  headDim: number;
}

/** One-shot inputs: every sequence's queries are all of its positions. */
function oneShot(rng: Rng, o: { batch: number; maxLen: number; minLen?: number; Hq: number; Hkv: number; D: number }): Inputs {
  const cu = randomSeqlens(o.batch, o.maxLen, rng, { minLen: o.minLen ?? 1 });
  const total = cu[o.batch]!;
  return {
    q: randn(total * o.Hq * o.D, rng),
    k: randn(total * o.Hkv * o.D, rng),
    v: randn(total * o.Hkv * o.D, rng),
    cuSeqlensQ: cu,
    cuSeqlensK: cu,
    numQHeads: o.Hq,
    numKVHeads: o.Hkv,
    headDim: o.D,
  };
}

/**
 * Keeps the last Lq_b queries of every sequence of a one-shot input (Lq_b
 * random in [0, Lk], often 1 or Lk). Returns the chunked inputs and, per
 * chunked query row, the matching row of the one-shot input.
 */
function chunkQueries(rng: Rng, full: Inputs): { chunked: Inputs; rowMap: number[] } {
  const cuK = full.cuSeqlensK;
  const batch = cuK.length - 1;
  const cuQ = new Int32Array(batch + 1);
  const rowMap: number[] = [];
  for (let b = 0; b < batch; b++) {
    const lk = cuK[b + 1]! - cuK[b]!;
    const r = rng.next();
    const lq = r < 0.25 ? Math.min(1, lk) : r < 0.4 ? lk : rng.int(0, lk);
    cuQ[b + 1] = cuQ[b]! + lq;
    for (let i = 0; i < lq; i++) rowMap.push(cuK[b]! + lk - lq + i);
  }
  const stride = full.numQHeads * full.headDim;
  const q = new Float32Array(rowMap.length * stride);
  rowMap.forEach((src, dst) => q.set(full.q.subarray(src * stride, (src + 1) * stride), dst * stride));
  return { chunked: { ...full, q, cuSeqlensQ: cuQ }, rowMap };
}

/** Rows `rowMap` of a result over `totalQ` query rows. */
function gatherResult(r: RefAttentionResult, rowMap: number[], totalQ: number, Hq: number, D: number): RefAttentionResult {
  const out = new Float64Array(rowMap.length * Hq * D);
  const lse = new Float64Array(Hq * rowMap.length);
  rowMap.forEach((src, dst) => {
    out.set(r.out.subarray(src * Hq * D, (src + 1) * Hq * D), dst * Hq * D);
    for (let h = 0; h < Hq; h++) lse[h * rowMap.length + dst] = r.lse[h * totalQ + src]!;
  });
  return { out, lse };
}

/** Rows `rowMap` of a gate [Hq, totalQ, topK]. */
function gatherGate(g: Int32Array, rowMap: number[], totalQ: number, Hq: number, topK: number): Int32Array {
  const out = new Int32Array(Hq * rowMap.length * topK);
  for (let h = 0; h < Hq; h++) {
    rowMap.forEach((src, dst) => {
      out.set(g.subarray((h * totalQ + src) * topK, (h * totalQ + src + 1) * topK), (h * rowMap.length + dst) * topK);
    });
  }
  return out;
}

function expectSameResult(a: RefAttentionResult, b: RefAttentionResult, tol: number): void {
  expect(a.out.length).toBe(b.out.length);
  expect(a.lse.length).toBe(b.lse.length);
  expect(maxAbsDiff(a.out, b.out), `out, ${seedNote}`).toBeLessThanOrEqual(tol);
  expect(maxAbsDiff(a.lse, b.lse), `lse, ${seedNote}`).toBeLessThanOrEqual(tol);
}

function logAddExp(a: number, b: number): number {
  if (a === -Infinity) return b;
  if (b === -Infinity) return a;
  const m = Math.max(a, b);
  return m + Math.log1p(Math.exp(-Math.abs(a - b)));
}

/**
 * Attention computed differently from the reference: a score matrix per
 * (sequence, head) with -Infinity where masked, an online (pairwise)
 * log-sum-exp, an explicit probability matrix P = exp(S - lse), then P @ V.
 */
function explicitAttention(
  x: Inputs,
  scale: number,
  allowed: (b: number, t: number, s: number, h: number, row: number) => boolean,
): RefAttentionResult {
  const { q, k, v, cuSeqlensQ: cuQ, cuSeqlensK: cuK, numQHeads: Hq, numKVHeads: Hkv, headDim: D } = x;
  const totalQ = cuQ[cuQ.length - 1]!;
  const out = new Float64Array(totalQ * Hq * D);
  const lse = new Float64Array(Hq * totalQ);
  for (let b = 0; b + 1 < cuQ.length; b++) {
    const lq = cuQ[b + 1]! - cuQ[b]!;
    const lk = cuK[b + 1]! - cuK[b]!;
    for (let h = 0; h < Hq; h++) {
      const kvh = Math.floor(h / (Hq / Hkv));
      const S: number[][] = [];
      for (let i = 0; i < lq; i++) {
        const row = cuQ[b]! + i;
        const t = lk - lq + i;
        const Si: number[] = [];
        for (let s = 0; s < lk; s++) {
          if (!allowed(b, t, s, h, row)) {
            Si.push(-Infinity);
            continue;
          }
          let dot = 0;
          for (let d = 0; d < D; d++) dot += q[(row * Hq + h) * D + d]! * k[((cuK[b]! + s) * Hkv + kvh) * D + d]!;
          Si.push(scale * dot);
        }
        S.push(Si);
      }
      for (let i = 0; i < lq; i++) {
        const row = cuQ[b]! + i;
        const l = S[i]!.reduce(logAddExp, -Infinity);
        lse[h * totalQ + row] = l;
        if (l === -Infinity) continue;
        const P = S[i]!.map((s) => Math.exp(s - l));
        for (let d = 0; d < D; d++) {
          let acc = 0;
          for (let s = 0; s < lk; s++) acc += P[s]! * v[((cuK[b]! + s) * Hkv + kvh) * D + d]!;
          out[(row * Hq + h) * D + d] = acc;
        }
      }
    }
  }
  return { out, lse };
}

/** Gate selection written differently: sort all past blocks by rank, keep topK-1, add the current block. */
function expectedSelection(scores: ArrayLike<number>, topK: number): number[] {
  const c = scores.length;
  const order = Array.from({ length: c }, (_, j) => j).sort((i, j) => {
    const si = scores[i]!;
    const sj = scores[j]!;
    const ni = Number.isNaN(si);
    const nj = Number.isNaN(sj);
    if (ni !== nj) return ni ? 1 : -1;
    if (!ni && si !== sj) return sj > si ? 1 : -1;
    return i - j;
  });
  const sel = order.slice(0, topK - 1).concat([c]).sort((a, b) => a - b);
  while (sel.length < topK) sel.push(-1);
  return sel;
}

function gateRow(g: Int32Array, h: number, row: number, totalQ: number, topK: number): number[] {
  return Array.from(g.subarray((h * totalQ + row) * topK, (h * totalQ + row + 1) * topK));
}

/** Query position t of each global query row. */
function positionsOf(cuQ: Int32Array, cuK: Int32Array): { b: number; t: number }[] {
  const pos: { b: number; t: number }[] = [];
  for (let b = 0; b + 1 < cuQ.length; b++) {
    const lq = cuQ[b + 1]! - cuQ[b]!;
    const lk = cuK[b + 1]! - cuK[b]!;
    for (let i = 0; i < lq; i++) pos.push({ b, t: lk - lq + i });
  }
  return pos;
}

const L2 = Math.LN2;
const L3 = Math.log(3);

// ---------------------------------------------------------------------------
// Hand-computed case
// ---------------------------------------------------------------------------

/*
 * One sequence of 6 tokens, 1 head, headDim 2, chunkSize 2 (blocks {0,1}, {2,3}, {4,5}), scale 1.
 *   k0=(2,0) k1=(0,0) | k2=(0,1) k3=(0,1) | k4=(-2,0) k5=(0,-1)
 *   centroids: c0=(1,0), c1=(0,1), c2=(-1,-0.5)
 *   v0=(1,0) v1=(0,1) | v2=(1,1) v3=(2,0) | v4=(0,2) v5=(7,7)
 *   q0=(1,1) q1=(ln3/2,5) q2=(0,ln2) q3=(ln2/2,ln3) q4=(ln2/2,0) q5=(0,ln2)
 */
const hand = {
  q: new Float64Array([1, 1, L3 / 2, 5, 0, L2, L2 / 2, L3, L2 / 2, 0, 0, L2]),
  k: new Float64Array([2, 0, 0, 0, 0, 1, 0, 1, -2, 0, 0, -1]),
  v: new Float64Array([1, 0, 0, 1, 1, 1, 2, 0, 0, 2, 7, 7]),
  shape: { numQHeads: 1, numKVHeads: 1, headDim: 2, cuSeqlensQ: new Int32Array([0, 6]), chunkSize: 2 },
};

describe('hand-computed case', () => {
  it('block centroids, including a short last block', () => {
    const full = blockCentroids(hand.k, { cuSeqlensK: new Int32Array([0, 6]), numKVHeads: 1, headDim: 2, chunkSize: 2 });
    expect(Array.from(full.cuBlocks)).toEqual([0, 3]);
    expect(Array.from(full.centroids)).toEqual([1, 0, 0, 1, -1, -0.5]);
    // Two sequences: the first 5 tokens (last block = k4 alone), then tokens 0..2 again as a
    // sequence of 3 (blocks {k0,k1}, {k2}).
    const k2 = new Float64Array([...hand.k.subarray(0, 10), ...hand.k.subarray(0, 6)]);
    const two = blockCentroids(k2, { cuSeqlensK: new Int32Array([0, 5, 8]), numKVHeads: 1, headDim: 2, chunkSize: 2 });
    expect(Array.from(two.cuBlocks)).toEqual([0, 3, 5]);
    expect(Array.from(two.centroids)).toEqual([1, 0, 0, 1, -2, 0, 1, 0, 0, 1]);
  });

  it('gate scores', () => {
    // Query t=4: q4.c0 = ln2/2, q4.c1 = 0. Query t=5: q5.c0 = 0, q5.c1 = ln2. t=1: no past block.
    expect(Array.from(gateScores(hand.q, hand.k, hand.shape, 0, 4))).toEqual([L2 / 2, 0]);
    expect(Array.from(gateScores(hand.q, hand.k, hand.shape, 0, 5))).toEqual([0, L2]);
    expect(Array.from(gateScores(hand.q, hand.k, hand.shape, 0, 1))).toEqual([]);
    // t=2: q2.c0 = 0*1 + ln2*0 = 0
    expect(Array.from(gateScores(hand.q, hand.k, hand.shape, 0, 2))).toEqual([0]);
  });

  it('topK = 2', () => {
    const o = { ...hand.shape, topK: 2, softmaxScale: 1 };
    // t=0,1: current block 0 only; t=2,3: block 0 is the only past block; t=4 picks block 0
    // (ln2/2 > 0), t=5 picks block 1 (ln2 > 0).
    expect(Array.from(mobaGate(hand.q, hand.k, o))).toEqual([0, -1, 0, -1, 0, 1, 0, 1, 0, 2, 1, 2]);
    const r = mobaAttention(hand.q, hand.k, hand.v, o);
    const expectedOut = [
      // t=0: keys {0}: score 2 -> out v0, lse 2
      1, 0,
      // t=1: keys {0,1}: scores ln3, 0 -> weights 3/4, 1/4
      3 / 4, 1 / 4,
      // t=2: keys {0,1,2}: scores 0, 0, ln2 -> 1,1,2 / 4
      1 / 4 + 1 / 2, 1 / 4 + 1 / 2,
      // t=3: keys {0..3}: scores ln2, 0, ln3, ln3 -> 2,1,3,3 / 9: 2/9 v0 + 1/9 v1 + 3/9 v2 + 3/9 v3
      11 / 9, 4 / 9,
      // t=4: keys {0,1,4}: scores ln2, 0, -ln2 -> 2,1,1/2 / 3.5: 4/7 v0 + 2/7 v1 + 1/7 v4
      4 / 7, 4 / 7,
      // t=5: keys {2,3,4,5}: scores ln2, ln2, 0, -ln2 -> 2,2,1,1/2 / 5.5
      19 / 11, 15 / 11,
    ];
    const expectedLse = [2, Math.log(4), Math.log(4), Math.log(9), Math.log(3.5), Math.log(5.5)];
    expect(maxAbsDiff(r.out, expectedOut)).toBeLessThan(1e-14);
    expect(maxAbsDiff(r.lse, expectedLse)).toBeLessThan(1e-14);
  });

  it('topK = 1 (current block only)', () => {
    const o = { ...hand.shape, topK: 1, softmaxScale: 1 };
    expect(Array.from(mobaGate(hand.q, hand.k, o))).toEqual([0, 0, 1, 1, 2, 2]);
    const r = mobaAttention(hand.q, hand.k, hand.v, o);
    const expectedOut = [
      1, 0, // t=0 as above
      3 / 4, 1 / 4, // t=1 as above
      1, 1, // t=2: keys {2}: v2, lse ln2
      3 / 2, 1 / 2, // t=3: keys {2,3}: scores ln3, ln3 -> (v2+v3)/2, lse ln6
      0, 2, // t=4: keys {4}: v4, lse -ln2
      7 / 3, 11 / 3, // t=5: keys {4,5}: scores 0, -ln2 -> 1, 1/2: 2/3 v4 + 1/3 v5, lse ln1.5
    ];
    const expectedLse = [2, Math.log(4), L2, Math.log(6), -L2, Math.log(1.5)];
    expect(maxAbsDiff(r.out, expectedOut)).toBeLessThan(1e-14);
    expect(maxAbsDiff(r.lse, expectedLse)).toBeLessThan(1e-14);
  });

  it('topK = 3 selects everything: full causal attention', () => {
    const o = { ...hand.shape, topK: 3, softmaxScale: 1 };
    expect(Array.from(mobaGate(hand.q, hand.k, o))).toEqual([0, -1, -1, 0, -1, -1, 0, 1, -1, 0, 1, -1, 0, 1, 2, 0, 1, 2]);
    const r = mobaAttention(hand.q, hand.k, hand.v, o);
    const f = flashAttention(hand.q, hand.k, hand.v, { ...hand.shape, causal: true, softmaxScale: 1 });
    // t=4: keys 0..4: scores ln2, 0, 0, 0, -ln2 -> 2,1,1,1,1/2 / 5.5:
    //   (2 v0 + v1 + v2 + v3 + v4/2) / 5.5 = (5, 3) / 5.5
    // t=5: keys 0..5: scores 0, 0, ln2, ln2, 0, -ln2 -> 1,1,2,2,1,1/2 / 7.5:
    //   (v0 + v1 + 2 v2 + 2 v3 + v4 + v5/2) / 7.5 = (10.5, 8.5) / 7.5
    const tail = [10 / 11, 6 / 11, 1.4, 17 / 15];
    expect(maxAbsDiff(r.out.subarray(8), tail)).toBeLessThan(1e-14);
    expect(maxAbsDiff(r.lse.subarray(4), [Math.log(5.5), Math.log(7.5)])).toBeLessThan(1e-14);
    expectSameResult(r, f, 0);
  });

  it('default softmaxScale is 1/sqrt(headDim)', () => {
    const o = { ...hand.shape, topK: 2 };
    const a = mobaAttention(hand.q, hand.k, hand.v, o);
    const b = mobaAttention(hand.q, hand.k, hand.v, { ...o, softmaxScale: 1 / Math.sqrt(2) });
    expectSameResult(a, b, 0);
    // t=0: one key, lse = score = (1,1).(2,0) / sqrt(2) = sqrt(2)
    expect(a.lse[0]).toBeCloseTo(Math.SQRT2, 14);
  });

  it('decode over the hand cache', () => {
    // The last 2 tokens as new decode tokens over the 6-token cache: rows 4 and 5 above.
    const q = hand.q.subarray(8);
    const o = { numQHeads: 1, numKVHeads: 1, headDim: 2, cuSeqlensQ: new Int32Array([0, 2]), cuSeqlensK: new Int32Array([0, 6]), softmaxScale: 1 };
    const m = decodeAttention(q, hand.k, hand.v, { ...o, policy: 'moba', chunkSize: 2, topK: 2 });
    expect(maxAbsDiff(m.out, [4 / 7, 4 / 7, 19 / 11, 15 / 11])).toBeLessThan(1e-14);
    const f = decodeAttention(q, hand.k, hand.v, { ...o, policy: 'full' });
    expect(maxAbsDiff(f.out, [10 / 11, 6 / 11, 1.4, 17 / 15])).toBeLessThan(1e-14);
  });
});

// ---------------------------------------------------------------------------
// Gate
// ---------------------------------------------------------------------------

describe('mobaGate', () => {
  it('current block always selected, ascending, -1 padded, no future block; matches a sort-based selection', () => {
    const rng = rngFor('gate properties');
    for (let trial = 0; trial < 6; trial++) {
      const Hkv = rng.pick([1, 2]);
      const full = oneShot(rng, { batch: 4, maxLen: 40, minLen: 0, Hq: Hkv * rng.pick([1, 2]), Hkv, D: rng.pick([1, 4, 8]) });
      const { chunked: x } = chunkQueries(rng, full);
      const chunkSize = rng.pick([1, 3, 4, 8]);
      const topK = rng.pick([1, 2, 3, 5]);
      const o = { ...x, chunkSize, topK };
      const g = mobaGate(x.q, x.k, o);
      const totalQ = x.cuSeqlensQ[x.cuSeqlensQ.length - 1]!;
      expect(g.length).toBe(x.numQHeads * totalQ * topK);
      const cen = blockCentroids(x.k, { ...x, chunkSize });
      const pos = positionsOf(x.cuSeqlensQ, x.cuSeqlensK);
      for (let h = 0; h < x.numQHeads; h++) {
        for (let row = 0; row < totalQ; row++) {
          const c = Math.floor(pos[row]!.t / chunkSize);
          const sel = gateRow(g, h, row, totalQ, topK);
          const n = Math.min(topK, c + 1);
          const picked = sel.slice(0, n);
          expect(sel.slice(n).every((j) => j === -1), seedNote).toBe(true);
          expect(picked[n - 1], seedNote).toBe(c);
          for (let i = 1; i < n; i++) expect(picked[i]!, seedNote).toBeGreaterThan(picked[i - 1]!);
          expect(picked[0]!, seedNote).toBeGreaterThanOrEqual(0);
          const scores = gateScores(x.q, x.k, { ...o, centroids: cen }, h, row);
          expect(scores.length).toBe(c);
          expect(sel, seedNote).toEqual(expectedSelection(scores, topK));
        }
      }
    }
  });

  it('gateScores equals dot(q, mean of the block keys) computed directly', () => {
    const rng = rngFor('gate scores direct');
    const x = oneShot(rng, { batch: 3, maxLen: 30, Hq: 4, Hkv: 2, D: 4 });
    const chunkSize = 4;
    const totalQ = x.cuSeqlensQ[3]!;
    const pos = positionsOf(x.cuSeqlensQ, x.cuSeqlensK);
    for (let row = 0; row < totalQ; row++) {
      const { b, t } = pos[row]!;
      for (let h = 0; h < 4; h++) {
        const kvh = h >> 1;
        const got = gateScores(x.q, x.k, { ...x, chunkSize }, h, row);
        const want: number[] = [];
        for (let j = 0; j < Math.floor(t / chunkSize); j++) {
          let s = 0;
          for (let d = 0; d < 4; d++) {
            let sum = 0;
            for (let p = j * chunkSize; p < (j + 1) * chunkSize; p++) sum += x.k[((x.cuSeqlensK[b]! + p) * 2 + kvh) * 4 + d]!;
            s += x.q[(row * 4 + h) * 4 + d]! * (sum / chunkSize);
          }
          want.push(s);
        }
        expect(got.length).toBe(want.length);
        expect(maxAbsDiff(got, want), seedNote).toBeLessThan(1e-12);
      }
    }
  });

  it('ties go to the lower block index', () => {
    // headDim 1, chunkSize 2, all keys 1: every centroid is 1, every score equals q.
    const L = 11;
    const k = new Float64Array(L).fill(1);
    const q = new Float64Array(L).fill(0.5);
    const g = mobaGate(q, k, { numQHeads: 1, numKVHeads: 1, headDim: 1, cuSeqlensQ: new Int32Array([0, L]), chunkSize: 2, topK: 3 });
    // Query t=10: current block 5, past blocks 0..4 all tie -> 0 and 1.
    expect(gateRow(g, 0, 10, L, 3)).toEqual([0, 1, 5]);
    expect(gateRow(g, 0, 5, L, 3)).toEqual([0, 1, 2]);
    expect(gateRow(g, 0, 3, L, 3)).toEqual([0, 1, -1]);
    expect(gateRow(g, 0, 1, L, 3)).toEqual([0, -1, -1]);
  });

  it('NaN ranks lowest, below -Infinity; +-Infinity rank normally', () => {
    // headDim 1, chunkSize 1: centroid j = key j. Query t=4 with q = +Infinity:
    // keys [NaN, -1, 0, 2, 5] -> past scores [NaN, -Inf, NaN (Inf*0), +Inf].
    const k = new Float64Array([NaN, -1, 0, 2, 5]);
    const q = new Float64Array([1, 1, 1, 1, Infinity]);
    const o = { numQHeads: 1, numKVHeads: 1, headDim: 1, cuSeqlensQ: new Int32Array([0, 5]), chunkSize: 1 };
    const scores = Array.from(gateScores(q, k, o, 0, 4));
    expect(scores).toEqual([NaN, -Infinity, NaN, Infinity]);
    const pick = (topK: number) => gateRow(mobaGate(q, k, { ...o, topK }), 0, 4, 5, topK);
    expect(pick(2)).toEqual([3, 4]); // +Inf first
    expect(pick(3)).toEqual([1, 3, 4]); // then -Inf, before any NaN
    expect(pick(4)).toEqual([0, 1, 3, 4]); // then the NaNs, lower index first
    expect(pick(5)).toEqual([0, 1, 2, 3, 4]);
    expect(pick(6)).toEqual([0, 1, 2, 3, 4, -1]);
    // Query t=3 (q=1): scores [NaN, -1, 0] -> topK 2 picks block 2.
    expect(gateRow(mobaGate(q, k, { ...o, topK: 2 }), 0, 3, 5, 2)).toEqual([2, 3]);
  });

  it('future blocks never count, however high their scores', () => {
    const rng = rngFor('gate future');
    const x = oneShot(rng, { batch: 1, maxLen: 24, minLen: 24, Hq: 2, Hkv: 1, D: 4 });
    const o = { ...x, chunkSize: 4, topK: 2 };
    const before = mobaGate(x.q, x.k, o);
    const attnBefore = mobaAttention(x.q, x.k, x.v, o);
    // Rows 0..11 only see blocks 0..2; blow up blocks 3..5 (keys 12..23) in the direction of q.
    const k = Float32Array.from(x.k);
    for (let s = 12; s < 24; s++) for (let d = 0; d < 4; d++) k[s * 4 + d] = 1e6 * (x.q[(11 * 2) * 4 + d]! + x.q[(11 * 2 + 1) * 4 + d]!);
    const after = mobaGate(x.q, k, o);
    const attnAfter = mobaAttention(x.q, k, x.v, o);
    for (let h = 0; h < 2; h++) {
      for (let row = 0; row < 12; row++) expect(gateRow(after, h, row, 24, 2)).toEqual(gateRow(before, h, row, 24, 2));
    }
    for (let row = 0; row < 12; row++) {
      for (let i = 0; i < 2 * 4; i++) expect(attnAfter.out[row * 8 + i]).toBe(attnBefore.out[row * 8 + i]);
    }
  });
});

// ---------------------------------------------------------------------------
// Attention
// ---------------------------------------------------------------------------

describe('mobaAttention', () => {
  it('topK >= number of blocks equals full causal flashAttention (varlen, GQA, chunked queries)', () => {
    const rng = rngFor('moba equals full');
    for (let trial = 0; trial < 4; trial++) {
      const Hkv = rng.pick([1, 2]);
      const full = oneShot(rng, { batch: 4, maxLen: 37, Hq: Hkv * rng.pick([1, 3]), Hkv, D: rng.pick([2, 8]) });
      const { chunked: x } = chunkQueries(rng, full);
      const chunkSize = rng.pick([1, 4, 5, 16]);
      const maxBlocks = Math.ceil(Math.max(...lengthsOf(x.cuSeqlensK)) / chunkSize);
      const topK = maxBlocks + rng.int(0, 2);
      const m = mobaAttention(x.q, x.k, x.v, { ...x, chunkSize, topK });
      const f = flashAttention(x.q, x.k, x.v, { ...x, causal: true });
      expectSameResult(m, f, 1e-12);
    }
  });

  it('equals attention over the gate-selected keys computed with an explicit probability matrix', () => {
    const rng = rngFor('moba explicit');
    for (let trial = 0; trial < 3; trial++) {
      const full = oneShot(rng, { batch: 3, maxLen: 33, Hq: 4, Hkv: 2, D: 4 });
      const { chunked: x } = chunkQueries(rng, full);
      const chunkSize = rng.pick([2, 4, 6]);
      const topK = rng.pick([1, 2, 3]);
      const softmaxScale = rng.pick([undefined, 0.3, 1.7]);
      const o = { ...x, chunkSize, topK, softmaxScale };
      const g = mobaGate(x.q, x.k, o);
      const totalQ = x.cuSeqlensQ[x.cuSeqlensQ.length - 1]!;
      const want = explicitAttention(x, softmaxScale ?? 1 / 2, (_b, t, s, h, row) => {
        return s <= t && gateRow(g, h, row, totalQ, topK).includes(Math.floor(s / chunkSize));
      });
      expectSameResult(mobaAttention(x.q, x.k, x.v, o), want, 1e-12);
    }
  });

  it('chunked queries equal the matching rows of a one-shot run (attention and gate)', () => {
    const rng = rngFor('moba chunked');
    for (let trial = 0; trial < 4; trial++) {
      const full = oneShot(rng, { batch: 4, maxLen: 40, Hq: 4, Hkv: 1, D: 4 });
      const { chunked, rowMap } = chunkQueries(rng, full);
      const o = { chunkSize: rng.pick([3, 4, 8]), topK: rng.pick([1, 2, 3]) };
      const totalFull = full.cuSeqlensQ[full.cuSeqlensQ.length - 1]!;
      const one = mobaAttention(full.q, full.k, full.v, { ...full, ...o });
      const part = mobaAttention(chunked.q, chunked.k, chunked.v, { ...chunked, ...o });
      expectSameResult(part, gatherResult(one, rowMap, totalFull, 4, 4), 0);
      const g1 = mobaGate(full.q, full.k, { ...full, ...o });
      const g2 = mobaGate(chunked.q, chunked.k, { ...chunked, ...o });
      expect(Array.from(g2)).toEqual(Array.from(gatherGate(g1, rowMap, totalFull, 4, o.topK)));
    }
  });

  it('GQA equals MHA with the KV heads repeated', () => {
    const rng = rngFor('moba gqa');
    const x = oneShot(rng, { batch: 3, maxLen: 30, Hq: 6, Hkv: 2, D: 4 });
    const totalK = x.cuSeqlensK[3]!;
    const rep = (a: Float32Array) => {
      const r = new Float32Array(totalK * 6 * 4);
      for (let s = 0; s < totalK; s++) for (let h = 0; h < 6; h++) r.set(a.subarray((s * 2 + Math.floor(h / 3)) * 4, (s * 2 + Math.floor(h / 3) + 1) * 4), (s * 6 + h) * 4);
      return r;
    };
    const o = { chunkSize: 4, topK: 2 };
    const gqa = mobaAttention(x.q, x.k, x.v, { ...x, ...o });
    const mha = mobaAttention(x.q, rep(x.k), rep(x.v), { ...x, numKVHeads: 6, ...o });
    expectSameResult(gqa, mha, 0);
    expect(Array.from(mobaGate(x.q, x.k, { ...x, ...o }))).toEqual(Array.from(mobaGate(x.q, rep(x.k), { ...x, numKVHeads: 6, ...o })));
  });

  it('results do not depend on the order of the sequences in the batch', () => {
    const rng = rngFor('moba permutation');
    const full = oneShot(rng, { batch: 5, maxLen: 30, minLen: 0, Hq: 2, Hkv: 2, D: 4 });
    const { chunked: x } = chunkQueries(rng, full);
    const batch = 5;
    const perm = [...Array(batch).keys()];
    for (let i = batch - 1; i > 0; i--) {
      const j = rng.int(0, i);
      [perm[i], perm[j]] = [perm[j]!, perm[i]!];
    }
    // Sequence i of the permuted batch is sequence perm[i] of the original.
    const permute = (a: Float32Array, cu: Int32Array, stride: number) => {
      const out = new Float32Array(a.length);
      const cuP = new Int32Array(batch + 1);
      const rows: number[] = [];
      perm.forEach((src, i) => {
        cuP[i + 1] = cuP[i]! + cu[src + 1]! - cu[src]!;
        out.set(a.subarray(cu[src]! * stride, cu[src + 1]! * stride), cuP[i]! * stride);
        for (let r = cu[src]!; r < cu[src + 1]!; r++) rows.push(r);
      });
      return { out, cuP, rows };
    };
    const qP = permute(x.q, x.cuSeqlensQ, 8);
    const kP = permute(x.k, x.cuSeqlensK, 8);
    const vP = permute(x.v, x.cuSeqlensK, 8);
    const y: Inputs = { ...x, q: qP.out, k: kP.out, v: vP.out, cuSeqlensQ: qP.cuP, cuSeqlensK: kP.cuP };
    const totalQ = x.cuSeqlensQ[batch]!;
    const o = { chunkSize: 3, topK: 2 };
    expectSameResult(
      mobaAttention(y.q, y.k, y.v, { ...y, ...o }),
      gatherResult(mobaAttention(x.q, x.k, x.v, { ...x, ...o }), qP.rows, totalQ, 2, 4),
      0,
    );
    expect(Array.from(mobaGate(y.q, y.k, { ...y, ...o }))).toEqual(
      Array.from(gatherGate(mobaGate(x.q, x.k, { ...x, ...o }), qP.rows, totalQ, 2, o.topK)),
    );
    for (const causal of [true, false]) {
      expectSameResult(
        flashAttention(y.q, y.k, y.v, { ...y, causal }),
        gatherResult(flashAttention(x.q, x.k, x.v, { ...x, causal }), qP.rows, totalQ, 2, 4),
        0,
      );
    }
  });

  it('softmax is stable for huge scores: finite, a convex combination of the values', () => {
    const rng = rngFor('moba stable');
    const x = oneShot(rng, { batch: 2, maxLen: 20, minLen: 8, Hq: 1, Hkv: 1, D: 4 });
    const o = { ...x, chunkSize: 4, topK: 2, softmaxScale: 1e4 }; // scores ~ 1e4: exp overflows without the max
    const r = mobaAttention(x.q, x.k, x.v, o);
    const totalK = x.cuSeqlensK[2]!;
    for (let d = 0; d < 4; d++) {
      let lo = Infinity;
      let hi = -Infinity;
      for (let s = 0; s < totalK; s++) {
        lo = Math.min(lo, x.v[s * 4 + d]!);
        hi = Math.max(hi, x.v[s * 4 + d]!);
      }
      for (let row = 0; row < totalK; row++) {
        const y = r.out[row * 4 + d]!;
        expect(Number.isFinite(y), seedNote).toBe(true);
        expect(y).toBeGreaterThanOrEqual(lo - 1e-9);
        expect(y).toBeLessThanOrEqual(hi + 1e-9);
      }
    }
    expect(r.lse.every(Number.isFinite)).toBe(true);
    const g = mobaGate(x.q, x.k, o);
    const want = explicitAttention(x, 1e4, (_b, t, s, _h, row) => s <= t && gateRow(g, 0, row, totalK, 2).includes(Math.floor(s / 4)));
    expect(relL2(r.out, want.out), seedNote).toBeLessThan(1e-9);
    expect(relL2(r.lse, want.lse), seedNote).toBeLessThan(1e-12);
  });
});

describe('flashAttention', () => {
  it('non-causal equals an explicit probability matrix (including Lk != Lq and Lk = 0)', () => {
    const rng = rngFor('flash noncausal');
    for (let trial = 0; trial < 3; trial++) {
      const Hkv = rng.pick([1, 2]);
      const Hq = Hkv * rng.pick([1, 2]);
      const D = rng.pick([3, 8]);
      const batch = 4;
      const cuQ = randomSeqlens(batch, 12, rng, { minLen: 0 });
      const cuK = randomSeqlens(batch, 20, rng, { minLen: 0 }); // any Lk: more, fewer, or no keys
      if (trial === 0) {
        // force one sequence with queries but no keys
        const lens = lengthsOf(cuK);
        lens[0] = 0;
        lens.forEach((l, b) => (cuK[b + 1] = cuK[b]! + l));
        const lq = lengthsOf(cuQ);
        lq[0] = Math.max(lq[0]!, 2);
        lq.forEach((l, b) => (cuQ[b + 1] = cuQ[b]! + l));
      }
      const x: Inputs = {
        q: randn(cuQ[batch]! * Hq * D, rng),
        k: randn(cuK[batch]! * Hkv * D, rng),
        v: randn(cuK[batch]! * Hkv * D, rng),
        cuSeqlensQ: cuQ,
        cuSeqlensK: cuK,
        numQHeads: Hq,
        numKVHeads: Hkv,
        headDim: D,
      };
      const r = flashAttention(x.q, x.k, x.v, { ...x, causal: false });
      const want = explicitAttention(x, 1 / Math.sqrt(D), () => true);
      expectSameResult(r, want, 1e-12);
      if (trial === 0) {
        // Sequence 0 has no keys: out 0, lse -Infinity.
        for (let row = 0; row < cuQ[1]!; row++) {
          for (let h = 0; h < Hq; h++) expect(r.lse[h * cuQ[batch]! + row]).toBe(-Infinity);
          expect(Array.from(r.out.subarray(row * Hq * D, (row + 1) * Hq * D)).every((y) => y === 0)).toBe(true);
        }
      }
    }
  });

  it('causal equals an explicit masked probability matrix (bottom-right aligned)', () => {
    const rng = rngFor('flash causal explicit');
    const full = oneShot(rng, { batch: 4, maxLen: 30, Hq: 4, Hkv: 2, D: 8 });
    const { chunked: x } = chunkQueries(rng, full);
    const r = flashAttention(x.q, x.k, x.v, { ...x, causal: true, softmaxScale: 0.25 });
    expectSameResult(r, explicitAttention(x, 0.25, (_b, t, s) => s <= t), 1e-12);
  });

  it('chunked queries equal the matching rows of a one-shot run', () => {
    const rng = rngFor('flash chunked');
    const full = oneShot(rng, { batch: 4, maxLen: 40, Hq: 2, Hkv: 1, D: 4 });
    const { chunked, rowMap } = chunkQueries(rng, full);
    const totalFull = full.cuSeqlensQ[4]!;
    for (const causal of [true, false]) {
      const one = flashAttention(full.q, full.k, full.v, { ...full, causal });
      const part = flashAttention(chunked.q, chunked.k, chunked.v, { ...chunked, causal });
      expectSameResult(part, gatherResult(one, rowMap, totalFull, 2, 4), 0);
    }
  });
});

describe('decodeAttention', () => {
  it("'full' equals causal flashAttention rows; 'moba' equals mobaAttention with chunked queries", () => {
    const rng = rngFor('decode');
    for (let trial = 0; trial < 4; trial++) {
      const Hkv = rng.pick([1, 2]);
      const full = oneShot(rng, { batch: 4, maxLen: 45, Hq: Hkv * rng.pick([1, 4]), Hkv, D: 4 });
      const batch = 4;
      // 1..8 new tokens per sequence at the end of the cache
      const cuQ = new Int32Array(batch + 1);
      const rowMap: number[] = [];
      const cuK = full.cuSeqlensK;
      for (let b = 0; b < batch; b++) {
        const lk = cuK[b + 1]! - cuK[b]!;
        const lq = rng.int(1, Math.min(8, lk));
        cuQ[b + 1] = cuQ[b]! + lq;
        for (let i = 0; i < lq; i++) rowMap.push(cuK[b]! + lk - lq + i);
      }
      const stride = full.numQHeads * 4;
      const q = new Float32Array(rowMap.length * stride);
      rowMap.forEach((src, dst) => q.set(full.q.subarray(src * stride, (src + 1) * stride), dst * stride));
      const x = { ...full, q, cuSeqlensQ: cuQ };
      const totalFull = cuK[batch]!;
      const o = { chunkSize: rng.pick([2, 4, 7]), topK: rng.pick([1, 2, 3]) };

      const dFull = decodeAttention(x.q, x.k, x.v, { ...x, policy: 'full' });
      expectSameResult(dFull, flashAttention(x.q, x.k, x.v, { ...x, causal: true }), 0);
      expectSameResult(dFull, gatherResult(flashAttention(full.q, full.k, full.v, { ...full, causal: true }), rowMap, totalFull, full.numQHeads, 4), 0);

      const dMoba = decodeAttention(x.q, x.k, x.v, { ...x, policy: 'moba', ...o });
      expectSameResult(dMoba, mobaAttention(x.q, x.k, x.v, { ...x, ...o }), 0);
      expectSameResult(dMoba, gatherResult(mobaAttention(full.q, full.k, full.v, { ...full, ...o }), rowMap, totalFull, full.numQHeads, 4), 0);
    }
  });

  it("'moba' step by step over a growing cache equals a one-shot MoBA prefill", () => {
    const rng = rngFor('decode steps');
    const L = 26;
    const x = oneShot(rng, { batch: 1, maxLen: L, minLen: L, Hq: 2, Hkv: 1, D: 4 });
    const o = { chunkSize: 4, topK: 2 };
    const one = mobaAttention(x.q, x.k, x.v, { ...x, ...o });
    for (let n = 1; n <= L; n++) {
      // cache = first n tokens, one new token: position n-1
      const step = decodeAttention(x.q.subarray((n - 1) * 8, n * 8), x.k.subarray(0, n * 4), x.v.subarray(0, n * 4), {
        numQHeads: 2,
        numKVHeads: 1,
        headDim: 4,
        cuSeqlensQ: new Int32Array([0, 1]),
        cuSeqlensK: new Int32Array([0, n]),
        policy: 'moba',
        ...o,
      });
      expectSameResult(step, gatherResult(one, [n - 1], L, 2, 4), 0);
    }
  });
});

// ---------------------------------------------------------------------------
// Argument checks
// ---------------------------------------------------------------------------

describe('argument checks', () => {
  const q = new Float32Array(4 * 2 * 2).fill(0.5);
  const k = new Float32Array(4 * 1 * 2).fill(0.25);
  const base = { numQHeads: 2, numKVHeads: 1, headDim: 2, cuSeqlensQ: new Int32Array([0, 4]), chunkSize: 2, topK: 2 };
  const einval = (f: () => unknown, message: string) => {
    expect(expectMobaError(f, 'EINVAL').message).toBe(message);
  };
  it('rejects bad arguments with EINVAL', () => {
    einval(() => mobaGate(q, k, { ...base, topK: 0 }), 'Expected positive integer for topK but received 0');
    einval(() => mobaGate(q, k, { ...base, chunkSize: 1.5 }), 'Expected positive integer for chunkSize but received 1.5');
    einval(() => mobaGate(q, k, { ...base, numKVHeads: 3, numQHeads: 2 }), 'Expected a divisor of numQHeads (2) for numKVHeads but received 3');
    einval(() => mobaGate(q, k, { ...base, cuSeqlensQ: new Int32Array([0, 3]) }), 'Expected 12 for q.length but received 16');
    einval(() => mobaGate(q, k, { ...base, cuSeqlensQ: new Int32Array([1, 4]) }), 'Expected 0 for cuSeqlensQ[0] but received 1');
    einval(
      () => mobaGate(q, k, { ...base, cuSeqlensQ: new Int32Array([0, 3, 2, 4]), cuSeqlensK: new Int32Array([0, 3, 3, 4]) }),
      'Expected value >= cuSeqlensQ[1] = 3 for cuSeqlensQ[2] but received 2',
    );
    einval(
      () => mobaAttention(q, k.subarray(0, 6), k.subarray(0, 6), { ...base, cuSeqlensK: new Int32Array([0, 3]) }),
      'Expected at least as many keys as queries (4) for cuSeqlensK (sequence 0) but received 3',
    );
    einval(
      () => flashAttention(q, k, k, { ...base, cuSeqlensK: new Int32Array([0, 2, 4]) }),
      'Expected Int32Array of length 2 (batch+1) for cuSeqlensK but received Int32Array(3)',
    );
    einval(() => gateScores(q, k, base, 2, 0), 'Expected integer in [0, 2) for head but received 2');
    einval(
      () => decodeAttention(q, k, k, { ...base, policy: 'sparse' as 'full' }),
      "Expected 'full' or 'moba' for policy but received \"sparse\"",
    );
    einval(() => decodeAttention(q, k, k, { ...base, policy: 'moba', topK: undefined }), 'Expected positive integer for topK but received undefined');
    einval(() => flashAttention(q, k, k, { ...base, softmaxScale: NaN }), 'Expected finite number for softmaxScale but received NaN');
    // Options, given centroids and output sizes.
    einval(() => blockCentroids(k, null as never), 'Expected an object for options but received null');
    const other = blockCentroids(k, { cuSeqlensK: base.cuSeqlensQ, numKVHeads: 1, headDim: 2, chunkSize: 1 });
    expect(expectMobaError(() => gateScores(q, k, { ...base, centroids: other }, 0, 3), 'EINVAL').message)
      .toMatch(/^Expected the block centroids of these keys with chunkSize 2 for centroids but received /);
    expect(expectMobaError(() => gateScores(q, k, { ...base, centroids: {} as never }, 0, 3), 'EINVAL').message)
      .toMatch(/^Expected the result of reference\.blockCentroids for centroids but received /);
    einval(() => mobaGate(q, k, { ...base, topK: 2 ** 30 }),
      'Expected a value with numQHeads * totalQ * topK below 2^31 - 1 (here at most 268435455) for topK but received 1073741824');
    // Centroids of the right keys and chunkSize are taken as given.
    const own = blockCentroids(k, { cuSeqlensK: base.cuSeqlensQ, numKVHeads: 1, headDim: 2, chunkSize: 2 });
    expect(Array.from(gateScores(q, k, { ...base, centroids: own }, 0, 3))).toEqual(Array.from(gateScores(q, k, base, 0, 3)));
  });
});

// ---------------------------------------------------------------------------
// Test helpers
// ---------------------------------------------------------------------------

const bitsToF32 = (u: number): number => new Float32Array(new Uint32Array([u >>> 0]).buffer)[0]!;
const f32ToBits = (x: number): number => new Uint32Array(new Float32Array([x]).buffer)[0]!;
/** The float value of an IEEE half bit pattern. */
function halfToNumber(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const e = (h >> 10) & 0x1f;
  const m = h & 0x3ff;
  if (e === 0x1f) return m ? NaN : sign * Infinity;
  if (e === 0) return sign * m * 2 ** -24;
  return sign * (1 + m / 1024) * 2 ** (e - 15);
}

describe('test helpers', () => {
  it('roundToBf16 on specific bit patterns', () => {
    const cases: [number, number][] = [
      [0x3f800000, 0x3f800000], // 1 exact
      [0x3f808000, 0x3f800000], // halfway, even below -> down
      [0x3f818000, 0x3f820000], // halfway, odd below -> up to even
      [0x3f808001, 0x3f810000], // just above halfway -> up
      [0x3f807fff, 0x3f800000], // just below halfway -> down
      [0xbf808000, 0xbf800000], // negative tie -> even
      [0x7f7fffff, 0x7f800000], // max float32 rounds past max bf16 to +Inf
      [0x7f7f7fff, 0x7f7f0000], // just below the bf16 max halfway point stays finite
      [0x7f800000, 0x7f800000], // +Inf
      [0xff800000, 0xff800000], // -Inf
      [0x00000001, 0x00000000], // smallest subnormal -> +0
      [0x00008000, 0x00000000], // subnormal tie, even -> down
      [0x00018000, 0x00020000], // subnormal tie, odd -> up
      [0x00012345, 0x00010000], // subnormal kept as a subnormal
      [0x007fffff, 0x00800000], // largest subnormal rounds to the smallest normal
      [0x80000000, 0x80000000], // -0 keeps its sign
    ];
    const x = new Float32Array(cases.map(([u]) => bitsToF32(u)));
    const y = roundToBf16(x);
    cases.forEach(([u, want], i) => expect(f32ToBits(y[i]!), `input 0x${u.toString(16)}`).toBe(want));
    const nans = roundToBf16(new Float32Array([bitsToF32(0x7f800001), bitsToF32(0xffc00000), NaN]));
    for (const n of nans) expect(Number.isNaN(n)).toBe(true); // 0x7f800001 would truncate to Inf
  });

  it('roundToBf16 is the identity on every bf16 value', () => {
    const x = new Float32Array(65536);
    for (let h = 0; h < 65536; h++) x[h] = bitsToF32(h << 16);
    const y = roundToBf16(x);
    for (let h = 0; h < 65536; h++) {
      if (Number.isNaN(x[h])) expect(Number.isNaN(y[h])).toBe(true);
      else expect(f32ToBits(y[h]!)).toBe(h << 16 >>> 0);
    }
  });

  it('roundToF16 on specific values', () => {
    const cases: [number, number][] = [
      [1, 1],
      [1 + 2 ** -11, 1], // halfway between 1 and 1+2^-10: even -> 1
      [1 + 3 * 2 ** -11, 1 + 2 ** -9], // halfway, odd below -> up
      [1 + 2 ** -11 + 2 ** -20, 1 + 2 ** -10], // above halfway -> up
      [-(1 + 2 ** -11), -1],
      [65504, 65504], // max half
      [65519, 65504], // below the halfway point 65520
      [65520, Infinity], // halfway, 65504 is odd -> rounds up to Inf
      [-70000, -Infinity],
      [3.4e38, Infinity],
      [2 ** -24, 2 ** -24], // smallest subnormal
      [2 ** -25, 0], // halfway between 0 and 2^-24 -> even (0)
      [3 * 2 ** -25, 2 ** -23], // halfway between 2^-24 and 2^-23 -> even (2^-23)
      [2 ** -25 + 2 ** -30, 2 ** -24], // above halfway -> smallest subnormal
      [1000.7 * 2 ** -24, 1001 * 2 ** -24], // subnormal range keeps subnormals
      [2 ** -14 - 2 ** -25, 2 ** -14], // largest subnormal + half ulp -> ties to even = 2^-14 (normal)
      [1e-30, 0],
      [Infinity, Infinity],
      [-Infinity, -Infinity],
      [2048 + 1, 2048], // ulp 2 at 2048: 2049 halfway -> even
      [2048 + 3, 2052],
    ];
    const y = roundToF16(new Float32Array(cases.map(([v]) => v)));
    cases.forEach(([v, want], i) => expect(y[i], `input ${v}`).toBe(want));
    const z = roundToF16(new Float32Array([-0, -1e-30, NaN, bitsToF32(0x7f800001)]));
    expect(Object.is(z[0], -0)).toBe(true);
    expect(Object.is(z[1], -0)).toBe(true);
    expect(Number.isNaN(z[2])).toBe(true);
    expect(Number.isNaN(z[3])).toBe(true);
  });

  it('roundToF16: identity on every half value, midpoints round to even', () => {
    const vals: number[] = [];
    for (let h = 0; h < 0x7c00; h++) vals.push(halfToNumber(h)); // finite non-negative halves
    const y = roundToF16(new Float32Array(vals));
    for (let h = 0; h < vals.length; h++) expect(y[h]).toBe(vals[h]);
    const mids = new Float32Array(vals.length - 1);
    for (let h = 0; h + 1 < vals.length; h++) mids[h] = (vals[h]! + vals[h + 1]!) / 2; // exact in float32
    const r = roundToF16(mids);
    const neg = roundToF16(mids.map((m) => -m));
    for (let h = 0; h + 1 < vals.length; h++) {
      const even = h % 2 === 0 ? vals[h]! : vals[h + 1]!;
      expect(r[h]).toBe(even);
      expect(neg[h]).toBe(-even);
    }
  });

  it('seeded PRNG, randn, randomSeqlens, relL2', () => {
    const a = makeRng(42);
    const b = makeRng(42);
    const xs = Array.from({ length: 5 }, () => a.next());
    expect(xs).toEqual(Array.from({ length: 5 }, () => b.next()));
    const rng = rngFor('helpers');
    const z = randn(20000, rng);
    const mean = z.reduce((s, y) => s + y, 0) / z.length;
    const varc = z.reduce((s, y) => s + (y - mean) ** 2, 0) / z.length;
    expect(Math.abs(mean)).toBeLessThan(0.05);
    expect(Math.abs(varc - 1)).toBeLessThan(0.06);
    const seen = new Set<number>();
    for (let i = 0; i < 50; i++) {
      const cu = randomSeqlens(6, 37, rng, { minLen: 1 });
      expect(cu.length).toBe(7);
      expect(cu[0]).toBe(0);
      for (const l of lengthsOf(cu)) {
        expect(l).toBeGreaterThanOrEqual(1);
        expect(l).toBeLessThanOrEqual(37);
        seen.add(l);
      }
    }
    expect(seen.has(1)).toBe(true);
    expect(seen.has(37)).toBe(true);
    expect(relL2([1, 2, 2], [1, 2, 2])).toBe(0);
    expect(relL2([0, 0, 0], [3, 0, 4])).toBeCloseTo(1, 15);
    expect(relL2([3, 0, 4.5], [3, 0, 4])).toBeCloseTo(0.1, 15);
  });
});
