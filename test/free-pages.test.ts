/**
 * The KV cache's free-page list against the plain stack it replaces (every
 * page pushed in descending order, so page 0 comes out first): the same pages
 * in the same order under random allocation and release, and no memory per
 * page for a pool of any size.
 */
import { expect, it } from 'vitest';
import { FreePages } from '../lib/free-pages.js';
import { reportSeedOnFailure, rngFor } from './helpers/random.js';

reportSeedOnFailure();

it('gives the same pages in the same order as a stack of every page', () => {
  const rng = rngFor('free pages');
  for (const total of [1, 2, 17, 300]) {
    const model: number[] = [];
    for (let p = total - 1; p >= 0; p--) model.push(p);
    const free = new FreePages(total);
    const held: number[] = [];
    for (let step = 0; step < 4000; step++) {
      expect(free.length).toBe(model.length);
      if (model.length > 0 && (held.length === 0 || rng.next() < 0.55)) {
        const k = 1 + Math.floor(rng.next() * model.length);
        expect(free.peek(k), 'peek: the next pages pop() gives').toEqual(model.slice(-k).reverse());
        const p = free.pop();
        expect(p).toBe(model.pop());
        held.push(p);
      } else if (held.length > 0) {
        const p = held.splice(Math.floor(rng.next() * held.length), 1)[0]!;
        free.push(p);
        model.push(p);
      }
    }
  }
});

it('holds no entry per page: a pool of 2^31 - 1 pages', () => {
  const free = new FreePages(2 ** 31 - 1);
  expect(free.length).toBe(2 ** 31 - 1);
  expect([free.pop(), free.pop(), free.pop()]).toEqual([0, 1, 2]);
  free.push(1);
  expect(free.length).toBe(2 ** 31 - 3);
  expect(free.pop()).toBe(1);
});

it('refuses to hand out a page it does not have', () => {
  const free = new FreePages(1);
  expect(free.pop()).toBe(0);
  expect(() => free.pop()).toThrow(/no free page/);
  expect(() => free.peek(1)).toThrow(/not enough free pages/);
  expect(free.peek(0)).toEqual([]);
});
