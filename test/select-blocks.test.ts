/**
 * The CPU backend's block selection (the gate, and MoBA attention and decode
 * on the CPU) against a plain sort of the same fp32 scores: a small C++
 * program (test/native/select_blocks_check.cc) built against
 * native/cpu/moba_select.cc drives every way the selection can go, with
 * ties, NaN, infinities and signed zeros.
 */
import { expect, it } from 'vitest';

import { buildAndRunCheck } from './helpers/native-check.js';

it('selects the best blocks of a row exactly as a full sort does, for row lengths around every switch of method', () => {
  const r = buildAndRunCheck(
    'select_blocks_check',
    ['test/native/select_blocks_check.cc', 'native/cpu/moba_select.cc', 'native/cpu/thread_pool.cc'],
    ['-O2'],
  );
  expect(r).toEqual({ status: 0, signal: null, stdout: 'ok\n' });
}, 120_000);
