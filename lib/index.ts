/**
 * moba-cuda: Mixture of Block Attention for Node.js.
 * See DESIGN.md (semantics) and README.md (usage).
 */
export { MobaError, type MobaErrorCode } from './errors.js';
export { type DType } from './dtype.js';
export { Device, openDevice, type Backend, type MemoryInfo, type OpenDeviceOptions, type TensorData } from './device.js';
export { Tensor } from './tensor.js';
export { mobaGate, MAX_TOP_K, type MobaGateOptions } from './gating.js';
export {
  flashAttention,
  mobaAttention,
  type AttentionWithLse,
  type FlashAttentionOptions,
  type MobaAttentionOptions,
} from './attention.js';
export { KVCache, MAX_DECODE_TOKENS, type KVCacheOptions, type KVCacheUsage } from './kv-cache.js';
export { KVPlan, type PlanEntry, type PlanOptions, type PlannedSequence } from './kv-plan.js';
export { MobaAttention, type DecodePolicy, type MobaAttentionLayerOptions } from './moba-layer.js';
export { buildInfo, type BuildInfo } from './info.js';
export * as reference from './reference/index.js';
