/**
 * Every public function answers bad arguments with a MobaError whose code and
 * message name the argument, the expected and the received value.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import {
  flashAttention,
  KVCache,
  MobaAttention,
  mobaAttention,
  MAX_TOP_K,
  mobaGate,
  openDevice,
  type Device,
  type Tensor,
} from '../lib/index.js';
import { cudaReason, cudaUsable } from './helpers/backends.js';
import { expectMobaError } from './helpers/errors.js';

function expectError(fn: () => unknown, code: string, message: RegExp | string): void {
  const e = expectMobaError(fn, code);
  if (typeof message === 'string') expect(e.message).toBe(message);
  else expect(e.message).toMatch(message);
}

describe('openDevice', () => {
  it('rejects unknown backends and bad indices', () => {
    expectError(() => openDevice({ backend: 'gpu' as never }), 'EINVAL',
      'Expected "auto", "cuda" or "cpu" for backend but received "gpu"');
    expectError(() => openDevice({ backend: 'cpu', index: -1 }), 'EINVAL',
      'Expected a non-negative integer for index but received -1');
    expectError(() => openDevice({ backend: 'cpu', index: 1.5 }), 'EINVAL',
      'Expected a non-negative integer for index but received 1.5');
    expectError(() => openDevice({ backend: 'cpu', index: 2 }), 'EINVAL',
      'Expected 0 for the CPU backend for index but received 2');
    expectError(() => openDevice({ backend: 'cuda', index: 2 ** 40 }), 'EINVAL',
      'Expected a device index of at most 2^20 for index but received 1099511627776');
    expectError(() => openDevice({ poisonOutputs: 'yes' as never }), 'EINVAL',
      'Expected a boolean for poisonOutputs but received "yes"');
    expectError(() => openDevice(null as never), 'EINVAL', 'Expected an object for options but received null');
  });

  it.skipIf(cudaUsable)('backend "cuda" without a usable GPU throws ENOCUDA with the reason', () => {
    expectError(() => openDevice({ backend: 'cuda' }), 'ENOCUDA', /^CUDA is not available: .+/);
    try {
      openDevice({ backend: 'cuda' });
    } catch (err) {
      expect((err as Error).message).toContain(cudaReason);
    }
    expect(openDevice().backend).toBe('cpu');
  });

  it.runIf(cudaUsable)('a CUDA index past the last device is EINVAL naming the range', () => {
    expectError(() => openDevice({ backend: 'cuda', index: 99 }), 'EINVAL', /^Expected a device index in \[0, \d+\] for index but received 99$/);
  });
});

describe('Device.tensor and Device.empty', () => {
  let device: Device;
  beforeAll(() => {
    device = openDevice({ backend: 'cpu' });
  });
  afterAll(() => device.dispose());

  it('validates dtype, data and shape', () => {
    expectError(() => device.tensor([1, 2], { dtype: 'f64' as never }), 'EINVAL',
      'Expected one of "bf16", "f16", "f32", "i32" for dtype but received "f64"');
    expectError(() => device.tensor([1, 2], undefined as never), 'EINVAL',
      'Expected an object with dtype and shape for options but received undefined');
    expectError(() => device.tensor([1, 2, 3], { dtype: 'f32', shape: [2, 2] }), 'EINVAL',
      'Expected a shape with 3 elements (the length of data) for shape but received [2, 2]');
    expectError(() => device.tensor([1, 'x' as never], { dtype: 'f32' }), 'EINVAL',
      'Expected a number for data[1] but received "x"');
    expectError(() => device.tensor([1.5], { dtype: 'i32' }), 'EINVAL',
      'Expected a 32-bit integer for data[0] but received 1.5');
    expectError(() => device.tensor(new Float32Array(2), { dtype: 'i32' }), 'EINVAL',
      'Expected an Int32Array or number[] for dtype "i32" for data but received Float32Array(2)');
    expectError(() => device.tensor(new Uint16Array(2), { dtype: 'f32' }), 'EINVAL',
      'Expected a Float32Array, Float64Array, number[] for dtype "f32" for data but received Uint16Array(2)');
    expectError(() => device.tensor('abc' as never, { dtype: 'f32' }), 'EINVAL', /for data but received "abc"$/);
    expectError(() => device.tensor(new ArrayBuffer(16) as never, { dtype: 'f32' }), 'EINVAL',
      /for data but received an ArrayBuffer$/);
    expectError(() => device.tensor(new Proxy(new Float32Array(4), {}), { dtype: 'f32', shape: [4] }), 'EINVAL',
      /^Expected a Float32Array, Float64Array, number\[\] for dtype "f32" for data but received/);
    expectError(() => device.tensor([1], { dtype: 'f32', shape: [1, -1] as never }), 'EINVAL',
      'Expected an array of non-negative integers for shape but received [1, -1]');
  });

  it('validates empty()', () => {
    expectError(() => device.empty([2, 2.5], 'f32'), 'EINVAL',
      'Expected an array of non-negative integers for shape but received [2, 2.5]');
    expectError(() => device.empty(4 as never, 'f32'), 'EINVAL',
      'Expected an array of non-negative integers for shape but received 4');
    expectError(() => device.empty([2], 'bf32' as never), 'EINVAL', /for dtype but received "bf32"$/);
    expectError(() => device.empty([2 ** 30, 2 ** 30], 'f32'), 'EINVAL', /^Expected at most 2\^46 elements for shape/);
  });

  it('reports allocation failure as EOOM, not a crash', () => {
    expectError(() => device.empty([2 ** 45], 'f32'), 'EOOM', /out of host memory/);
  });

  it('reads shapes and data once, and a tensor\'s fields cannot be changed afterwards', async () => {
    // Index getters answering differently on each read: the first answers are what is checked and kept.
    const changing = (first: number[], later: number[]): number[] => {
      const reads = first.map(() => 0);
      return new Proxy([...first], {
        get: (target, prop, receiver) => {
          const i = typeof prop === 'string' ? Number(prop) : NaN;
          if (Number.isInteger(i) && i >= 0 && i < first.length) return reads[i]!++ === 0 ? first[i] : later[i];
          return Reflect.get(target, prop, receiver);
        },
      });
    };
    using a = device.empty(changing([2, 3], [-1, 0.5]), 'f32');
    expect(a.shape).toEqual([2, 3]);
    using b = device.tensor([1, 2, 3, 4], { dtype: 'f32', shape: changing([2, 2], [8, 0.5]) });
    expect(b.shape).toEqual([2, 2]);
    expectError(() => device.empty(changing([-1, 2], [1, 2]), 'f32'), 'EINVAL',
      'Expected an array of non-negative integers for shape but received [-1, 2]');
    // Dimensions whose product is NaN (Infinity x 0).
    expectError(() => device.empty([1e200, 1e200, 0], 'f32'), 'EINVAL', /^Expected at most 2\^46 elements for shape/);
    // Elements are read by index, not through the array's iterator.
    const data = [1, 2, 3];
    Object.defineProperty(data, Symbol.iterator, { value: function* () { yield 'x'; yield 'y'; yield 7; } });
    using c = device.tensor(data, { dtype: 'f32' });
    expect(Array.from(await c.toArray())).toEqual([1, 2, 3]);
    const fields = c as unknown as Record<string, unknown>;
    for (const [field, value] of [['shape', [1, 1, 3]], ['dtype', 'i32'], ['device', {}], ['buffer', null]] as const) {
      expect(() => { fields[field] = value; }, field).toThrow(TypeError);
    }
    expect([c.shape, c.dtype]).toEqual([[3], 'f32']);
  });
});

describe('op arguments', () => {
  let device: Device;
  let other: Device;
  let q: Tensor;
  let k: Tensor;
  let v: Tensor;
  const cu = new Int32Array([0, 5, 12]);
  beforeAll(() => {
    device = openDevice({ backend: 'cpu' });
    other = openDevice({ backend: 'cpu' });
    q = device.tensor(new Float32Array(12 * 4 * 8).fill(0.5), { dtype: 'bf16', shape: [12, 4, 8] });
    k = device.tensor(new Float32Array(12 * 2 * 8).fill(0.25), { dtype: 'bf16', shape: [12, 2, 8] });
    v = device.tensor(new Float32Array(12 * 2 * 8).fill(1), { dtype: 'bf16', shape: [12, 2, 8] });
  });
  afterAll(() => {
    device.dispose();
    other.dispose();
  });

  const ops = {
    mobaGate: (qq: unknown, kk: unknown, _vv: unknown, o: object) => mobaGate(qq as Tensor, kk as Tensor, o as never),
    mobaAttention: (qq: unknown, kk: unknown, vv: unknown, o: object) =>
      mobaAttention(qq as Tensor, kk as Tensor, vv as Tensor, o as never),
    flashAttention: (qq: unknown, kk: unknown, vv: unknown, o: object) =>
      flashAttention(qq as Tensor, kk as Tensor, vv as Tensor, o as never),
  };
  const base = { cuSeqlensQ: cu, chunkSize: 4, topK: 2 };

  for (const [name, op] of Object.entries(ops)) {
    describe(name, () => {
      it('checks q and k', () => {
        expectError(() => op(undefined, k, v, base), 'EINVAL', 'Expected a Tensor for q but received undefined');
        expectError(() => op(q, [1, 2], v, base), 'EINVAL', 'Expected a Tensor for k but received [1, 2]');
        using qf = device.tensor(new Float32Array(12 * 4 * 8), { dtype: 'f32', shape: [12, 4, 8] });
        expectError(() => op(qf, k, v, base), 'EINVAL', 'Expected "bf16" or "f16" for q.dtype but received "f32"');
        using q2 = device.tensor(new Float32Array(12 * 32), { dtype: 'bf16', shape: [12, 32] });
        expectError(() => op(q2, k, v, base), 'EINVAL',
          'Expected a 3-D shape [totalQ, numQHeads, headDim] for q.shape but received [12, 32]');
        using kh = device.tensor(new Float32Array(12 * 2 * 4), { dtype: 'bf16', shape: [12, 2, 4] });
        expectError(() => op(q, kh, v, base), 'EINVAL', 'Expected the head dim of q (8) for k.shape[2] but received 4');
        using k3 = device.tensor(new Float32Array(12 * 3 * 8), { dtype: 'bf16', shape: [12, 3, 8] });
        expectError(() => op(q, k3, v, base), 'EINVAL',
          'Expected a positive number of KV heads dividing the 4 query heads of q for k.shape[1] but received 3');
        using q0 = device.tensor(new Float32Array(0), { dtype: 'bf16', shape: [12, 0, 8] });
        expectError(() => op(q0, k, v, base), 'EINVAL', 'Expected a number of query heads in [1, 4096] for q.shape[1] but received 0');
        using qw = device.tensor(new Float32Array(2 * 1 * 1032), { dtype: 'bf16', shape: [2, 1, 1032] });
        using kw = device.tensor(new Float32Array(2 * 1 * 1032), { dtype: 'bf16', shape: [2, 1, 1032] });
        expectError(() => op(qw, kw, kw, base), 'EINVAL', 'Expected a head dim in [1, 1024] for q.shape[2] but received 1032');
        if (name !== 'flashAttention') {
          expectError(() => op(q, k, v, { ...base, chunkSize: 2 ** 30 + 1 }), 'EINVAL',
            'Expected a positive integer <= 1073741824 for chunkSize but received 1073741825');
        }
        using kf = device.tensor(new Float32Array(12 * 2 * 8), { dtype: 'f16', shape: [12, 2, 8] });
        expectError(() => op(q, kf, v, base), 'EINVAL', 'Expected the dtype of q ("bf16") for k.dtype but received "f16"');
        using ko = other.tensor(new Float32Array(12 * 2 * 8), { dtype: 'bf16', shape: [12, 2, 8] });
        expectError(() => op(q, ko, v, base), 'EINVAL',
          /^Expected the device of q \(Device\(cpu: .*, #(\d+)\)\) for k.device but received "Device\(cpu: .*, #(?!\1\))\d+\)"$/);
      });

      it('checks cuSeqlensQ and cuSeqlensK', () => {
        expectError(() => op(q, k, v, { ...base, cuSeqlensQ: [0, 12] }), 'EINVAL',
          'Expected an Int32Array of prefix sums [batch+1] for cuSeqlensQ but received [0, 12]');
        expectError(() => op(q, k, v, { ...base, cuSeqlensQ: new Int32Array([12]) }), 'EINVAL',
          'Expected at least 2 (batch + 1 with batch >= 1) for cuSeqlensQ.length but received 1');
        expectError(() => op(q, k, v, { ...base, cuSeqlensQ: new Int32Array([1, 12]) }), 'EINVAL',
          'Expected 0 for cuSeqlensQ[0] but received 1');
        expectError(() => op(q, k, v, { ...base, cuSeqlensQ: new Int32Array([0, 7, 5, 12]) }), 'EINVAL',
          'Expected a value >= cuSeqlensQ[1] (7) for cuSeqlensQ[2] but received 5');
        expectError(() => op(q, k, v, { ...base, cuSeqlensQ: new Int32Array([0, 5, 11]) }), 'EINVAL',
          'Expected q.shape[0] (12) for cuSeqlensQ[2] but received 11');
        expectError(() => op(q, k, v, { ...base, cuSeqlensK: new Int32Array([0, 12]) }), 'EINVAL',
          'Expected 3 (the length of cuSeqlensQ) for cuSeqlensK.length but received 2');
        expectError(() => op(q, k, v, { ...base, cuSeqlensK: new Int32Array([0, 4, 12]) }), 'EINVAL',
          'Expected at least its query length (5): queries are the last positions of a sequence for the key length of sequence 0 (cuSeqlensK) but received 4');
        expectError(() => op(q, k, v, { ...base, cuSeqlensK: new Int32Array([0, 6, 13]) }), 'EINVAL',
          'Expected k.shape[0] (12) for cuSeqlensK[2] but received 13');
        expectError(() => op(q, k, v, null as never), 'EINVAL', 'Expected an options object for options but received null');
      });

      if (name !== 'flashAttention') {
        it('checks chunkSize and topK', () => {
          expectError(() => op(q, k, v, { ...base, chunkSize: 0 }), 'EINVAL',
            'Expected a positive integer <= 1073741824 for chunkSize but received 0');
          expectError(() => op(q, k, v, { ...base, chunkSize: 2.5 }), 'EINVAL',
            'Expected a positive integer <= 1073741824 for chunkSize but received 2.5');
          expectError(() => op(q, k, v, { ...base, chunkSize: undefined }), 'EINVAL',
            'Expected a positive integer <= 1073741824 for chunkSize but received undefined');
          expectError(() => op(q, k, v, { ...base, topK: 0 }), 'EINVAL',
            'Expected a positive integer <= 256 for topK but received 0');
          expectError(() => op(q, k, v, { ...base, topK: 257 }), 'EINVAL',
            'Expected a positive integer <= 256 for topK but received 257');
          expectError(() => op(q, k, v, { ...base, topK: '3' }), 'EINVAL',
            'Expected a positive integer <= 256 for topK but received "3"');
        });
      }

      if (name === 'mobaAttention') {
        it('refuses more (key block, query head) pairs than the sparse lists index, dense attention aside', () => {
          // One query over 2^19 keys in blocks of 1, 4096 query heads: 2^31 pairs.
          const n = 2 ** 19;
          using qq = device.empty([1, 4096, 8], 'bf16');
          using kk = device.empty([n, 1, 8], 'bf16');
          const opts = { cuSeqlensQ: new Int32Array([0, 1]), cuSeqlensK: new Int32Array([0, n]), chunkSize: 1, topK: 2 };
          expectError(() => op(qq, kk, kk, opts), 'EINVAL',
            'Expected (key blocks of all sequences) * numQHeads below 2^31 - 1 but received 2147483648 (524288 * 4096); ' +
              'use a larger chunkSize or split the batch');
        });
      }

      if (name !== 'mobaGate') {
        it('checks v, softmaxScale, returnLse and causal', () => {
          expectError(() => op(q, k, null, base), 'EINVAL', 'Expected a Tensor for v but received null');
          using v2 = device.tensor(new Float32Array(11 * 2 * 8), { dtype: 'bf16', shape: [11, 2, 8] });
          expectError(() => op(q, k, v2, base), 'EINVAL', 'Expected the shape of k [12, 2, 8] for v.shape but received [11, 2, 8]');
          expectError(() => op(q, k, v, { ...base, softmaxScale: NaN }), 'EINVAL',
            'Expected a finite number for softmaxScale but received NaN');
          expectError(() => op(q, k, v, { ...base, softmaxScale: -1e39 }), 'EINVAL',
            'Expected a number of magnitude at most 2.35e+38 for softmaxScale but received -1e+39');
          expectError(() => op(q, k, v, { ...base, softmaxScale: 3e38 }), 'EINVAL',
            'Expected a number of magnitude at most 2.35e+38 for softmaxScale but received 3e+38');
          expectError(() => op(q, k, v, { ...base, returnLse: 1 }), 'EINVAL',
            'Expected a boolean for returnLse but received 1');
          if (name === 'flashAttention') {
            expectError(() => op(q, k, v, { ...base, causal: 'yes' }), 'EINVAL',
              'Expected a boolean for causal but received "yes"');
          }
        });
      }

      it('rejects disposed tensors with EDISPOSED', () => {
        const qd = device.tensor(new Float32Array(12 * 4 * 8), { dtype: 'bf16', shape: [12, 4, 8] });
        qd.dispose();
        expectError(() => op(qd, k, v, base), 'EDISPOSED', 'Cannot use q: the tensor bf16[12, 4, 8] has been disposed');
      });
    });
  }

  it('rejects head dims without a CUDA kernel on CUDA devices', () => {
    if (!cudaUsable) return;
    using gpu = openDevice({ backend: 'cuda' });
    using q96 = gpu.tensor(new Float32Array(4 * 96).fill(1), { dtype: 'bf16', shape: [4, 1, 96] });
    expectError(() => flashAttention(q96, q96, q96, { cuSeqlensQ: new Int32Array([0, 4]) }), 'EINVAL',
      'Expected a head dim of 64 or 128 on CUDA for q.shape[2] but received 96');
  });
});

describe('revoked Proxies', () => {
  // Every operation on a revoked Proxy throws a TypeError, Array.isArray and
  // instanceof included: the checks must name the argument instead.
  it('are EINVAL naming the argument wherever one is passed', () => {
    using device = openDevice({ backend: 'cpu' });
    using q = device.tensor(new Float32Array(2 * 2 * 8).fill(0.5), { dtype: 'bf16', shape: [2, 2, 8] });
    using cache = new KVCache(device, { numLayers: 1, numPages: 4, pageSize: 4, numKVHeads: 1, headDim: 8, dtype: 'bf16' });
    using layer = new MobaAttention(device, { numQHeads: 2, numKVHeads: 1, headDim: 8, chunkSize: 4, topK: 2, dtype: 'bf16' });
    const seq = cache.addSequence();
    using plan = cache.plan([{ seq, newTokens: 2 }]);
    const revoked = (): never => {
      const { proxy, revoke } = Proxy.revocable({}, {});
      revoke();
      return proxy as never;
    };
    const cu = new Int32Array([0, 2]);
    const cases: [string, () => unknown][] = [
      ['options', () => openDevice(revoked())],
      ['data', () => device.tensor(revoked(), { dtype: 'bf16' })],
      ['options', () => device.tensor([1], revoked())],
      ['shape', () => device.tensor([1], { dtype: 'bf16', shape: revoked() })],
      ['shape', () => device.empty(revoked(), 'bf16')],
      ['dtype', () => device.empty([1], revoked())],
      ['q', () => mobaGate(revoked(), q, { cuSeqlensQ: cu, chunkSize: 4, topK: 2 })],
      ['k', () => mobaAttention(q, revoked(), q, { cuSeqlensQ: cu, chunkSize: 4, topK: 2 })],
      ['v', () => flashAttention(q, q, revoked(), { cuSeqlensQ: cu })],
      ['options', () => flashAttention(q, q, q, revoked())],
      ['cuSeqlensQ', () => mobaGate(q, q, { cuSeqlensQ: revoked(), chunkSize: 4, topK: 2 })],
      ['chunkSize', () => mobaGate(q, q, { cuSeqlensQ: cu, chunkSize: revoked(), topK: 2 })],
      ['device', () => new KVCache(revoked(), { numLayers: 1, numPages: 4, pageSize: 4, numKVHeads: 1, headDim: 8, dtype: 'bf16' })],
      ['options', () => new KVCache(device, revoked())],
      ['options', () => new MobaAttention(device, revoked())],
      ['batch', () => cache.plan(revoked())],
      ['batch[0]', () => cache.plan([revoked()])],
      ['options', () => cache.plan([{ seq, newTokens: 1 }], revoked())],
      ['cache', () => layer.attend(revoked(), 0, plan, q)],
      ['plan', () => layer.attend(cache, 0, revoked(), q)],
      ['q', () => layer.attend(cache, 0, plan, revoked())],
    ];
    for (const [arg, fn] of cases) {
      const e = expectMobaError(fn, 'EINVAL');
      expect(e.message, arg).toMatch(new RegExp(` for ${arg.replace(/[[\]]/g, '\\$&')} but received a revoked Proxy$`));
    }
  });
});

describe('native surface re-checks', () => {
  it('refuses buffers smaller than the shapes claim, without crashing', () => {
    using device = openDevice({ backend: 'cpu' });
    const native = device.native;
    using small = device.empty([4], 'bf16');
    using out = device.empty([64], 'i32');
    expectError(
      () => native.mobaGate(small.buffer, small.buffer, out.buffer, new Int32Array([0, 8]), new Int32Array([0, 8]), 0, 2, 1, 64, 4, 2),
      'EINVAL', /^Expected at least 2048 bytes for q but received 8$/,
    );
    expectError(
      () => native.attention(small.buffer, small.buffer, small.buffer, small.buffer, null, new Int32Array([0, 3, 1]),
        new Int32Array([0, 3, 1]), 0, 1, 1, 1, 1, true, 0, 0),
      'EINVAL', 'Expected monotone cuSeqlensQ and cuSeqlensK',
    );
    expectError(() => native.read(small.buffer, 2, 100), 'EINVAL', /^Expected at least 400 bytes for buffer/);
  });

  it('refuses topK past MAX_TOP_K on every backend, as the public functions do, and accepts MAX_TOP_K itself', async () => {
    for (const backend of cudaUsable ? (['cpu', 'cuda'] as const) : (['cpu'] as const)) {
      using device = openDevice({ backend });
      const native = device.native;
      // 8 keys in blocks of 2: row r of the one sequence keeps every block up to its own.
      const values = Float32Array.from({ length: 8 * 64 }, (_, i) => Math.sin(i * 0.37));
      using q = device.tensor(values, { dtype: 'bf16', shape: [8, 1, 64] });
      using out = device.empty([8 * (MAX_TOP_K + 1)], 'i32');
      const cu = new Int32Array([0, 8]);
      expectError(() => native.mobaGate(q.buffer, q.buffer, out.buffer, cu, cu, 0, 1, 1, 64, 2, MAX_TOP_K + 1), 'EINVAL',
        `Expected an integer in [1, ${MAX_TOP_K}] for topK but received ${MAX_TOP_K + 1}.000000`);
      native.mobaGate(q.buffer, q.buffer, out.buffer, cu, cu, 0, 1, 1, 64, 2, MAX_TOP_K);
      const got = ((await out.toArray()) as Int32Array).subarray(0, 8 * MAX_TOP_K);
      for (let r = 0; r < 8; r++) {
        const row = Array.from(got.subarray(r * MAX_TOP_K, (r + 1) * MAX_TOP_K));
        const own = r >> 1;
        expect(row.slice(0, own + 1), `${backend} row ${r}`).toEqual(Array.from({ length: own + 1 }, (_, j) => j));
        expect(row.slice(own + 1).every((x) => x === -1), `${backend} row ${r} padding`).toBe(true);
      }
    }
  });

  it('accepts only buffers the addon made as buffer arguments', () => {
    using device = openDevice({ backend: 'cpu' });
    const native = device.native;
    using t = device.empty([16], 'f32');
    const NativeBuffer = Object.getPrototypeOf(t.buffer).constructor as new () => typeof t.buffer;
    const fakes: unknown[] = [{}, { bytes: 64 }, Object.create(Object.getPrototypeOf(t.buffer)), new NativeBuffer(), native, 7, null];
    for (const fake of fakes) {
      expectError(() => native.fill(fake as typeof t.buffer, 4, 4, 0), 'EINVAL', 'Expected a native buffer for buffer');
    }
    native.fill(t.buffer, 16, 4, 0x3f800000);
  });
});
