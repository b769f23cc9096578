export interface Rng {
  /** The seed this stream started from (for messages). */
  readonly seed: number;
  /** Uniform in [0, 1). */
  next(): number;
  /** Uniform integer in [lo, hi] (inclusive). */
  int(lo: number, hi: number): number;
  /** Standard normal. */
  normal(): number;
  /** A random element of a non-empty array. */
  pick<T>(items: readonly T[]): T;
}

/** FNV-1a of a label, to derive a stream of its own for each test or case. */
export function hashLabel(label: string): number;

/** mulberry32: small, fast, good enough for test inputs. */
export function makeRng(seed: number): Rng;
