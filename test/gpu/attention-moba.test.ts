import { defineAttentionTests } from '../helpers/attention-cases.js';
import { describeCuda, openTestDevice } from '../helpers/backends.js';

describeCuda('mobaAttention on CUDA', () => {
  defineAttentionTests(() => openTestDevice('cuda'), 'cuda', 'moba');
});
