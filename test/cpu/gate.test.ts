import { describe } from 'vitest';

import { openTestDevice } from '../helpers/backends.js';
import { defineGateTests } from '../helpers/gate-cases.js';

describe('CPU mobaGate', () => defineGateTests(() => openTestDevice('cpu'), { headDims: [64, 128, 40] }));
