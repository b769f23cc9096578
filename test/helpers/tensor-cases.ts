/**
 * Device and tensor behaviour, written once and run on every backend:
 * bit-exact round trips in every dtype, conversions, lifetimes, memory
 * accounting and the non-blocking read-back.
 */
import { expect, it } from 'vitest';

import { MobaError, type Device } from '../../lib/index.js';
import { randn, reportSeedOnFailure, rngFor, roundToBf16, roundToF16 } from './random.js';

/** Decodes raw 16-bit patterns independently of the addon. */
function decodeBf16(bits: number): number {
  const u = new Uint32Array([bits << 16]);
  return new Float32Array(u.buffer)[0]!;
}
function decodeF16(bits: number): number {
  const sign = bits & 0x8000 ? -1 : 1;
  const exp = (bits >> 10) & 0x1f;
  const mant = bits & 0x3ff;
  if (exp === 0x1f) return mant ? NaN : sign * Infinity;
  if (exp === 0) return sign * mant * 2 ** -24;
  return sign * (1 + mant / 1024) * 2 ** (exp - 15);
}

function bitsOf(x: Float32Array): Uint32Array {
  return new Uint32Array(x.buffer, x.byteOffset, x.length);
}

/** Special and random float32 values: NaN, +-Inf, +-0, subnormals, halfway cases, huge values. */
function nastyFloats(n: number, label: string): Float32Array {
  const rng = rngFor(label);
  const special = [
    NaN, Infinity, -Infinity, 0, -0, 1e-45, -1e-45, 1.1754942e-38, 1e-40, -3e-39, 5.9604645e-8, 2.9802322e-8,
    6.1035156e-5, 6.0975552e-5, 65504, 65519.99, 65520, 70000, -65536, 3.4028235e38, -3.4028235e38, 1.00390625,
    1.01171875, 1 + 2 ** -11, 1 + 3 * 2 ** -11, 0.1, -2.5, 1 / 3,
  ];
  const x = randn(n, rng, 10);
  x.set(special.slice(0, Math.min(n, special.length)));
  // Random raw bit patterns cover every exponent.
  const bits = bitsOf(x);
  for (let i = special.length; i < n; i += 3) bits[i] = Math.floor(rng.next() * 2 ** 32) >>> 0;
  return x;
}

export function defineTensorTests(open: () => Device): void {
  reportSeedOnFailure();

  it('round-trips f32 bit-exactly, NaN payloads, -0 and subnormals included', async () => {
    using device = open();
    const x = nastyFloats(4099, 'f32 round trip');
    using t = device.tensor(x, { dtype: 'f32', shape: [4099] });
    const back = (await t.toArray()) as Float32Array;
    expect(back).toBeInstanceOf(Float32Array);
    expect(Array.from(bitsOf(back))).toEqual(Array.from(bitsOf(x)));
  });

  it('round-trips i32 exactly', async () => {
    using device = open();
    const rng = rngFor('i32');
    const x = new Int32Array(1000).map(() => (Math.floor(rng.next() * 2 ** 32) | 0));
    x[0] = -(2 ** 31);
    x[1] = 2 ** 31 - 1;
    using t = device.tensor(x, { dtype: 'i32', shape: [10, 100] });
    const back = await t.toArray();
    expect(back).toBeInstanceOf(Int32Array);
    expect(Array.from(back)).toEqual(Array.from(x));
    using fromNumbers = device.tensor([1, -2, 3], { dtype: 'i32' });
    expect(Array.from(await fromNumbers.toArray())).toEqual([1, -2, 3]);
  });

  for (const dtype of ['bf16', 'f16'] as const) {
    const decode = dtype === 'bf16' ? decodeBf16 : decodeF16;
    const round = dtype === 'bf16' ? roundToBf16 : roundToF16;

    it(`${dtype}: every one of the 65536 bit patterns reads back as its exact value`, async () => {
      using device = open();
      const bits = new Uint16Array(65536).map((_, i) => i);
      using t = device.tensor(bits, { dtype, shape: [256, 256] });
      const back = await t.toArray();
      for (let i = 0; i < 65536; i++) {
        const want = decode(i);
        if (Number.isNaN(want)) {
          if (!Number.isNaN(back[i]!)) expect.fail(`${dtype} bits 0x${i.toString(16)}: want NaN, got ${back[i]}`);
        } else if (!Object.is(back[i], want)) {
          expect.fail(`${dtype} bits 0x${i.toString(16)}: want ${want}, got ${back[i]}`);
        }
      }
    });

    it(`${dtype}: float32 input rounds to nearest even, keeping NaN, Inf and subnormals`, async () => {
      using device = open();
      const x = nastyFloats(5000, `${dtype} from f32`);
      using t = device.tensor(x, { dtype, shape: [5000] });
      const back = await t.toArray();
      const want = round(x);
      for (let i = 0; i < x.length; i++) {
        const ok = Number.isNaN(want[i]!) ? Number.isNaN(back[i]!) : Object.is(back[i], want[i]);
        if (!ok) expect.fail(`${dtype}(${x[i]}): want ${want[i]}, got ${back[i]}`);
      }
    });

    it(`${dtype}: float64 input is rounded once (no double rounding through float32)`, async () => {
      using device = open();
      // Just above a halfway point in the 16-bit format but rounding to the
      // halfway value in float32: double rounding would go down to even.
      const ulp16 = dtype === 'bf16' ? 2 ** -7 : 2 ** -10;
      const x = new Float64Array([1 + ulp16 / 2 + 2 ** -40, -(1 + ulp16 / 2 + 2 ** -40), 1 + ulp16 / 2, 0.1, 1e-300]);
      using t = device.tensor(x, { dtype });
      const back = await t.toArray();
      expect(back[0]).toBe(1 + ulp16);
      expect(back[1]).toBe(-(1 + ulp16));
      expect(back[2]).toBe(1); // exact halfway: ties to even
      expect(back[3]).toBe(round(new Float32Array([0.1]))[0]);
      expect(Object.is(back[4], 0)).toBe(true);
    });
  }

  it('empty() allocates the requested shape and poisons it when asked', async () => {
    using device = open();
    using f = device.empty([3, 5], 'bf16');
    expect(f.shape).toEqual([3, 5]);
    expect(f.dtype).toBe('bf16');
    expect(f.numel).toBe(15);
    const vals = await f.toArray();
    expect(vals.length).toBe(15);
    expect(Array.from(vals).every(Number.isNaN)).toBe(true);
    using i = device.empty([4], 'i32');
    expect(Array.from(await i.toArray())).toEqual([0x7f7f7f7f, 0x7f7f7f7f, 0x7f7f7f7f, 0x7f7f7f7f]);
    using z = device.empty([0, 7], 'f32');
    expect((await z.toArray()).length).toBe(0);
  });

  // Fills and copies of many MiB are split over threads (CPU) or blocks (CUDA):
  // every element up to an odd tail must be written.
  it('fills and copies of several MiB with odd tails write every element (and overlapping copies on the CPU keep memmove semantics)', async () => {
    using device = open();
    const n = (5 << 20) + 3; // 16-bit elements: 10 MiB + 6 bytes
    for (const [dtype, bytes, pattern] of [['bf16', 2, 0x3f80], ['f32', 4, 0x40490fdb], ['i32', 4, 0x12345678]] as const) {
      using t = device.empty([n], dtype);
      device.native.fill(t.buffer, n, bytes, pattern);
      const got = await t.toArray();
      const want = dtype === 'bf16' ? 1 : dtype === 'f32' ? new Float32Array(new Uint32Array([pattern]).buffer)[0]! : pattern;
      let bad = -1;
      for (let i = 0; i < n && bad < 0; i++) if (got[i] !== want) bad = i;
      expect(bad, `${dtype}: first element not filled`).toBe(-1);
    }
    const rng = rngFor('large copies');
    const src = new Int32Array(n);
    for (let i = 0; i < n; i++) src[i] = Math.floor(rng.next() * 2 ** 31);
    using a = device.tensor(src, { dtype: 'i32' });
    using b = device.empty([n], 'i32');
    device.native.copy(b.buffer, 0, a.buffer, 0, n * 4);
    expect(Buffer.compare(Buffer.from((await b.toArray()).buffer), Buffer.from(src.buffer)), 'disjoint copy').toBe(0);
    // The op's callers copy between disjoint ranges (cudaMemcpyAsync requires it); the CPU
    // backend also keeps memmove's result for overlapping ones, forward and backward.
    if (device.backend !== 'cpu') return;
    const shift = 777_777;
    const bytes = (n - shift) * 4;
    device.native.copy(a.buffer, shift * 4, a.buffer, 0, bytes);
    const fwd = src.slice();
    fwd.copyWithin(shift, 0, n - shift);
    expect(Buffer.compare(Buffer.from((await a.toArray()).buffer), Buffer.from(fwd.buffer)), 'overlapping copy, forward').toBe(0);
    device.native.copy(a.buffer, 0, a.buffer, shift * 4, bytes);
    fwd.copyWithin(0, shift, n);
    expect(Buffer.compare(Buffer.from((await a.toArray()).buffer), Buffer.from(fwd.buffer)), 'overlapping copy, backward').toBe(0);
  });

  it('dispose() frees memory once; later use rejects with EDISPOSED', async () => {
    using device = open();
    await device.synchronize();
    const before = device.memoryInfo().used;
    const t = device.tensor(new Float32Array(1 << 20), { dtype: 'f32' });
    expect(device.memoryInfo().used - before).toBeGreaterThanOrEqual(4 << 20);
    t.dispose();
    t.dispose();
    await device.synchronize();
    expect(device.memoryInfo().used).toBe(before);
    expect(t.disposed).toBe(true);
    await expect(t.toArray()).rejects.toMatchObject({ code: 'EDISPOSED' });
    await expect(t.toArray()).rejects.toThrow(/has been disposed/);
  });

  it('a read enqueued before dispose() still gets the data', async () => {
    using device = open();
    const x = randn(1000, rngFor('read then dispose'));
    const t = device.tensor(x, { dtype: 'f32' });
    const pending = t.toArray();
    t.dispose();
    expect(Array.from(await pending)).toEqual(Array.from(x));
  });

  it('memory freed while queued work still reads it is reused only after that work', async () => {
    using device = open();
    const n = device.backend === 'cuda' ? 2 ** 28 : 2 ** 22;
    using slow = device.empty([n], 'f32');
    const rng = rngFor('reuse after free');
    const cases = [1, 100, 1000, 65536, 300000].map((size) => {
      // Slow work first, so that the read below is still queued when its memory is handed out again.
      device.native.fill(slow.buffer, n, 4, size);
      const x = randn(size, rng);
      const t = device.tensor(x, { dtype: 'f32' });
      const pending = t.toArray();
      t.dispose();
      const y = randn(size, rng);
      return { x, pending, y, u: device.tensor(y, { dtype: 'f32' }) };
    });
    for (const { x, pending, y, u } of cases) {
      expect(Array.from(await pending)).toEqual(Array.from(x));
      expect(Array.from(await u.toArray())).toEqual(Array.from(y));
      u.dispose();
    }
  });

  it('`using` disposes at the end of the scope', async () => {
    using device = open();
    let escaped: { disposed: boolean } | undefined;
    {
      using t = device.tensor([1, 2, 3], { dtype: 'f16' });
      escaped = t;
      expect(t.disposed).toBe(false);
    }
    expect(escaped.disposed).toBe(true);
  });

  it('garbage collection frees tensors that were never disposed', async () => {
    const gc = (globalThis as { gc?: () => void }).gc;
    expect(gc, 'tests run with --expose-gc').toBeTypeOf('function');
    using device = open();
    await device.synchronize();
    const before = device.memoryInfo().used;
    (() => {
      for (let i = 0; i < 8; i++) device.empty([1 << 18], 'f32');
    })();
    expect(device.memoryInfo().used - before).toBeGreaterThanOrEqual(8 << 20);
    for (let round = 0; round < 20 && device.memoryInfo().used > before; round++) {
      gc!();
      await new Promise((r) => setTimeout(r, 10));
      await device.synchronize();
    }
    expect(device.memoryInfo().used).toBe(before);
  });

  it('device.dispose() frees every tensor and later calls throw EDISPOSED', async () => {
    const device = open();
    const t = device.tensor([1, 2], { dtype: 'f32' });
    device.dispose();
    device.dispose();
    expect(device.disposed).toBe(true);
    expect(t.disposed).toBe(true);
    await expect(t.toArray()).rejects.toMatchObject({ code: 'EDISPOSED' });
    expect(() => device.empty([1], 'f32')).toThrow(MobaError);
    expect(() => device.tensor([1], { dtype: 'f32' })).toThrow(/disposed/);
    await expect(device.synchronize()).rejects.toMatchObject({ code: 'EDISPOSED' });
  });

  it('toArray() waits for queued work without blocking the event loop', async () => {
    using device = open();
    // Enough queued work to take several milliseconds on any backend.
    const n = device.backend === 'cuda' ? 2 ** 29 : 2 ** 24;
    using big = device.empty([n], 'f32');
    using small = device.tensor([1, 2, 3], { dtype: 'f32' });
    await device.synchronize();
    for (let i = 0; i < 10; i++) device.native.fill(big.buffer, n, 4, i);
    let ticks = 0;
    const timer = setInterval(() => ticks++, 0);
    const t0 = performance.now();
    const data = await small.toArray();
    const elapsed = performance.now() - t0;
    clearInterval(timer);
    expect(Array.from(data)).toEqual([1, 2, 3]);
    // The timer kept firing while the queued work ran.
    expect(elapsed).toBeGreaterThan(2);
    expect(ticks).toBeGreaterThan(1);
  });

  it('memoryInfo() reports total, free and used bytes', () => {
    using device = open();
    const m = device.memoryInfo();
    expect(m.total).toBeGreaterThan(0);
    expect(m.free).toBeGreaterThan(0);
    expect(m.free).toBeLessThanOrEqual(m.total * 1.01);
    expect(m.used).toBeGreaterThanOrEqual(0);
  });
}
