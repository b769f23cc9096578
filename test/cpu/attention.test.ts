import { describe } from 'vitest';

import { defineAttentionTests } from '../helpers/attention-cases.js';
import { openTestDevice } from '../helpers/backends.js';

describe('attention on the CPU backend', () => {
  defineAttentionTests(() => openTestDevice('cpu'), 'cpu');
});
