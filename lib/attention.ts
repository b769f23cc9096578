import { DTYPE_CODE } from './dtype.js';
import { MAX_TOP_K } from './gating.js';
import type { Tensor } from './tensor.js';
import {
  checkBoolean,
  checkBlockLists,
  checkSelections,
  checkOptions,
  checkPositiveInt,
  checkQKV,
  checkSoftmaxScale,
  checkVarlen,
  MAX_CHUNK_SIZE,
  type QKVShape,
  type Varlen,
} from './validate.js';

export interface AttentionOptions {
  /** [batch+1] prefix sums of query lengths. */
  cuSeqlensQ: Int32Array;
  /** [batch+1] prefix sums of key lengths; defaults to cuSeqlensQ. Queries are each sequence's last positions. */
  cuSeqlensK?: Int32Array;
  /** Multiplies q.k before the softmax; default 1/sqrt(headDim). */
  softmaxScale?: number;
  /** Also return lse [numQHeads, totalQ] (fp32, natural log). */
  returnLse?: boolean;
}

export interface MobaAttentionOptions extends AttentionOptions {
  chunkSize: number;
  topK: number;
}

export interface FlashAttentionOptions extends AttentionOptions {
  /** Causal mask, bottom-right aligned when keys outnumber queries. Default false. */
  causal?: boolean;
}

export interface AttentionWithLse {
  out: Tensor;
  lse: Tensor;
}

function run(
  q: Tensor, k: Tensor, v: Tensor, shape: QKVShape, varlen: Varlen,
  softmaxScale: number, causal: boolean, chunkSize: number, topK: number, returnLse: boolean,
): Tensor | AttentionWithLse {
  const device = shape.device;
  const out = device.output([shape.totalQ, shape.numQHeads, shape.headDim], shape.dtype);
  const lse = returnLse ? device.output([shape.numQHeads, shape.totalQ], 'f32') : null;
  if (shape.totalQ > 0) {
    device.native.attention(
      q.buffer, k.buffer, v.buffer, out.buffer, lse ? lse.buffer : null,
      varlen.cuSeqlensQ, varlen.cuSeqlensK, DTYPE_CODE[shape.dtype],
      shape.numQHeads, shape.numKVHeads, shape.headDim, softmaxScale, causal, chunkSize, topK,
    );
  }
  return lse ? { out, lse } : out;
}

/**
 * MoBA sparse attention forward (DESIGN.md section 1): each query attends to
 * its own block (causally) and the topK-1 best-scoring complete past blocks.
 * When topK covers every block of every sequence this is full causal
 * attention and runs the dense kernel.
 */
export function mobaAttention(q: Tensor, k: Tensor, v: Tensor, options: MobaAttentionOptions & { returnLse: true }): AttentionWithLse;
export function mobaAttention(q: Tensor, k: Tensor, v: Tensor, options: MobaAttentionOptions): Tensor;
export function mobaAttention(q: Tensor, k: Tensor, v: Tensor, options: MobaAttentionOptions): Tensor | AttentionWithLse {
  const shape = checkQKV(q, k, v, true);
  const o = checkOptions<MobaAttentionOptions>(options);
  const varlen = checkVarlen(o, shape.totalQ, shape.totalK);
  const chunkSize = checkPositiveInt(o.chunkSize, 'chunkSize', MAX_CHUNK_SIZE);
  const topK = checkPositiveInt(o.topK, 'topK', MAX_TOP_K);
  const softmaxScale = checkSoftmaxScale(o.softmaxScale, shape.headDim);
  const returnLse = checkBoolean(o.returnLse, 'returnLse', false);
  const maxBlocks = Math.ceil(varlen.maxSeqlenK / chunkSize);
  const dense = topK >= maxBlocks;
  if (!dense) {
    checkSelections(shape.totalQ, shape.numQHeads, topK);
    checkBlockLists(varlen.cuSeqlensK, chunkSize, shape.numQHeads);
  }
  return run(q, k, v, shape, varlen, softmaxScale, true, dense ? 0 : chunkSize, dense ? 0 : topK, returnLse);
}

/** Dense flash attention forward, causal or not, varlen and GQA. */
export function flashAttention(q: Tensor, k: Tensor, v: Tensor, options: FlashAttentionOptions & { returnLse: true }): AttentionWithLse;
export function flashAttention(q: Tensor, k: Tensor, v: Tensor, options: FlashAttentionOptions): Tensor;
export function flashAttention(q: Tensor, k: Tensor, v: Tensor, options: FlashAttentionOptions): Tensor | AttentionWithLse {
  const shape = checkQKV(q, k, v, true);
  const o = checkOptions<FlashAttentionOptions>(options);
  const varlen = checkVarlen(o, shape.totalQ, shape.totalK);
  const causal = checkBoolean(o.causal, 'causal', false);
  const softmaxScale = checkSoftmaxScale(o.softmaxScale, shape.headDim);
  const returnLse = checkBoolean(o.returnLse, 'returnLse', false);
  return run(q, k, v, shape, varlen, softmaxScale, causal, 0, 0, returnLse);
}
