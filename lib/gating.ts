import { DTYPE_CODE } from './dtype.js';
import type { Tensor } from './tensor.js';
import { checkOptions, checkPositiveInt, checkSelections, checkQKV, checkVarlen, MAX_CHUNK_SIZE } from './validate.js';

export interface MobaGateOptions {
  /** [batch+1] prefix sums of query lengths. */
  cuSeqlensQ: Int32Array;
  /** [batch+1] prefix sums of key lengths; defaults to cuSeqlensQ. */
  cuSeqlensK?: Int32Array;
  /** Block size B in tokens (any positive integer). */
  chunkSize: number;
  /** Blocks per query, the query's own block included. */
  topK: number;
}

/** Largest topK accepted; the gate keeps per-query candidates on chip. */
export const MAX_TOP_K = 256;

/**
 * The MoBA gate (DESIGN.md section 1): for every query and head, the blocks it
 * attends to. Returns i32 [numQHeads, totalQ, topK], ascending, -1 padded.
 */
export function mobaGate(q: Tensor, k: Tensor, options: MobaGateOptions): Tensor {
  const shape = checkQKV(q, k, undefined, false);
  const o = checkOptions<MobaGateOptions>(options);
  const varlen = checkVarlen(o, shape.totalQ, shape.totalK);
  const chunkSize = checkPositiveInt(o.chunkSize, 'chunkSize', MAX_CHUNK_SIZE);
  const topK = checkPositiveInt(o.topK, 'topK', MAX_TOP_K);
  checkSelections(shape.totalQ, shape.numQHeads, topK);
  const out = shape.device.output([shape.numQHeads, shape.totalQ, topK], 'i32');
  if (shape.totalQ > 0) {
    shape.device.native.mobaGate(
      q.buffer, k.buffer, out.buffer, varlen.cuSeqlensQ, varlen.cuSeqlensK, DTYPE_CODE[shape.dtype],
      shape.numQHeads, shape.numKVHeads, shape.headDim, chunkSize, topK,
    );
  }
  return out;
}
