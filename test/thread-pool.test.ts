/**
 * The CPU backend's thread pool when a chunk throws (out of memory inside an
 * op, say): the exception must reach the caller after every worker has left
 * the job, and the pool must keep working. A small C++ program
 * (test/native/thread_pool_check.cc) is built against the pool's source and run.
 */
import { expect, it } from 'vitest';

import { buildAndRunCheck } from './helpers/native-check.js';

it('a throwing chunk reaches the caller once the workers are out of the job; the pool runs on', () => {
  const r = buildAndRunCheck('thread_pool_check', ['test/native/thread_pool_check.cc', 'native/cpu/thread_pool.cc'], ['-O1']);
  expect(r).toEqual({ status: 0, signal: null, stdout: 'ok\n' });
});
