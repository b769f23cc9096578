/**
 * Seeded randomness for tests. Every run draws a fresh seed (or takes
 * MOBA_SEED from the environment), so tests see new inputs each run while any
 * failure can be replayed exactly:
 *
 *   MOBA_SEED=123456789 npx vitest run test/reference.test.ts -t 'name'
 *
 * Call reportSeedOnFailure() once at the top of a test file: a failing test
 * then prints the seed. rngFor(label) gives each test its own stream derived
 * from (seed, label), so a test's inputs do not depend on which other tests ran.
 */
import { randomBytes } from 'node:crypto';
import { beforeEach } from 'vitest';

import { hashLabel, makeRng, type Rng } from './rng.mjs';

export { makeRng, type Rng };

function parseSeed(text: string | undefined): number {
  if (text === undefined || text.trim() === '') return randomBytes(4).readUInt32LE(0);
  const n = Number(text.trim());
  if (!Number.isInteger(n) || n < 0 || n > 0xffffffff) {
    throw new Error(`MOBA_SEED must be an integer in [0, 2^32) but is ${JSON.stringify(text)}`);
  }
  return n >>> 0;
}

/** The seed of this run: MOBA_SEED, or fresh random. */
export const SEED: number = parseSeed(process.env.MOBA_SEED);

/** Text to put in failure messages. */
export const seedNote = `MOBA_SEED=${SEED}`;

/** Registers a hook that prints the seed when a test of this file fails. */
export function reportSeedOnFailure(): void {
  beforeEach(({ task, onTestFailed }) => {
    onTestFailed(() => {
      console.error(`[${task.name}] failed with ${seedNote}; rerun with ${seedNote} npx vitest run -t ${JSON.stringify(task.name)}`);
    });
  });
}

/** A stream of its own for one test: derived from SEED and the label. */
export function rngFor(label: string, seed: number = SEED): Rng {
  return makeRng((seed ^ hashLabel(label)) >>> 0);
}

/** Shuffles `a` in place (Fisher-Yates) and returns it. */
export function shuffle<T>(a: T[], rng: Rng): T[] {
  for (let i = a.length - 1; i > 0; i--) {
    const j = rng.int(0, i);
    [a[i], a[j]] = [a[j]!, a[i]!];
  }
  return a;
}

/** n standard-normal samples (times `scale`) as a Float32Array. */
export function randn(n: number, rng: Rng, scale = 1): Float32Array {
  const x = new Float32Array(n);
  for (let i = 0; i < n; i++) x[i] = rng.normal() * scale;
  return x;
}

/**
 * Random sequence lengths as a [batch+1] Int32Array of prefix sums. Each
 * length is in [minLen, maxLen]; about one in six is minLen and one in six is
 * maxLen, the rest are uniform (so lengths 1 and non-multiples of any chunk
 * size come up often). minLen defaults to 1; minLen 0 allows empty sequences.
 */
export function randomSeqlens(batch: number, maxLen: number, rng: Rng, opts: { minLen?: number } = {}): Int32Array {
  const minLen = opts.minLen ?? 1;
  if (!Number.isInteger(batch) || batch < 0) throw new Error(`batch must be a non-negative integer, got ${batch}`);
  if (!Number.isInteger(minLen) || minLen < 0 || !Number.isInteger(maxLen) || maxLen < minLen) {
    throw new Error(`need integers 0 <= minLen <= maxLen, got minLen=${minLen} maxLen=${maxLen}`);
  }
  const cu = new Int32Array(batch + 1);
  for (let b = 0; b < batch; b++) {
    const r = rng.next();
    const len = r < 1 / 6 ? minLen : r < 2 / 6 ? maxLen : rng.int(minLen, maxLen);
    cu[b + 1] = cu[b]! + len;
  }
  return cu;
}

/** Per-sequence lengths from prefix sums. */
export function lengthsOf(cu: Int32Array): number[] {
  const out: number[] = [];
  for (let b = 0; b + 1 < cu.length; b++) out.push(cu[b + 1]! - cu[b]!);
  return out;
}

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

/**
 * Rounds each float32 to the nearest bfloat16 (ties to even) and returns the
 * rounded values as float32. NaN stays NaN (quiet, sign kept), +-Inf stays,
 * subnormals round within the subnormal range (bf16 has float32's exponent
 * range), values beyond the largest bf16 round to +-Inf.
 */
export function roundToBf16(x: Float32Array): Float32Array {
  const out = new Float32Array(x.length);
  const bits = new Uint32Array(out.buffer);
  for (let i = 0; i < x.length; i++) {
    f32[0] = x[i]!;
    const u = u32[0]!;
    if ((u & 0x7f800000) === 0x7f800000 && (u & 0x007fffff) !== 0) {
      bits[i] = ((u & 0xffff0000) | 0x00400000) >>> 0; // NaN: keep sign and top payload, force quiet
      continue;
    }
    const lsb = (u >>> 16) & 1;
    bits[i] = ((u + 0x7fff + lsb) & 0xffff0000) >>> 0; // Inf stays Inf (no carry out of 0x7f800000)
  }
  return out;
}

/** Round half to even of a non-negative double. */
function roundHalfEven(y: number): number {
  const fl = Math.floor(y);
  const diff = y - fl;
  if (diff > 0.5) return fl + 1;
  if (diff < 0.5) return fl;
  return fl % 2 === 0 ? fl : fl + 1;
}

/**
 * Rounds each float32 to the nearest IEEE half (ties to even) and returns the
 * rounded values as float32. NaN stays NaN, +-Inf stays, results below 2^-14
 * are f16 subnormals (multiples of 2^-24), |x| >= 65520 rounds to +-Inf, the
 * sign of zero is kept.
 */
export function roundToF16(x: Float32Array): Float32Array {
  const out = new Float32Array(x.length);
  for (let i = 0; i < x.length; i++) {
    const v = x[i]!;
    if (Number.isNaN(v) || !Number.isFinite(v)) {
      out[i] = v;
      continue;
    }
    const a = Math.abs(v);
    let r: number;
    if (a >= 65520) {
      r = Infinity; // halfway between 65504 (max half) and 65536 rounds to even, i.e. up
    } else {
      f32[0] = a;
      const e = Math.max(((u32[0]! >>> 23) & 0xff) - 127, -14); // float32 exponent, f16 subnormal floor
      const ulp = 2 ** (e - 10);
      r = roundHalfEven(a / ulp) * ulp; // exact: a / ulp and the product are exact in float64
    }
    out[i] = v < 0 || Object.is(v, -0) ? -r : r;
  }
  return out;
}

/**
 * The selection boundary of one query's gate: the keep-th best of its
 * float64 past-block scores, and how close to it a score is a near-tie that
 * fp32 kernels may order either way.
 */
export function gateTieBand(scores: ArrayLike<number>, keep: number): { threshold: number; tol: number } {
  const threshold = Array.from(scores).sort((a, b) => b - a)[keep - 1]!;
  return { threshold, tol: 1e-4 * (1 + Math.abs(threshold)) };
}

/** Relative L2 error ||a - b|| / ||b|| in float64 (0 when both are zero, Inf when only b is). */
export function relL2(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) throw new Error(`relL2: lengths differ (${a.length} vs ${b.length})`);
  let num = 0;
  let den = 0;
  for (let i = 0; i < a.length; i++) {
    const d = a[i]! - b[i]!;
    num += d * d;
    den += b[i]! * b[i]!;
  }
  if (den === 0) return num === 0 ? 0 : Infinity;
  return Math.sqrt(num / den);
}

/** Largest |a - b|; equal values (infinities included) differ by 0; NaN if either side has a NaN. */
export function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) throw new Error(`maxAbsDiff: lengths differ (${a.length} vs ${b.length})`);
  let m = 0;
  for (let i = 0; i < a.length; i++) {
    const d = a[i] === b[i] ? 0 : Math.abs(a[i]! - b[i]!);
    if (Number.isNaN(d)) return NaN;
    if (d > m) m = d;
  }
  return m;
}
