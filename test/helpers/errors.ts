import { expect } from 'vitest';

import { MobaError } from '../../lib/index.js';

/** Runs `fn`, expects it to throw a MobaError with `code`, and returns that error for the caller's message checks. */
export function expectMobaError(fn: () => unknown, code: string): MobaError {
  let thrown: unknown;
  try {
    fn();
  } catch (err) {
    thrown = err;
  }
  expect(thrown, 'expected a MobaError to be thrown').toBeInstanceOf(MobaError);
  const e = thrown as MobaError;
  expect(e.code).toBe(code);
  return e;
}
