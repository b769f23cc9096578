/**
 * The paged KV cache (DESIGN.md sections 1 and 2): one device-resident pool of
 * pages shared by every layer and every sequence, with the page bookkeeping
 * (free list, reference counts for forks, page tables) on the host.
 *
 * A page holds `pageSize` consecutive tokens of one sequence, for all layers:
 * K and V (`[numLayers, 2, numKVHeads, pageSize, headDim]` per page, in the
 * cache dtype) and an fp32 key sum per (layer, KV head), from which MoBA
 * decode builds block centroids without re-reading keys. The sums run over
 * aligned blocks of `chunkSize` tokens: a page's sum covers every key of its
 * block from the block's first token to the page's last, so the sum of a
 * complete block is one read (its last page) whatever the page size.
 *
 * Plan/run, as FlashInfer: `plan(batch)` reserves pages for the new tokens of
 * a step (all or nothing), builds every page table and index array once and
 * uploads them in one copy; every layer then runs with that plan.
 */
import type { Device } from './device.js';
import { DTYPE_BYTES, DTYPE_CODE } from './dtype.js';
import { invalidArgument, isRevokedProxy, MobaError } from './errors.js';
import { FreePages } from './free-pages.js';
import {
  KVPlan,
  SEGMENT_INTS,
  writeStepMeta,
  type PlanEntry,
  type PlannedSequence,
  type PlanOptions,
  type Sequence,
} from './kv-plan.js';
import type { Tensor } from './tensor.js';
import { checkOptions, checkPositiveInt, checkTensor, CUDA_HEAD_DIMS } from './validate.js';

/** Most new tokens of one sequence that the decode kernels take (speculative decoding). */
export const MAX_DECODE_TOKENS = 8;

/** Decode sequences one decode op takes: on CUDA its grid's sequence dimension. */
const MAX_DECODE_SEQUENCES = { cuda: 65535, cpu: 2 ** 24 } as const;

/** Page segments one append or gather op takes (native/binding/ops_kv.cc). */
const MAX_SEGMENTS = 2 ** 29;

/** Largest device allocation (native/binding, bytes). */
const MAX_ALLOCATION_BYTES = 2 ** 50;

/**
 * Sequence ids come from one counter for every cache of the process, so the
 * id of another cache's sequence (or of a freed one) is never live here.
 */
let nextSequenceId = 0;

export interface KVCacheOptions {
  /** Layers whose K/V live in the pool (each plan serves all of them). */
  numLayers: number;
  /** Pages in the pool; the pool is allocated once, at construction. */
  numPages: number;
  /** Tokens per page. MoBA layers need it to divide their chunkSize. */
  pageSize: number;
  /**
   * Tokens per key-sum block: the chunkSize of the layers that decode with
   * `decode: 'moba'` (theirs must be a multiple of it). A multiple of
   * pageSize; default pageSize (one sum per page). Matching the layers' chunkSize
   * lets the moba decode gate read one sum per block instead of one per page.
   */
  chunkSize?: number;
  numKVHeads: number;
  /** 64 or 128 on CUDA; any positive multiple of 8 on the CPU. */
  headDim: number;
  dtype: 'bf16' | 'f16';
}

export interface KVCacheUsage {
  numPages: number;
  usedPages: number;
  freePages: number;
  /** Pages referenced by more than one sequence (shared by forks). */
  sharedPages: number;
  pageSize: number;
  /** Device bytes of one page: K and V of every layer plus the fp32 key sums. */
  bytesPerPage: number;
  totalBytes: number;
  usedBytes: number;
  numSequences: number;
  /** Cached tokens summed over sequences (a shared prefix counts once per sequence). */
  numTokens: number;
}

function checkDtype16(value: unknown, arg: string): 'bf16' | 'f16' {
  if (value !== 'bf16' && value !== 'f16') throw invalidArgument(arg, '"bf16" or "f16"', value);
  return value;
}

/** One reference count per page; a host allocation failure is EOOM like the device's. */
function pageCounts(numPages: number): Int32Array {
  try {
    return new Int32Array(numPages);
  } catch {
    throw new MobaError('EOOM', `Out of host memory for the reference counts of ${numPages} pages (numPages)`);
  }
}

/**
 * The paged KV cache. Sequences are integer ids, unique in the process (an
 * id of another cache, or a freed one, is never live here); `addSequence()`
 * makes an empty one, `fork(seq)` one that shares `seq`'s pages (copy on write of the
 * partly filled last page), `free(seq)` returns pages no sequence uses.
 */
export class KVCache {
  readonly device: Device;
  readonly numLayers: number;
  readonly numPages: number;
  readonly pageSize: number;
  /** Tokens per key-sum block (KVCacheOptions.chunkSize). */
  readonly chunkSize: number;
  readonly numKVHeads: number;
  readonly headDim: number;
  readonly dtype: 'bf16' | 'f16';
  /** @internal */
  readonly dtypeCode: number;
  /** @internal [numPages, numLayers, 2, numKVHeads, pageSize, headDim] */
  readonly pool: Tensor;
  /** @internal [numPages, numLayers, numKVHeads, headDim] fp32, cumulative within each key-sum block */
  readonly keySums: Tensor;
  /** @internal Pages per key-sum block. */
  readonly sumPages: number;
  #refs: Int32Array;
  #sharedPages = 0;  // pages with more than one reference
  #free: FreePages;
  #seqs = new Map<number, Sequence>();
  #generation = 0;
  #plan: KVPlan | null = null;
  #disposed = false;

  constructor(device: Device, options: KVCacheOptions) {
    if (device === null || typeof device !== 'object' || isRevokedProxy(device) || typeof (device as Device).assertLive !== 'function') {
      throw invalidArgument('device', 'a Device', device);
    }
    device.assertLive('new KVCache()');
    const o = checkOptions<KVCacheOptions>(options);
    this.device = device;
    this.numLayers = checkPositiveInt(o.numLayers, 'numLayers', 65536);
    this.numPages = checkPositiveInt(o.numPages, 'numPages');
    this.pageSize = checkPositiveInt(o.pageSize, 'pageSize', 1 << 20);
    this.chunkSize = o.chunkSize === undefined ? this.pageSize : checkPositiveInt(o.chunkSize, 'chunkSize', 1 << 30);
    if (this.chunkSize % this.pageSize !== 0) {
      throw invalidArgument('chunkSize', `a multiple of pageSize (${this.pageSize})`, this.chunkSize);
    }
    this.numKVHeads = checkPositiveInt(o.numKVHeads, 'numKVHeads', 4096);
    this.headDim = checkPositiveInt(o.headDim, 'headDim', 1024);
    this.dtype = checkDtype16(o.dtype, 'dtype');
    this.dtypeCode = DTYPE_CODE[this.dtype];
    if (device.backend === 'cuda' && !CUDA_HEAD_DIMS.includes(this.headDim)) {
      throw invalidArgument('headDim', `a head dim of ${CUDA_HEAD_DIMS.join(' or ')} on CUDA`, this.headDim);
    }
    if (this.headDim % 8 !== 0) throw invalidArgument('headDim', 'a multiple of 8', this.headDim);
    const tokensPerLayer = this.numPages * this.pageSize;
    if (tokensPerLayer > 2 ** 31 - 1) {
      throw invalidArgument('numPages * pageSize', 'fewer than 2^31 tokens', tokensPerLayer);
    }
    if (this.chunkSize > tokensPerLayer) {
      throw invalidArgument('chunkSize', `at most numPages * pageSize (${tokensPerLayer}), a key-sum block the pool can hold`,
        this.chunkSize);
    }
    const poolBytes = this.numPages * this.numLayers * 2 * this.numKVHeads * this.pageSize * this.headDim * DTYPE_BYTES[this.dtype];
    if (poolBytes > MAX_ALLOCATION_BYTES) {
      throw invalidArgument('numPages * numLayers * numKVHeads * pageSize * headDim',
        `a pool of at most 2^50 bytes (${MAX_ALLOCATION_BYTES})`, `${poolBytes} bytes`);
    }
    this.sumPages = this.chunkSize / this.pageSize;
    this.#free = new FreePages(this.numPages);
    const pool = device.output(
      [this.numPages, this.numLayers, 2, this.numKVHeads, this.pageSize, this.headDim], this.dtype);
    let keySums: Tensor | undefined;
    try {
      keySums = device.output([this.numPages, this.numLayers, this.numKVHeads, this.headDim], 'f32');
      this.#refs = pageCounts(this.numPages);
    } catch (err) {
      keySums?.dispose();
      pool.dispose();
      throw err;
    }
    this.pool = pool;
    this.keySums = keySums;
  }

  get disposed(): boolean {
    return this.#disposed;
  }

  /** Number of live sequences. */
  get numSequences(): number {
    return this.#seqs.size;
  }

  /** A new empty sequence; returns its id. */
  addSequence(): number {
    this.assertLive('addSequence()');
    const id = nextSequenceId++;
    this.#seqs.set(id, { pages: [], length: 0 });
    return id;
  }

  /**
   * A new sequence with the same cached tokens as `seq`, sharing its pages.
   * Writes of either sequence are never seen by the other: a shared,
   * partly filled last page is copied when either appends to it.
   * Invalidates the current plan.
   */
  fork(seq: number): number {
    this.assertLive('fork()');
    const s = this.sequence(seq, 'seq');
    const id = nextSequenceId++;
    for (const p of s.pages) if (++this.#refs[p]! === 2) this.#sharedPages++;
    this.#seqs.set(id, { pages: [...s.pages], length: s.length });
    this.invalidatePlan();
    return id;
  }

  /** Drops a sequence; pages no other sequence uses become free. Invalidates the current plan. */
  free(seq: number): void {
    this.assertLive('free()');
    const s = this.sequence(seq, 'seq');
    for (const p of s.pages) this.releasePage(p);
    this.#seqs.delete(seq);
    this.invalidatePlan();
  }

  /** Whether `seq` is a live sequence of this cache. */
  has(seq: number): boolean {
    this.assertLive('has()');
    return this.#seqs.has(seq);
  }

  /** Tokens cached for `seq` (new tokens of a plan count from plan()). */
  length(seq: number): number {
    this.assertLive('length()');
    return this.sequence(seq, 'seq').length;
  }

  /** The page of each pageSize tokens of `seq`, in order (a copy). */
  pageTable(seq: number): Int32Array {
    this.assertLive('pageTable()');
    return Int32Array.from(this.sequence(seq, 'seq').pages);
  }

  usage(): KVCacheUsage {
    this.assertLive('usage()');
    const usedPages = this.numPages - this.#free.length;
    const sharedPages = this.#sharedPages;
    let numTokens = 0;
    for (const s of this.#seqs.values()) numTokens += s.length;
    const bytesPerPage =
      this.numLayers * this.numKVHeads * this.headDim * (2 * this.pageSize * DTYPE_BYTES[this.dtype] + 4);
    return {
      numPages: this.numPages,
      usedPages,
      freePages: this.#free.length,
      sharedPages,
      pageSize: this.pageSize,
      bytesPerPage,
      totalBytes: bytesPerPage * this.numPages,
      usedBytes: bytesPerPage * usedPages,
      numSequences: this.#seqs.size,
      numTokens,
    };
  }

  /**
   * Plans one step: reserves pages for each entry's new tokens (all or
   * nothing: ECAPACITY when the pool is short, and then nothing changes),
   * advances the sequences' lengths and uploads the step's metadata.
   * Rows of q, k, v for the step are the entries' new tokens in this order.
   */
  plan(batch: readonly PlanEntry[], options: PlanOptions = {}): KVPlan {
    this.assertLive('plan()');
    const o = checkOptions<PlanOptions>(options);
    const maxDecode = o.maxDecodeTokens ?? MAX_DECODE_TOKENS;
    if (typeof maxDecode !== 'number' || !Number.isInteger(maxDecode) || maxDecode < 0 || maxDecode > MAX_DECODE_TOKENS) {
      throw invalidArgument('maxDecodeTokens', `an integer in [0, ${MAX_DECODE_TOKENS}]`, maxDecode);
    }
    if (isRevokedProxy(batch) || !Array.isArray(batch) || batch.length === 0) {
      throw invalidArgument('batch', 'a non-empty array of { seq, newTokens }', batch);
    }
    const S = this.pageSize;
    const seen = new Set<number>();
    // Each entry is read once: what is checked is what gets committed.
    const numEntries = batch.length;
    const ids: number[] = [];
    const counts: number[] = [];
    const seqs: Sequence[] = [];
    let needPages = 0;
    let numRows = 0;
    // Metadata length, known before anything is committed so that its
    // allocation is the last thing that can fail.
    let metaInts = 0;
    let numDecode = 0;
    let prefillTokens = 0;
    let appendSegments = 0;
    let gatherSegments = 0;
    const sharedWriters = new Map<number, number>();
    for (let i = 0; i < numEntries; i++) {
      const e: unknown = batch[i];
      if (e === null || typeof e !== 'object' || isRevokedProxy(e)) throw invalidArgument(`batch[${i}]`, 'an object { seq, newTokens }', e);
      const id: unknown = (e as PlanEntry).seq;
      const n: unknown = (e as PlanEntry).newTokens;
      const s = typeof id === 'number' ? this.#seqs.get(id) : undefined;
      if (!s) throw invalidArgument(`batch[${i}].seq`, 'the id of a live sequence of this cache', id);
      if (seen.has(id as number)) throw invalidArgument(`batch[${i}].seq`, 'a sequence not already in the batch', id);
      seen.add(id as number);
      if (typeof n !== 'number' || !Number.isInteger(n) || n < 1) {
        throw invalidArgument(`batch[${i}].newTokens`, 'a positive integer', n);
      }
      if (s.length + n > this.numPages * S) {
        throw invalidArgument(`batch[${i}].newTokens`, `at most ${this.numPages * S - s.length} (the pool's tokens per sequence)`, n);
      }
      const pagesAfter = Math.ceil((s.length + n) / S);
      needPages += pagesAfter - s.pages.length;
      if (this.needsCopy(s)) {
        const last = s.pages[s.pages.length - 1]!;
        sharedWriters.set(last, (sharedWriters.get(last) ?? 0) + 1);
      }
      numRows += n;
      appendSegments += pagesAfter - Math.floor(s.length / S);
      if (n <= maxDecode) {
        numDecode++;
        metaInts += 4 + pagesAfter;
      } else {
        prefillTokens += s.length + n;
        gatherSegments += pagesAfter;
      }
      ids.push(id as number);
      counts.push(n);
      seqs.push(s);
    }
    metaInts += (appendSegments + gatherSegments) * SEGMENT_INTS;
    if (numDecode > 0) metaInts += 1;
    // Checked here, while nothing has changed: the ops would refuse the plan
    // after it had already advanced the sequences.
    const maxDecodeSeqs = MAX_DECODE_SEQUENCES[this.device.backend === 'cuda' ? 'cuda' : 'cpu'];
    if (numDecode > maxDecodeSeqs) {
      throw invalidArgument('batch', `at most ${maxDecodeSeqs} decode entries (newTokens <= maxDecodeTokens) ` +
        `per plan on ${this.device.backend === 'cuda' ? 'CUDA' : 'the CPU'} (plan the rest as another step)`, numDecode);
    }
    if (appendSegments > MAX_SEGMENTS || gatherSegments > MAX_SEGMENTS || metaInts > 2 ** 31 - 1) {
      throw invalidArgument('batch', `at most ${MAX_SEGMENTS} pages of new tokens and ${MAX_SEGMENTS} pages of prefill ` +
        'sequences per plan (plan the rest as another step)', `${appendSegments} and ${gatherSegments}`);
    }
    // A shared partial page written by k sequences of the batch needs k copies,
    // or k - 1 when they are all of its sharers (the last one keeps it).
    for (const [page, k] of sharedWriters) needPages += k < this.#refs[page]! ? k : k - 1;
    if (numRows > 2 ** 31 - 1) throw invalidArgument('batch', 'fewer than 2^31 new tokens in all', numRows);
    if (prefillTokens > 2 ** 31 - 1) {
      throw invalidArgument('batch', 'fewer than 2^31 tokens in all prefill sequences', prefillTokens);
    }
    if (needPages > this.#free.length) {
      throw new MobaError(
        'ECAPACITY',
        `The KV cache is full: this batch needs ${needPages} free pages but only ${this.#free.length} of ` +
          `${this.numPages} are free; nothing was changed (free sequences or make a larger cache)`,
      );
    }
    const meta = new Int32Array(metaInts);
    // The step's pages are known before any is taken (the free list's next
    // ones). The sequences are changed in place to build the step's metadata
    // and put back as they were if that fails (its allocation or upload):
    // no page table is copied, and the cache and its current plan only change
    // once the metadata is on its way.
    const taking = this.#free.peek(needPages);
    let took = 0;
    // Copy on write, decided on the unchanged sequences: [shared page, its
    // copy]; a shared page written by all of its sharers is copied for all
    // but the last, which then owns it.
    const copies: [number, number][] = [];
    const copyOf = seqs.map(() => -1);
    const copiesOf = new Map<number, number>();
    seqs.forEach((s, i) => {
      if (!this.needsCopy(s)) return;
      const old = s.pages[s.pages.length - 1]!;
      const made = copiesOf.get(old) ?? 0;
      if (this.#refs[old]! - made <= 1) return;
      copiesOf.set(old, made + 1);
      copyOf[i] = copies.length;
      copies.push([old, taking[took++]!]);
    });
    const saved = seqs.map((s) => ({ pages: s.pages.length, length: s.length }));
    const planned: PlannedSequence[] = [];
    let metaTensor: Tensor | null = null;
    let numAppendSegments = 0;
    let parts: ReturnType<typeof writeStepMeta>;
    try {
      seqs.forEach((s, i) => {
        if (copyOf[i]! >= 0) s.pages[s.pages.length - 1] = copies[copyOf[i]!]![1];
      });
      let at = 0;
      let row = 0;
      for (let i = 0; i < numEntries; i++) {
        const s = seqs[i]!;
        const n = counts[i]!;
        const start = s.length;
        while (s.pages.length * S < start + n) s.pages.push(taking[took++]!);
        // A piece: the new tokens of one key-sum block; its first segment
        // carries how many segments it spans and the page its sum continues.
        let pieceAt = -1;
        for (let pos = start; pos < start + n;) {
          const slot = pos % S;
          const count = Math.min(S - slot, start + n - pos);
          const pi = Math.floor(pos / S);
          meta[at + 4] = 0;
          meta[at + 5] = -1;
          if (pieceAt < 0 || pi % this.sumPages === 0) {
            pieceAt = at;
            if (slot === 0 && pi % this.sumPages !== 0) meta[at + 5] = s.pages[pi - 1]!;
          }
          meta[pieceAt + 4]!++;
          meta[at] = s.pages[pi]!;
          meta[at + 1] = slot;
          meta[at + 2] = row + pos - start;
          meta[at + 3] = count;
          at += SEGMENT_INTS;
          pos += count;
        }
        s.length = start + n;
        planned.push({ seq: ids[i]!, start, newTokens: n, row, decode: n <= maxDecode });
        row += n;
      }
      if (took !== needPages) throw new Error(`internal: plan took ${took} pages, reserved ${needPages}`);
      numAppendSegments = at / SEGMENT_INTS;
      parts = writeStepMeta(this.pageSize, planned, seqs, meta, numAppendSegments, numRows);
      metaTensor = this.device.output([metaInts], 'i32');
      this.device.native.write(metaTensor.buffer, meta, DTYPE_CODE.i32);
    } catch (err) {
      seqs.forEach((s, i) => {
        s.pages.length = saved[i]!.pages;
        if (copyOf[i]! >= 0) s.pages[s.pages.length - 1] = copies[copyOf[i]!]![0];
        s.length = saved[i]!.length;
      });
      metaTensor?.dispose();
      throw err;
    }
    // Commit: nothing below can fail.
    this.invalidatePlan();
    for (const p of taking) {
      this.#free.pop();
      this.#refs[p] = 1;
    }
    const kvBytes = this.pool.byteLength / this.numPages;
    const sumBytes = this.keySums.byteLength / this.numPages;
    for (const [old, p] of copies) {
      if (--this.#refs[old]! === 1) this.#sharedPages--;
      this.device.native.copy(this.pool.buffer, p * kvBytes, this.pool.buffer, old * kvBytes, kvBytes);
      this.device.native.copy(this.keySums.buffer, p * sumBytes, this.keySums.buffer, old * sumBytes, sumBytes);
    }
    const plan = new KVPlan(this, numRows, planned, metaTensor, numAppendSegments, parts.decode, parts.prefill, this.#generation);
    this.#plan = plan;
    return plan;
  }

  /**
   * Writes the new K/V of a plan's rows into layer `layerIndex` (k, v:
   * [plan.numRows, numKVHeads, headDim]) and updates that layer's page key
   * sums, as MobaAttention.forward() does (for a batch without prefill rows,
   * inside its decode op); call it directly when attention runs separately
   * (MobaAttention.attend()).
   */
  append(layerIndex: number, plan: KVPlan, k: Tensor, v: Tensor): void {
    this.checkPlan(plan);
    this.checkLayer(layerIndex);
    this.checkRows(k, 'k', plan.numRows);
    this.checkRows(v, 'v', plan.numRows);
    plan.checkNotAppended(layerIndex);
    this.enqueueAppend(layerIndex, plan, k, v);
    plan.markAppended(layerIndex);
  }

  /** Frees the pool and the current plan's metadata. Idempotent. */
  dispose(): void {
    if (this.#disposed) return;
    this.#disposed = true;
    this.#plan?.dispose();
    this.#plan = null;
    this.pool.dispose();
    this.keySums.dispose();
  }

  [Symbol.dispose](): void {
    this.dispose();
  }

  /** @internal */
  enqueueAppend(layer: number, plan: KVPlan, k: Tensor, v: Tensor): void {
    this.device.native.kvAppend(
      this.pool.buffer, this.keySums.buffer, k.buffer, v.buffer,
      plan.meta.buffer, plan.appendOffset, plan.numAppendSegments, plan.numRows,
      this.dtypeCode, this.numPages, this.numLayers, layer, this.numKVHeads, this.pageSize, this.headDim, this.sumPages,
    );
  }

  /** @internal The prefill keys' places in the pages (KVPlan.keyRows), into `keyRows` (i32 pairs, one int64 per key). */
  enqueueKeyRows(plan: KVPlan, keyRows: Tensor): void {
    const pre = plan.prefill!;
    this.device.native.kvKeyRows(
      this.pool.buffer, keyRows.buffer, plan.meta.buffer, pre.gatherOffset, pre.numGatherSegments,
      pre.cuSeqlensK[pre.batch]!,
      this.dtypeCode, this.numPages, this.numLayers, 0, this.numKVHeads, this.pageSize, this.headDim, this.sumPages,
    );
  }

  /**
   * @internal Gathers the prefill sequences' cached K/V (new tokens included)
   * into contiguous rows: what attention over the pages (KVPlan.keyRows)
   * replaced; kept for `npm run bench -- chunked`, which times it.
   */
  enqueueGather(layer: number, plan: KVPlan, k: Tensor, v: Tensor): void {
    const pre = plan.prefill!;
    this.device.native.kvGather(
      this.pool.buffer, k.buffer, v.buffer, plan.meta.buffer, pre.gatherOffset, pre.numGatherSegments,
      pre.cuSeqlensK[pre.batch]!,
      this.dtypeCode, this.numPages, this.numLayers, layer, this.numKVHeads, this.pageSize, this.headDim, this.sumPages,
    );
  }

  /** @internal */
  checkPlan(plan: unknown, arg = 'plan'): KVPlan {
    this.assertLive('a plan');
    if (isRevokedProxy(plan) || !(plan instanceof KVPlan) || plan.cache !== this) throw invalidArgument(arg, 'a KVPlan of this cache', plan);
    if (plan.disposed && plan === this.#plan) {
      throw new MobaError('EINVAL', `Expected a live plan for ${arg} but received a disposed one`);
    }
    if (plan.disposed || plan !== this.#plan || plan.generation !== this.#generation) {
      throw new MobaError(
        'EINVAL',
        `Expected the current plan of this cache for ${arg} but received a stale one ` +
          '(a later plan(), fork() or free() replaced it)',
      );
    }
    return plan;
  }

  /** @internal */
  checkLayer(layer: unknown): number {
    if (typeof layer !== 'number' || !Number.isInteger(layer) || layer < 0 || layer >= this.numLayers) {
      throw invalidArgument('layerIndex', `an integer in [0, ${this.numLayers - 1}]`, layer);
    }
    return layer;
  }

  /** @internal Checks a [rows, numKVHeads, headDim] tensor of the cache dtype on the cache device. */
  checkRows(value: unknown, arg: string, rows: number): Tensor {
    const t = checkTensor(value, arg);
    if (t.device !== this.device) throw invalidArgument(`${arg}.device`, `the cache's device (${this.device})`, t.device.toString());
    if (t.dtype !== this.dtype) throw invalidArgument(`${arg}.dtype`, `the cache dtype ("${this.dtype}")`, t.dtype);
    const sh = t.shape;
    if (sh.length !== 3 || sh[0] !== rows || sh[1] !== this.numKVHeads || sh[2] !== this.headDim) {
      throw invalidArgument(
        `${arg}.shape`, `[${rows}, ${this.numKVHeads}, ${this.headDim}] ([plan.numRows, numKVHeads, headDim])`, sh);
    }
    return t;
  }

  /** @internal */
  assertLive(what: string): void {
    if (this.#disposed) throw new MobaError('EDISPOSED', `Cannot use ${what}: the KV cache has been disposed`);
    this.device.assertLive(what);
  }

  private sequence(seq: unknown, arg: string): Sequence {
    const s = typeof seq === 'number' ? this.#seqs.get(seq) : undefined;
    if (!s) throw invalidArgument(arg, 'the id of a live sequence of this cache', seq);
    return s;
  }

  /** A shared page that is only partly filled must be copied before this sequence writes to it. */
  private needsCopy(s: Sequence): boolean {
    return s.length % this.pageSize !== 0 && this.#refs[s.pages[s.pages.length - 1]!]! > 1;
  }

  private releasePage(p: number): void {
    const left = --this.#refs[p]!;
    if (left === 1) this.#sharedPages--;
    else if (left === 0) this.#free.push(p);
  }

  private invalidatePlan(): void {
    this.#generation++;
    this.#plan?.dispose();
    this.#plan = null;
  }
}
