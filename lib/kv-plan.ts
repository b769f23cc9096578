/**
 * A step's plan over the paged KV cache: where each sequence's new tokens sit
 * in the rows of q, k, v and the output, and the device metadata every layer's
 * ops read (append segments, the decode sub-batch's page tables, the prefill
 * sub-batch's key segments; layouts in native/common/params.h).
 * KVCache.plan() reserves the pages and builds the plan; this file holds the
 * plan's types, the plan object and the writer of its decode and prefill
 * metadata.
 */
import { MobaError } from './errors.js';
import type { KVCache } from './kv-cache.js';
import type { Tensor } from './tensor.js';

/** One sequence of a step: `newTokens` tokens are appended after its cached ones. */
export interface PlanEntry {
  seq: number;
  newTokens: number;
}

export interface PlanOptions {
  /**
   * Sequences bringing at most this many new tokens are decode rows (decode
   * kernels, the layer's decode policy); longer ones are prefill rows (MoBA
   * over the whole sequence). 0 to 8, default 8.
   */
  maxDecodeTokens?: number;
}

/** @internal A cached sequence: its pages in order and its length in tokens. */
export interface Sequence {
  pages: number[];
  length: number;
}

/** Where one planned sequence's rows are. */
export interface PlannedSequence {
  readonly seq: number;
  /** Tokens cached before this step. */
  readonly start: number;
  readonly newTokens: number;
  /** First row of this sequence in q, k, v and the output. */
  readonly row: number;
  /** True when its rows go to the decode kernels. */
  readonly decode: boolean;
}

/** @internal The decode sub-batch of a plan (metadata layout: see DecodeParams in native/common/params.h). */
export interface DecodePart {
  batch: number;
  infoOffset: number;
  numPageIndices: number;
  maxQLen: number;
  maxKvLen: number;
  sumKvLen: number;
}

/** @internal The prefill sub-batch: attended over its pages (keyRows) like a one-shot prefill of the whole sequences. */
export interface PrefillPart {
  batch: number;
  gatherOffset: number;
  numGatherSegments: number;
  /** [batch+1] new tokens per prefill sequence. */
  cuSeqlensQ: Int32Array;
  /** [batch+1] all tokens (cached + new) per prefill sequence. */
  cuSeqlensK: Int32Array;
  maxSeqlenK: number;
  /** Runs of consecutive prefill rows: [input row, prefill row, count] triples. */
  rowRuns: number[];
  /** The prefill rows are exactly all rows of the plan, in order. */
  allRows: boolean;
}

// [page, slot, row, count, pieceSegments, carryPage] per segment (native/common/params.h).
export const SEGMENT_INTS = 6;

/**
 * A step's batch over a KVCache. Valid until the cache's next plan(),
 * fork() or free(); each layer uses it once (append, then attention).
 * plan() has already advanced the sequences' lengths: run the plan on every
 * layer before the next plan(), fork() or free(), or those tokens stay unwritten.
 */
export class KVPlan {
  readonly cache: KVCache;
  /** Rows of q, k, v and the output: the new tokens of all sequences, in batch order. */
  readonly numRows: number;
  readonly sequences: readonly PlannedSequence[];
  /** @internal */
  readonly meta: Tensor;
  /** @internal */
  readonly appendOffset: number;
  /** @internal */
  readonly numAppendSegments: number;
  /** @internal */
  readonly decode: DecodePart | null;
  /** @internal */
  readonly prefill: PrefillPart | null;
  /** @internal */
  readonly generation: number;
  #workspace = new Map<string, Tensor>();
  #keyRows: Tensor | null = null;
  #disposed = false;
  // Layers that hold this plan's new K/V: a second append would write the
  // same tokens again and add their keys to the page key sums twice.
  #appended: Uint8Array;

  /** @internal */
  constructor(
    cache: KVCache, numRows: number, sequences: PlannedSequence[], meta: Tensor, numAppendSegments: number,
    decode: DecodePart | null, prefill: PrefillPart | null, generation: number,
  ) {
    this.cache = cache;
    this.numRows = numRows;
    this.sequences = Object.freeze(sequences.map((s) => Object.freeze(s)));
    this.meta = meta;
    this.appendOffset = 0;
    this.numAppendSegments = numAppendSegments;
    this.decode = decode;
    this.prefill = prefill;
    this.generation = generation;
    this.#appended = new Uint8Array(cache.numLayers);
  }

  /** @internal Throws EINVAL if layer `layer` already holds this plan's new K/V. */
  checkNotAppended(layer: number): void {
    if (this.#appended[layer]) {
      throw new MobaError(
        'EINVAL',
        `Expected a plan whose new K/V are not yet in layer ${layer} for plan but received one already appended ` +
          "there (a layer takes a plan's K/V once, by append() or forward(); attend() may then run any number of times)",
      );
    }
  }

  /** @internal */
  markAppended(layer: number): void {
    this.#appended[layer] = 1;
  }

  get disposed(): boolean {
    return this.#disposed;
  }

  /**
   * @internal Workspace reused by every layer of this plan (work on the stream
   * is ordered, so one layer's use ends before the next begins).
   */
  workspace(name: string, shape: readonly number[], dtype: 'bf16' | 'f16'): Tensor {
    const key = `${name}:${dtype}:${shape.join('x')}`;
    let t = this.#workspace.get(key);
    if (!t) {
      t = this.cache.device.output(shape, dtype);
      this.#workspace.set(key, t);
    }
    return t;
  }

  /**
   * @internal Where each key of the prefill sequences lies in the pages (an
   * int64 element offset per key of prefill.cuSeqlensK's packed order, for
   * attention's keyRows): enqueued by the first layer that asks, then reused.
   */
  keyRows(): Tensor {
    if (!this.#keyRows) {
      const pre = this.prefill!;
      const t = this.cache.device.output([2 * Math.max(1, pre.cuSeqlensK[pre.batch]!)], 'i32');
      this.cache.enqueueKeyRows(this, t);
      this.#keyRows = t;
    }
    return this.#keyRows;
  }

  /** Frees the plan's device metadata and workspace (after queued work). Idempotent. */
  dispose(): void {
    if (this.#disposed) return;
    this.#disposed = true;
    this.#keyRows?.dispose();
    this.#keyRows = null;
    this.meta.dispose();
    for (const t of this.#workspace.values()) t.dispose();
    this.#workspace.clear();
  }

  [Symbol.dispose](): void {
    this.dispose();
  }
}

/**
 * @internal Writes the decode and prefill parts of a plan's metadata after its
 * append segments (seqs: as after the step).
 */
export function writeStepMeta(
  pageSize: number, planned: PlannedSequence[], seqs: Sequence[], meta: Int32Array, numAppendSegments: number,
  numRows: number,
): { decode: DecodePart | null; prefill: PrefillPart | null } {
  const S = pageSize;
  let at = numAppendSegments * SEGMENT_INTS;
  const dec: number[] = [];
  const pre: number[] = [];
  planned.forEach((p, i) => (p.decode ? dec : pre).push(i));
  let decode: DecodePart | null = null;
  if (dec.length > 0) {
    // qStart[n], qLen[n], kvLen[n], pageIndptr[n+1], pageIndices[...]
    const n = dec.length;
    const infoOffset = at;
    let numPageIndices = 0;
    let maxQLen = 0;
    let maxKvLen = 0;
    let sumKvLen = 0;
    meta[infoOffset + 3 * n] = 0;
    for (let b = 0; b < n; b++) {
      const p = planned[dec[b]!]!;
      const s = seqs[dec[b]!]!;
      meta[infoOffset + b] = p.row;
      meta[infoOffset + n + b] = p.newTokens;
      meta[infoOffset + 2 * n + b] = s.length;
      const pagesAt = infoOffset + 4 * n + 1 + numPageIndices;
      for (let j = 0; j < s.pages.length; j++) meta[pagesAt + j] = s.pages[j]!;
      numPageIndices += s.pages.length;
      meta[infoOffset + 3 * n + b + 1] = numPageIndices;
      maxQLen = Math.max(maxQLen, p.newTokens);
      maxKvLen = Math.max(maxKvLen, s.length);
      sumKvLen += s.length;
    }
    at = infoOffset + 4 * n + 1 + numPageIndices;
    decode = { batch: n, infoOffset, numPageIndices, maxQLen, maxKvLen, sumKvLen };
  }
  let prefill: PrefillPart | null = null;
  if (pre.length > 0) {
    const n = pre.length;
    const gatherOffset = at;
    const cuSeqlensQ = new Int32Array(n + 1);
    const cuSeqlensK = new Int32Array(n + 1);
    const rowRuns: number[] = [];
    let maxSeqlenK = 0;
    for (let b = 0; b < n; b++) {
      const p = planned[pre[b]!]!;
      const s = seqs[pre[b]!]!;
      cuSeqlensQ[b + 1] = cuSeqlensQ[b]! + p.newTokens;
      cuSeqlensK[b + 1] = cuSeqlensK[b]! + s.length;
      maxSeqlenK = Math.max(maxSeqlenK, s.length);
      for (let j = 0; j * S < s.length; j++) {
        meta[at++] = s.pages[j]!;
        meta[at++] = 0;
        meta[at++] = cuSeqlensK[b]! + j * S;
        meta[at++] = Math.min(S, s.length - j * S);
        meta[at++] = 0;
        meta[at++] = -1;
      }
      const last = rowRuns.length - 3;
      if (last >= 0 && rowRuns[last]! + rowRuns[last + 2]! === p.row) {
        rowRuns[last + 2]! += p.newTokens;
      } else {
        rowRuns.push(p.row, cuSeqlensQ[b]!, p.newTokens);
      }
    }
    const numGatherSegments = (at - gatherOffset) / SEGMENT_INTS;
    const allRows = rowRuns.length === 3 && rowRuns[0] === 0 && rowRuns[2] === numRows;
    prefill = { batch: n, gatherOffset, numGatherSegments, cuSeqlensQ, cuSeqlensK, maxSeqlenK, rowRuns, allRows };
  }
  if (at !== meta.length) throw new Error(`internal: plan metadata is ${at} ints, sized ${meta.length}`);
  return { decode, prefill };
}
