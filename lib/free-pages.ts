/**
 * The KV cache's free pages. Pages never used come out in ascending order;
 * freed pages go on a stack and come out first, last freed first. Pages
 * never used are a counter, not entries, so a pool of any size costs no
 * memory here until pages are freed.
 */
export class FreePages {
  readonly #total: number;
  #nextFresh = 0;
  #returned = new Int32Array(16);
  #numReturned = 0;

  constructor(total: number) {
    this.#total = total;
  }

  /** How many pages are free. */
  get length(): number {
    return this.#total - this.#nextFresh + this.#numReturned;
  }

  /** Takes a free page; the caller checks `length` first. */
  pop(): number {
    if (this.#numReturned > 0) return this.#returned[--this.#numReturned]!;
    if (this.#nextFresh >= this.#total) throw new Error('FreePages.pop(): no free page');
    return this.#nextFresh++;
  }

  /** The next `count` pages pop() would hand out, in that order; nothing is taken. */
  peek(count: number): number[] {
    if (count > this.length) throw new Error('FreePages.peek(): not enough free pages');
    const out: number[] = [];
    for (let i = this.#numReturned - 1; i >= 0 && out.length < count; i--) out.push(this.#returned[i]!);
    for (let p = this.#nextFresh; out.length < count; p++) out.push(p);
    return out;
  }

  /** Gives page `p` back. */
  push(p: number): void {
    if (this.#numReturned === this.#returned.length) {
      const grown = new Int32Array(Math.min(this.#returned.length * 2, Math.max(this.#total, 16)));
      grown.set(this.#returned);
      this.#returned = grown;
    }
    this.#returned[this.#numReturned++] = p;
  }
}
