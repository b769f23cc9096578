/**
 * Which backends the test run can use. GPU suites skip, saying why, when no
 * CUDA device exists; with MOBA_REQUIRE_GPU=1 (npm run test:gpu) they fail
 * instead, so a GPU run can never pass by skipping.
 */
import { describe } from 'vitest';

import { buildInfo, openDevice, type Device } from '../../lib/index.js';

const info = buildInfo();
export const cudaUsable = info.cudaUsable;
export const cudaReason = info.cudaUnavailableReason ?? '';

export function describeCuda(name: string, body: () => void): void {
  if (!cudaUsable) {
    if (process.env.MOBA_REQUIRE_GPU) {
      describe(name, () => {
        throw new Error(`MOBA_REQUIRE_GPU is set but CUDA is unusable: ${cudaReason}`);
      });
      return;
    }
    console.warn(`[moba-cuda] skipping GPU suite "${name}": ${cudaReason}`);
  }
  describe.skipIf(!cudaUsable)(name, body);
}

/** A poisoning device of the given backend (outputs start as NaN / absurd indices). */
export function openTestDevice(backend: 'cpu' | 'cuda'): Device {
  return openDevice({ backend, poisonOutputs: true });
}
