import { describeCuda, openTestDevice } from '../helpers/backends.js';
import { defineLargeIndexTests } from '../helpers/large-index-cases.js';

describeCuda('CUDA ops on tensors of more than 2^31 elements', () => defineLargeIndexTests(() => openTestDevice('cuda'), { attention: true }));
