/**
 * Reference attention in float64 (DESIGN.md section 1): MoBA, full (causal or
 * not) and decode over a cache. All three are one loop over (sequence, query,
 * head) that asks a key selector which key positions the query may see, and
 * one helper, attendRow, that computes the softmax attention of a query row
 * over those keys.
 */
import { invalidArgument } from '../errors.js';
import { gateOf } from './gate.js';
import {
  checkPositiveInt,
  checkProblem,
  type Numeric,
  type Problem,
  type RefShape,
  type RefVarlen,
} from './types.js';

export interface RefAttentionResult {
  /** [totalQ, numQHeads, headDim] */
  out: Float64Array;
  /** [numQHeads, totalQ]: natural log-sum-exp of the scaled scores */
  lse: Float64Array;
}

export type MobaAttentionOptions = RefShape & RefVarlen & { chunkSize: number; topK: number; softmaxScale?: number };
export type FlashAttentionOptions = RefShape & RefVarlen & { causal?: boolean; softmaxScale?: number };
export type DecodeAttentionOptions = RefShape &
  RefVarlen & { policy: 'full' | 'moba'; chunkSize?: number; topK?: number; softmaxScale?: number };

/**
 * Fills keys[0..n) with the key positions (within sequence b, ascending) that
 * query position t of sequence b, head h, global query row `row`, may attend
 * to, and returns n.
 */
type KeySelector = (b: number, t: number, h: number, row: number, keys: Int32Array) => number;

/**
 * Softmax attention of one query row over a set of key rows, in float64.
 *
 * q[qOff .. qOff+D) is the query; key/value row r lives at r*kvStride + kvOff
 * in k and v. scores is scratch of length >= nKeys. Writes the output row to
 * out[outOff .. outOff+D) and returns the natural log-sum-exp of the scaled
 * scores. No keys (or every score -Infinity): out = 0, lse = -Infinity.
 */
function attendRow(
  q: Numeric,
  qOff: number,
  k: Numeric,
  v: Numeric,
  kvStride: number,
  kvOff: number,
  keyRows: Int32Array,
  nKeys: number,
  headDim: number,
  scale: number,
  scores: Float64Array,
  out: Float64Array,
  outOff: number,
): number {
  let max = -Infinity;
  for (let n = 0; n < nKeys; n++) {
    const kOff = keyRows[n]! * kvStride + kvOff;
    let dot = 0;
    for (let d = 0; d < headDim; d++) dot += q[qOff + d]! * k[kOff + d]!;
    const s = scale * dot;
    scores[n] = s;
    if (s > max) max = s;
  }
  out.fill(0, outOff, outOff + headDim);
  if (max === -Infinity && !scores.subarray(0, nKeys).some(Number.isNaN)) return -Infinity;
  let sum = 0;
  for (let n = 0; n < nKeys; n++) {
    const p = Math.exp(scores[n]! - max);
    sum += p;
    const vOff = keyRows[n]! * kvStride + kvOff;
    for (let d = 0; d < headDim; d++) out[outOff + d]! += p * v[vOff + d]!;
  }
  for (let d = 0; d < headDim; d++) out[outOff + d]! /= sum;
  return max + Math.log(sum);
}

/** The one loop over (sequence, query, head) all reference attentions share. */
function attentionOver(q: Numeric, k: Numeric, v: Numeric, p: Problem, scale: number, select: KeySelector): RefAttentionResult {
  const D = p.headDim;
  const out = new Float64Array(p.totalQ * p.numQHeads * D);
  const lse = new Float64Array(p.numQHeads * p.totalQ);
  let maxLk = 0;
  for (let b = 0; b < p.batch; b++) maxLk = Math.max(maxLk, p.cuK[b + 1]! - p.cuK[b]!);
  const keys = new Int32Array(maxLk);
  const keyRows = new Int32Array(maxLk);
  const scores = new Float64Array(maxLk);
  const kvStride = p.numKVHeads * D;
  for (let b = 0; b < p.batch; b++) {
    const lq = p.cuQ[b + 1]! - p.cuQ[b]!;
    const lk = p.cuK[b + 1]! - p.cuK[b]!;
    for (let i = 0; i < lq; i++) {
      const row = p.cuQ[b]! + i;
      const t = lk - lq + i; // bottom-right aligned query position
      for (let h = 0; h < p.numQHeads; h++) {
        const n = select(b, t, h, row, keys);
        for (let m = 0; m < n; m++) keyRows[m] = p.cuK[b]! + keys[m]!;
        const kvh = Math.floor(h / p.groupSize);
        lse[h * p.totalQ + row] = attendRow(
          q, (row * p.numQHeads + h) * D,
          k, v, kvStride, kvh * D,
          keyRows, n, D, scale, scores,
          out, (row * p.numQHeads + h) * D,
        );
      }
    }
  }
  return { out, lse };
}

function scaleOf(softmaxScale: number | undefined, headDim: number): number {
  if (softmaxScale === undefined) return 1 / Math.sqrt(headDim);
  if (typeof softmaxScale !== 'number' || !Number.isFinite(softmaxScale)) {
    throw invalidArgument('softmaxScale', 'finite number', softmaxScale);
  }
  return softmaxScale;
}

/** Key positions 0..t (causal). */
const causalKeys: KeySelector = (_b, t, _h, _row, keys) => {
  for (let s = 0; s <= t; s++) keys[s] = s;
  return t + 1;
};

/** MoBA selector: keys of the gate's selected past blocks, plus current-block keys <= t. */
function mobaSelector(q: Numeric, k: Numeric, p: Problem, chunkSize: number, topK: number): KeySelector {
  const gate = gateOf(q, k, p, chunkSize, topK); // [numQHeads, totalQ, topK]
  return (_b, t, h, row, keys) => {
    let n = 0;
    for (let i = 0; i < topK; i++) {
      const j = gate[(h * p.totalQ + row) * topK + i]!;
      if (j < 0) break;
      const end = Math.min((j + 1) * chunkSize - 1, t); // inclusive
      for (let s = j * chunkSize; s <= end; s++) keys[n++] = s;
    }
    return n;
  };
}

/**
 * MoBA attention: softmax(scale * q.k) over the keys of the selected past
 * blocks plus the current block's keys at positions <= t.
 */
export function mobaAttention(q: Numeric, k: Numeric, v: Numeric, o: MobaAttentionOptions): RefAttentionResult {
  const p = checkProblem(q, k, v, o, true);
  const chunkSize = checkPositiveInt('chunkSize', o.chunkSize);
  const topK = checkPositiveInt('topK', o.topK);
  const scale = scaleOf(o.softmaxScale, p.headDim);
  return attentionOver(q, k, v, p, scale, mobaSelector(q, k, p, chunkSize, topK));
}

/**
 * Full attention. causal: key position s allowed iff s <= t (bottom-right
 * aligned, needs Lk >= Lq); non-causal: all Lk keys (any Lk; Lk = 0 gives
 * out = 0, lse = -Infinity).
 */
export function flashAttention(q: Numeric, k: Numeric, v: Numeric, o: FlashAttentionOptions): RefAttentionResult {
  const causal = o?.causal ?? false;
  if (typeof causal !== 'boolean') throw invalidArgument('causal', 'boolean', causal);
  const p = checkProblem(q, k, v, o, causal);
  const scale = scaleOf(o.softmaxScale, p.headDim);
  if (causal) return attentionOver(q, k, v, p, scale, causalKeys);
  return attentionOver(q, k, v, p, scale, (b, _t, _h, _row, keys) => {
    const lk = p.cuK[b + 1]! - p.cuK[b]!;
    for (let s = 0; s < lk; s++) keys[s] = s;
    return lk;
  });
}

/**
 * Decode over a cache: sequence b's cache is its K/V rows (by cuSeqlensK) with
 * the Lq = cuSeqlensQ[b+1]-cuSeqlensQ[b] >= 1 new tokens already appended.
 * 'full': causal attention over the whole cache; 'moba': the MoBA gate on the
 * cache (the partly filled last block is the current block), then MoBA
 * attention.
 */
export function decodeAttention(q: Numeric, k: Numeric, v: Numeric, o: DecodeAttentionOptions): RefAttentionResult {
  const p = checkProblem(q, k, v, o, true);
  for (let b = 0; b < p.batch; b++) {
    const lq = p.cuQ[b + 1]! - p.cuQ[b]!;
    if (lq < 1) throw invalidArgument(`cuSeqlensQ (sequence ${b})`, 'at least 1 new token per sequence', lq);
  }
  const scale = scaleOf(o.softmaxScale, p.headDim);
  if (o.policy === 'full') return attentionOver(q, k, v, p, scale, causalKeys);
  if (o.policy === 'moba') {
    const chunkSize = checkPositiveInt('chunkSize', o.chunkSize);
    const topK = checkPositiveInt('topK', o.topK);
    return attentionOver(q, k, v, p, scale, mobaSelector(q, k, p, chunkSize, topK));
  }
  throw invalidArgument('policy', "'full' or 'moba'", o.policy);
}
