import { describe } from 'vitest';

import { openTestDevice } from '../helpers/backends.js';
import { defineLargeIndexTests } from '../helpers/large-index-cases.js';

// The gate only: the CPU attention widens q, k and v to fp32 (over 25 GB here).
describe('CPU ops on tensors of more than 2^31 elements', () => defineLargeIndexTests(() => openTestDevice('cpu'), { attention: false }));
