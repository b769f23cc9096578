/**
 * The MoBA gate (mobaGate), written once and run on every backend: indices
 * against the float64 reference on fresh random inputs over the grid of
 * batch sizes, lengths, chunk sizes, topK, GQA ratios, head dims, dtypes and
 * chunked queries; NaN/Inf inputs; argument errors. On CUDA also: identical
 * indices to the CPU backend, and the CSR lists the sparse attention uses.
 *
 * Near-ties: the device computes fp32 scores, the reference float64 ones, so
 * a device choice may differ from the reference only where the float64 scores
 * of the blocks involved are closer than the fp32 error bound (scoreTol).
 */
import { expect, it } from 'vitest';

import { mobaGate, openDevice, reference, type Device, type Tensor } from '../../lib/index.js';
import { expectMobaError } from './errors.js';
import { lengthsOf, randn, randomSeqlens, reportSeedOnFailure, rngFor, roundToBf16, roundToF16, shuffle, type Rng } from './random.js';

type Dtype = 'bf16' | 'f16';

export interface GateCase {
  dtype: Dtype;
  cuQ: Int32Array;
  cuK: Int32Array;
  numQHeads: number;
  numKVHeads: number;
  headDim: number;
  chunkSize: number;
  topK: number;
  q: Float32Array;
  k: Float32Array;
}

function roundTo(x: Float32Array, dtype: Dtype): Float32Array {
  return dtype === 'bf16' ? roundToBf16(x) : roundToF16(x);
}

/** Random lengths; chunked: each sequence's queries are its last Lq <= Lk positions. */
function makeCase(
  rng: Rng,
  o: { dtype: Dtype; batch: number; maxLen: number; group: number; numKVHeads: number; headDim: number; chunkSize: number; topK: number; chunked: boolean },
): GateCase {
  const cuK = randomSeqlens(o.batch, o.maxLen, rng);
  const lk = lengthsOf(cuK);
  const cuQ = new Int32Array(o.batch + 1);
  for (let b = 0; b < o.batch; b++) {
    const lq = o.chunked ? (rng.next() < 0.25 ? 1 : rng.int(1, lk[b]!)) : lk[b]!;
    cuQ[b + 1] = cuQ[b]! + lq;
  }
  const numQHeads = o.numKVHeads * o.group;
  const q = roundTo(randn(cuQ[o.batch]! * numQHeads * o.headDim, rng), o.dtype);
  const k = roundTo(randn(cuK[o.batch]! * o.numKVHeads * o.headDim, rng), o.dtype);
  return { dtype: o.dtype, cuQ, cuK, numQHeads, numKVHeads: o.numKVHeads, headDim: o.headDim, chunkSize: o.chunkSize, topK: o.topK, q, k };
}

/**
 * Two sequences: the first of `blocks` whole blocks and part of one more, the
 * second at most 40 blocks; random q and k. chunked: queries are the last
 * positions of each sequence.
 */
function longAndShortCase(
  rng: Rng,
  o: { topK: number; chunkSize: number; dtype: Dtype; group: number; chunked: boolean; blocks: number; headDim: number },
): GateCase {
  const { chunkSize, dtype, group, headDim } = o;
  const c = makeCase(rng, { dtype, batch: 2, maxLen: 1, group, numKVHeads: group === 4 ? 1 : 2, headDim, chunkSize, topK: o.topK, chunked: false });
  const lk = [chunkSize * o.blocks + rng.int(0, chunkSize - 1), rng.int(1, chunkSize * 40)];
  const lq = o.chunked ? lk.map((l) => rng.int(1, l)) : lk;
  c.cuK = Int32Array.from([0, lk[0]!, lk[0]! + lk[1]!]);
  c.cuQ = Int32Array.from([0, lq[0]!, lq[0]! + lq[1]!]);
  c.q = roundTo(randn(c.cuQ[2]! * c.numQHeads * headDim, rng), dtype);
  c.k = roundTo(randn(c.cuK[2]! * c.numKVHeads * headDim, rng), dtype);
  return c;
}

function describeCase(c: GateCase): string {
  return `${c.dtype} lq=[${lengthsOf(c.cuQ).join(',')}] lk=[${lengthsOf(c.cuK).join(',')}] heads=${c.numQHeads}/${c.numKVHeads} ` +
    `D=${c.headDim} B=${c.chunkSize} topK=${c.topK}`;
}

function upload(device: Device, c: GateCase): { q: Tensor; k: Tensor } {
  return {
    q: device.tensor(c.q, { dtype: c.dtype, shape: [c.cuQ[c.cuQ.length - 1]!, c.numQHeads, c.headDim] }),
    k: device.tensor(c.k, { dtype: c.dtype, shape: [c.cuK[c.cuK.length - 1]!, c.numKVHeads, c.headDim] }),
  };
}

/** The first flat index where two backends' indices differ, or -1. */
function firstDifference(got: Int32Array, other: Int32Array): number {
  return got.findIndex((x, i) => x !== other[i]);
}

/** Runs c on the device, checks the indices' form and that they equal the CPU backend's bit for bit. */
async function expectSameAsCpu(device: Device, cpu: Device, c: GateCase, note = ''): Promise<void> {
  const got = await runGate(device, c);
  checkWellFormed(c, got);
  const first = firstDifference(got, await runGate(cpu, c));
  expect(first, `CUDA and CPU differ at flat index ${first} of ${describeCase(c)}${note}`).toBe(-1);
}

async function runGate(device: Device, c: GateCase): Promise<Int32Array> {
  const { q, k } = upload(device, c);
  using qq = q;
  using kk = k;
  using out = mobaGate(qq, kk, { cuSeqlensQ: c.cuQ, cuSeqlensK: c.cuK, chunkSize: c.chunkSize, topK: c.topK });
  expect(out.shape).toEqual([c.numQHeads, c.cuQ[c.cuQ.length - 1]!, c.topK]);
  expect(out.dtype).toBe('i32');
  return (await out.toArray()) as Int32Array;
}

function sequenceOf(cu: Int32Array, row: number): number {
  let b = 0;
  while (cu[b + 1]! <= row) b++;
  return b;
}

/** Query position t and current block of a global row. */
function positionOf(c: GateCase, row: number): { b: number; t: number; cur: number } {
  const b = sequenceOf(c.cuQ, row);
  const lq = c.cuQ[b + 1]! - c.cuQ[b]!;
  const lk = c.cuK[b + 1]! - c.cuK[b]!;
  const t = lk - lq + row - c.cuQ[b]!;
  return { b, t, cur: Math.floor(t / c.chunkSize) };
}

/** Every row: ascending past blocks < current, then the current block, then -1s. */
function checkWellFormed(c: GateCase, got: Int32Array): void {
  const totalQ = c.cuQ[c.cuQ.length - 1]!;
  for (let h = 0; h < c.numQHeads; h++) {
    for (let row = 0; row < totalQ; row++) {
      const { cur } = positionOf(c, row);
      const sel = Array.from(got.subarray((h * totalQ + row) * c.topK, (h * totalQ + row + 1) * c.topK));
      const keep = Math.min(c.topK - 1, cur);
      const where = `(head ${h}, row ${row}) of ${describeCase(c)}: ${sel.join(' ')}`;
      for (let i = 0; i < keep; i++) {
        if (!(sel[i]! >= 0 && sel[i]! < cur && (i === 0 || sel[i]! > sel[i - 1]!))) throw new Error(`malformed ${where}`);
      }
      if (sel[keep] !== cur) throw new Error(`current block missing ${where}`);
      for (let i = keep + 1; i < c.topK; i++) if (sel[i] !== -1) throw new Error(`padding ${where}`);
    }
  }
}

function maxAbs(x: ArrayLike<number>, from: number, to: number): number {
  let m = 0;
  for (let i = from; i < to; i++) {
    const a = Math.abs(x[i]!);
    if (a > m && Number.isFinite(a)) m = a;
  }
  return m;
}

/**
 * How far an fp32 score can be from the float64 one: centroid sums of up to
 * chunkSize keys and a headDim-term dot product, each term rounded at most
 * (chunkSize + headDim + 8) times by 2^-24, on values bounded by
 * ||q||_1 * max|k|. Doubled for margin.
 */
function scoreTol(c: GateCase, h: number, row: number, b: number): number {
  const D = c.headDim;
  const qOff = (row * c.numQHeads + h) * D;
  let q1 = 0;
  for (let d = 0; d < D; d++) q1 += Math.abs(c.q[qOff + d]!);
  const kvh = Math.floor(h / (c.numQHeads / c.numKVHeads));
  let kMax = 0;
  for (let s = c.cuK[b]!; s < c.cuK[b + 1]!; s++) {
    const off = (s * c.numKVHeads + kvh) * D;
    kMax = Math.max(kMax, maxAbs(c.k, off, off + D));
  }
  return 2 * (c.chunkSize + D + 8) * 2 ** -24 * q1 * kMax;
}

/** NaN ranks lowest: compare as -Infinity (ties then go to the lower index, as on the device). */
const rankValue = (s: number): number => (Number.isNaN(s) ? -Infinity : s);

/**
 * Device indices against the reference: equal, or different only among
 * blocks whose float64 scores are within scoreTol of the selection boundary.
 * Returns the number of rows that differed (within tolerance).
 */
function compareWithReference(c: GateCase, got: Int32Array, want: Int32Array): number {
  const totalQ = c.cuQ[c.cuQ.length - 1]!;
  const cen = reference.blockCentroids(c.k, { cuSeqlensK: c.cuK, numKVHeads: c.numKVHeads, headDim: c.headDim, chunkSize: c.chunkSize });
  const opts = { cuSeqlensQ: c.cuQ, cuSeqlensK: c.cuK, numQHeads: c.numQHeads, numKVHeads: c.numKVHeads, headDim: c.headDim, chunkSize: c.chunkSize, centroids: cen };
  let differing = 0;
  for (let h = 0; h < c.numQHeads; h++) {
    for (let row = 0; row < totalQ; row++) {
      const base = (h * totalQ + row) * c.topK;
      let same = true;
      for (let i = 0; i < c.topK; i++) if (got[base + i] !== want[base + i]) same = false;
      if (same) continue;
      differing++;
      const { b, cur } = positionOf(c, row);
      const keep = Math.min(c.topK - 1, cur);
      const scores = reference.gateScores(c.q, c.k, opts, h, row);
      const gotSet = Array.from(got.subarray(base, base + keep));
      const wantSet = Array.from(want.subarray(base, base + keep));
      const boundary = Math.min(...wantSet.map((j) => rankValue(scores[j]!)));
      const tol = scoreTol(c, h, row, b);
      for (const j of gotSet) {
        if (wantSet.includes(j)) continue;
        const s = rankValue(scores[j]!);
        if (!(s >= boundary - tol)) {
          throw new Error(
            `(head ${h}, row ${row}) of ${describeCase(c)}: got [${gotSet}] want [${wantSet}]; ` +
              `block ${j} scores ${scores[j]} vs boundary ${boundary} (tolerance ${tol.toExponential(2)})`,
          );
        }
      }
    }
  }
  return differing;
}

/** The float64 reference's selection for a case. */
function referenceGate(c: GateCase): Int32Array {
  return reference.mobaGate(c.q, c.k, {
    cuSeqlensQ: c.cuQ, cuSeqlensK: c.cuK, numQHeads: c.numQHeads, numKVHeads: c.numKVHeads,
    headDim: c.headDim, chunkSize: c.chunkSize, topK: c.topK,
  });
}

const CHUNKS = [16, 48, 64, 100, 128, 512, 1024];
const TOPKS = [1, 2, 3, 4, 5, 6, 8, 12, 16, 17, 24, 32, 40, 64, 100];
const GROUPS = [1, 2, 4, 8];

/** The sweep: every (chunkSize, topK) pair, the other dimensions drawn so that each value recurs. */
function sweep(rng: Rng, headDims: readonly number[]): GateCase[] {
  const cases: GateCase[] = [];
  let n = 0;
  for (const chunkSize of CHUNKS) {
    for (const topK of TOPKS) {
      const dtype: Dtype = n % 2 === 0 ? 'bf16' : 'f16';
      const batch = [1, 3, 7][n % 3]!;
      const group = GROUPS[(n >> 1) % 4]!;
      const headDim = headDims[(n >> 2) % headDims.length]!;
      // Up to four KV heads without GQA.
      const numKVHeads = group >= 4 ? 1 : group === 2 ? rng.int(1, 2) : rng.int(1, 4);
      // Enough blocks for the selection to matter, within a reference budget.
      const maxLen = Math.min(chunkSize * (topK + 3) + rng.int(0, chunkSize), Math.floor(2500 / Math.sqrt(batch)));
      cases.push(makeCase(rng, { dtype, batch, maxLen, group, numKVHeads, headDim, chunkSize, topK, chunked: n % 4 >= 2 }));
      n++;
    }
  }
  return cases;
}

export interface GateTestOptions {
  /** Head dims the backend runs (CUDA: 64 and 128). */
  headDims: readonly number[];
  /** CUDA only: compare with the CPU backend and check the CSR lists. */
  cuda?: boolean;
}

/**
 * Runs each case, checks its form and its agreement with the float64
 * reference (compareWithReference), and with cpu given, that it equals the
 * CPU backend's bit for bit; near-ties at fp32 resolution, the only rows
 * allowed to differ from the reference, must stay rare on random data.
 */
async function expectRandomCases(device: Device, cpu: Device | undefined, cases: Iterable<GateCase>): Promise<void> {
  let rows = 0;
  let nearTies = 0;
  for (const c of cases) {
    const got = await runGate(device, c);
    checkWellFormed(c, got);
    nearTies += compareWithReference(c, got, referenceGate(c));
    rows += got.length / c.topK;
    if (cpu) {
      // Both backends compute the same fp32 scores where the order depends on them.
      const first = firstDifference(got, await runGate(cpu, c));
      expect(first, `CUDA and CPU differ at flat index ${first} of ${describeCase(c)}`).toBe(-1);
    }
  }
  expect(nearTies).toBeLessThan(Math.max(5, rows / 200));
}

export function defineGateTests(open: () => Device, opts: GateTestOptions): void {
  reportSeedOnFailure();

  it('matches the float64 reference over the grid (batch, lengths, chunk sizes, topK, GQA, head dims, dtypes, chunked queries)', async () => {
    using device = open();
    using cpu = opts.cuda ? openDevice({ backend: 'cpu', poisonOutputs: true }) : undefined;
    await expectRandomCases(device, cpu, sweep(rngFor('gate sweep'), opts.headDims));
  });

  it('selects exactly the reference blocks when score gaps are far above fp32 rounding', async () => {
    using device = open();
    const rng = rngFor('gate separated');
    for (const dtype of ['bf16', 'f16'] as const) {
      for (const headDim of opts.headDims) {
        // Keys of block j all equal j-dependent values along one direction: the
        // scores of a query are well apart, so any fp32 computation must agree.
        const c = makeCase(rng, { dtype, batch: 3, maxLen: 700, group: 2, numKVHeads: 2, headDim, chunkSize: 48, topK: 5, chunked: true });
        for (let b = 0; b < 3; b++) {
          for (let s = c.cuK[b]!; s < c.cuK[b + 1]!; s++) {
            const j = Math.floor((s - c.cuK[b]!) / c.chunkSize);
            const level = ((j * 37) % 23) / 4; // distinct multiples of 1/4 per block
            for (let kvh = 0; kvh < c.numKVHeads; kvh++) {
              const off = (s * c.numKVHeads + kvh) * headDim;
              for (let d = 0; d < headDim; d++) c.k[off + d] = d === 0 ? level : 0;
            }
          }
        }
        for (let i = 0; i < c.q.length; i += headDim) c.q[i] = 1 + (i % 3); // positive first component
        const got = await runGate(device, c);
        const want = referenceGate(c);
        expect(Array.from(got)).toEqual(Array.from(want));
      }
    }
  });

  it('selects a row whose best blocks crowd one quarter of its columns, topK 8 to 16, either side of 33 blocks and of the lists-of-eight limits', async () => {
    using device = open();
    const rng = rngFor('gate crowded quarter');
    // On Hopper, topK 9 to 12 runs the wgmma kernel's lists of eight up to
    // 4,096 (topK 9) to 256 (topK 12) blocks in the call's longest sequence,
    // topK 16 the mma.sync kernel. Up to 33 blocks each thread sees at most eight of a
    // row's past blocks; past that a thread's list may drop band entries.
    // Blocks j = 0, 1 (mod 8) all fall in one thread's columns: here they
    // score highest, so that thread's list is full of the row's best blocks.
    const chunkSize = 16;
    for (const [topK, lens] of [[12, [33 * 16, 300, 17]], [11, [33 * 16 - 5, 33 * 16]], [16, [33 * 16, 90]], [12, [34 * 16, 200]], [9, [33 * 16]], [8, [33 * 16, 40]], [9, [300 * 16 + 3, 40]], [12, [256 * 16, 100]], [12, [257 * 16]]] as const) {
      for (const dtype of ['bf16', 'f16'] as const) {
        const headDim = opts.headDims[(topK + lens.length) % opts.headDims.length]!;
        const c = makeCase(rng, { dtype, batch: lens.length, maxLen: 1, group: 2, numKVHeads: 2, headDim, chunkSize, topK, chunked: false });
        let end = 0;
        c.cuK = Int32Array.from([0, ...lens.map((n) => (end += n))]);
        c.cuQ = c.cuK;
        c.q = roundTo(randn(c.cuQ[lens.length]! * c.numQHeads * headDim, rng), dtype);
        for (let i = 0; i < c.q.length; i += headDim) c.q[i] = 1 + (i % 3); // positive first component
        c.k = new Float32Array(c.cuK[lens.length]! * c.numKVHeads * headDim);
        for (let b = 0; b < lens.length; b++) {
          for (let s = c.cuK[b]!; s < c.cuK[b + 1]!; s++) {
            const j = Math.floor((s - c.cuK[b]!) / chunkSize);
            // Distinct levels, multiples of 1/4: the crowded quarter's above every other.
            const level = (j & 7) < 2 ? 30 + j : ((j * 7) % 97) / 4;
            for (let kvh = 0; kvh < c.numKVHeads; kvh++) c.k[(s * c.numKVHeads + kvh) * headDim] = level;
          }
        }
        const got = await runGate(device, c);
        checkWellFormed(c, got);
        const want = referenceGate(c);
        const first = firstDifference(got, want);
        expect(first, `differs from the reference at flat index ${first} of ${describeCase(c)}`).toBe(-1);
      }
    }
  });

  it('matches the reference (and on CUDA the CPU backend) for topK 9 to 12 on sequences of 34 to 300 blocks', async () => {
    using device = open();
    using cpu = opts.cuda ? openDevice({ backend: 'cpu', poisonOutputs: true }) : undefined;
    const rng = rngFor('gate lists of eight, long');
    // On Hopper topK 9 to 12 takes the wgmma kernel's lists of eight up to a
    // number of blocks per sequence that falls with topK (256 at topK 12),
    // the mma.sync kernel past it; the sweep's sequences stay short. The
    // first sequence here passes 33 blocks, where a thread sees more than
    // eight of a row's past blocks; the last config passes 256 blocks.
    const configs = [
      [9, 16, 'bf16', 1, false, 250, 300], [10, 8, 'f16', 2, true, 100, 200], [11, 16, 'bf16', 4, true, 34, 90],
      [12, 16, 'f16', 2, false, 200, 256], [12, 8, 'bf16', 1, true, 257, 300],
    ] as const;
    const cases = configs.map(([topK, chunkSize, dtype, group, chunked, minBlocks, maxBlocks], n) =>
      longAndShortCase(rng, { topK, chunkSize, dtype, group, chunked, blocks: rng.int(minBlocks, maxBlocks), headDim: opts.headDims[n % opts.headDims.length]! }),
    );
    await expectRandomCases(device, cpu, cases);
  });

  it('matches the reference (and on CUDA the CPU backend) for topK 17 to 64 on sequences past one tile of blocks', async () => {
    using device = open();
    using cpu = opts.cuda ? openDevice({ backend: 'cpu', poisonOutputs: true }) : undefined;
    const rng = rngFor('gate past one tile');
    // On Hopper topK 17 to 64 takes the two-pass kernel, whose first pass
    // keeps a row's best score per column of its 64-block tiles, and past
    // topK 32 per column and tile parity. The sweep's sequences have one
    // tile of blocks or two; the first sequence here has more than one tile
    // (topK up to 32) or more than two (past 32), so both passes run over
    // several tiles and parities. The second sequence stays short.
    const configs = [
      [17, 16, 'bf16', 1, false], [20, 24, 'f16', 2, true], [24, 16, 'f16', 4, false],
      [28, 20, 'bf16', 1, true], [32, 16, 'bf16', 2, true], [32, 32, 'f16', 1, false],
      [33, 16, 'f16', 2, false], [40, 8, 'bf16', 1, true], [48, 12, 'f16', 4, true], [64, 8, 'bf16', 2, false],
    ] as const;
    const cases = configs.map(([topK, chunkSize, dtype, group, chunked], n) =>
      longAndShortCase(rng, { topK, chunkSize, dtype, group, chunked, blocks: topK > 32 ? rng.int(129, 300) : rng.int(65, 90), headDim: opts.headDims[n % opts.headDims.length]! }),
    );
    await expectRandomCases(device, cpu, cases);
  });

  it('selects a row whose best blocks share one column of every tile (of every other tile past topK 32), topK 17 to 64', async () => {
    using device = open();
    const rng = rngFor('gate shared column');
    // On Hopper, topK 17 to 32 first takes each row's best score of each
    // column of its 64-block tiles, and the keep-th best of those 64 sets a
    // floor for a second pass; past topK 32, of each column and tile parity
    // (128 parts). Here the best blocks all fall in one part: one column,
    // and past topK 32 the even tiles only. So the floor comes from the
    // other parts, far below them.
    for (const [topK, column, dtype] of [[32, 5, 'bf16'], [24, 40, 'f16'], [17, 63, 'bf16'], [32, 0, 'f16'], [64, 17, 'f16'], [40, 62, 'bf16']] as const) {
      const wide = topK > 32;
      const chunkSize = wide ? 8 : 16;
      const headDim = opts.headDims[topK % opts.headDims.length]!;
      const blocks = (wide ? 128 : 64) * topK + 3;
      const c = makeCase(rng, { dtype, batch: 1, maxLen: 1, group: 2, numKVHeads: 1, headDim, chunkSize, topK, chunked: true });
      c.cuK = Int32Array.from([0, blocks * chunkSize]);
      c.cuQ = Int32Array.from([0, 8]); // the sequence's last eight positions
      c.q = roundTo(randn(8 * c.numQHeads * headDim, rng), dtype);
      for (let i = 0; i < c.q.length; i += headDim) c.q[i] = 1 + (i % 3); // positive first component
      c.k = new Float32Array(blocks * chunkSize * headDim);
      for (let s = 0; s < blocks * chunkSize; s++) {
        const j = Math.floor(s / chunkSize);
        // Distinct levels, multiples of 1/4, for the column's blocks; the rest lower.
        const best = j % 64 === column && (!wide || Math.floor(j / 64) % 2 === 0);
        c.k[s * headDim] = best ? 30 + Math.floor(j / 64) / 4 : ((j * 7) % 97) / 4;
      }
      const got = await runGate(device, c);
      checkWellFormed(c, got);
      const want = referenceGate(c);
      const first = firstDifference(got, want);
      expect(first, `differs from the reference at flat index ${first} of ${describeCase(c)}`).toBe(-1);
    }
  });

  it('returns well-formed indices for NaN and Inf inputs (NaN scores rank lowest)', async () => {
    using device = open();
    const rng = rngFor('gate nan inf');
    // topK 3 and 4: the fast path (on Hopper the wgmma kernel, lists of four and of eight); topK 24, 40 and 64 the
    // kernels past topK 16 (on Hopper the two-pass one, 64 and 128 parts per row; chunks of 8 and 4 give rows more
    // than one and two tiles of 64 blocks).
    for (const [dtype, topK, chunkSize] of [
      ['bf16', 4, 32], ['f16', 4, 32], ['bf16', 3, 32], ['f16', 3, 32], ['bf16', 24, 8], ['f16', 24, 8], ['bf16', 40, 8], ['f16', 64, 4],
    ] as const) {
      const c = makeCase(rng, { dtype, batch: 3, maxLen: 600, group: 2, numKVHeads: 1, headDim: opts.headDims[0]!, chunkSize, topK, chunked: false });
      const D = c.headDim;
      const totalQ = c.cuQ[3]!;
      const nanRows = new Set<number>();
      for (let i = 0; i < 6; i++) {
        const r = rng.int(0, totalQ * c.numQHeads - 1);
        c.q[r * D + rng.int(0, D - 1)] = NaN;
        nanRows.add(r);
      }
      for (let i = 0; i < 6; i++) c.k[rng.int(0, c.k.length - 1)] = rng.next() < 0.5 ? Infinity : -Infinity;
      const got = await runGate(device, c);
      checkWellFormed(c, got);
      // A query holding a NaN scores NaN everywhere: ties to the lowest blocks.
      for (const r of nanRows) {
        const row = Math.floor(r / c.numQHeads);
        const h = r % c.numQHeads;
        const { cur } = positionOf(c, row);
        const keep = Math.min(c.topK - 1, cur);
        const sel = Array.from(got.subarray((h * totalQ + row) * c.topK, (h * totalQ + row + 1) * c.topK));
        expect(sel.slice(0, keep + 1)).toEqual([...Array.from({ length: keep }, (_, i) => i), cur]);
      }
      const want = referenceGate(c);
      compareWithReference(c, got, want);
    }
  });

  it('handles ties (identical keys) with the lower block index', async () => {
    using device = open();
    const rng = rngFor('gate ties');
    for (const topK of [3, 8, 20, 64, 150]) {
      const maxLen = topK > 64 ? 3000 : topK > 16 ? 1600 : 900; // rows past topK blocks
      const c = makeCase(rng, { dtype: 'bf16', batch: 2, maxLen, group: 1, numKVHeads: 2, headDim: opts.headDims[0]!, chunkSize: 16, topK, chunked: false });
      const row0 = c.k.slice(0, c.numKVHeads * c.headDim);
      for (let s = 0; s < c.cuK[2]!; s++) c.k.set(row0, s * row0.length);
      const got = await runGate(device, c);
      checkWellFormed(c, got);
      const totalQ = c.cuQ[2]!;
      for (let h = 0; h < c.numQHeads; h++) {
        for (let row = 0; row < totalQ; row++) {
          const { cur } = positionOf(c, row);
          const keep = Math.min(topK - 1, cur);
          const base = (h * totalQ + row) * topK;
          for (let i = 0; i < keep; i++) if (got[base + i] !== i) throw new Error(`tie not broken low at (${h}, ${row})`);
        }
      }
    }
  });

  it('gives EINVAL naming the argument for bad arguments', () => {
    using device = open();
    const D = opts.headDims[0]!;
    using q = device.tensor(new Float32Array(4 * 2 * D), { dtype: 'bf16', shape: [4, 2, D] });
    using k = device.tensor(new Float32Array(4 * 1 * D), { dtype: 'bf16', shape: [4, 1, D] });
    using k3 = device.tensor(new Float32Array(4 * 3 * D), { dtype: 'bf16', shape: [4, 3, D] });
    using kf = device.tensor(new Float32Array(4 * 1 * D), { dtype: 'f16', shape: [4, 1, D] });
    const cu = new Int32Array([0, 4]);
    const expectInval = (fn: () => unknown, arg: string): void => {
      expect(expectMobaError(fn, 'EINVAL').message).toContain(arg);
    };
    expectInval(() => mobaGate(q, k, { cuSeqlensQ: cu, chunkSize: 0, topK: 2 }), 'chunkSize');
    expectInval(() => mobaGate(q, k, { cuSeqlensQ: cu, chunkSize: 2.5, topK: 2 }), 'chunkSize');
    expectInval(() => mobaGate(q, k, { cuSeqlensQ: cu, chunkSize: 4, topK: 0 }), 'topK');
    expectInval(() => mobaGate(q, k, { cuSeqlensQ: cu, chunkSize: 4, topK: 257 }), 'topK');
    expectInval(() => mobaGate(q, k, { cuSeqlensQ: [0, 4] as unknown as Int32Array, chunkSize: 4, topK: 2 }), 'cuSeqlensQ');
    expectInval(() => mobaGate(q, k, { cuSeqlensQ: new Int32Array([0, 3]), chunkSize: 4, topK: 2 }), 'cuSeqlensQ');
    expectInval(
      () => mobaGate(q, k, { cuSeqlensQ: new Int32Array([0, 2, 4]), cuSeqlensK: new Int32Array([0, 1, 4]), chunkSize: 4, topK: 2 }),
      'key length of sequence 0',
    );
    expectInval(() => mobaGate(q, k3, { cuSeqlensQ: cu, chunkSize: 4, topK: 2 }), 'k.shape[1]');
    expectInval(() => mobaGate(q, kf, { cuSeqlensQ: cu, chunkSize: 4, topK: 2 }), 'k.dtype');
    expectInval(() => mobaGate(q, k, null as unknown as { cuSeqlensQ: Int32Array; chunkSize: number; topK: number }), 'options');
    expectInval(() => mobaGate(q, 'k' as unknown as Tensor, { cuSeqlensQ: cu, chunkSize: 4, topK: 2 }), 'k');
    if (opts.cuda) {
      using q96 = device.tensor(new Float32Array(4 * 96), { dtype: 'bf16', shape: [4, 1, 96] });
      using k96 = device.tensor(new Float32Array(4 * 96), { dtype: 'bf16', shape: [4, 1, 96] });
      expectInval(() => mobaGate(q96, k96, { cuSeqlensQ: cu, chunkSize: 4, topK: 2 }), 'q.shape[2]');
    }
  });

  if (opts.cuda) {
    defineLongRowTests(open);
    defineListTests(open);
  }
}

/**
 * Rows with hundreds or thousands of past blocks (several centroid tiles on
 * the device), scores that trend with the block index either way, and keys
 * far from unit scale: the device must pick exactly what the CPU backend
 * picks.
 */
function defineLongRowTests(open: () => Device): void {
  it('agrees with the CPU backend on long rows, trending scores and tiny or huge keys', async () => {
    using device = open();
    using cpu = openDevice({ backend: 'cpu' });
    const rng = rngFor('gate long rows');
    const variants = [
      { dtype: 'bf16', headDim: 128, topK: 8, trend: 0.02, scale: 1 },
      { dtype: 'f16', headDim: 64, topK: 3, trend: -0.02, scale: 1 },
      { dtype: 'bf16', headDim: 64, topK: 5, trend: 0, scale: 1e-6 },
      { dtype: 'f16', headDim: 128, topK: 8, trend: 0, scale: 2e-3 },
      { dtype: 'bf16', headDim: 128, topK: 3, trend: 0.01, scale: 3e5 },
      { dtype: 'f16', headDim: 64, topK: 16, trend: 0, scale: 300 },
      // Past topK 16 (the large-topK kernel: CTAs of 64 rows up to keep 128 while
      // two fit per SM, of 32 rows beyond; past keep 63 its output sorted per warp).
      { dtype: 'bf16', headDim: 128, topK: 17, trend: 0.02, scale: 1 },
      { dtype: 'f16', headDim: 64, topK: 33, trend: 0, scale: 1e-6 },
      { dtype: 'bf16', headDim: 64, topK: 64, trend: -0.01, scale: 3e5 },
      { dtype: 'f16', headDim: 128, topK: 64, trend: 0, scale: 1 },
      { dtype: 'bf16', headDim: 128, topK: 100, trend: 0, scale: 1 },
      { dtype: 'f16', headDim: 64, topK: 129, trend: 0.01, scale: 1, chunkSize: 8 },
      { dtype: 'bf16', headDim: 64, topK: 200, trend: 0, scale: 3e5, chunkSize: 8 },
      { dtype: 'bf16', headDim: 128, topK: 256, trend: -0.02, scale: 1, chunkSize: 8 },
    ] as const;
    for (const v of variants) {
      const chunkSize = 'chunkSize' in v ? v.chunkSize : 16;
      const c = makeCase(rng, { dtype: v.dtype, batch: 2, maxLen: 4200, group: 2, numKVHeads: 1, headDim: v.headDim, chunkSize, topK: v.topK, chunked: true });
      // Force long rows: every sequence at least 3000 keys, queries its last 200 or fewer.
      const D = v.headDim;
      const lk = [rng.int(3000, 4200), rng.int(3000, 4200)];
      const lq = [rng.int(1, 200), rng.int(1, 200)];
      const cuK = new Int32Array([0, lk[0]!, lk[0]! + lk[1]!]);
      const cuQ = new Int32Array([0, lq[0]!, lq[0]! + lq[1]!]);
      const k = randn(cuK[2]! * D, rng, v.scale);
      const q = randn(cuQ[2]! * 2 * D, rng);
      // A shared direction: q leans on it, keys move along it block by block.
      for (let i = 0; i < q.length; i += D) q[i] = q[i]! + 4;
      for (let b = 0; b < 2; b++) {
        for (let s = 0; s < lk[b]!; s++) {
          const at = (cuK[b]! + s) * D;
          k[at] = k[at]! + v.scale * (0.5 + v.trend * Math.floor(s / chunkSize));
        }
      }
      const cc: GateCase = { ...c, cuQ, cuK, numQHeads: 2, numKVHeads: 1, q: roundTo(q, v.dtype), k: roundTo(k, v.dtype) };
      await expectSameAsCpu(device, cpu, cc, ` (scale ${v.scale}, trend ${v.trend})`);
    }
  });

  // Each row's error bound scales with its own ||q||, and the thread that
  // selects a row is not the one whose MMA fragments hold it. Query rows whose
  // norms differ by up to six orders of magnitude sit side by side, over keys
  // made of one shared vector plus perturbations of a few fp16 ulps (many
  // near-ties, many bands that overflow to the exact kernel).
  it('agrees with the CPU backend when near-tied rows of very different norms sit side by side', async () => {
    using device = open();
    using cpu = openDevice({ backend: 'cpu' });
    const rng = rngFor('gate row norms');
    const chunkSize = 16;
    for (const [D, topK, spread] of [[128, 8, 8e-3], [64, 3, 8e-3], [64, 16, 1.6e-2], [128, 5, 4e-3], [128, 24, 4e-3], [64, 40, 1e-3], [128, 130, 1e-3]] as const) {
      const lk = [rng.int(2000, 3000), rng.int(2000, 3000)];
      const lq = [rng.int(100, 200), rng.int(100, 200)];
      const cuK = new Int32Array([0, lk[0]!, lk[0]! + lk[1]!]);
      const cuQ = new Int32Array([0, lq[0]!, lq[0]! + lq[1]!]);
      const shared = randn(D, rng);
      const k = randn(cuK[2]! * D, rng, spread);
      for (let i = 0; i < k.length; i++) k[i] = k[i]! + shared[i % D]!;
      const q = randn(cuQ[2]! * 2 * D, rng);
      for (let i = 0; i < q.length; i += D) {
        const f = 10 ** (6 * rng.next() - 3);
        for (let d = 0; d < D; d++) q[i + d] = q[i + d]! * f;
      }
      const cc: GateCase = {
        dtype: 'f16', cuQ, cuK, numQHeads: 2, numKVHeads: 1, headDim: D, chunkSize, topK, q: roundTo(q, 'f16'), k: roundTo(k, 'f16'),
      };
      await expectSameAsCpu(device, cpu, cc);
    }
  });

  // Where the tensor cores' order is wrong, by little less than the bound
  // allows. Blocks A and B share one key vector s (1.5 in dims 1 and 2, zero
  // elsewhere) and differ only in a few keys, by one key ulp (A in dim 1, B in
  // dim 2): their centroids sit a fraction of the fp16 operand's ulp above s,
  // so A's operand rounds down to s and B's up to s plus one ulp. With q's
  // dim 1 `ratio` times its dim 2, A's exact score is the larger and its
  // tensor-core score the smaller by about half the row's error bound, for
  // every row whatever its norm: a row whose bound were a third of what it
  // should be would keep B (a build with a quarter of the bound fails here). topK - 2 blocks score clearly above both
  // (dims 1 and 2 four key ulps up, exact in fp16), so A and B compete for the
  // last place; the other blocks score far below. Rows of norms six orders
  // of magnitude apart sit side by side.
  it('agrees with the CPU backend where the tensor cores rank two blocks the wrong way round', async () => {
    using device = open();
    using cpu = openDevice({ backend: 'cpu' });
    const rng = rngFor('gate reversed pair');
    // f16 keys: ulp 2^-10 at 1.5, as the operand's (scale 2^14, 11 bits); 16
    // keys per block, so 7 and 9 keys moved give 7/16 and 9/16 of an ulp.
    // bf16 keys: ulp 2^-7, 8 operand ulps; 32 keys per block, so 1 and 3 keys
    // moved give 1/4 and 3/4 of an operand ulp.
    const variants = [
      { dtype: 'f16', chunkSize: 16, movedA: 7, movedB: 9, ratio: 1.5, keyUlp: 2 ** -10 },
      { dtype: 'bf16', chunkSize: 32, movedA: 1, movedB: 3, ratio: 3.5, keyUlp: 2 ** -7 },
    ] as const;
    for (const v of variants) {
      for (const [D, topK] of [[64, 2], [128, 2], [128, 4], [64, 7], [128, 12], [64, 21], [128, 24]] as const) {
        const B = v.chunkSize;
        const lk = rng.int(40, 60) * B + rng.int(1, B);
        const lq = rng.int(100, 200);
        const cuK = new Int32Array([0, lk]);
        const cuQ = new Int32Array([0, lq]);
        // One q direction for every row, times a per-row power of two in 2^-10..2^10.
        const qBase = roundTo(randn(D, rng, 0.1), v.dtype);
        qBase[1] = 2 * v.ratio;
        qBase[2] = 2;
        const s = new Float32Array(D);
        s[1] = 1.5;
        s[2] = 1.5;
        const k = roundTo(randn(lk * D, rng, 0.03), v.dtype);
        // A, B and the top blocks: distinct complete blocks before the first query's block.
        const past = shuffle(Array.from({ length: Math.floor((lk - lq) / B) }, (_, i) => i), rng);
        const [a, b, ...top] = past.slice(0, topK) as [number, number, ...number[]];
        const setBlock = (blk: number, moved: number, lift: (d: number) => number): void => {
          for (let t = 0; t < B; t++) {
            for (let d = 0; d < D; d++) k[(blk * B + t) * D + d] = s[d]! + (t < moved ? lift(d) : 0);
          }
        };
        setBlock(a, v.movedA, (d) => (d === 1 ? v.keyUlp : 0));
        setBlock(b, v.movedB, (d) => (d === 2 ? v.keyUlp : 0));
        for (const blk of top) setBlock(blk, B, (d) => (d === 1 || d === 2 ? 4 * v.keyUlp : 0));
        const q = new Float32Array(lq * 2 * D);
        for (let r = 0; r < lq * 2; r++) {
          const f = 2 ** Math.round(20 * rng.next() - 10);
          for (let d = 0; d < D; d++) q[r * D + d] = qBase[d]! * f;
        }
        const cc: GateCase = { dtype: v.dtype, cuQ, cuK, numQHeads: 2, numKVHeads: 1, headDim: D, chunkSize: B, topK, q: roundTo(q, v.dtype), k };
        const got = await runGate(device, cc);
        checkWellFormed(cc, got);
        // The premise: exact fp32 scores (the CPU backend) keep A, not B, in every row.
        const want = await runGate(cpu, cc);
        for (let i = 0; i < want.length; i += topK) {
          const row = Array.from(want.subarray(i, i + topK));
          expect(row).toContain(a);
          expect(row).not.toContain(b);
        }
        const first = firstDifference(got, want);
        expect(first, `CUDA and CPU differ at flat index ${first} of ${describeCase(cc)} (A ${a}, B ${b})`).toBe(-1);
      }
    }
  });

  // The fast kernel keeps a candidate's block index in the low bits of its
  // score while every block index of the launch fits in 12 bits, and keeps
  // separate indices beyond: sequences on both sides of 4096 blocks.
  it('agrees with the CPU backend on sequences of about 4096 blocks and more', async () => {
    using device = open();
    using cpu = openDevice({ backend: 'cpu' });
    const rng = rngFor('gate many blocks');
    const chunkSize = 8;
    const D = 64;
    for (const [lo, hi] of [[31000, 4096 * chunkSize], [40000, 48000]] as const) {
      const lk = [rng.int(lo, hi), rng.int(lo, hi)];
      const lq = [rng.int(1, 48), rng.int(1, 48)];
      const cuK = new Int32Array([0, lk[0]!, lk[0]! + lk[1]!]);
      const cuQ = new Int32Array([0, lq[0]!, lq[0]! + lq[1]!]);
      const k = randn(cuK[2]! * D, rng);
      const q = randn(cuQ[2]! * 2 * D, rng);
      // Scores drift up with the block index: the lists keep taking new blocks.
      for (let i = 0; i < q.length; i += D) q[i] = q[i]! + 2;
      for (let b = 0; b < 2; b++) {
        for (let s = 0; s < lk[b]!; s++) {
          const at = (cuK[b]! + s) * D;
          k[at] = k[at]! + 0.0005 * Math.floor(s / chunkSize);
        }
      }
      for (const topK of [3, 8]) {
        const cc: GateCase = {
          dtype: 'bf16', cuQ, cuK, numQHeads: 2, numKVHeads: 1, headDim: D, chunkSize, topK,
          q: roundTo(q, 'bf16'), k: roundTo(k, 'bf16'),
        };
        await expectSameAsCpu(device, cpu, cc);
      }
    }
  });
}

/**
 * The CSR lists (native/kernels/common/moba_lists.h) through the internal
 * native method: built from scratch on host from the indices and compared.
 */
function defineListTests(open: () => Device): void {
  it('builds CSR lists consistent with the indices (segments, sorted entries, entryOf)', async () => {
    using device = open();
    const rng = rngFor('gate lists');
    const configs = [
      { chunkSize: 16, topK: 8, group: 2, batch: 3, chunked: true },
      { chunkSize: 100, topK: 3, group: 1, batch: 7, chunked: false },
      { chunkSize: 48, topK: 40, group: 4, batch: 1, chunked: true },
      { chunkSize: 64, topK: 12, group: 8, batch: 3, chunked: false },
      { chunkSize: 128, topK: 1, group: 1, batch: 3, chunked: true },
      { chunkSize: 32, topK: 2, group: 2, batch: 7, chunked: true },
    ];
    for (const [n, cfg] of configs.entries()) {
      const dtype: Dtype = n % 2 ? 'f16' : 'bf16';
      const c = makeCase(rng, { dtype, batch: cfg.batch, maxLen: 1500, group: cfg.group, numKVHeads: cfg.group === 8 ? 1 : 2, headDim: [64, 128][n % 2]!, chunkSize: cfg.chunkSize, topK: cfg.topK, chunked: cfg.chunked });
      const batch = c.cuQ.length - 1;
      const totalQ = c.cuQ[batch]!;
      const K = c.topK;
      const kp = K - 1;
      const cuBlocks = new Int32Array(batch + 1);
      for (let b = 0; b < batch; b++) cuBlocks[b + 1] = cuBlocks[b]! + Math.ceil((c.cuK[b + 1]! - c.cuK[b]!) / c.chunkSize);
      const numSegments = cuBlocks[batch]! * c.numQHeads;
      const { q, k } = upload(device, c);
      using qq = q;
      using kk = k;
      using out = device.empty([c.numQHeads, totalQ, K], 'i32');
      using cbOut = device.empty([batch + 1], 'i32');
      using offOut = device.empty([numSegments + 1], 'i32');
      using entOut = device.empty([Math.max(1, totalQ * c.numQHeads * kp)], 'i32');
      using eofOut = device.empty([Math.max(1, totalQ * c.numQHeads * kp)], 'i32');
      device.native.mobaGateLists(
        qq.buffer, kk.buffer, out.buffer, c.cuQ, c.cuK, c.dtype === 'bf16' ? 0 : 1,
        c.numQHeads, c.numKVHeads, c.headDim, c.chunkSize, K,
        cbOut.buffer, offOut.buffer, entOut.buffer, eofOut.buffer,
      );
      const idx = (await out.toArray()) as Int32Array;
      using plain = await (async () => {
        const { q: q2, k: k2 } = upload(device, c);
        const t = mobaGate(q2, k2, { cuSeqlensQ: c.cuQ, cuSeqlensK: c.cuK, chunkSize: c.chunkSize, topK: K });
        q2.dispose();
        k2.dispose();
        return t;
      })();
      expect(Array.from(idx)).toEqual(Array.from((await plain.toArray()) as Int32Array));
      expect(Array.from((await cbOut.toArray()) as Int32Array)).toEqual(Array.from(cuBlocks));
      const offsets = (await offOut.toArray()) as Int32Array;
      const entries = (await entOut.toArray()) as Int32Array;
      const entryOf = (await eofOut.toArray()) as Int32Array;
      // Expected lists from the indices, entries ascending by construction.
      const want: number[][] = Array.from({ length: numSegments }, () => []);
      let total = 0;
      for (let row = 0; row < totalQ; row++) {
        const b = sequenceOf(c.cuQ, row);
        for (let h = 0; h < c.numQHeads; h++) {
          const base = (h * totalQ + row) * K;
          for (let slot = 0; slot < kp; slot++) {
            if (idx[base + slot]! >= 0 && idx[base + slot + 1]! >= 0) {
              want[(cuBlocks[b]! + idx[base + slot]!) * c.numQHeads + h]!.push(row * c.numQHeads + h);
              total++;
            }
          }
        }
      }
      const where = describeCase(c);
      expect(offsets[0], where).toBe(0);
      expect(offsets[numSegments], where).toBe(total);
      for (let s = 0; s < numSegments; s++) {
        const got = Array.from(entries.subarray(offsets[s]!, offsets[s + 1]!));
        if (got.length !== want[s]!.length || got.some((e, i) => e !== want[s]![i])) {
          throw new Error(`segment ${s} of ${where}: got [${got.slice(0, 16)}] want [${want[s]!.slice(0, 16)}]`);
        }
      }
      for (let row = 0; row < totalQ; row++) {
        const b = sequenceOf(c.cuQ, row);
        for (let h = 0; h < c.numQHeads; h++) {
          const base = (h * totalQ + row) * K;
          for (let slot = 0; slot < kp; slot++) {
            const e = entryOf[(h * totalQ + row) * kp + slot]!;
            if (idx[base + slot]! >= 0 && idx[base + slot + 1]! >= 0) {
              const seg = (cuBlocks[b]! + idx[base + slot]!) * c.numQHeads + h;
              if (!(e >= offsets[seg]! && e < offsets[seg + 1]! && entries[e] === row * c.numQHeads + h)) {
                throw new Error(`entryOf (${h}, ${row}, ${slot}) = ${e} of ${where}`);
              }
            } else if (e !== -1) {
              throw new Error(`entryOf (${h}, ${row}, ${slot}) = ${e}, want -1, of ${where}`);
            }
          }
        }
      }
    }
  });

  it('rejects the lists op on the CPU backend', () => {
    using cpu = openDevice({ backend: 'cpu' });
    using q = cpu.tensor(new Float32Array(64), { dtype: 'bf16', shape: [1, 1, 64] });
    using o = cpu.empty([1, 1, 2], 'i32');
    expect(() =>
      cpu.native.mobaGateLists(q.buffer, q.buffer, o.buffer, new Int32Array([0, 1]), new Int32Array([0, 1]), 0, 1, 1, 64, 4, 2, o.buffer, o.buffer, o.buffer, o.buffer),
    ).toThrow(/CUDA backend/);
  });
}
