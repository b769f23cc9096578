import { defineAttentionTests } from '../helpers/attention-cases.js';
import { describeCuda, openTestDevice } from '../helpers/backends.js';

// Dense cases here, MoBA cases in attention-moba.test.ts: two files run in
// parallel workers, halving the float64 reference's wall time.
describeCuda('flashAttention on CUDA', () => {
  defineAttentionTests(() => openTestDevice('cuda'), 'cuda', 'dense');
});
