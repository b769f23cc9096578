/**
 * The MoBA gate (DESIGN.md section 1).
 *
 * For query position t (head h) of a sequence, the current block c = floor(t/B)
 * is always selected. Among the past blocks j < c (always complete), the
 * topK-1 highest scores dot(q_t, centroid_j) (unscaled) are selected. Ties go
 * to the lower block index; NaN ranks lowest (below -Infinity). Future blocks
 * never count. Output per (head, query): selected blocks ascending, -1 padded.
 */
import { invalidArgument } from '../errors.js';
import { blockCentroids, blockOffsets, type CentroidResult } from './centroids.js';
import {
  checkPositiveInt,
  checkProblem,
  sequenceOfRow,
  type Numeric,
  type Problem,
  type RefShape,
  type RefVarlen,
} from './types.js';

export type GateOptions = RefShape & RefVarlen & { chunkSize: number; topK: number };

/**
 * Options of gateScores. `centroids` may carry blockCentroids(k, ...) computed
 * once, so that asking for many rows does not recompute them.
 */
export type GateScoreOptions = RefShape & RefVarlen & { chunkSize: number; centroids?: CentroidResult };

/** True when block i (score si) ranks above block j (score sj), i != j. */
export function ranksAbove(si: number, i: number, sj: number, j: number): boolean {
  const iNaN = Number.isNaN(si);
  const jNaN = Number.isNaN(sj);
  if (iNaN || jNaN) return iNaN && jNaN ? i < j : jNaN;
  return si > sj || (si === sj && i < j);
}

function centroidsOf(k: Numeric, p: Problem, chunkSize: number): CentroidResult {
  return blockCentroids(k, {
    cuSeqlensK: p.cuK,
    numKVHeads: p.numKVHeads,
    headDim: p.headDim,
    chunkSize,
  });
}

/** Scores of the past blocks 0..c-1 of query `row` (global row), head `h`; p validated. */
function pastScores(q: Numeric, p: Problem, cen: CentroidResult, chunkSize: number, h: number, row: number): Float64Array {
  const b = sequenceOfRow(p.cuQ, row);
  const lq = p.cuQ[b + 1]! - p.cuQ[b]!;
  const lk = p.cuK[b + 1]! - p.cuK[b]!;
  const t = lk - lq + (row - p.cuQ[b]!);
  const c = Math.floor(t / chunkSize);
  const kvh = Math.floor(h / p.groupSize);
  const D = p.headDim;
  const qOff = (row * p.numQHeads + h) * D;
  const scores = new Float64Array(c);
  for (let j = 0; j < c; j++) {
    const cOff = ((cen.cuBlocks[b]! + j) * p.numKVHeads + kvh) * D;
    let s = 0;
    for (let d = 0; d < D; d++) s += q[qOff + d]! * cen.centroids[cOff + d]!;
    scores[j] = s;
  }
  return scores;
}

/**
 * Gate scores of one (query head, global query row): Float64Array of length c,
 * score of past block j = dot(q_row, centroid_j), unscaled, in float64.
 * Kernel tests use it to recognise near-ties.
 */
export function gateScores(q: Numeric, k: Numeric, o: GateScoreOptions, head: number, row: number): Float64Array {
  const p = checkProblem(q, k, null, o, true);
  const chunkSize = checkPositiveInt('chunkSize', o.chunkSize);
  if (!Number.isInteger(head) || head < 0 || head >= p.numQHeads) {
    throw invalidArgument('head', `integer in [0, ${p.numQHeads})`, head);
  }
  if (!Number.isInteger(row) || row < 0 || row >= p.totalQ) {
    throw invalidArgument('row', `integer in [0, ${p.totalQ})`, row);
  }
  const cen = o.centroids === undefined ? centroidsOf(k, p, chunkSize) : checkCentroids(o.centroids, p, chunkSize);
  return pastScores(q, p, cen, chunkSize, head, row);
}

/**
 * The selected blocks of one query, ascending, written to out[outOff .. outOff+topK),
 * -1 padded. `scores` are the past-block scores (length c = current block).
 */
function selectBlocks(scores: Float64Array, topK: number, out: Int32Array, outOff: number): void {
  const c = scores.length;
  const chosen: number[] = [];
  // Selection by repeated arg-max: plain and obviously right.
  const taken = new Uint8Array(c);
  for (let n = 0; n < Math.min(topK - 1, c); n++) {
    let best = -1;
    for (let j = 0; j < c; j++) {
      if (taken[j]) continue;
      if (best < 0 || ranksAbove(scores[j]!, j, scores[best]!, best)) best = j;
    }
    taken[best] = 1;
    chosen.push(best);
  }
  chosen.sort((a, b) => a - b);
  chosen.push(c); // the current block is always selected and is the highest index
  out.fill(-1, outOff, outOff + topK);
  for (let n = 0; n < chosen.length; n++) out[outOff + n] = chosen[n]!;
}

/** Centroids given by the caller must be those of this problem's keys and chunkSize (their layout, at least). */
function checkCentroids(c: unknown, p: Problem, chunkSize: number): CentroidResult {
  const r = c as CentroidResult;
  if (c === null || typeof c !== 'object' || !(r.centroids instanceof Float64Array) || !(r.cuBlocks instanceof Int32Array)) {
    throw invalidArgument('centroids', 'the result of reference.blockCentroids', c);
  }
  const cuBlocks = blockOffsets(p.cuK, chunkSize);
  const same = r.cuBlocks.length === cuBlocks.length && r.cuBlocks.every((x, i) => x === cuBlocks[i]);
  if (!same || r.centroids.length !== cuBlocks[p.batch]! * p.numKVHeads * p.headDim) {
    throw invalidArgument('centroids', `the block centroids of these keys with chunkSize ${chunkSize}`, c);
  }
  return r;
}

/** Validated gate on a checked problem (shared with mobaAttention). */
export function gateOf(q: Numeric, k: Numeric, p: Problem, chunkSize: number, topK: number): Int32Array {
  const outLength = p.numQHeads * p.totalQ * topK;
  if (outLength >= 2 ** 31 - 1) {
    throw invalidArgument('topK', `a value with numQHeads * totalQ * topK below 2^31 - 1 (here at most ${
      Math.floor((2 ** 31 - 2) / Math.max(1, p.numQHeads * p.totalQ))})`, topK);
  }
  const cen = centroidsOf(k, p, chunkSize);
  const out = new Int32Array(outLength);
  for (let h = 0; h < p.numQHeads; h++) {
    for (let row = 0; row < p.totalQ; row++) {
      selectBlocks(pastScores(q, p, cen, chunkSize, h, row), topK, out, (h * p.totalQ + row) * topK);
    }
  }
  return out;
}

/** Int32Array [numQHeads, totalQ, topK]: per query, selected blocks ascending, -1 padded. */
export function mobaGate(q: Numeric, k: Numeric, o: GateOptions): Int32Array {
  const p = checkProblem(q, k, null, o, true);
  const chunkSize = checkPositiveInt('chunkSize', o.chunkSize);
  const topK = checkPositiveInt('topK', o.topK);
  return gateOf(q, k, p, chunkSize, topK);
}
