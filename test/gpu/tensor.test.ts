import { expect, it } from 'vitest';

import { openDevice } from '../../lib/index.js';
import { describeCuda, openTestDevice } from '../helpers/backends.js';
import { defineTensorTests } from '../helpers/tensor-cases.js';

describeCuda('CUDA device and tensors', () => {
  it('opens the GPU and reports its name and compute capability', () => {
    using device = openDevice({ backend: 'cuda' });
    expect(device.backend).toBe('cuda');
    expect(device.name).toMatch(/NVIDIA|GPU|H\d00|A\d+/);
    expect(device.computeCapability).toMatch(/^\d+\.\d$/);
    console.log(`[moba-cuda] GPU: ${device.name}, compute capability ${device.computeCapability}`);
    using auto = openDevice();
    expect(auto.backend).toBe('cuda');
  });

  defineTensorTests(() => openTestDevice('cuda'));
});
