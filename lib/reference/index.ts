/**
 * Float64 reference of every op (DESIGN.md section 1): plain loops, slow and
 * obviously right. Tests compare the CUDA and CPU kernels against it.
 */
export type { Numeric, RefShape, RefVarlen } from './types.js';
export { blockCentroids, type CentroidResult } from './centroids.js';
export { gateScores, mobaGate, ranksAbove, type GateOptions, type GateScoreOptions } from './gate.js';
export {
  decodeAttention,
  flashAttention,
  mobaAttention,
  type DecodeAttentionOptions,
  type FlashAttentionOptions,
  type MobaAttentionOptions,
  type RefAttentionResult,
} from './attention.js';
