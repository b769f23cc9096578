import { describe } from 'vitest';

import { openTestDevice } from '../helpers/backends.js';
import { defineTensorTests } from '../helpers/tensor-cases.js';

describe('CPU device and tensors', () => defineTensorTests(() => openTestDevice('cpu')));
