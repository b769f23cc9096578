/**
 * Shared types and argument checks of the float64 reference (DESIGN.md section 1).
 *
 * The reference is test-only ground truth: plain loops in float64, slow and
 * obviously right. Inputs may be any array of numbers (Float32Array holding
 * bf16/f16-rounded values, Float64Array, number[]); they are read as float64.
 */
import { invalidArgument } from '../errors.js';

/** Any array of numbers: Float64Array, Float32Array, number[]. */
export type Numeric = ArrayLike<number>;

/** Head counts and head dimension of a THD problem. */
export interface RefShape {
  numQHeads: number;
  numKVHeads: number;
  headDim: number;
}

/** FlashAttention varlen prefix sums; cuSeqlensK defaults to cuSeqlensQ. */
export interface RefVarlen {
  cuSeqlensQ: Int32Array; // [batch+1]
  cuSeqlensK?: Int32Array; // [batch+1]
}

/** A validated problem: every size the loops need, spelled out once. */
export interface Problem {
  batch: number;
  numQHeads: number;
  numKVHeads: number;
  headDim: number;
  /** numQHeads / numKVHeads: query head h reads KV head floor(h / groupSize). */
  groupSize: number;
  totalQ: number;
  totalK: number;
  cuQ: Int32Array; // [batch+1]
  cuK: Int32Array; // [batch+1]
}

export function checkPositiveInt(name: string, value: unknown): number {
  if (typeof value !== 'number' || !Number.isInteger(value) || value <= 0) {
    throw invalidArgument(name, 'positive integer', value);
  }
  return value;
}

/** Checks a [batch+1] prefix-sum array: starts at 0, non-decreasing. Returns its total. */
export function checkCuSeqlens(name: string, cu: unknown, batch?: number): number {
  if (!(cu instanceof Int32Array)) throw invalidArgument(name, 'Int32Array', cu);
  if (cu.length < 1) throw invalidArgument(name, 'Int32Array of length batch+1 >= 1', cu);
  if (batch !== undefined && cu.length !== batch + 1) {
    throw invalidArgument(name, `Int32Array of length ${batch + 1} (batch+1)`, cu);
  }
  if (cu[0] !== 0) throw invalidArgument(`${name}[0]`, '0', cu[0]);
  for (let b = 0; b + 1 < cu.length; b++) {
    if (cu[b + 1]! < cu[b]!) {
      throw invalidArgument(`${name}[${b + 1}]`, `value >= ${name}[${b}] = ${cu[b]}`, cu[b + 1]);
    }
  }
  return cu[cu.length - 1]!;
}

export function checkNumeric(name: string, x: unknown, expectedLength: number): void {
  if (x === null || typeof x !== 'object' || typeof (x as { length?: unknown }).length !== 'number') {
    throw invalidArgument(name, 'array of numbers', x);
  }
  const len = (x as ArrayLike<number>).length;
  if (len !== expectedLength) {
    throw invalidArgument(`${name}.length`, `${expectedLength}`, len);
  }
}

/**
 * Validates shapes and prefix sums. `k`/`v` may be null when not needed (k is
 * always needed except for shape-only checks). When `requireLkGeLq` is set,
 * every sequence must have at least as many keys as queries (causal, MoBA,
 * decode: queries are the last Lq positions of the sequence).
 */
export function checkProblem(
  q: Numeric,
  k: Numeric | null,
  v: Numeric | null,
  o: RefShape & RefVarlen,
  requireLkGeLq: boolean,
): Problem {
  if (o === null || typeof o !== 'object') throw invalidArgument('options', 'an object', o);
  const numQHeads = checkPositiveInt('numQHeads', o.numQHeads);
  const numKVHeads = checkPositiveInt('numKVHeads', o.numKVHeads);
  const headDim = checkPositiveInt('headDim', o.headDim);
  if (numQHeads % numKVHeads !== 0) {
    throw invalidArgument('numKVHeads', `a divisor of numQHeads (${numQHeads})`, numKVHeads);
  }
  const cuQ = o.cuSeqlensQ;
  const totalQ = checkCuSeqlens('cuSeqlensQ', cuQ);
  const batch = cuQ.length - 1;
  const cuK = o.cuSeqlensK ?? cuQ;
  const totalK = checkCuSeqlens('cuSeqlensK', cuK, batch);
  checkNumeric('q', q, totalQ * numQHeads * headDim);
  if (k !== null) checkNumeric('k', k, totalK * numKVHeads * headDim);
  if (v !== null) checkNumeric('v', v, totalK * numKVHeads * headDim);
  if (requireLkGeLq) {
    for (let b = 0; b < batch; b++) {
      const lq = cuQ[b + 1]! - cuQ[b]!;
      const lk = cuK[b + 1]! - cuK[b]!;
      if (lk < lq) {
        throw invalidArgument(`cuSeqlensK (sequence ${b})`, `at least as many keys as queries (${lq})`, lk);
      }
    }
  }
  return {
    batch,
    numQHeads,
    numKVHeads,
    headDim,
    groupSize: numQHeads / numKVHeads,
    totalQ,
    totalK,
    cuQ,
    cuK,
  };
}

/** The sequence index b with cuQ[b] <= row < cuQ[b+1] (skips empty sequences). */
export function sequenceOfRow(cuQ: Int32Array, row: number): number {
  let lo = 0;
  let hi = cuQ.length - 2;
  while (lo < hi) {
    const mid = (lo + hi + 1) >> 1;
    if (cuQ[mid]! <= row) lo = mid;
    else hi = mid - 1;
  }
  return lo;
}
