import { describeCuda, openTestDevice } from '../helpers/backends.js';
import { defineKVCacheTests } from '../helpers/kv-cache-cases.js';

// The same suite with MOBA_DECODE_LAUNCH=plain (read by the addon at its first
// decode; vitest runs each file in its own process): no cooperative or
// cluster launches, so moba decode gates in its own kernel and merges split
// KV through global memory, the path a device that refuses those launches
// falls back to.
process.env.MOBA_DECODE_LAUNCH = 'plain';

describeCuda('CUDA paged KV cache and decode, plain launches only', () =>
  defineKVCacheTests(() => openTestDevice('cuda'), { long: 40000 }));
