/**
 * MobaAttention: the attention of one transformer layer over the paged KV
 * cache, for a planned batch in which every sequence brings new tokens
 * (prefill and decode mixed). forward() appends the new K/V, then sends
 *  - decode rows (sequences with at most plan's maxDecodeTokens new tokens)
 *    to the paged decode kernels, with the layer's decode policy: 'full'
 *    causal attention over the whole cache (default, the MoBA paper's
 *    choice) or 'moba' (the gate over the cache from its block key sums,
 *    reading only the selected blocks);
 *  - prefill rows to MoBA over the whole sequence (dense when every prefill
 *    sequence has at most topK blocks, which is the same result): the
 *    attention reads the cached K/V in their pages, through the page table,
 *    as a one-shot prefill reads contiguous ones, so chunked prefill equals
 *    prefill of the whole sequence.
 * Outputs come back in the input row order. Like every op it only enqueues;
 * a batch without prefill rows is one op (the decode kernel writes the new
 * K/V itself).
 */
import type { Device } from './device.js';
import { DTYPE_CODE } from './dtype.js';
import { invalidArgument, isRevokedProxy, MobaError } from './errors.js';
import { MAX_TOP_K } from './gating.js';
import { KVCache } from './kv-cache.js';
import type { KVPlan } from './kv-plan.js';
import { Tensor } from './tensor.js';
import {
  checkBlockLists, checkOptions, checkPositiveInt, checkSelections, checkSoftmaxScale, checkTensor, CUDA_HEAD_DIMS, MAX_CHUNK_SIZE,
} from './validate.js';

export type DecodePolicy = 'full' | 'moba';

export interface MobaAttentionLayerOptions {
  numQHeads: number;
  numKVHeads: number;
  headDim: number;
  /**
   * MoBA block size in tokens; the cache's pageSize must divide it, and with
   * `decode: 'moba'` also the cache's chunkSize (best: equal to it).
   */
  chunkSize: number;
  /** Blocks per query, its own block included. */
  topK: number;
  /** Attention of decode rows: 'full' (default) or 'moba'. */
  decode?: DecodePolicy;
  dtype: 'bf16' | 'f16';
  /** Default 1/sqrt(headDim). */
  softmaxScale?: number;
}

export class MobaAttention {
  readonly device: Device;
  readonly numQHeads: number;
  readonly numKVHeads: number;
  readonly headDim: number;
  readonly chunkSize: number;
  readonly topK: number;
  readonly decode: DecodePolicy;
  readonly dtype: 'bf16' | 'f16';
  readonly softmaxScale: number;
  #disposed = false;

  constructor(device: Device, options: MobaAttentionLayerOptions) {
    if (device === null || typeof device !== 'object' || isRevokedProxy(device) || typeof (device as Device).assertLive !== 'function') {
      throw invalidArgument('device', 'a Device', device);
    }
    device.assertLive('new MobaAttention()');
    const o = checkOptions<MobaAttentionLayerOptions>(options);
    this.device = device;
    this.numQHeads = checkPositiveInt(o.numQHeads, 'numQHeads', 4096);
    this.numKVHeads = checkPositiveInt(o.numKVHeads, 'numKVHeads', 4096);
    if (this.numQHeads % this.numKVHeads !== 0) {
      throw invalidArgument('numKVHeads', `a divisor of numQHeads (${this.numQHeads})`, this.numKVHeads);
    }
    this.headDim = checkPositiveInt(o.headDim, 'headDim', 1024);
    if (device.backend === 'cuda' && !CUDA_HEAD_DIMS.includes(this.headDim)) {
      throw invalidArgument('headDim', `a head dim of ${CUDA_HEAD_DIMS.join(' or ')} on CUDA`, this.headDim);
    }
    this.chunkSize = checkPositiveInt(o.chunkSize, 'chunkSize', MAX_CHUNK_SIZE);
    this.topK = checkPositiveInt(o.topK, 'topK', MAX_TOP_K);
    const policy = o.decode ?? 'full';
    if (policy !== 'full' && policy !== 'moba') throw invalidArgument('decode', '"full" or "moba"', policy);
    this.decode = policy;
    if (o.dtype !== 'bf16' && o.dtype !== 'f16') throw invalidArgument('dtype', '"bf16" or "f16"', o.dtype);
    this.dtype = o.dtype;
    this.softmaxScale = checkSoftmaxScale(o.softmaxScale, this.headDim);
  }

  /**
   * Appends k, v ([plan.numRows, numKVHeads, headDim]) to layer `layerIndex`
   * of the cache, then attends q ([plan.numRows, numQHeads, headDim]).
   * Returns [plan.numRows, numQHeads, headDim] in the input row order. A
   * layer takes a plan's K/V once: a second forward() or append() of the same
   * plan on the same layer is EINVAL. `out`, when given, receives the result
   * and is returned (no allocation per step); it must not be q, k or v.
   */
  forward(cache: KVCache, layerIndex: number, plan: KVPlan, q: Tensor, k: Tensor, v: Tensor, out?: Tensor): Tensor {
    this.check(cache, layerIndex, plan, q);
    const kt = cache.checkRows(k, 'k', plan.numRows);
    const vt = cache.checkRows(v, 'v', plan.numRows);
    const o = this.checkOut(out, plan, [q, kt, vt]);
    plan.checkNotAppended(layerIndex);
    // Decode-only batches append inside the decode op: one op per layer and step.
    if (plan.decode && !plan.prefill) {
      const result = this.run(cache, layerIndex, plan, q, o, kt, vt);
      plan.markAppended(layerIndex);
      return result;
    }
    cache.enqueueAppend(layerIndex, plan, kt, vt);
    plan.markAppended(layerIndex);
    return this.run(cache, layerIndex, plan, q, o);
  }

  /**
   * Attention only: the plan's new K/V must already be in the cache
   * (KVCache.append). `out` as in forward(); it must not be q.
   */
  attend(cache: KVCache, layerIndex: number, plan: KVPlan, q: Tensor, out?: Tensor): Tensor {
    this.check(cache, layerIndex, plan, q);
    return this.run(cache, layerIndex, plan, q, this.checkOut(out, plan, [q]));
  }

  get disposed(): boolean {
    return this.#disposed;
  }

  /** Later calls are EDISPOSED (the layer holds no device memory of its own). Idempotent. */
  dispose(): void {
    this.#disposed = true;
  }

  [Symbol.dispose](): void {
    this.dispose();
  }

  private check(cache: unknown, layerIndex: unknown, plan: unknown, qv: unknown): void {
    if (this.#disposed) throw new MobaError('EDISPOSED', 'Cannot use the MobaAttention layer: it has been disposed');
    if (isRevokedProxy(cache) || !(cache instanceof KVCache)) throw invalidArgument('cache', 'a KVCache', cache);
    const p = cache.checkPlan(plan);
    cache.checkLayer(layerIndex);
    if (cache.device !== this.device) {
      throw invalidArgument('cache.device', `the layer's device (${this.device})`, cache.device.toString());
    }
    if (cache.numKVHeads !== this.numKVHeads) {
      throw invalidArgument('cache.numKVHeads', `the layer's numKVHeads (${this.numKVHeads})`, cache.numKVHeads);
    }
    if (cache.headDim !== this.headDim) throw invalidArgument('cache.headDim', `the layer's headDim (${this.headDim})`, cache.headDim);
    if (cache.dtype !== this.dtype) throw invalidArgument('cache.dtype', `the layer's dtype ("${this.dtype}")`, cache.dtype);
    if (this.chunkSize % cache.pageSize !== 0) {
      throw invalidArgument('cache.pageSize', `a divisor of the layer's chunkSize (${this.chunkSize})`, cache.pageSize);
    }
    if (this.decode === 'moba' && this.chunkSize % cache.chunkSize !== 0) {
      throw invalidArgument('cache.chunkSize', `a divisor of the moba-decode layer's chunkSize (${this.chunkSize})`,
        cache.chunkSize);
    }
    this.checkQueryRows(qv, 'q', p.numRows);
    // Refused here, before forward() appends anything: the attention op would
    // refuse it only after the plan's K/V were in the cache.
    const dec = p.decode;
    const lastSpan = this.decode === 'moba' ? Math.max(this.chunkSize, 64) : 64;
    if (dec && dec.maxKvLen > 2 ** 31 - 1 - lastSpan) {
      throw invalidArgument('plan', `decode sequences of at most ${2 ** 31 - 1 - lastSpan} tokens for this layer`,
        `one of ${dec.maxKvLen}`);
    }
    const pre = p.prefill;
    if (pre && !this.prefillIsDense(pre)) {
      checkSelections(pre.cuSeqlensQ[pre.batch]!, this.numQHeads, this.topK);
      checkBlockLists(pre.cuSeqlensK, this.chunkSize, this.numQHeads);
    }
  }

  /** topK covering every block of every prefill sequence is exactly dense causal attention. */
  private prefillIsDense(pre: NonNullable<KVPlan['prefill']>): boolean {
    return Math.ceil(pre.maxSeqlenK / this.chunkSize) <= this.topK;
  }

  /** A tensor of the layer's device and dtype, [numRows, numQHeads, headDim] (q, or an output). */
  private checkQueryRows(value: unknown, arg: string, numRows: number): Tensor {
    const t = checkTensor(value, arg);
    if (t.device !== this.device) throw invalidArgument(`${arg}.device`, `the layer's device (${this.device})`, t.device.toString());
    if (t.dtype !== this.dtype) throw invalidArgument(`${arg}.dtype`, `the layer's dtype ("${this.dtype}")`, t.dtype);
    const sh = t.shape;
    if (sh.length !== 3 || sh[0] !== numRows || sh[1] !== this.numQHeads || sh[2] !== this.headDim) {
      throw invalidArgument(
        `${arg}.shape`, `[${numRows}, ${this.numQHeads}, ${this.headDim}] ([plan.numRows, numQHeads, headDim])`, sh);
    }
    return t;
  }

  /** The caller's output tensor, if any: as q, and not one of the op's inputs. */
  private checkOut(out: unknown, plan: KVPlan, inputs: readonly Tensor[]): Tensor | null {
    if (out === undefined) return null;
    const o = this.checkQueryRows(out, 'out', plan.numRows);
    // The kernels read their inputs while they write out, in no fixed order.
    const names = ['q', 'k', 'v'];
    inputs.forEach((t, i) => {
      if (t.buffer === o.buffer) throw invalidArgument('out', `a tensor other than ${names[i]}`, `${names[i]} itself`);
    });
    return o;
  }

  /** 1 when a decode sequence's new tokens lie in two blocks (the decode op then appends before it gates). */
  private spansBlocks(plan: KVPlan): 0 | 1 {
    const B = this.chunkSize;
    for (const s of plan.sequences) {
      if (s.decode && Math.floor(s.start / B) !== Math.floor((s.start + s.newTokens - 1) / B)) return 1;
    }
    return 0;
  }

  private run(cache: KVCache, layer: number, plan: KVPlan, q: Tensor, given: Tensor | null, newK?: Tensor, newV?: Tensor): Tensor {
    const D = this.headDim;
    const Hq = this.numQHeads;
    const shape = [plan.numRows, Hq, D];
    const dec = plan.decode;
    if (given) this.device.poison(given);
    // Decode allocates the output itself (one native call fewer per step),
    // unless outputs are poisoned first.
    let out = given ?? (dec && !this.device.poisonOutputs ? null : this.device.output(shape, this.dtype));
    if (dec) {
      const moba = this.decode === 'moba';
      const made = this.device.native.decodeAttention(
        q.buffer, out ? out.buffer : null, cache.pool.buffer, cache.keySums.buffer,
        plan.meta.buffer, dec.infoOffset, dec.batch, dec.numPageIndices,
        plan.numRows, Hq, dec.maxQLen, dec.maxKvLen, dec.sumKvLen,
        this.softmaxScale, moba ? 1 : 0, moba ? this.chunkSize : 0, moba ? this.topK : 0,
        cache.dtypeCode, cache.numPages, cache.numLayers, layer, cache.numKVHeads, cache.pageSize, cache.headDim,
        cache.sumPages,
        newK?.buffer, newV?.buffer, plan.meta.buffer, plan.appendOffset, plan.numAppendSegments, plan.numRows,
        newK && moba && dec.maxQLen > 1 ? this.spansBlocks(plan) : 0,
      );
      if (!out && made) out = new Tensor(this.device, made, shape, this.dtype);
    }
    out ??= this.device.output(shape, this.dtype);
    const pre = plan.prefill;
    if (pre) {
      const prefillRows = pre.cuSeqlensQ[pre.batch]!;
      // K and V are read in place, through the plan's key offsets in the pages.
      const keyRows = plan.keyRows();
      let qP = q;
      let oP = out;
      const rowBytes = Hq * D * 2;
      if (!pre.allRows) {
        qP = plan.workspace(`q${Hq}`, [prefillRows, Hq, D], this.dtype);
        oP = plan.workspace(`o${Hq}`, [prefillRows, Hq, D], this.dtype);
        const runs = pre.rowRuns;
        for (let i = 0; i < runs.length; i += 3) {
          this.device.native.copy(qP.buffer, runs[i + 1]! * rowBytes, q.buffer, runs[i]! * rowBytes, runs[i + 2]! * rowBytes);
        }
      }
      const dense = this.prefillIsDense(pre);
      // A cache with one key sum per block of this layer gives the gate its
      // centroids (the same bits as adding up the block's keys).
      const sumsPerBlock = !dense && cache.sumPages * cache.pageSize === this.chunkSize;
      this.device.native.attention(
        qP.buffer, cache.pool.buffer, cache.pool.buffer, oP.buffer, null, pre.cuSeqlensQ, pre.cuSeqlensK, DTYPE_CODE[this.dtype],
        Hq, this.numKVHeads, D, this.softmaxScale, true, dense ? 0 : this.chunkSize, dense ? 0 : this.topK,
        keyRows.buffer, cache.numPages, cache.numLayers, layer, cache.pageSize, sumsPerBlock ? cache.keySums.buffer : null,
      );
      if (!pre.allRows) {
        const runs = pre.rowRuns;
        for (let i = 0; i < runs.length; i += 3) {
          this.device.native.copy(out.buffer, runs[i]! * rowBytes, oP.buffer, runs[i + 1]! * rowBytes, runs[i + 2]! * rowBytes);
        }
      }
    }
    return out;
  }
}
