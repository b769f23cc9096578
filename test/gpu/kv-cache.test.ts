import { describeCuda, openTestDevice } from '../helpers/backends.js';
import { defineKVCacheTests } from '../helpers/kv-cache-cases.js';

describeCuda('CUDA paged KV cache, decode and chunked prefill', () =>
  defineKVCacheTests(() => openTestDevice('cuda'), { long: 40000 }));
