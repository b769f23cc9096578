/**
 * The native surface called directly (device.native.*), as no user of the
 * public API can: its re-checks must keep any call from crashing the process.
 * Receivers of the accessors, sizes whose product overflows 64 bits, typed
 * arrays on SharedArrayBuffers, host memory running out on the JavaScript
 * thread, the CPU decode's memory per thread, and attention over the pages
 * (keyRows). CPU backend (attention over the pages on CUDA too, where it
 * exists); the memory cases run in a child process whose address space is
 * capped (prlimit) after it has set up.
 */
import { execFileSync } from 'node:child_process';

import { expect, it } from 'vitest';

import { openDevice } from '../lib/index.js';
import { cudaUsable } from './helpers/backends.js';
import { expectCleanExit } from './helpers/child-process.js';
import { expectMobaError } from './helpers/errors.js';
import { randn, rngFor, roundToBf16 } from './helpers/random.js';

let prlimitReason = '';
try {
  execFileSync('prlimit', ['--version'], { stdio: 'ignore' });
} catch (err) {
  prlimitReason = `prlimit is not available here (${String(err)})`;
  console.warn(`[moba-cuda] skipping the out-of-memory cases of test/native-surface.test.ts: ${prlimitReason}`);
}

it('the native classes refuse another object as the receiver of their accessors and methods', () => {
  using device = openDevice({ backend: 'cpu' });
  const n = device.native;
  const b = n.alloc(64);
  const getter = (proto: object, name: string): ((this: unknown) => unknown) =>
    Object.getOwnPropertyDescriptor(proto, name)!.get! as (this: unknown) => unknown;
  for (const name of ['kind', 'name', 'computeCapability']) {
    expect(expectMobaError(() => getter(Object.getPrototypeOf(n), name).call(b), 'EINVAL').message)
      .toBe('Expected a NativeDevice as the receiver');
  }
  const method = (proto: object, name: string): ((this: unknown) => unknown) =>
    Object.getOwnPropertyDescriptor(proto, name)!.value as (this: unknown) => unknown;
  for (const name of ['bytes', 'disposed', 'dispose']) {
    expect(() => method(Object.getPrototypeOf(b), name).call(n), name).toThrow(TypeError);
  }
  // Constructed as one class with the other's prototype.
  const ND = n.constructor as new (...args: unknown[]) => object;
  const NB = b.constructor as new (...args: unknown[]) => object;
  const devAsBuf = Reflect.construct(ND, ['cpu', 0], NB) as { bytes(): number };
  expect(() => devAsBuf.bytes()).toThrow(TypeError);
  const bufAsDev = Reflect.construct(NB, [], ND) as { kind: string };
  expect(expectMobaError(() => bufAsDev.kind, 'EINVAL').message).toBe('Expected a NativeDevice as the receiver');
  // The real objects still answer.
  expect([n.kind, b.bytes(), b.disposed()]).toEqual(['cpu', 64, false]);
  b.dispose();
  expect(b.disposed()).toBe(true);
});

it('a KV cache geometry whose byte size overflows 64 bits is EINVAL, not a small pool that passes the size check', () => {
  using device = openDevice({ backend: 'cpu' });
  const n = device.native;
  // 2^20 pages x (2^10 layers x 2 x 2^10 heads x 2^14 tokens x 2^8 dims) x 2 bytes = 2^64.
  const [numPages, numLayers, heads, pageSize, D] = [2 ** 20, 2 ** 10, 2 ** 10, 2 ** 14, 2 ** 8];
  const pool = n.alloc(64);
  const sums = n.alloc(64);
  const k = n.alloc(heads * D * 2);
  const meta = n.alloc(6 * 4);
  n.write(meta, new Int32Array([1000, 0, 0, 1, 1, -1]), 3);
  const geometry = /^Expected a KV cache geometry of at most 2\^50 bytes .* but received a larger one$/;
  expect(expectMobaError(() => n.kvGather(pool, k, k, meta, 0, 1, 1, 0, numPages, numLayers, 0, heads, pageSize, D, 1),
    'EINVAL').message).toMatch(geometry);
  expect(expectMobaError(() => n.kvAppend(pool, sums, k, k, meta, 0, 1, 1, 0, numPages, numLayers, 0, heads, pageSize, D, 1),
    'EINVAL').message).toMatch(geometry);
  for (const x of [pool, sums, k, meta]) x.dispose();
});

it('attention over the pages (keyRows): short buffers and oversized geometries are EINVAL; offsets outside the pool read its last row', async () => {
  for (const backend of cudaUsable ? (['cpu', 'cuda'] as const) : (['cpu'] as const)) {
    using device = openDevice({ backend });
    const n = device.native;
    const [numPages, pageSize, D] = [4, 4, 64];
    const pageStride = 2 * pageSize * D;  // one layer, one KV head: K then V
    const lastRow = (numPages - 1) * pageStride + (pageSize - 1) * D;
    const rng = rngFor(`keyRows ${backend}`);
    const poolData = roundToBf16(randn(numPages * pageStride, rng));
    const pool = n.alloc(poolData.length * 2);
    n.write(pool, poolData, 0);
    // Six keys: in the pool, negative, far past it, the last row, and two more.
    const offsets = [0, 2 * D, -5, 2 ** 40, lastRow, pageStride + D];
    const readAt = offsets.map((o) => (o < 0 || o > lastRow ? lastRow : o));
    const keyRows = n.alloc(offsets.length * 8);
    n.write(keyRows, new Int32Array(offsets.flatMap((o) => [Number(BigInt.asUintN(32, BigInt(o))), Number(BigInt.asIntN(32, BigInt(o) >> 32n))])), 3);
    const q = n.alloc(2 * D * 2);
    n.write(q, roundToBf16(randn(2 * D, rng)), 0);
    const cuQ = Int32Array.from([0, 2]);
    const cuK = Int32Array.from([0, offsets.length]);
    // The same keys and values, copied out into contiguous rows.
    const kRows = new Float32Array(offsets.length * D);
    const vRows = new Float32Array(offsets.length * D);
    readAt.forEach((o, t) => {
      kRows.set(poolData.subarray(o, o + D), t * D);
      vRows.set(poolData.subarray(o + pageSize * D, o + pageSize * D + D), t * D);
    });
    const k = n.alloc(kRows.length * 2);
    const v = n.alloc(vRows.length * 2);
    n.write(k, kRows, 0);
    n.write(v, vRows, 0);
    const paged = n.alloc(2 * D * 2);
    const contiguous = n.alloc(2 * D * 2);
    n.attention(q, pool, pool, paged, null, cuQ, cuK, 0, 1, 1, D, 0.125, false, 0, 0, keyRows, numPages, 1, 0, pageSize);
    n.attention(q, k, v, contiguous, null, cuQ, cuK, 0, 1, 1, D, 0.125, false, 0, 0);
    const got = await n.read(paged, 0, 2 * D);
    expect(got.every(Number.isFinite), backend).toBe(true);
    expect(Array.from(got), backend).toEqual(Array.from(await n.read(contiguous, 0, 2 * D)));
    // A keyRows buffer short of one int64 per key, a pool short of the geometry, a geometry past 2^50 bytes.
    const short = n.alloc(offsets.length * 8 - 8);
    expect(expectMobaError(() => n.attention(q, pool, pool, paged, null, cuQ, cuK, 0, 1, 1, D, 0.125, false, 0, 0,
      short, numPages, 1, 0, pageSize), 'EINVAL').message, backend).toMatch(/keyRows/);
    expect(expectMobaError(() => n.attention(q, pool, pool, paged, null, cuQ, cuK, 0, 1, 1, D, 0.125, false, 0, 0,
      keyRows, numPages + 1, 1, 0, pageSize), 'EINVAL').message, backend).toMatch(/\bk\b/);
    expect(expectMobaError(() => n.attention(q, pool, pool, paged, null, cuQ, cuK, 0, 1, 1, D, 0.125, false, 0, 0,
      keyRows, 2 ** 30, 2 ** 10, 0, 2 ** 14), 'EINVAL').message, backend).toMatch(/at most 2\^50 bytes/);
    const meta = n.alloc(6 * 4);
    n.write(meta, new Int32Array([0, 0, 0, 1, 1, -1]), 3);
    expect(expectMobaError(() => n.kvKeyRows(pool, short, meta, 0, 1, offsets.length, 0, numPages, 1, 0, 1, pageSize, D, 1),
      'EINVAL').message, backend).toMatch(/keyRows/);
    for (const x of [pool, keyRows, q, k, v, paged, contiguous, short, meta]) x.dispose();
  }
});

it('typed arrays on a SharedArrayBuffer: uploads read them, and cuSeqlens are taken as copies', async () => {
  using device = openDevice({ backend: 'cpu' });
  const n = device.native;
  const b = n.alloc(16);
  const data = new Float32Array(new SharedArrayBuffer(16));
  data.set([1.5, -2, 3.25, 0.5]);
  n.write(b, data, 2);
  expect(Array.from((await n.read(b, 2, 4)) as Float32Array)).toEqual([1.5, -2, 3.25, 0.5]);
  b.dispose();
  // A gate whose cuSeqlens live on shared memory runs on what they held at the call
  // (another thread may write them at any time; the op checks and keeps copies).
  const cu = new Int32Array(new SharedArrayBuffer(8));
  cu.set([0, 4]);
  const q = device.tensor(new Float32Array(4 * 8).fill(1), { dtype: 'bf16', shape: [4, 1, 8] });
  const out = device.empty([1, 4, 1], 'i32');
  n.mobaGate(q.buffer, q.buffer, out.buffer, cu, cu, 0, 1, 1, 8, 2, 1);
  cu[1] = 2 ** 26; // changed after the call: the queued op must not see it
  expect(Array.from(await out.toArray())).toEqual([0, 0, 1, 1]);
  q.dispose();
  out.dispose();
});

// Metadata is device memory the host cannot check: the kernels bound what it
// can make them do. Run on every backend there is.
const backends: ('cpu' | 'cuda')[] = cudaUsable ? ['cpu', 'cuda'] : ['cpu'];
for (const backend of backends) {
  it(`${backend}: append segments claiming whole-batch key-sum pieces sum only their own block (no quadratic work)`, async () => {
    using device = openDevice({ backend, poisonOutputs: true });
    const n = device.native;
    const [pages, pageSize, D] = [256, 4, 64];
    const rng = rngFor(`${backend} piece bound`);
    const k = roundToBf16(randn(pages * pageSize * D, rng));
    using kt = device.tensor(k, { dtype: 'bf16', shape: [pages * pageSize, 1, D] });
    using pool = device.empty([pages, 1, 2, 1, pageSize, D], 'bf16');
    using sums = device.empty([pages, 1, 1, D], 'f32');
    // Segment i: page i, its pageSize rows, a new piece (no carry) that claims all segments after it.
    const meta = new Int32Array(pages * 6);
    for (let i = 0; i < pages; i++) meta.set([i, 0, i * pageSize, pageSize, pages, -1], i * 6);
    using mt = device.tensor(meta, { dtype: 'i32' });
    n.kvAppend(pool.buffer, sums.buffer, kt.buffer, kt.buffer, mt.buffer, 0, pages, pages * pageSize, 0, pages, 1, 0, 1, pageSize, D, 1);
    const got = (await sums.toArray()) as Float32Array;
    let worst = 0;
    for (let i = 0; i < pages; i++) {
      for (let d = 0; d < D; d++) {
        let want = 0;
        for (let t = 0; t < pageSize; t++) want += k[(i * pageSize + t) * D + d]!;
        worst = Math.max(worst, Math.abs(got[i * D + d]! - want));
      }
    }
    expect(worst, 'largest key-sum error').toBeLessThan(1e-4);
  });

  it(`${backend}: attention and decode refuse a softmaxScale that overflows a float`, () => {
    using device = openDevice({ backend });
    const n = device.native;
    const b = n.alloc(1 << 16);
    const cu = new Int32Array([0, 4]);
    const message = /^Expected a number of magnitude at most 2\.35e\+38 for softmaxScale but received /;
    for (const scale of [1e300, -3e38, NaN, Infinity]) {
      expect(expectMobaError(() => n.attention(b, b, b, b, null, cu, cu, 0, 1, 1, 64, scale, true, 0, 0), 'EINVAL').message)
        .toMatch(message);
      expect(expectMobaError(() => n.decodeAttention(b, null, b, b, b, 0, 1, 1, 1, 1, 1, 4, 4, scale,
        0, 0, 0, 0, 1, 1, 0, 1, 64, 64, 1), 'EINVAL').message).toMatch(message);
    }
    b.dispose();
  });

  it(`${backend}: decode refuses a maxKvLen whose last block would end past 2^31`, () => {
    using device = openDevice({ backend });
    const n = device.native;
    const q = n.alloc(64 * 2);
    const pool = n.alloc(2 * 64 * 2 * 64);
    const sums = n.alloc(64 * 4);
    const meta = n.alloc(64);
    for (const [policy, chunk, limit] of [[0, 0, 2 ** 31 - 1 - 64], [1, 2 ** 20, 2 ** 31 - 1 - 2 ** 20]] as const) {
      expect(expectMobaError(() => n.decodeAttention(q, null, pool, sums, meta, 0, 1, 1, 1, 1, 1, limit + 1, limit + 1, 0.125,
        policy, chunk, 2, 0, 1, 1, 0, 1, 64, 64, 1), 'EINVAL').message).toBe(`Expected maxKvLen at most ${limit} but received ${limit + 1}`);
    }
    for (const b of [q, pool, sums, meta]) b.dispose();
  });
}

// Caps the child's address space at its present size plus `headroomMiB`.
// The capped cases run with one malloc arena: glibc gives each new thread
// that allocates its own arena, reserving 64 MiB of address space, up to
// 8 per core, so on a many-core host the threads of Node.js and V8 that
// first allocate after the cap (GC helpers, the libuv pool) could take the
// headroom meant for the op under test, and V8 then dies out of memory
// instead of the op failing with EOOM. One arena makes the room the op
// gets the same on any host.
const cappedEnv = { MALLOC_ARENA_MAX: '1' };

const capAddressSpace = (headroomMiB: number): string => `
  const { execFileSync } = await import('node:child_process');
  const { readFileSync } = await import('node:fs');
  const vmKiB = Number(/VmSize:\\s+(\\d+)/.exec(readFileSync('/proc/self/status', 'utf8'))[1]);
  execFileSync('prlimit', ['--pid', String(process.pid), '--as=' + (vmKiB * 1024 + ${headroomMiB} * 2 ** 20)]);`;

it.skipIf(prlimitReason !== '')('CPU decode over a 1 GiB pool with the address space capped 512 MiB above its start: keys a tile at a time, not the whole sequence per thread', () => {
  // One sequence of all the pool's 2^25 tokens (never written: zero keys and
  // values). Widening it whole would take 1 GiB of fp32 keys and as much of
  // values per thread.
  expectCleanExit(`
    const d = openDevice({ backend: 'cpu' });
    const n = d.native;
    const [pageSize, numPages, D, Hq] = [2 ** 20, 32, 8, 2];
    const pool = n.alloc(numPages * 2 * pageSize * D * 2);
    const sums = n.alloc(numPages * D * 4);
    const kvLen = numPages * pageSize;
    const info = new Int32Array(5 + numPages);
    info.set([0, 1, kvLen, 0, numPages]);
    for (let i = 0; i < numPages; i++) info[5 + i] = i;
    const meta = n.alloc(info.length * 4);
    n.write(meta, info, 3);
    const q = n.alloc(Hq * D * 2);
    n.fill(q, Hq * D, 2, 0x3f80);
    await n.synchronize();
    ${capAddressSpace(512)}
    const out = n.decodeAttention(q, null, pool, sums, meta, 0, 1, numPages, 1, Hq, 1, kvLen, kvLen, 0.35, 0, 0, 0,
      0, numPages, 1, 0, 1, pageSize, D, 1);
    const o = Array.from(await n.read(out, 0, Hq * D));
    if (!o.every((x) => x === 0)) throw new Error('expected zeros (zero values) but got ' + o);`, cappedEnv);
});

it.skipIf(prlimitReason !== '')('out of host memory staging an upload on the JavaScript thread is EOOM, not an abort', () => {
  expectCleanExit(`
    const d = openDevice({ backend: 'cpu' });
    const n = d.native;
    const bytes = 256 * 2 ** 20;
    const target = n.alloc(bytes);
    const data = new Float32Array(bytes / 4);
    await n.synchronize();
    // Staging takes 256 MiB; the rest of the process keeps 192 MiB of room:
    // execFileSync still allocates while the cap lands (with 64 MiB of room
    // it aborted there under load).
    ${capAddressSpace(192)}
    let code = 'no error';
    try { n.write(target, data, 2); } catch (e) { code = e.code; }
    if (code !== 'EOOM') throw new Error('expected EOOM from write(), got ' + code);`, cappedEnv);
});
