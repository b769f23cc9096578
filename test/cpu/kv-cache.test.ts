import { describe } from 'vitest';

import { openTestDevice } from '../helpers/backends.js';
import { defineKVCacheTests } from '../helpers/kv-cache-cases.js';

describe('CPU paged KV cache, decode and chunked prefill', () =>
  defineKVCacheTests(() => openTestDevice('cpu'), { long: 5000 }));
