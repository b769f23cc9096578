import { describeCuda, openTestDevice } from '../helpers/backends.js';
import { defineGateTests } from '../helpers/gate-cases.js';

describeCuda('CUDA mobaGate', () => defineGateTests(() => openTestDevice('cuda'), { headDims: [64, 128], cuda: true }));
