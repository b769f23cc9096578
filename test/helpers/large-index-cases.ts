/**
 * Tensors of 2^31 elements and more: every element offset in the kernels is
 * 64-bit, so a sequence placed past element 2^31 of q (or of k and v) must
 * give what it gives alone. The batch puts a last, random sequence after
 * filler that takes exactly 2^31 elements (constant, and cheap to attend:
 * sequences of one token, or a sequence with no queries), and checks that
 * sequence's rows against the float64 reference. A 32-bit offset anywhere
 * wraps those rows to negative offsets. On CUDA, also decode over a cache of
 * 2^20 tokens against the contiguous ops.
 */
import { expect, it } from 'vitest';

import { flashAttention, KVCache, MobaAttention, mobaAttention, mobaGate, reference, type Device, type Tensor } from '../../lib/index.js';
import { periodicRows, rowSlice } from './device-rows.js';
import { maxAbsDiff, randn, relL2, reportSeedOnFailure, rngFor, roundToBf16 } from './random.js';

const TWO31 = 2 ** 31;
const BF16_ONE = 0x3f80;
const [HQ, HKV, D] = [32, 8, 64];
const CHUNK = 64;
const TOP_K = 3;

interface Layout {
  what: string;
  /** Filler sequences: [query length, key length] of each, all alike. */
  filler: { count: number; lq: number; lk: number };
  /** The checked sequence, after the filler. */
  tail: { lq: number; lk: number };
}

// Filler of exactly 2^31 elements in q: 2^20 one-token sequences of 32 x 64.
const qPast: Layout = { what: 'q', filler: { count: TWO31 / (HQ * D), lq: 1, lk: 1 }, tail: { lq: 300, lk: 300 } };
// Filler of exactly 2^31 elements in k and v: one sequence of 2^22 keys and no queries.
const kPast: Layout = { what: 'k and v', filler: { count: 1, lq: 0, lk: TWO31 / (HKV * D) }, tail: { lq: 200, lk: 700 } };

function prefix(l: Layout, key: 'lq' | 'lk'): Int32Array {
  const cu = new Int32Array(l.filler.count + 2);
  for (let b = 1; b <= l.filler.count; b++) cu[b] = cu[b - 1]! + l.filler[key];
  cu[l.filler.count + 1] = cu[l.filler.count]! + l.tail[key];
  return cu;
}

/** A [rows, heads, D] bf16 tensor: filler rows set to 1, then `tail` (already bf16-exact) in the last rows. */
function withTail(device: Device, fillerRows: number, heads: number, tail: Float32Array): Tensor {
  const rows = fillerRows + tail.length / (heads * D);
  const t = device.empty([rows, heads, D], 'bf16');
  device.native.fill(t.buffer, fillerRows * heads * D, 2, BF16_ONE);
  using small = device.tensor(tail, { dtype: 'bf16', shape: [tail.length / (heads * D), heads, D] });
  device.native.copy(t.buffer, fillerRows * heads * D * 2, small.buffer, 0, tail.length * 2);
  return t;
}

/** Bytes [offset, offset + bytes) of `t`, read back through a small tensor. */
async function slice(device: Device, t: Tensor, parts: [offset: number, bytes: number][], dtype: 'bf16' | 'f32' | 'i32'): Promise<Float32Array | Int32Array> {
  const unit = dtype === 'bf16' ? 2 : 4;
  const total = parts.reduce((n, [, b]) => n + b, 0);
  using out = device.empty([total / unit], dtype);
  let at = 0;
  for (const [offset, bytes] of parts) {
    device.native.copy(out.buffer, at, t.buffer, offset, bytes);
    at += bytes;
  }
  return out.toArray();
}

export function defineLargeIndexTests(open: () => Device, opts: { attention: boolean }): void {
  reportSeedOnFailure();

  for (const layout of [qPast, kPast]) {
    it(`a sequence past element 2^31 of ${layout.what} gives what it gives alone (gate${opts.attention ? ', MoBA and flash attention' : ''})`, async () => {
      using device = open();
      const rng = rngFor(`large index ${layout.what}`);
      const { filler, tail } = layout;
      const cuSeqlensQ = prefix(layout, 'lq');
      const cuSeqlensK = prefix(layout, 'lk');
      const fillerQ = filler.count * filler.lq;
      const fillerK = filler.count * filler.lk;
      const tq = roundToBf16(randn(tail.lq * HQ * D, rng));
      const tk = roundToBf16(randn(tail.lk * HKV * D, rng));
      const tv = roundToBf16(randn(tail.lk * HKV * D, rng));
      using q = withTail(device, fillerQ, HQ, tq);
      using k = withTail(device, fillerK, HKV, tk);
      expect(Math.max(q.numel, k.numel)).toBeGreaterThan(TWO31);
      const totalQ = fillerQ + tail.lq;
      const alone = {
        numQHeads: HQ, numKVHeads: HKV, headDim: D, chunkSize: CHUNK, topK: TOP_K,
        cuSeqlensQ: Int32Array.from([0, tail.lq]), cuSeqlensK: Int32Array.from([0, tail.lk]),
      };
      const perHead = (elemBytes: number, width: number): [number, number][] =>
        Array.from({ length: HQ }, (_, h) => [((h * totalQ + fillerQ) * width) * elemBytes, tail.lq * width * elemBytes]);

      using gate = mobaGate(q, k, { cuSeqlensQ, cuSeqlensK, chunkSize: CHUNK, topK: TOP_K });
      const got = await slice(device, gate, perHead(4, TOP_K), 'i32');
      expect(Array.from(got)).toEqual(Array.from(reference.mobaGate(tq, tk, alone)));
      if (!opts.attention) return;

      using v = withTail(device, fillerK, HKV, tv);

      const tailRows: [number, number][] = [[fillerQ * HQ * D * 2, tail.lq * HQ * D * 2]];
      const moba = mobaAttention(q, k, v, { cuSeqlensQ, cuSeqlensK, chunkSize: CHUNK, topK: TOP_K, returnLse: true });
      using mo = moba.out;
      using ml = moba.lse;
      const mobaRef = reference.mobaAttention(tq, tk, tv, alone);
      expect(relL2(await slice(device, mo, tailRows, 'bf16'), mobaRef.out), 'mobaAttention out').toBeLessThan(1e-2);
      expect(maxAbsDiff(await slice(device, ml, perHead(4, 1), 'f32'), mobaRef.lse), 'mobaAttention lse').toBeLessThan(1e-3);
      for (const causal of [true, false]) {
        const flash = flashAttention(q, k, v, { cuSeqlensQ, cuSeqlensK, causal, returnLse: true });
        using fo = flash.out;
        using fl = flash.lse;
        const ref = reference.flashAttention(tq, tk, tv, { ...alone, causal });
        expect(relL2(await slice(device, fo, tailRows, 'bf16'), ref.out), `flashAttention causal ${causal}`).toBeLessThan(1e-2);
        expect(maxAbsDiff(await slice(device, fl, perHead(4, 1), 'f32'), ref.lse), `flashAttention lse, causal ${causal}`)
          .toBeLessThan(1e-3);
      }
    });
  }

  if (!opts.attention) return;

  // Decode over a cache of 2^20 tokens (a 4.3 GB pool) against the contiguous
  // ops over the same keys: the query at the last position, bottom-right aligned.
  it('decode over a 1M-token cache equals flash and MoBA attention over the same keys (full and moba)', async () => {
    using device = open();
    const rng = rngFor('1M-token decode');
    const [n, pageSize, chunkSize, topK, period] = [2 ** 20, 64, 512, 3, 16411];
    // Contiguous keys and values of n + 1 tokens, periodic (a prime period: no two blocks alike).
    using k = periodicRows(device, n + 1, HKV, D, period, rng);
    using v = periodicRows(device, n + 1, HKV, D, period, rng);
    using cache = new KVCache(device, { numLayers: 1, numPages: n / pageSize + 2, pageSize, chunkSize, numKVHeads: HKV, headDim: D, dtype: 'bf16' });
    const seq = cache.addSequence();
    {
      using kp = rowSlice(device, k, 0, n);
      using vp = rowSlice(device, v, 0, n);
      cache.append(0, cache.plan([{ seq, newTokens: n }], { maxDecodeTokens: 0 }), kp, vp);
    }
    using q = device.tensor(roundToBf16(randn(HQ * D, rng)), { dtype: 'bf16', shape: [1, HQ, D] });
    using kNew = rowSlice(device, k, n, 1);
    using vNew = rowSlice(device, v, n, 1);
    const plan = cache.plan([{ seq, newTokens: 1 }]);
    const varlen = { cuSeqlensQ: Int32Array.from([0, 1]), cuSeqlensK: Int32Array.from([0, n + 1]) };
    using full = new MobaAttention(device, { numQHeads: HQ, numKVHeads: HKV, headDim: D, chunkSize, topK, dtype: 'bf16' });
    using moba = new MobaAttention(device, { numQHeads: HQ, numKVHeads: HKV, headDim: D, chunkSize, topK, dtype: 'bf16', decode: 'moba' });
    using gotFull = full.forward(cache, 0, plan, q, kNew, vNew);
    using gotMoba = moba.attend(cache, 0, plan, q);
    using wantFull = flashAttention(q, k, v, { ...varlen, causal: true });
    using wantMoba = mobaAttention(q, k, v, { ...varlen, chunkSize, topK });
    expect(relL2(await gotFull.toArray(), await wantFull.toArray()), 'full decode against flashAttention').toBeLessThan(1e-2);
    expect(relL2(await gotMoba.toArray(), await wantMoba.toArray()), 'moba decode against mobaAttention').toBeLessThan(1e-2);
  });
}
