/**
 * A moba decode CTA keeps its rows' selections, the union of their blocks and
 * a bitmap of every block of the longest sequence in shared memory. Past about
 * 470,000 blocks with topK 256 and 32 rows that is more than one CTA may have
 * on the H200, and the step is EINVAL: CUDA only (the CPU backend has no such
 * limit), with a cache of 8M tokens (2 GB) to reach it.
 */
import { expect, it } from 'vitest';

import { KVCache, MobaAttention, mobaAttention } from '../../lib/index.js';
import { describeCuda, openTestDevice } from '../helpers/backends.js';
import { periodicRows, rowSlice } from '../helpers/device-rows.js';
import { expectMobaError } from '../helpers/errors.js';
import { randn, relL2, rngFor, roundToBf16 } from '../helpers/random.js';

const [HQ, HKV, D, B] = [8, 1, 64, 16];

describeCuda('CUDA moba decode past one CTA of shared memory', () => {
  it('a step whose selections do not fit is EINVAL and leaves the cache as it was; with a smaller topK it equals mobaAttention', async () => {
    using device = openTestDevice('cuda');
    const rng = rngFor('decode shared-memory refusal');
    // 500,000 complete blocks of 16, then 14 tokens: the step's 4 new tokens span two blocks, so
    // forward() must append before the gate reads their key sums.
    const n = 500_000 * B + 14;
    const total = n + 4;
    // Periodic keys and values (a prime period): 8M random rows would take minutes to make here.
    // Blocks repeat every 16,411 blocks, so the gate also meets exact ties (the lower block wins).
    using k = periodicRows(device, total, HKV, D, 16411, rng);
    using v = periodicRows(device, total, HKV, D, 16411, rng);
    using cache = new KVCache(device, { numLayers: 1, numPages: Math.ceil(total / B) + 2, pageSize: B, chunkSize: B, numKVHeads: HKV, headDim: D, dtype: 'bf16' });
    const seq = cache.addSequence();
    {
      using kp = rowSlice(device, k, 0, n);
      using vp = rowSlice(device, v, 0, n);
      cache.append(0, cache.plan([{ seq, newTokens: n }], { maxDecodeTokens: 0 }), kp, vp);
    }
    using q = device.tensor(roundToBf16(randn(4 * HQ * D, rng)), { dtype: 'bf16', shape: [4, HQ, D] });
    using kNew = rowSlice(device, k, n, 4);
    using vNew = rowSlice(device, v, n, 4);
    const plan = cache.plan([{ seq, newTokens: 4 }]);
    expect(plan.sequences[0]!.decode).toBe(true);

    const state = async (): Promise<{ usage: unknown; length: number; sums: Buffer }> => {
      const sums = (await cache.keySums.toArray()) as Float32Array;
      return { usage: cache.usage(), length: cache.length(seq), sums: Buffer.from(sums.buffer, sums.byteOffset, sums.byteLength) };
    };
    const before = await state();
    using wide = new MobaAttention(device, { numQHeads: HQ, numKVHeads: HKV, headDim: D, chunkSize: B, topK: 256, dtype: 'bf16', decode: 'moba' });
    const blocks = Math.ceil(total / B);
    const refusal = new RegExp(
      `^decode: topK 256 for 32 query rows per \\(sequence, KV head\\) over ${blocks} blocks needs (\\d+) bytes of shared memory per CTA, ` +
        'but this device allows at most (\\d+) \\(use a smaller topK or shorter sequences\\)');
    for (const [what, call] of [
      ['forward()', () => wide.forward(cache, 0, plan, q, kNew, vNew)],
      ['attend()', () => wide.attend(cache, 0, plan, q)],
    ] as const) {
      const err = expectMobaError(call, 'EINVAL');
      const m = refusal.exec(err.message);
      expect(m, `${what}: ${err.message}`).not.toBeNull();
      expect(Number(m![1]), what).toBeGreaterThan(Number(m![2]));
      // Nothing was enqueued: not the append of the new tokens (their key sums), not the decode.
      const after = await state();
      expect(after.usage, what).toEqual(before.usage);
      expect(after.length, what).toBe(before.length);
      expect(after.sums.equals(before.sums), `${what}: key sums unchanged`).toBe(true);
    }

    // The same plan with a topK that fits: the refusals left it to be appended once, as usual.
    using narrow = new MobaAttention(device, { numQHeads: HQ, numKVHeads: HKV, headDim: D, chunkSize: B, topK: 8, dtype: 'bf16', decode: 'moba' });
    using got = narrow.forward(cache, 0, plan, q, kNew, vNew);
    using want = mobaAttention(q, k, v, { cuSeqlensQ: Int32Array.from([0, 4]), cuSeqlensK: Int32Array.from([0, total]), chunkSize: B, topK: 8 });
    expect(relL2(await got.toArray(), await want.toArray()), 'moba decode against mobaAttention').toBeLessThan(1e-2);
  });
});
