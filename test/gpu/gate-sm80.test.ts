import { describeCuda, openTestDevice } from '../helpers/backends.js';
import { defineGateTests } from '../helpers/gate-cases.js';

// The same suite with MOBA_GATE_KERNEL=sm80 (read by the addon at its first
// gate; vitest runs each file in its own process). On Hopper, topK 2 to 8
// go to the wgmma kernel (gate_topk_sm90.cu); this keeps the mma.sync kernel
// that every other GPU runs for them tested there too.
process.env.MOBA_GATE_KERNEL = 'sm80';

describeCuda('CUDA mobaGate, mma.sync kernel only', () =>
  defineGateTests(() => openTestDevice('cuda'), { headDims: [64, 128], cuda: true }));
