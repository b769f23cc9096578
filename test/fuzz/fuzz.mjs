#!/usr/bin/env node
/**
 * moba-cuda fuzz driver: edge geometry, odd values and misuse, one child process per case.
 * Standalone JavaScript on the built package (dist/), so it carries its own small random
 * source and rounding rather than the TypeScript test helpers.
 *
 *   node test/fuzz/fuzz.mjs [filter]              parent: runs every case (whose name contains filter)
 *   node test/fuzz/fuzz.mjs --list [filter]       prints the case names
 *   node test/fuzz/fuzz.mjs <exact case name>     child: runs one case, last line "OK ..." or "BAD ..."
 *
 * env: MOBA_FUZZ_BACKEND   cpu (default) | cuda
 *      MOBA_FUZZ_TIMEOUT_S per-case timeout, default 20
 *      MOBA_FUZZ_JOBS      cases run at once (default 4 on cuda, 1 on cpu)
 *      MOBA_FUZZ_SCALE     length scale (default 1 on cuda, 0.25 on cpu)
 *      MOBA_FUZZ_SEED      base seed (default 20250101); every case derives its own stream from it
 *      MOBA_FUZZ_POISON    1 (default): open the device with poisonOutputs, so unwritten outputs read as NaN
 *      OUT                 when set, the summary is also written to $OUT/fuzz.json
 */
import { spawn } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

import { hashLabel, makeRng } from '../helpers/rng.mjs';

const SELF = fileURLToPath(import.meta.url);
const PKG = new URL('../../dist/index.js', import.meta.url);
const BACKEND = process.env.MOBA_FUZZ_BACKEND || 'cpu';
const TIMEOUT_S = Number(process.env.MOBA_FUZZ_TIMEOUT_S || 20);
const JOBS = Math.max(1, Number(process.env.MOBA_FUZZ_JOBS || (BACKEND === 'cuda' ? 4 : 1)));
const SCALE = Number(process.env.MOBA_FUZZ_SCALE || (BACKEND === 'cpu' ? 0.25 : 1));
const SEED = Number(process.env.MOBA_FUZZ_SEED || 20250101) >>> 0;
const POISON = (process.env.MOBA_FUZZ_POISON ?? '1') !== '0';
/** Multiply-adds a case may spend in the float64 reference (JS loops) before it compares only sampled rows. */
const REF_BUDGET = Number(process.env.MOBA_FUZZ_REF_BUDGET || 1.2e8);

// ---------------------------------------------------------------------------------------------
// Randomness and rounding
// ---------------------------------------------------------------------------------------------

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

function roundBf16(x) {
  f32[0] = x;
  const u = u32[0];
  if ((u & 0x7f800000) === 0x7f800000 && (u & 0x007fffff) !== 0) return NaN;
  const lsb = (u >>> 16) & 1;
  u32[0] = ((u + 0x7fff + lsb) & 0xffff0000) >>> 0;
  return f32[0];
}

function roundHalfEven(y) {
  const fl = Math.floor(y);
  const d = y - fl;
  if (d > 0.5) return fl + 1;
  if (d < 0.5) return fl;
  return fl % 2 === 0 ? fl : fl + 1;
}

function roundF16(v) {
  if (Number.isNaN(v) || !Number.isFinite(v)) return v;
  const a = Math.abs(v);
  let r;
  if (a >= 65520) r = Infinity;
  else {
    f32[0] = a;
    const e = Math.max(((u32[0] >>> 23) & 0xff) - 127, -14);
    const ulp = 2 ** (e - 10);
    r = roundHalfEven(a / ulp) * ulp;
  }
  return v < 0 || Object.is(v, -0) ? -r : r;
}

const rounder = (dtype) => (dtype === 'bf16' ? roundBf16 : roundF16);

/** A pool of 2^20 standard normals rounded to each dtype: large inputs are random slices of it. */
const POOLS = {};
function poolOf(dtype) {
  if (!POOLS[dtype]) {
    const r = rounder(dtype);
    const g = makeRng((SEED ^ hashLabel(`pool ${dtype}`)) >>> 0);
    POOLS[dtype] = Float32Array.from({ length: 1 << 20 }, () => r(g.normal()));
  }
  return POOLS[dtype];
}

/** n standard normals rounded to dtype, never all zero. */
function randn(n, rng, dtype, scale = 1) {
  if (scale === 1 && n > 8192) {
    // Random 64-element slices at random (unaligned) offsets: fast, and no two blocks alike.
    const pool = poolOf(dtype);
    const x = new Float32Array(n);
    for (let at = 0; at < n; at += 64) {
      const len = Math.min(64, n - at);
      const off = Math.floor(rng.next() * (pool.length - 64));
      x.set(pool.subarray(off, off + len), at);
    }
    return x;
  }
  const r = rounder(dtype);
  const x = new Float32Array(n);
  for (let i = 0; i < n; i++) x[i] = r(rng.normal() * scale);
  if (n > 0 && x.every((e) => e === 0)) x[0] = 1;
  return x;
}

function relL2(a, b, from = 0, to = a.length) {
  let num = 0;
  let den = 0;
  for (let i = from; i < to; i++) {
    const d = a[i] - b[i];
    num += d * d;
    den += b[i] * b[i];
  }
  if (den === 0) return num === 0 ? 0 : Math.sqrt(num);
  return Math.sqrt(num / den);
}

const lengthsOf = (cu) => Array.from({ length: cu.length - 1 }, (_, b) => cu[b + 1] - cu[b]);
const prefix = (lens) => {
  const cu = new Int32Array(lens.length + 1);
  lens.forEach((l, i) => (cu[i + 1] = cu[i] + l));
  return cu;
};
const S = (n) => Math.max(1, Math.round(n * SCALE));

class Bad extends Error {}
function ensure(cond, msg) {
  if (!cond) throw new Bad(typeof msg === 'function' ? msg() : msg);
}

// ---------------------------------------------------------------------------------------------
// The package (child side)
// ---------------------------------------------------------------------------------------------

let m; // the package module
let device;

async function expectError(code, what, fn) {
  let err;
  try {
    const r = fn();
    if (r && typeof r.then === 'function') await r;
  } catch (e) {
    err = e;
  }
  ensure(err !== undefined, `${what}: expected MobaError ${code}, but nothing was thrown`);
  ensure(err instanceof m.MobaError, () => `${what}: expected MobaError ${code}, got ${err?.name}: ${err?.message}`);
  ensure(err.code === code, () => `${what}: expected code ${code}, got ${err.code}: ${err.message}`);
  return err;
}

function upload(data, dtype, shape, dev = device) {
  return dev.tensor(data, { dtype, shape });
}

// ---------------------------------------------------------------------------------------------
// Kernel ops: gate, MoBA attention, flash attention on one geometry
// ---------------------------------------------------------------------------------------------

const TOL_OP = { bf16: 2e-2, f16: 5e-3 };

/** Position info of a global query row. */
function rowInfo(cuQ, cuK, row) {
  let b = 0;
  while (cuQ[b + 1] <= row) b++;
  const lq = cuQ[b + 1] - cuQ[b];
  const lk = cuK[b + 1] - cuK[b];
  return { b, lq, lk, t: lk - lq + row - cuQ[b] };
}

/** Float64 attention of one (row, head) over the given key positions of its sequence. */
function attendRow(c, x, row, h, keys) {
  const D = c.D;
  const info = rowInfo(c.cuQ, c.cuK, row);
  const kvh = Math.floor(h / (c.Hq / c.Hkv));
  const qOff = (row * c.Hq + h) * D;
  const scale = c.scale ?? 1 / Math.sqrt(D);
  const sc = new Float64Array(keys.length);
  let mx = -Infinity;
  for (let i = 0; i < keys.length; i++) {
    const kOff = ((c.cuK[info.b] + keys[i]) * c.Hkv + kvh) * D;
    let dot = 0;
    for (let d = 0; d < D; d++) dot += x.q[qOff + d] * x.k[kOff + d];
    sc[i] = dot * scale;
    if (sc[i] > mx) mx = sc[i];
  }
  const out = new Float64Array(D);
  let sum = 0;
  for (let i = 0; i < keys.length; i++) {
    const p = Math.exp(sc[i] - mx);
    sum += p;
    const vOff = ((c.cuK[info.b] + keys[i]) * c.Hkv + kvh) * D;
    for (let d = 0; d < D; d++) out[d] += p * x.v[vOff + d];
  }
  for (let d = 0; d < D; d++) out[d] /= sum;
  return { out, lse: mx + Math.log(sum) };
}

/** Selected past blocks (float64 scores): top topK-1 of j < cur, ties to lower index, NaN lowest. */
function selectFromScores(scores, topK) {
  const idx = Array.from(scores, (_, j) => j);
  const val = (s) => (Number.isNaN(s) ? -Infinity : s);
  idx.sort((i, j) => {
    const a = scores[i];
    const b = scores[j];
    if (Number.isNaN(a) !== Number.isNaN(b)) return Number.isNaN(a) ? 1 : -1;
    return val(b) - val(a) || i - j;
  });
  return idx.slice(0, Math.min(topK - 1, scores.length));
}

/** Bound on |fp32 score - float64 score| of a row (as the repo's gate tests): near-ties are excused. */
function scoreTol(c, x, row, h) {
  const D = c.D;
  const info = rowInfo(c.cuQ, c.cuK, row);
  const kvh = Math.floor(h / (c.Hq / c.Hkv));
  let q1 = 0;
  for (let d = 0; d < D; d++) q1 += Math.abs(x.q[(row * c.Hq + h) * D + d]);
  let kMax = 0;
  for (let s = c.cuK[info.b]; s < c.cuK[info.b + 1]; s++) {
    const off = (s * c.Hkv + kvh) * D;
    for (let d = 0; d < D; d++) {
      const a = Math.abs(x.k[off + d]);
      if (a > kMax && Number.isFinite(a)) kMax = a;
    }
  }
  return 4 * (c.chunkSize + D + 8) * 2 ** -24 * q1 * kMax + 1e-6;
}

/**
 * Checks one row of the device gate against float64 scores. Returns the
 * selected blocks to use for attention (the device's), or throws.
 */
function checkGateRow(c, x, centroids, got, row, h) {
  const totalQ = c.cuQ[c.cuQ.length - 1];
  const info = rowInfo(c.cuQ, c.cuK, row);
  const cur = Math.floor(info.t / c.chunkSize);
  const keep = Math.min(c.topK - 1, cur);
  const sel = Array.from(got.subarray((h * totalQ + row) * c.topK, (h * totalQ + row + 1) * c.topK));
  const where = () => `gate (head ${h}, row ${row}, seq ${info.b}, t ${info.t}, cur ${cur}) = [${sel.join(' ')}]`;
  for (let i = 0; i < keep; i++) {
    ensure(sel[i] >= 0 && sel[i] < cur && (i === 0 || sel[i] > sel[i - 1]), () => `malformed ${where()}`);
  }
  ensure(sel[keep] === cur, () => `current block missing: ${where()}`);
  for (let i = keep + 1; i < c.topK; i++) ensure(sel[i] === -1, () => `padding not -1: ${where()}`);
  if (centroids && keep > 0 && keep < cur) {
    const opts = { cuSeqlensQ: c.cuQ, cuSeqlensK: c.cuK, numQHeads: c.Hq, numKVHeads: c.Hkv, headDim: c.D, chunkSize: c.chunkSize, centroids };
    const scores = m.reference.gateScores(x.q, x.k, opts, h, row);
    const want = selectFromScores(scores, c.topK);
    const gotSet = sel.slice(0, keep);
    if (!(gotSet.every((j) => want.includes(j)))) {
      const val = (s) => (Number.isNaN(s) ? -Infinity : s);
      const boundary = Math.min(...want.map((j) => val(scores[j])));
      const tol = scoreTol(c, x, row, h);
      for (const j of gotSet) {
        if (want.includes(j)) continue;
        ensure(val(scores[j]) >= boundary - tol,
          () => `${where()}: want [${[...want].sort((a, b) => a - b)}]; block ${j} scores ${scores[j]} vs boundary ${boundary} (tol ${tol.toExponential(2)})`);
      }
      return { sel: sel.slice(0, keep + 1), flipped: true };
    }
  }
  return { sel: sel.slice(0, keep + 1), flipped: false };
}

function mobaKeys(sel, t, B) {
  const keys = [];
  for (const j of sel) for (let s = j * B; s <= Math.min((j + 1) * B - 1, t); s++) keys.push(s);
  return keys;
}

/**
 * One geometry through mobaGate, mobaAttention and flashAttention (causal and not).
 * c: { dtype, D, Hq, Hkv, cuQ, cuK, chunkSize, topK, returnLse, scale?, inject?: { seq, where, kind }, ops? }
 */
async function runGeometry(c, rng) {
  const totalQ = c.cuQ[c.cuQ.length - 1];
  const totalK = c.cuK[c.cuK.length - 1];
  const { D, Hq, Hkv, dtype } = c;
  const x = { q: randn(totalQ * Hq * D, rng, dtype), k: randn(totalK * Hkv * D, rng, dtype), v: randn(totalK * Hkv * D, rng, dtype) };
  // Inject odd values into one sequence (all its rows of the chosen tensor, a few elements each).
  let dirtySeq = -1;
  let finiteInputs = true;
  if (c.inject) {
    const { where, kind } = c.inject;
    dirtySeq = c.inject.seq;
    const cu = where === 'q' ? c.cuQ : c.cuK;
    const heads = where === 'q' ? Hq : Hkv;
    const arr = x[where];
    const from = cu[dirtySeq] * heads * D;
    const to = cu[dirtySeq + 1] * heads * D;
    const r = rounder(dtype);
    const huge = dtype === 'bf16' ? 1e30 : 6e4;
    const tiny = dtype === 'bf16' ? 1e-30 : 1e-6;
    if (kind === 'tiny') {
      for (let i = from; i < to; i++) arr[i] = r(arr[i] * tiny) || r(tiny);
    } else {
      const value = { nan: NaN, inf: Infinity, ninf: -Infinity, huge, nhuge: -huge }[kind];
      const n = Math.max(1, Math.floor((to - from) / 97));
      for (let i = 0; i < n && to > from; i++) arr[rng.int(from, to - 1)] = r(value);
      if (kind === 'nan' || kind === 'inf' || kind === 'ninf') finiteInputs = false;
    }
    // Huge values in q or k can overflow scores (inf - inf); in v (bf16) the output stays finite.
    if ((kind === 'huge' || kind === 'nhuge') && where !== 'v' && dtype === 'bf16') finiteInputs = false;
  }
  // Rows whose values the comparison covers: all rows of clean sequences; the dirty sequence only for 'tiny'/'huge in v'.
  const compareSeq = (b) => b !== dirtySeq || (finiteInputs && c.inject && (c.inject.kind === 'tiny' || c.inject.where === 'v' || dtype === 'f16'));
  // Tiny v in f16 are subnormals: the f16 output grid is then too coarse for a relative comparison.
  const exactRows = (b) => b !== dirtySeq || (c.inject && c.inject.kind === 'tiny' && !(dtype === 'f16' && c.inject.where === 'v'));
  const q = upload(x.q, dtype, [totalQ, Hq, D]);
  const k = upload(x.k, dtype, [totalK, Hkv, D]);
  const v = upload(x.v, dtype, [totalK, Hkv, D]);
  const base = { cuSeqlensQ: c.cuQ, cuSeqlensK: c.cuK };
  if (c.scale !== undefined) base.softmaxScale = c.scale;
  const ops = c.ops ?? ['gate', 'moba', 'flash-causal', 'flash'];
  const outs = {};
  const retLse = c.returnLse;
  // Enqueue everything first (as a user would), read back afterwards.
  if (ops.includes('gate')) outs.gate = m.mobaGate(q, k, { ...base, chunkSize: c.chunkSize, topK: c.topK });
  if (ops.includes('moba')) outs.moba = m.mobaAttention(q, k, v, { ...base, chunkSize: c.chunkSize, topK: c.topK, returnLse: retLse });
  if (ops.includes('flash-causal')) outs.flashC = m.flashAttention(q, k, v, { ...base, causal: true, returnLse: retLse });
  if (ops.includes('flash')) outs.flash = m.flashAttention(q, k, v, { ...base, causal: false, returnLse: !retLse });
  const read = async (r) => (r === undefined ? undefined : r.out ? { out: await r.out.toArray(), lse: await r.lse.toArray() } : { out: await r.toArray() });
  const gate = outs.gate ? await outs.gate.toArray() : undefined;
  const res = { moba: await read(outs.moba), flashC: await read(outs.flashC), flash: await read(outs.flash) };
  // Shapes.
  if (gate) ensure(outs.gate.shape.join() === [Hq, totalQ, c.topK].join(), `gate shape ${outs.gate.shape}`);
  for (const [name, r] of Object.entries(outs)) {
    if (name === 'gate') continue;
    const o = r.out ?? r;
    ensure(o.shape.join() === [totalQ, Hq, D].join(), `${name} out shape ${o.shape}`);
    if (r.lse) ensure(r.lse.shape.join() === [Hq, totalQ].join(), `${name} lse shape ${r.lse.shape}`);
  }

  // Which rows to check in detail: all when the float64 work fits the budget, else a sample.
  const lens = lengthsOf(c.cuK);
  const avgKeys = totalQ === 0 ? 0 : lens.reduce((s, l, b) => s + l * (c.cuQ[b + 1] - c.cuQ[b]), 0) / totalQ;
  const costAll = totalQ * Hq * D * (avgKeys * 2 + Math.min(avgKeys, c.chunkSize * c.topK) + avgKeys / c.chunkSize);
  const fullRef = costAll <= REF_BUDGET;
  const ids = [];
  if (fullRef) {
    for (let row = 0; row < totalQ; row++) for (let h = 0; h < Hq; h++) ids.push([row, h]);
  } else if (totalQ > 0) {
    const n = Math.max(8, Math.floor((REF_BUDGET / costAll) * totalQ * Hq));
    // Always the first and last row of every sequence, plus random rows.
    for (let b = 0; b + 1 < c.cuQ.length; b++) {
      if (c.cuQ[b + 1] > c.cuQ[b]) {
        ids.push([c.cuQ[b], rng.int(0, Hq - 1)], [c.cuQ[b + 1] - 1, rng.int(0, Hq - 1)]);
      }
    }
    for (let i = 0; i < n; i++) ids.push([rng.int(0, totalQ - 1), rng.int(0, Hq - 1)]);
  }

  // Every value written (poisoned outputs read NaN); finite where the inputs of the sequence are finite.
  for (const [name, r] of Object.entries(res)) {
    if (!r) continue;
    for (let row = 0; row < totalQ; row++) {
      const { b } = rowInfo(c.cuQ, c.cuK, row);
      if (b === dirtySeq && !finiteInputs) continue;
      if (b === dirtySeq && !compareSeq(b)) continue;
      for (let i = row * Hq * D; i < (row + 1) * Hq * D; i++) {
        ensure(Number.isFinite(r.out[i]), () => `${name}: out[row ${row}, head ${Math.floor((i / D) % Hq)}, d ${i % D}] = ${r.out[i]} (seq ${b}, clean inputs)`);
      }
    }
  }
  let flips = 0;
  let checked = 0;
  const err = { moba: [0, 0], flashC: [0, 0], flash: [0, 0] };
  const worst = { moba: 0, flashC: 0, flash: 0 };
  let lseErr = 0;
  const centroids = gate && finiteInputs
    ? m.reference.blockCentroids(x.k, { cuSeqlensK: c.cuK, numKVHeads: Hkv, headDim: D, chunkSize: c.chunkSize })
    : null;
  // Gate form on every row (any values), against float64 scores on the checked rows.
  if (gate) {
    for (let row = 0; row < totalQ; row++) {
      for (let h = 0; h < Hq; h++) checkGateRow(c, x, null, gate, row, h);
    }
  }
  const tol = TOL_OP[dtype];
  for (const [row, h] of ids) {
    const info = rowInfo(c.cuQ, c.cuK, row);
    if (!compareSeq(info.b) || !exactRows(info.b)) continue;
    checked++;
    const acc = (name, want) => {
      const r = res[name];
      const off = (row * Hq + h) * D;
      let num = 0;
      let den = 0;
      for (let d = 0; d < D; d++) {
        num += (r.out[off + d] - want.out[d]) ** 2;
        den += want.out[d] ** 2;
      }
      err[name][0] += num;
      err[name][1] += den;
      const e = den === 0 ? Math.sqrt(num) : Math.sqrt(num / den);
      ensure(e <= 4 * tol, () => `${name}: row ${row} (seq ${info.b}, t ${info.t}, Lq ${info.lq}, Lk ${info.lk}) head ${h}: relL2 ${e.toExponential(3)} > ${4 * tol}`);
      if (e > worst[name]) worst[name] = e;
      if (r.lse) {
        const l = r.lse[h * totalQ + row];
        const dl = Math.abs(l - want.lse);
        const lim = 2e-3 + 1e-5 * Math.abs(want.lse);
        ensure(dl <= lim, () => `${name}: lse[head ${h}, row ${row}] = ${l}, float64 ${want.lse}`);
        lseErr = Math.max(lseErr, dl);
      }
    };
    if (res.moba) {
      let sel;
      if (gate) {
        const g = checkGateRow(c, x, centroids, gate, row, h);
        sel = g.sel;
        if (g.flipped) flips++;
      } else {
        const scores = m.reference.gateScores(x.q, x.k, { cuSeqlensQ: c.cuQ, cuSeqlensK: c.cuK, numQHeads: Hq, numKVHeads: Hkv, headDim: D, chunkSize: c.chunkSize }, h, row);
        sel = [...selectFromScores(scores, c.topK), Math.floor(info.t / c.chunkSize)].sort((a, b) => a - b);
      }
      acc('moba', attendRow(c, x, row, h, mobaKeys(sel, info.t, c.chunkSize)));
    }
    if (res.flashC) acc('flashC', attendRow(c, x, row, h, Array.from({ length: info.t + 1 }, (_, s) => s)));
    if (res.flash) acc('flash', attendRow(c, x, row, h, Array.from({ length: info.lk }, (_, s) => s)));
  }
  for (const name of Object.keys(err)) {
    const [num, den] = err[name];
    const e = den === 0 ? Math.sqrt(num) : Math.sqrt(num / den);
    ensure(e <= tol, () => `${name}: relative L2 over checked rows ${e.toExponential(3)} > ${tol}`);
  }
  ensure(flips <= Math.max(2, checked / 500), `${flips} gate near-tie flips in ${checked} rows`);

  // The package's own float64 reference, on small clean problems: exact gate, attention within tolerance.
  let refNote = '';
  if (fullRef && dirtySeq < 0 && totalQ > 0) {
    const shape = { numQHeads: Hq, numKVHeads: Hkv, headDim: D, cuSeqlensQ: c.cuQ, cuSeqlensK: c.cuK };
    if (gate) {
      const want = m.reference.mobaGate(x.q, x.k, { ...shape, chunkSize: c.chunkSize, topK: c.topK });
      let diff = 0;
      for (let i = 0; i < want.length; i++) if (want[i] !== gate[i]) diff++;
      // Differences only at near-ties (already excused row by row above).
      ensure(diff === 0 || flips > 0, `gate differs from reference.mobaGate at ${diff} entries without a near-tie`);
      refNote += ` gateDiff=${diff}`;
    }
    if (res.moba && flips === 0) {
      const want = m.reference.mobaAttention(x.q, x.k, x.v, { ...shape, chunkSize: c.chunkSize, topK: c.topK, softmaxScale: c.scale });
      const e = relL2(res.moba.out, want.out);
      ensure(e <= tol, `mobaAttention vs reference.mobaAttention: relL2 ${e.toExponential(3)} > ${tol}`);
      refNote += ` refMoba=${e.toExponential(1)}`;
    }
    if (res.flashC) {
      const want = m.reference.flashAttention(x.q, x.k, x.v, { ...shape, causal: true, softmaxScale: c.scale });
      const e = relL2(res.flashC.out, want.out);
      ensure(e <= tol, `flashAttention causal vs reference: relL2 ${e.toExponential(3)} > ${tol}`);
      refNote += ` refCausal=${e.toExponential(1)}`;
    }
  }
  for (const t of [q, k, v]) t.dispose();
  for (const r of Object.values(outs)) (r.out ? [r.out, r.lse] : [r]).forEach((t) => t.dispose());
  const fmt = (o) => Object.entries(o).map(([k2, e]) => `${k2}=${e.toExponential(1)}`).join(' ');
  return `totalQ=${totalQ} totalK=${totalK} rows checked=${checked}${fullRef ? ' (all)' : ' (sampled)'} worst ${fmt(worst)} lse=${lseErr.toExponential(1)} flips=${flips}${refNote}`;
}

// ---------------------------------------------------------------------------------------------
// KV cache scenarios
// ---------------------------------------------------------------------------------------------

const TOL_KV = { bf16: 1.6e-2, f16: 4e-3 }; // test/helpers/kv-cache-cases.ts

/** Host copy of every cached token, per layer and sequence (rows of numKVHeads*headDim). */
class Truth {
  constructor(numLayers, rowLen) {
    this.rowLen = rowLen;
    this.k = Array.from({ length: numLayers }, () => new Map());
    this.v = Array.from({ length: numLayers }, () => new Map());
  }
  push(layer, seq, k, v) {
    for (const [store, data] of [[this.k[layer], k], [this.v[layer], v]]) {
      const old = store.get(seq) ?? { buf: new Float32Array(1024), len: 0 };
      let { buf } = old;
      if (old.len + data.length > buf.length) {
        const nb = new Float32Array(Math.max(buf.length * 2, old.len + data.length));
        nb.set(buf.subarray(0, old.len));
        buf = nb;
      }
      buf.set(data, old.len);
      store.set(seq, { buf, len: old.len + data.length });
    }
  }
  fork(from, to) {
    for (const store of [...this.k, ...this.v]) {
      const e = store.get(from);
      if (e) store.set(to, { buf: e.buf.slice(0, Math.max(e.len, 1024)), len: e.len });
    }
  }
  free(seq) {
    for (const store of [...this.k, ...this.v]) store.delete(seq);
  }
  tokens(layer, seq) {
    const e = this.k[layer].get(seq);
    return e ? e.len / this.rowLen : 0;
  }
  kOf(layer, seq) {
    const e = this.k[layer].get(seq);
    return e ? e.buf.subarray(0, e.len) : new Float32Array(0);
  }
  vOf(layer, seq) {
    const e = this.v[layer].get(seq);
    return e ? e.buf.subarray(0, e.len) : new Float32Array(0);
  }
}

class KVWorld {
  constructor(rng, o) {
    this.rng = rng;
    this.o = o; // { Hq, Hkv, D, dtype, numLayers, numPages, pageSize, cacheChunk, layers: [{chunkSize, topK, decode}] }
    this.cache = new m.KVCache(device, {
      numLayers: o.numLayers, numPages: o.numPages, pageSize: o.pageSize, chunkSize: o.cacheChunk,
      numKVHeads: o.Hkv, headDim: o.D, dtype: o.dtype,
    });
    this.truth = new Truth(o.numLayers, o.Hkv * o.D);
    // One MobaAttention object per layer (policy and block size vary across layers).
    this.layers = o.layers.map((l) => new m.MobaAttention(device, {
      numQHeads: o.Hq, numKVHeads: o.Hkv, headDim: o.D, dtype: o.dtype, chunkSize: l.chunkSize, topK: l.topK, decode: l.decode,
    }));
    this.steps = 0;
    this.compared = 0;
    this.refCompared = 0;
    this.worst = 0;
    this.excused = 0;
  }

  add() {
    return this.cache.addSequence();
  }

  fork(seq) {
    const id = this.cache.fork(seq);
    this.truth.fork(seq, id);
    return id;
  }

  free(seq) {
    this.cache.free(seq);
    this.truth.free(seq);
  }

  /**
   * One forward() step over every layer. check: 'oneshot' compares against
   * one-shot mobaAttention / flashAttention over the same tokens; 'ref' also
   * against the float64 reference (small contexts only).
   */
  async step(entries, { maxDecodeTokens, check = 'oneshot', layersOrder } = {}) {
    const o = this.o;
    const plan = this.cache.plan(entries, maxDecodeTokens === undefined ? undefined : { maxDecodeTokens });
    ensure(plan.numRows === entries.reduce((s, e) => s + e.newTokens, 0), 'plan.numRows');
    const order = layersOrder ?? Array.from({ length: o.numLayers }, (_, l) => l);
    const pending = [];
    for (const l of order) {
      const q = randn(plan.numRows * o.Hq * o.D, this.rng, o.dtype);
      const k = randn(plan.numRows * o.Hkv * o.D, this.rng, o.dtype);
      const v = randn(plan.numRows * o.Hkv * o.D, this.rng, o.dtype);
      const qt = upload(q, o.dtype, [plan.numRows, o.Hq, o.D]);
      const kt = upload(k, o.dtype, [plan.numRows, o.Hkv, o.D]);
      const vt = upload(v, o.dtype, [plan.numRows, o.Hkv, o.D]);
      const out = this.layers[l].forward(this.cache, l, plan, qt, kt, vt);
      qt.dispose();
      kt.dispose();
      vt.dispose();
      const rowLen = o.Hkv * o.D;
      for (const s of plan.sequences) {
        this.truth.push(l, s.seq, k.subarray(s.row * rowLen, (s.row + s.newTokens) * rowLen), v.subarray(s.row * rowLen, (s.row + s.newTokens) * rowLen));
      }
      pending.push({ l, out, q });
    }
    for (const p of pending) {
      p.got = await p.out.toArray();
      p.out.dispose();
      ensure(p.out.shape.join() === [plan.numRows, o.Hq, o.D].join(), `forward output shape ${p.out.shape}`);
      for (let i = 0; i < p.got.length; i++) {
        ensure(Number.isFinite(p.got[i]), () => `layer ${p.l} step ${this.steps}: output ${i} (row ${Math.floor(i / (o.Hq * o.D))}) = ${p.got[i]} with finite inputs`);
      }
    }
    if (check !== 'none') {
      for (const p of pending) await this.compare(plan, p, check === 'ref');
    }
    this.steps++;
    plan.dispose();
    return plan;
  }

  /** Compares one layer's forward output with one-shot ops (and the reference). */
  async compare(plan, p, withRef) {
    const o = this.o;
    const L = o.layers[p.l];
    const rowQ = o.Hq * o.D;
    const rowKV = o.Hkv * o.D;
    // Group sequences by the op that should reproduce them.
    const groups = { moba: [], causal: [] };
    for (const s of plan.sequences) {
      if (!s.decode || L.decode === 'moba') groups.moba.push(s);
      else groups.causal.push(s);
    }
    const tol = TOL_KV[o.dtype];
    for (const [kind, seqs] of Object.entries(groups)) {
      if (seqs.length === 0) continue;
      const lensQ = seqs.map((s) => s.newTokens);
      const lensK = seqs.map((s) => this.truth.tokens(p.l, s.seq));
      seqs.forEach((s, i) => ensure(lensK[i] === s.start + s.newTokens, `truth length ${lensK[i]} != ${s.start}+${s.newTokens}`));
      const cuQ = prefix(lensQ);
      const cuK = prefix(lensK);
      const totalQ = cuQ[cuQ.length - 1];
      const totalK = cuK[cuK.length - 1];
      const q = new Float32Array(totalQ * rowQ);
      const k = new Float32Array(totalK * rowKV);
      const v = new Float32Array(totalK * rowKV);
      seqs.forEach((s, i) => {
        q.set(p.q.subarray(s.row * rowQ, (s.row + s.newTokens) * rowQ), cuQ[i] * rowQ);
        k.set(this.truth.kOf(p.l, s.seq), cuK[i] * rowKV);
        v.set(this.truth.vOf(p.l, s.seq), cuK[i] * rowKV);
      });
      const qt = upload(q, o.dtype, [totalQ, o.Hq, o.D]);
      const kt = upload(k, o.dtype, [totalK, o.Hkv, o.D]);
      const vt = upload(v, o.dtype, [totalK, o.Hkv, o.D]);
      const opts = { cuSeqlensQ: cuQ, cuSeqlensK: cuK, softmaxScale: this.layers[p.l].softmaxScale };
      const ot = kind === 'moba'
        ? m.mobaAttention(qt, kt, vt, { ...opts, chunkSize: L.chunkSize, topK: L.topK })
        : m.flashAttention(qt, kt, vt, { ...opts, causal: true });
      const want = await ot.toArray();
      for (const t of [qt, kt, vt, ot]) t.dispose();
      const got = new Float32Array(totalQ * rowQ);
      seqs.forEach((s, i) => got.set(p.got.subarray(s.row * rowQ, (s.row + s.newTokens) * rowQ), cuQ[i] * rowQ));
      let ref = null;
      const cost = seqs.reduce((acc, s, i) => acc + lensQ[i] * lensK[i], 0) * o.Hq * o.D * 2;
      if (withRef && cost <= REF_BUDGET) {
        const shape = { numQHeads: o.Hq, numKVHeads: o.Hkv, headDim: o.D, cuSeqlensQ: cuQ, cuSeqlensK: cuK, softmaxScale: this.layers[p.l].softmaxScale };
        ref = kind === 'moba'
          ? m.reference.mobaAttention(q, k, v, { ...shape, chunkSize: L.chunkSize, topK: L.topK }).out
          : m.reference.flashAttention(q, k, v, { ...shape, causal: true }).out;
        this.refCompared++;
      }
      // Whole-group and per-(row, head) errors; a MoBA row may differ only at a gate near-tie.
      for (const [what, base] of [['one-shot', want], ['reference', ref]]) {
        if (!base) continue;
        let num = 0;
        let den = 0;
        for (let i = 0; i < totalQ * o.Hq; i++) {
          const e = relL2(got, base, i * o.D, (i + 1) * o.D);
          if (e > 4 * tol) {
            const row = Math.floor(i / o.Hq);
            const h = i % o.Hq;
            const b = cuQ.findIndex((x, j) => j + 1 < cuQ.length && row >= x && row < cuQ[j + 1]);
            const tie = kind === 'moba' && this.nearTie(q, k, cuQ, cuK, L, row, h);
            ensure(tie, () => `layer ${p.l} (${L.decode} decode, chunk ${L.chunkSize}, topK ${L.topK}) step ${this.steps}: ` +
              `forward vs ${what} ${kind}: seq ${seqs[b].seq} (start ${seqs[b].start}, +${seqs[b].newTokens}, ${seqs[b].decode ? 'decode' : 'prefill'}) ` +
              `row ${row - cuQ[b]} head ${h}: relL2 ${e.toExponential(3)} > ${4 * tol}`);
            this.excused++;
            continue;
          }
          this.worst = Math.max(this.worst, e);
          for (let d = i * o.D; d < (i + 1) * o.D; d++) {
            num += (got[d] - base[d]) ** 2;
            den += base[d] ** 2;
          }
        }
        const e = den === 0 ? Math.sqrt(num) : Math.sqrt(num / den);
        ensure(e <= tol, () => `layer ${p.l} step ${this.steps}: forward vs ${what} ${kind}: relL2 ${e.toExponential(3)} > ${tol}`);
      }
      this.compared += totalQ;
    }
  }

  /** Whether the float64 gate of (row, head) has a near-tie at its selection boundary. */
  nearTie(q, k, cuQ, cuK, L, row, h) {
    const o = this.o;
    const opts = { cuSeqlensQ: cuQ, cuSeqlensK: cuK, numQHeads: o.Hq, numKVHeads: o.Hkv, headDim: o.D, chunkSize: L.chunkSize };
    const scores = Array.from(m.reference.gateScores(q, k, opts, h, row)).sort((a, b) => b - a);
    const kk = L.topK - 1;
    if (kk <= 0 || scores.length <= kk) return false;
    const gap = scores[kk - 1] - scores[kk];
    return gap <= 1e-3 * (1 + Math.abs(scores[kk - 1]));
  }

  dispose() {
    for (const l of this.layers) l.dispose();
    this.cache.dispose();
  }

  summary() {
    const u = this.cache.usage();
    return `steps=${this.steps} rows compared=${this.compared} ref groups=${this.refCompared} worst row=${this.worst.toExponential(1)} ` +
      `near-tie rows=${this.excused} pages used=${u.usedPages}/${u.numPages} shared=${u.sharedPages} seqs=${u.numSequences}`;
  }
}

/** Prefills `len` tokens of `seq` in uneven pieces (some <= 8 tokens: those go through the decode path). */
async function prefillPieces(w, seq, len, rng, { check = 'oneshot', others = [] } = {}) {
  let left = len;
  while (left > 0) {
    const r = rng.next();
    const n = Math.min(left, r < 0.2 ? rng.int(1, 8) : r < 0.4 ? w.o.pageSize * rng.int(1, 4) + rng.int(-1, 1) : rng.int(9, Math.max(9, Math.ceil(len / 2))));
    if (n <= 0) continue;
    const entries = [{ seq, newTokens: n }, ...others.map((s) => ({ seq: s, newTokens: rng.int(1, 8) }))];
    await w.step(entries, { check });
    left -= n;
  }
}

/** A generic KV scenario. */
async function kvScenario(rng, o, script) {
  const w = new KVWorld(rng, o);
  try {
    await script(w);
    return w.summary();
  } finally {
    w.dispose();
  }
}

// ---------------------------------------------------------------------------------------------
// Case registry
// ---------------------------------------------------------------------------------------------

const CASES = new Map();
function add(name, fn) {
  if (CASES.has(name)) throw new Error(`duplicate case ${name}`);
  CASES.set(name, fn);
}

function registerOpCases() {
  const reg = makeRng((SEED ^ 0x5eed) >>> 0);
  const dtypes = ['bf16', 'f16'];
  const chunkSizes = [1, 2, 3, 7, 16, 48, 63, 64, 65, 100, 127, 128, 129, 255, 512, 1000, 4096, 'huge'];
  const topKs = [1, 2, 3, 8, 16, 17, 40, 64, 256];
  const groups = [[1, 1], [2, 1], [4, 1], [8, 1], [16, 1], [32, 32], [32, 16], [32, 8], [32, 4], [32, 2], [16, 4], [8, 4], [6, 3]];
  // Geometry families (see opCase): lengths of keys; query modes: how queries relate to keys.
  const families = { zeros: 0, ones: 1, odd: 2, longshort: 3, single: 4, many: 5 };
  const queryModes = ['same', 'chunked', 'decode'];
  let i = 0;
  // Sweep chunkSize: every value once, with rotating topK / family / heads / dtype.
  for (const cs of chunkSizes) {
    const topK = topKs[i % topKs.length];
    const fam = Object.keys(families)[i % 6];
    const qm = queryModes[i % 3];
    const [Hq, Hkv] = groups[i % groups.length];
    add(`op-chunk${cs}-k${topK}-${fam}-${qm}-h${Hq}x${Hkv}`, opCase({ csSpec: cs, topK, fam, qm, Hq, Hkv, dtype: dtypes[i % 2], D: i % 3 === 0 ? 64 : 128 }));
    i++;
  }
  // Sweep topK with small chunks (many blocks).
  for (const topK of topKs) {
    const cs = [16, 7, 64, 3, 48, 127, 2, 100, 1][i % 9];
    const fam = Object.keys(families)[(i + 2) % 6];
    const qm = queryModes[(i + 1) % 3];
    const [Hq, Hkv] = groups[(i + 5) % groups.length];
    add(`op-topk${topK}-chunk${cs}-${fam}-${qm}-h${Hq}x${Hkv}`, opCase({ csSpec: cs, topK, fam, qm, Hq, Hkv, dtype: dtypes[(i + 1) % 2], D: i % 2 === 0 ? 128 : 64 }));
    i++;
  }
  // GQA / MQA ratios with every geometry family.
  for (const [Hq, Hkv] of groups) {
    const fam = Object.keys(families)[i % 6];
    const qm = queryModes[i % 3];
    add(`op-gqa${Hq}x${Hkv}-${fam}-${qm}`, opCase({ csSpec: [64, 16, 128, 100][i % 4], topK: [2, 3, 8][i % 3], fam, qm, Hq, Hkv, dtype: dtypes[i % 2], D: [64, 128][(i >> 1) % 2] }));
    i++;
  }
  // Small shapes checked fully against the package reference (exact gate, attention tolerance).
  for (let j = 0; j < 12; j++) {
    const cs = [1, 2, 3, 7, 16, 63, 64, 65, 5, 9, 33, 128][j];
    const topK = [1, 2, 3, 8, 17, 2, 3, 256, 4, 5, 2, 3][j];
    add(`op-ref${j}-chunk${cs}-k${topK}`, opCase({
      csSpec: cs, topK, fam: ['zeros', 'ones', 'odd', 'longshort', 'many', 'single'][j % 6], qm: queryModes[j % 3],
      Hq: [1, 2, 4, 4, 8, 2][j % 6], Hkv: [1, 1, 2, 1, 2, 2][j % 6], dtype: dtypes[j % 2], D: j % 2 ? 64 : 128, small: true,
    }));
  }
  // Odd values: NaN, +-Inf, huge, tiny in q / k / v of one sequence.
  const kinds = ['nan', 'inf', 'ninf', 'huge', 'nhuge', 'tiny'];
  for (const where of ['q', 'k', 'v']) {
    for (const kind of kinds) {
      const dtype = dtypes[i % 2];
      add(`op-${kind}-in-${where}-${dtype}`, opCase({
        csSpec: [16, 64, 7, 100][i % 4], topK: [2, 3, 8][i % 3], fam: ['odd', 'zeros', 'many'][i % 3], qm: queryModes[i % 3],
        Hq: 8, Hkv: [1, 2, 8][i % 3], dtype, D: [64, 128][i % 2], inject: { where, kind }, small: kind === 'tiny',
      }));
      i++;
    }
  }
  // Softmax scale variants and lse.
  add('op-scale-tiny-lse', opCase({ csSpec: 32, topK: 3, fam: 'odd', qm: 'chunked', Hq: 4, Hkv: 2, dtype: 'bf16', D: 128, scale: 1e-3 }));
  add('op-scale-large-lse', opCase({ csSpec: 64, topK: 2, fam: 'odd', qm: 'same', Hq: 4, Hkv: 4, dtype: 'f16', D: 64, scale: 2.0 }));
  // Random mixtures of everything above (drawn at registration from the base seed).
  for (let j = 0; j < 14; j++) {
    const [Hq, Hkv] = reg.pick(groups);
    const inj = reg.next() < 0.3 ? { where: reg.pick(['q', 'k', 'v']), kind: reg.pick(kinds) } : undefined;
    const spec = {
      csSpec: reg.pick(chunkSizes), topK: reg.pick(topKs), fam: reg.pick(Object.keys(families)), qm: reg.pick(queryModes),
      Hq, Hkv, dtype: reg.pick(dtypes), D: reg.pick([64, 128]), inject: inj, small: reg.next() < 0.3,
    };
    add(`op-rand${j}-chunk${spec.csSpec}-k${spec.topK}-${spec.fam}-${spec.qm}-h${Hq}x${Hkv}${inj ? `-${inj.kind}-${inj.where}` : ''}`, opCase(spec));
  }
}

/** Builds a geometry case from a spec, with random lengths from the case's own stream. */
function opCase(spec) {
  return async (rng) => {
    const families = {
      zeros: () => [0, rng.int(1, S(300)), 0, 0, rng.int(1, S(700)), 0],
      ones: () => [1, 1, rng.int(2, S(200)), 1, 0, 1],
      odd: () => Array.from({ length: rng.int(2, 6) }, () => rng.int(1, S(1500))),
      longshort: () => [S(3800), ...Array.from({ length: rng.int(5, 12) }, () => rng.int(0, 9))],
      single: () => [rng.int(S(1000), S(3000))],
      many: () => Array.from({ length: rng.int(20, 40) }, () => rng.int(0, S(160))),
    };
    let lensK = families[spec.fam]();
    if (spec.small) lensK = lensK.map((l) => Math.min(l, 1 + (l % 97)));
    // Head counts shrink with long inputs on small scales (keeps the CPU backend in budget).
    let { Hq, Hkv } = spec;
    const total = lensK.reduce((a, b) => a + b, 0);
    if (SCALE < 1 && Hq * total > 6000 && Hq > Hkv) {
      const g = Hq / Hkv;
      while (Hkv > 1 && (Hkv / 2) * g * total > 6000 && Hkv % 2 === 0) Hkv /= 2;
      Hq = Hkv * g;
    }
    const lensQ = lensK.map((l) => {
      if (spec.qm === 'same') return l;
      if (spec.qm === 'decode') return Math.min(l, 1);
      const r = rng.next();
      return r < 0.25 ? Math.min(1, l) : r < 0.4 ? l : rng.int(0, l);
    });
    const maxLk = Math.max(...lensK);
    const chunkSize = spec.csSpec === 'huge' ? maxLk + 1 + rng.int(0, 5000) : spec.csSpec;
    const cuK = prefix(lensK);
    const cuQ = prefix(lensQ);
    let seq = -1;
    if (spec.inject) {
      const cands = lensK.map((l, b) => b).filter((b) => (spec.inject.where === 'q' ? lensQ[b] : lensK[b]) > 0 && lensQ[b] > 0);
      seq = cands.length ? cands[rng.int(0, cands.length - 1)] : -1;
    }
    const c = {
      dtype: spec.dtype, D: spec.D, Hq, Hkv, cuQ, cuK, chunkSize, topK: spec.topK,
      returnLse: rng.next() < 0.5, scale: spec.scale,
      inject: seq >= 0 ? { ...spec.inject, seq } : undefined,
    };
    const note = await runGeometry(c, rng);
    return `${spec.dtype} D${spec.D} h${Hq}/${Hkv} B=${chunkSize} topK=${spec.topK} Lk=[${lensK.slice(0, 12)}${lensK.length > 12 ? ',...' : ''}] ` +
      `Lq=[${lensQ.slice(0, 12)}${lensQ.length > 12 ? ',...' : ''}] ${note}`;
  };
}

function registerKVCases() {
  const pageSizes = [1, 2, 3, 8, 16, 64];
  let i = 0;
  // Decode and mixed prefill+decode, full and moba, every page size.
  for (const pageSize of pageSizes) {
    for (const policy of ['full', 'moba']) {
      const j = i++;
      add(`kv-${policy}-page${pageSize}`, async (rng) => {
        const dtype = j % 2 ? 'f16' : 'bf16';
        const D = j % 3 === 1 ? 64 : 128;
        const [Hq, Hkv] = [[8, 2], [4, 1], [16, 2], [8, 8], [6, 3], [32, 4]][j % 6];
        const cacheChunk = pageSize * [1, 2, 3, 4][j % 4];
        const layerChunks = [cacheChunk * [1, 2, 4][j % 3], cacheChunk, cacheChunk * 3];
        const layers = layerChunks.map((chunkSize, l) => ({ chunkSize, topK: [2, 3, 8, 1][(j + l) % 4], decode: l === 1 ? (policy === 'full' ? 'moba' : 'full') : policy }));
        const maxCtx = S(pageSize === 1 ? 1200 : 3000);
        const numPages = Math.ceil((8 * maxCtx) / pageSize) + 64;
        return kvScenario(rng, { Hq, Hkv, D, dtype, numLayers: 3, numPages, pageSize, cacheChunk, layers }, async (w) => {
          const seqs = [w.add(), w.add(), w.add(), w.add()];
          const lens = [0, 1, pageSize * 3 + 1, rng.int(1, maxCtx)];
          // Prefill: interleaved uneven pieces, one sequence at a time with the others decoding.
          await prefillPieces(w, seqs[3], lens[3], rng, { others: [seqs[1]] });
          await prefillPieces(w, seqs[2], lens[2], rng);
          // Decode steps with 1..8 new tokens per sequence.
          for (let s = 0; s < 4; s++) {
            await w.step(seqs.map((seq) => ({ seq, newTokens: rng.int(1, 8) })), { check: s === 0 ? 'ref' : 'oneshot' });
          }
          // Fork mid-page, both branches continue.
          const f = w.fork(seqs[3]);
          await w.step([{ seq: f, newTokens: rng.int(1, 8) }, { seq: seqs[3], newTokens: rng.int(1, 8) }]);
          await w.step([{ seq: seqs[3], newTokens: rng.int(9, 40) }, { seq: f, newTokens: 1 }, { seq: seqs[0], newTokens: 3 }]);
          w.free(seqs[1]);
          const r = w.add();
          await w.step([{ seq: r, newTokens: rng.int(1, 300) }, { seq: f, newTokens: 8 }, { seq: seqs[2], newTokens: 2 }], { check: 'ref' });
          // maxDecodeTokens variants: 0 (all prefill), 1, 8.
          for (const mdt of [0, 1, 8]) {
            await w.step([{ seq: r, newTokens: rng.int(1, 8) }, { seq: f, newTokens: rng.int(1, 8) }, { seq: seqs[0], newTokens: rng.int(1, 12) }], { maxDecodeTokens: mdt });
          }
        });
      });
    }
  }
  // Boundary-exact prefill pieces: ends at page boundaries, mid-page, block boundaries, block-1, block+1.
  for (const [pageSize, mult] of [[8, 4], [16, 4], [3, 2], [64, 1]]) {
    add(`kv-boundaries-page${pageSize}x${mult}`, async (rng) => {
      const cacheChunk = pageSize * mult;
      const layers = [{ chunkSize: cacheChunk, topK: 2, decode: 'moba' }, { chunkSize: cacheChunk * 2, topK: 3, decode: 'moba' }, { chunkSize: cacheChunk, topK: 3, decode: 'full' }];
      return kvScenario(rng, { Hq: 8, Hkv: 2, D: 64, dtype: 'bf16', numLayers: 3, numPages: Math.ceil(S(6000) / pageSize) + 200, pageSize, cacheChunk, layers }, async (w) => {
        const a = w.add();
        const b = w.add();
        const B = cacheChunk;
        const pieces = [B - 1, 1, 1, pageSize, B + 1, 2 * B - 2, 1, B, 9, 8, 7, B * 2 + 3, pageSize - 1 || 1];
        for (const n of pieces) {
          await w.step([{ seq: a, newTokens: n }, { seq: b, newTokens: rng.int(1, 8) }], { check: 'ref' });
        }
        for (let s = 0; s < 3; s++) await w.step([{ seq: a, newTokens: rng.int(1, 8) }, { seq: b, newTokens: 8 }]);
      });
    });
  }
  // Batches of 1..20 sequences, contexts up to ~4K, all decode, mixed.
  for (const batch of [1, 5, 13, 20]) {
    for (const policy of ['full', 'moba']) {
      add(`kv-batch${batch}-${policy}`, async (rng) => {
        const pageSize = [16, 8, 64, 2][batch % 4];
        const cacheChunk = pageSize * (policy === 'moba' ? 4 : 1);
        const layers = [{ chunkSize: cacheChunk * 2, topK: 3, decode: policy }, { chunkSize: cacheChunk, topK: 8, decode: policy }];
        const maxCtx = S(batch <= 5 ? 4096 : 700);
        const numPages = Math.ceil((batch * (maxCtx + 80)) / pageSize) + batch * 4 + 32;
        return kvScenario(rng, { Hq: batch <= 5 ? 8 : 16, Hkv: batch % 2 ? 4 : 2, D: batch % 3 ? 128 : 64, dtype: batch % 2 ? 'f16' : 'bf16', numLayers: 2, numPages, pageSize, cacheChunk, layers }, async (w) => {
          const seqs = Array.from({ length: batch }, () => w.add());
          // One big mixed prefill step.
          await w.step(seqs.map((seq) => ({ seq, newTokens: rng.int(1, maxCtx) })), { check: 'oneshot' });
          // Mixed: some prefill, some decode.
          await w.step(seqs.map((seq, k) => ({ seq, newTokens: k % 3 === 0 ? rng.int(9, 64) : rng.int(1, 8) })));
          for (let s = 0; s < 3; s++) await w.step(seqs.map((seq) => ({ seq, newTokens: rng.int(1, 8) })));
          await w.step(seqs.map((seq) => ({ seq, newTokens: 1 })), { layersOrder: [1, 0] });
        });
      });
    }
  }
  // Forks: many forks of one prefix (shared pages, copy-on-write of the partial page), each diverging.
  for (const pageSize of [1, 3, 16]) {
    add(`kv-forks-page${pageSize}`, async (rng) => {
      const layers = [{ chunkSize: pageSize * 4, topK: 2, decode: 'moba' }, { chunkSize: pageSize * 8, topK: 3, decode: 'full' }];
      return kvScenario(rng, { Hq: 4, Hkv: 2, D: 128, dtype: 'f16', numLayers: 2, numPages: Math.ceil(S(8000) / pageSize) + 400, pageSize, cacheChunk: pageSize * 2, layers }, async (w) => {
        const root = w.add();
        await prefillPieces(w, root, rng.int(pageSize * 5, S(900)) + 1, rng);
        const forks = [root];
        for (let f = 0; f < 6; f++) forks.push(w.fork(forks[rng.int(0, forks.length - 1)]));
        // All branches write into their (shared) partial page in one batch.
        await w.step(forks.map((seq) => ({ seq, newTokens: rng.int(1, 8) })), { check: 'ref' });
        w.free(forks[1]);
        forks.splice(1, 1);
        const g = w.fork(forks[2]);
        forks.push(g);
        await w.step(forks.map((seq, k) => ({ seq, newTokens: k === 0 ? rng.int(9, 100) : rng.int(1, 8) })), { check: 'ref' });
        for (const s of forks.slice(0, 3)) w.free(s);
        const n = w.add();
        await w.step([{ seq: n, newTokens: rng.int(50, 200) }, ...forks.slice(3).map((seq) => ({ seq, newTokens: 2 }))]);
        await w.step([{ seq: n, newTokens: 5 }, ...forks.slice(3).map((seq) => ({ seq, newTokens: 7 }))], { check: 'ref' });
      });
    });
  }
  // Capacity: fill the pool to ECAPACITY; nothing cached changes; free and continue.
  for (const [pageSize, policy] of [[8, 'moba'], [1, 'full'], [3, 'moba'], [64, 'full']]) {
    add(`kv-capacity-page${pageSize}-${policy}`, async (rng) => {
      const cacheChunk = pageSize * 2;
      const layers = [{ chunkSize: cacheChunk * 2, topK: 2, decode: policy }, { chunkSize: cacheChunk, topK: 3, decode: policy }];
      const numPages = Math.max(12, Math.ceil(S(1600) / pageSize));
      return kvScenario(rng, { Hq: 8, Hkv: 4, D: 64, dtype: 'bf16', numLayers: 2, numPages, pageSize, cacheChunk, layers }, async (w) => {
        const seqs = [w.add(), w.add(), w.add()];
        let caps = 0;
        for (let attempt = 0; attempt < 200 && caps < 3; attempt++) {
          const entries = seqs.map((seq) => ({ seq, newTokens: rng.next() < 0.5 ? rng.int(1, 8) : rng.int(9, pageSize * 6 + 9) }));
          const before = { pool: await w.cache.pool.toArray(), sums: await w.cache.keySums.toArray(), usage: JSON.stringify(w.cache.usage()), lens: seqs.map((s) => w.cache.length(s)) };
          let err;
          try {
            await w.step(entries, { check: attempt % 4 === 0 ? 'ref' : 'oneshot' });
          } catch (e) {
            if (!(e instanceof m.MobaError) || e.code !== 'ECAPACITY') throw e;
            err = e;
          }
          if (err) {
            caps++;
            ensure(JSON.stringify(w.cache.usage()) === before.usage, 'usage changed by an ECAPACITY plan');
            ensure(seqs.every((s, k) => w.cache.length(s) === before.lens[k]), 'lengths changed by an ECAPACITY plan');
            const pool = await w.cache.pool.toArray();
            const sums = await w.cache.keySums.toArray();
            ensure(Buffer.compare(Buffer.from(pool.buffer), Buffer.from(before.pool.buffer)) === 0, 'pool bytes changed by an ECAPACITY plan');
            ensure(Buffer.compare(Buffer.from(sums.buffer), Buffer.from(before.sums.buffer)) === 0, 'key sums changed by an ECAPACITY plan');
            // Continue: decode steps that still fit (1 token each) or free a sequence and re-add.
            if (caps === 2) {
              const victim = seqs.shift();
              w.free(victim);
              seqs.push(w.add());
            } else {
              try {
                await w.step(seqs.map((seq) => ({ seq, newTokens: 1 })));
              } catch (e) {
                if (!(e instanceof m.MobaError) || e.code !== 'ECAPACITY') throw e;
                const victim = seqs.shift();
                w.free(victim);
                seqs.push(w.add());
              }
            }
          }
        }
        ensure(caps >= 1, 'never hit ECAPACITY');
        // Free one sequence; the survivors still decode correctly over what they had cached.
        w.free(seqs.shift());
        while (w.cache.usage().freePages < seqs.length + 1 && seqs.length > 1) w.free(seqs.shift());
        seqs.push(w.add());
        await w.step(seqs.map((seq) => ({ seq, newTokens: 1 })), { check: 'ref' });
        // Exactly full pool: use every free page.
        const free = w.cache.usage().freePages;
        if (free > 0) {
          const s = w.add();
          await w.step([{ seq: s, newTokens: free * pageSize }], { check: 'oneshot' });
          ensure(w.cache.usage().freePages === 0, 'pool not exactly full');
          await expectError('ECAPACITY', 'plan on an exactly full pool', () => w.cache.plan([{ seq: s, newTokens: 1 }]));
          w.free(s);
        }
        return `ECAPACITY hit ${caps} times`;
      });
    });
  }
  // Random operation sequences: add, fork, free, mixed steps of random sizes, ECAPACITY tolerated.
  for (let j = 0; j < 8; j++) {
    add(`kv-rand${j}`, async (rng) => {
      const pageSize = rng.pick([1, 2, 3, 8, 16, 64]);
      const cacheChunk = pageSize * rng.pick([1, 2, 4]);
      const dtype = rng.pick(['bf16', 'f16']);
      const [Hq, Hkv] = rng.pick([[8, 1], [8, 2], [4, 4], [16, 4], [32, 8], [12, 3]]);
      const layers = Array.from({ length: rng.int(1, 3) }, () => ({
        chunkSize: cacheChunk * rng.pick([1, 2, 3, 8]), topK: rng.pick([1, 2, 3, 8, 17]), decode: rng.pick(['full', 'moba']),
      }));
      const numPages = Math.ceil(S(rng.int(2000, 12000)) / pageSize) + 8;
      let caps = 0;
      const note = await kvScenario(rng, { Hq, Hkv, D: rng.pick([64, 128]), dtype, numLayers: layers.length, numPages, pageSize, cacheChunk, layers }, async (w) => {
        const live = [w.add()];
        for (let op = 0; op < 28; op++) {
          const r = rng.next();
          if (r < 0.1 && live.length < 12) live.push(w.add());
          else if (r < 0.18 && live.length < 12) live.push(w.fork(rng.pick(live)));
          else if (r < 0.24 && live.length > 1) w.free(live.splice(rng.int(0, live.length - 1), 1)[0]);
          else {
            const chosen = live.filter(() => rng.next() < 0.7);
            if (chosen.length === 0) chosen.push(live[0]);
            const room = (seq) => numPages * pageSize - w.cache.length(seq);
            let budget = S(5000); // rows per step (keeps the host side of a step small)
            const entries = [];
            for (const seq of chosen) {
              const n = Math.min(room(seq), budget, rng.next() < 0.6 ? rng.int(1, 8) : rng.int(1, S(1500)));
              if (n <= 0) continue;
              entries.push({ seq, newTokens: n });
              budget -= n;
            }
            if (entries.length === 0) continue;
            try {
              await w.step(entries, { maxDecodeTokens: rng.pick([undefined, 0, 1, 4, 8]), check: op % 5 === 0 ? 'ref' : 'oneshot' });
            } catch (e) {
              if (!(e instanceof m.MobaError) || e.code !== 'ECAPACITY') throw e;
              caps++;
              if (live.length > 1) w.free(live.splice(rng.int(0, live.length - 1), 1)[0]);
            }
          }
        }
      });
      return `page ${pageSize} sums ${cacheChunk} ${dtype} h${Hq}/${Hkv} layers ${layers.map((l) => `${l.decode}(${l.chunkSize},${l.topK})`).join(' ')} ECAPACITY ${caps}x ${note}`;
    });
  }
  // Long context, moba decode with key sums per block, single sequence.
  for (const [pageSize, cacheChunk, chunkSize] of [[16, 512, 512], [16, 16, 512], [64, 128, 256], [2, 4, 64]]) {
    add(`kv-long-page${pageSize}-sum${cacheChunk}-chunk${chunkSize}`, async (rng) => {
      const layers = [{ chunkSize, topK: 3, decode: 'moba' }, { chunkSize, topK: 3, decode: 'full' }];
      const ctx = S(4096);
      return kvScenario(rng, { Hq: 8, Hkv: 1, D: 128, dtype: 'bf16', numLayers: 2, numPages: Math.ceil((2 * ctx + 100) / pageSize) + 8, pageSize, cacheChunk, layers }, async (w) => {
        const a = w.add();
        const b = w.add();
        await w.step([{ seq: a, newTokens: ctx - 5 }, { seq: b, newTokens: rng.int(1, 8) }], { check: 'oneshot' });
        for (let s = 0; s < 4; s++) await w.step([{ seq: a, newTokens: rng.int(1, 8) }, { seq: b, newTokens: 1 }], { check: s === 0 ? 'ref' : 'oneshot' });
        await w.step([{ seq: b, newTokens: ctx - 100 }, { seq: a, newTokens: 1 }]);
        await w.step([{ seq: b, newTokens: 8 }, { seq: a, newTokens: 8 }]);
      });
    });
  }
}

function registerMisuseCases() {
  const smallCache = (o = {}) => new m.KVCache(device, { numLayers: 2, numPages: 32, pageSize: 4, chunkSize: 8, numKVHeads: 2, headDim: 64, dtype: 'bf16', ...o });
  const smallLayer = (o = {}) => new m.MobaAttention(device, { numQHeads: 4, numKVHeads: 2, headDim: 64, chunkSize: 8, topK: 2, dtype: 'bf16', decode: 'moba', ...o });
  const rows = (rng, n, h, dev = device, dtype = 'bf16') => upload(randn(n * h * 64, rng, dtype), dtype, [n, h, 64], dev);
  const snapshot = async (cache) => [await cache.pool.toArray(), await cache.keySums.toArray()];
  const same = (a, b) => a.every((x, i) => Buffer.compare(Buffer.from(x.buffer), Buffer.from(b[i].buffer)) === 0);
  // After refused calls the plan still runs on both layers (qkv() gives each call its q, k, v).
  const forwardsOnBothLayers = async (cache, layer, plan, qkv) => {
    for (const l of [0, 1]) {
      const r = await layer.forward(cache, l, plan, ...qkv()).toArray();
      ensure(r.every(Number.isFinite), 'forward after refused calls');
    }
  };
  /** A cache with two filled sequences and a plan ready (a decode step and a mixed step). */
  const setup = async (rng) => {
    const cache = smallCache();
    const layer = smallLayer();
    const s = cache.addSequence();
    const t = cache.addSequence();
    const p0 = cache.plan([{ seq: s, newTokens: 13 }, { seq: t, newTokens: 6 }]);
    for (const l of [0, 1]) {
      const q = rows(rng, 19, 4);
      const k = rows(rng, 19, 2);
      const v = rows(rng, 19, 2);
      layer.forward(cache, l, p0, q, k, v).dispose();
    }
    await device.synchronize();
    return { cache, layer, s, t };
  };

  add('misuse-disposed-tensors', async (rng) => {
    const q = rows(rng, 10, 4);
    const k = rows(rng, 10, 2);
    const v = rows(rng, 10, 2);
    const cu = Int32Array.from([0, 4, 10]);
    const kd = rows(rng, 10, 2);
    kd.dispose();
    await expectError('EDISPOSED', 'mobaGate(disposed k)', () => m.mobaGate(q, kd, { cuSeqlensQ: cu, chunkSize: 4, topK: 2 }));
    await expectError('EDISPOSED', 'mobaAttention(disposed v)', () => m.mobaAttention(q, k, kd, { cuSeqlensQ: cu, chunkSize: 4, topK: 2 }));
    await expectError('EDISPOSED', 'flashAttention(disposed k)', () => m.flashAttention(q, kd, v, { cuSeqlensQ: cu }));
    await expectError('EDISPOSED', 'toArray of a disposed tensor', () => kd.toArray());
    kd.dispose(); // idempotent
    // Disposing an input right after enqueueing must not break the op (freed after queued work).
    const q2 = rows(rng, 10, 4);
    const o = m.mobaAttention(q2, k, v, { cuSeqlensQ: cu, chunkSize: 4, topK: 2 });
    q2.dispose();
    const out = await o.toArray();
    ensure(out.every(Number.isFinite), 'output of an op whose input was disposed after enqueueing');
    // Disposing an output before reading it, then the read.
    const o2 = m.flashAttention(q, k, v, { cuSeqlensQ: cu, causal: true });
    o2.dispose();
    await expectError('EDISPOSED', 'toArray after dispose of a just-enqueued output', () => o2.toArray());
    const cache = smallCache();
    const layer = smallLayer();
    const s = cache.addSequence();
    const plan = cache.plan([{ seq: s, newTokens: 3 }]);
    const k3 = rows(rng, 3, 2);
    k3.dispose();
    await expectError('EDISPOSED', 'forward(disposed k)', () => layer.forward(cache, 0, plan, rows(rng, 3, 4), k3, rows(rng, 3, 2)));
    await expectError('EDISPOSED', 'append(disposed v)', () => cache.append(0, plan, rows(rng, 3, 2), k3));
    // The plan is still usable on both layers.
    await forwardsOnBothLayers(cache, layer, plan, () => [rows(rng, 3, 4), rows(rng, 3, 2), rows(rng, 3, 2)]);
    cache.dispose();
    return 'ok';
  });

  add('misuse-disposed-plan-and-cache', async (rng) => {
    const { cache, layer, s, t } = await setup(rng);
    const before = await snapshot(cache);
    const plan = cache.plan([{ seq: s, newTokens: 2 }]);
    plan.dispose();
    await expectError('EINVAL', 'forward(disposed plan)', () => layer.forward(cache, 0, plan, rows(rng, 2, 4), rows(rng, 2, 2), rows(rng, 2, 2)));
    await expectError('EINVAL', 'append(disposed plan)', () => cache.append(0, plan, rows(rng, 2, 2), rows(rng, 2, 2)));
    await expectError('EINVAL', 'attend(disposed plan)', () => layer.attend(cache, 0, plan, rows(rng, 2, 4)));
    ensure(same(before, await snapshot(cache)), 'cache bytes changed by refused calls');
    // The disposed plan's tokens are counted but never written: a fresh plan on the other sequence works.
    const p2 = cache.plan([{ seq: t, newTokens: 3 }]);
    for (const l of [0, 1]) {
      const r = await layer.forward(cache, l, p2, rows(rng, 3, 4), rows(rng, 3, 2), rows(rng, 3, 2)).toArray();
      ensure(r.every(Number.isFinite), 'forward after a disposed plan');
    }
    // Dispose the cache: every use is EDISPOSED, nothing crashes.
    const p3 = cache.plan([{ seq: t, newTokens: 1 }]);
    cache.dispose();
    await expectError('EDISPOSED', 'plan() on a disposed cache', () => cache.plan([{ seq: t, newTokens: 1 }]));
    await expectError('EDISPOSED', 'addSequence() on a disposed cache', () => cache.addSequence());
    await expectError('EDISPOSED', 'fork() on a disposed cache', () => cache.fork(t));
    await expectError('EDISPOSED', 'forward() on a disposed cache', () => layer.forward(cache, 0, p3, rows(rng, 1, 4), rows(rng, 1, 2), rows(rng, 1, 2)));
    await expectError('EDISPOSED', 'append() on a disposed cache', () => cache.append(0, p3, rows(rng, 1, 2), rows(rng, 1, 2)));
    await expectError('EDISPOSED', 'toArray of the disposed pool', () => cache.pool.toArray());
    cache.dispose();
    layer.dispose();
    layer.dispose();
    return 'ok';
  });

  add('misuse-stale-plans', async (rng) => {
    const { cache, layer, s, t } = await setup(rng);
    const p1 = cache.plan([{ seq: s, newTokens: 2 }]);
    for (const l of [0, 1]) layer.forward(cache, l, p1, rows(rng, 2, 4), rows(rng, 2, 2), rows(rng, 2, 2)).dispose();
    const before = await snapshot(cache);
    const p2 = cache.plan([{ seq: s, newTokens: 1 }, { seq: t, newTokens: 20 }]);
    await expectError('EINVAL', 'forward(stale plan after plan())', () => layer.forward(cache, 0, p1, rows(rng, 2, 4), rows(rng, 2, 2), rows(rng, 2, 2)));
    cache.fork(t);
    await expectError('EINVAL', 'forward(stale plan after fork())', () => layer.forward(cache, 0, p2, rows(rng, 21, 4), rows(rng, 21, 2), rows(rng, 21, 2)));
    const p3 = cache.plan([{ seq: s, newTokens: 1 }]);
    const u = cache.addSequence();
    cache.free(u);
    await expectError('EINVAL', 'forward(stale plan after free())', () => layer.forward(cache, 0, p3, rows(rng, 1, 4), rows(rng, 1, 2), rows(rng, 1, 2)));
    await expectError('EINVAL', 'append(stale plan)', () => cache.append(1, p3, rows(rng, 1, 2), rows(rng, 1, 2)));
    await expectError('EINVAL', 'attend(stale plan)', () => layer.attend(cache, 1, p1, rows(rng, 2, 4)));
    const after = await snapshot(cache);
    // Stale plans wrote nothing (plans p2/p3 reserved pages but their tokens stay unwritten).
    ensure(same(before, after), 'cache bytes changed by stale-plan calls');
    // A plan of another cache.
    const other = smallCache();
    const po = other.plan([{ seq: other.addSequence(), newTokens: 2 }]);
    await expectError('EINVAL', 'forward(plan of another cache)', () => layer.forward(cache, 0, po, rows(rng, 2, 4), rows(rng, 2, 2), rows(rng, 2, 2)));
    await expectError('EINVAL', 'forward(a plan-like object)', () => layer.forward(cache, 0, { numRows: 2 }, rows(rng, 2, 4), rows(rng, 2, 2), rows(rng, 2, 2)));
    other.dispose();
    cache.dispose();
    return 'ok';
  });

  add('misuse-second-forward', async (rng) => {
    const { cache, layer, s, t } = await setup(rng);
    for (const [entries, mdt] of [[[{ seq: s, newTokens: 2 }, { seq: t, newTokens: 1 }], 8], [[{ seq: s, newTokens: 9 }, { seq: t, newTokens: 3 }], 8], [[{ seq: t, newTokens: 4 }], 0]]) {
      const plan = cache.plan(entries, { maxDecodeTokens: mdt });
      const n = plan.numRows;
      const q = rows(rng, n, 4);
      const k = rows(rng, n, 2);
      const v = rows(rng, n, 2);
      const first = await layer.forward(cache, 0, plan, q, k, v).toArray();
      const before = await snapshot(cache);
      await expectError('EINVAL', 'second forward() of a plan on layer 0', () => layer.forward(cache, 0, plan, q, k, v));
      await expectError('EINVAL', 'append() after forward() on layer 0', () => cache.append(0, plan, k, v));
      const again = await layer.attend(cache, 0, plan, q).toArray();
      ensure(Buffer.compare(Buffer.from(first.buffer), Buffer.from(again.buffer)) === 0 || relL2(again, first) < 1e-3, 'attend() after forward() differs');
      ensure(same(before, await snapshot(cache)), 'cache bytes changed by a refused second forward');
      cache.append(1, plan, k, v);
      await expectError('EINVAL', 'forward() after append() on layer 1', () => layer.forward(cache, 1, plan, q, k, v));
      await expectError('EINVAL', 'second append() on layer 1', () => cache.append(1, plan, k, v));
      layer.attend(cache, 1, plan, q).dispose();
    }
    cache.dispose();
    return 'ok';
  });

  add('misuse-wrong-shapes-ops', async (rng) => {
    const q = rows(rng, 10, 4);
    const k = rows(rng, 10, 2);
    const v = rows(rng, 10, 2);
    const cu = Int32Array.from([0, 4, 10]);
    const E = (what, fn) => expectError('EINVAL', what, fn);
    const ok = { cuSeqlensQ: cu, chunkSize: 4, topK: 2 };
    await E('q heads not a multiple of kv heads', () => m.mobaAttention(rows(rng, 10, 3), k, v, ok));
    await E('v shape differs from k', () => m.mobaAttention(q, k, rows(rng, 9, 2), ok));
    await E('head dims differ', () => m.mobaGate(q, upload(randn(10 * 2 * 128, rng, 'bf16'), 'bf16', [10, 2, 128]), ok));
    await E('2-D q', () => m.flashAttention(upload(randn(40 * 64, rng, 'bf16'), 'bf16', [40, 64]), k, v, { cuSeqlensQ: cu }));
    await E('f32 q', () => m.mobaGate(upload(randn(10 * 4 * 64, rng, 'bf16'), 'f32', [10, 4, 64]), k, ok));
    await E('i32 k', () => m.flashAttention(q, upload(new Int32Array(10 * 2 * 64).fill(1), 'i32', [10, 2, 64]), v, { cuSeqlensQ: cu }));
    await E('dtype mismatch q/k', () => m.mobaGate(q, rows(rng, 10, 2, device, 'f16'), ok));
    await E('cuSeqlensQ wrong total', () => m.mobaGate(q, k, { ...ok, cuSeqlensQ: Int32Array.from([0, 4, 11]) }));
    await E('cuSeqlensQ not monotone', () => m.mobaGate(q, k, { ...ok, cuSeqlensQ: Int32Array.from([0, 6, 4, 10]) }));
    await E('cuSeqlensQ negative', () => m.mobaGate(q, k, { ...ok, cuSeqlensQ: Int32Array.from([0, -2, 10]) }));
    await E('cuSeqlensQ[0] != 0', () => m.mobaGate(q, k, { ...ok, cuSeqlensQ: Int32Array.from([1, 4, 10]) }));
    await E('cuSeqlensQ a plain array', () => m.mobaGate(q, k, { ...ok, cuSeqlensQ: [0, 4, 10] }));
    await E('cuSeqlensQ of length 1', () => m.mobaGate(q, k, { ...ok, cuSeqlensQ: Int32Array.from([0]) }));
    await E('cuSeqlensK shorter than cuSeqlensQ', () => m.mobaGate(q, k, { ...ok, cuSeqlensK: Int32Array.from([0, 10]) }));
    await E('Lk < Lq', () => m.mobaAttention(q, k, v, { ...ok, cuSeqlensK: Int32Array.from([0, 3, 10]) }));
    await E('cuSeqlensK wrong total', () => m.flashAttention(q, k, v, { cuSeqlensQ: cu, cuSeqlensK: Int32Array.from([0, 5, 12]) }));
    for (const bad of [0, -1, 1.5, NaN, Infinity, 2 ** 31, '8', null]) {
      await E(`chunkSize ${bad}`, () => m.mobaGate(q, k, { ...ok, chunkSize: bad }));
    }
    for (const bad of [0, 257, -3, 2.5, NaN, undefined]) {
      await E(`topK ${bad}`, () => m.mobaAttention(q, k, v, { ...ok, topK: bad }));
    }
    for (const bad of [NaN, Infinity, -Infinity, 1e39, '1']) {
      await E(`softmaxScale ${bad}`, () => m.flashAttention(q, k, v, { cuSeqlensQ: cu, softmaxScale: bad }));
    }
    await E('returnLse "yes"', () => m.mobaAttention(q, k, v, { ...ok, returnLse: 'yes' }));
    await E('causal 1', () => m.flashAttention(q, k, v, { cuSeqlensQ: cu, causal: 1 }));
    await E('options null', () => m.flashAttention(q, k, v, null));
    await E('q not a tensor', () => m.mobaGate({ shape: [10, 4, 64], dtype: 'bf16' }, k, ok));
    if (device.backend === 'cuda') {
      const q96 = upload(randn(10 * 4 * 96, rng, 'bf16'), 'bf16', [10, 4, 96]);
      const k96 = upload(randn(10 * 2 * 96, rng, 'bf16'), 'bf16', [10, 2, 96]);
      await E('head dim 96 on CUDA', () => m.mobaAttention(q96, k96, k96, ok));
      await E('head dim 96 on CUDA (gate)', () => m.mobaGate(q96, k96, ok));
      await E('KVCache head dim 96 on CUDA', () => new m.KVCache(device, { numLayers: 1, numPages: 4, pageSize: 4, numKVHeads: 1, headDim: 96, dtype: 'bf16' }));
    }
    // Tensor creation.
    await E('tensor shape mismatch', () => device.tensor(new Float32Array(10), { dtype: 'bf16', shape: [3, 3] }));
    await E('tensor negative shape', () => device.tensor(new Float32Array(4), { dtype: 'bf16', shape: [-2, -2] }));
    await E('tensor fractional shape', () => device.tensor(new Float32Array(4), { dtype: 'bf16', shape: [2.5, 1.6] }));
    await E('tensor bad dtype', () => device.tensor(new Float32Array(4), { dtype: 'f64', shape: [4] }));
    await E('empty huge shape', () => device.empty([2 ** 30, 2 ** 30], 'bf16'));
    await E('i32 from a non-integer', () => device.tensor([1.5], { dtype: 'i32', shape: [1] }));
    // Huge allocation: EOOM (or EINVAL), never a crash.
    let err;
    try {
      device.empty([2 ** 45], 'bf16');
    } catch (e) {
      err = e;
    }
    ensure(err instanceof m.MobaError && (err.code === 'EOOM' || err.code === 'EINVAL'), `huge empty(): ${err?.code} ${err?.message}`);
    // The good call still works.
    const g = await m.mobaGate(q, k, ok).toArray();
    ensure(g.length === 4 * 10 * 2, 'gate length');
    return 'ok';
  });

  add('misuse-wrong-shapes-kv', async (rng) => {
    const { cache, layer, s, t } = await setup(rng);
    const before = await snapshot(cache);
    const E = (what, fn) => expectError('EINVAL', what, fn);
    const plan = cache.plan([{ seq: s, newTokens: 3 }, { seq: t, newTokens: 10 }]);
    const q = rows(rng, 13, 4);
    const k = rows(rng, 13, 2);
    await E('layerIndex 2', () => layer.forward(cache, 2, plan, q, k, k));
    await E('layerIndex -1', () => layer.forward(cache, -1, plan, q, k, k));
    await E('layerIndex 0.5', () => layer.forward(cache, 0.5, plan, q, k, k));
    await E('q rows', () => layer.forward(cache, 0, plan, rows(rng, 12, 4), k, k));
    await E('q heads', () => layer.forward(cache, 0, plan, rows(rng, 13, 2), k, k));
    await E('k rows', () => layer.forward(cache, 0, plan, q, rows(rng, 14, 2), k));
    await E('v heads', () => layer.forward(cache, 0, plan, q, k, rows(rng, 13, 4)));
    await E('k dtype', () => layer.forward(cache, 0, plan, q, rows(rng, 13, 2, device, 'f16'), k));
    await E('q dtype', () => layer.forward(cache, 0, plan, rows(rng, 13, 4, device, 'f16'), k, k));
    await E('cache not a KVCache', () => layer.forward({}, 0, plan, q, k, k));
    await E('layer of other KV heads', () => new m.MobaAttention(device, { numQHeads: 4, numKVHeads: 4, headDim: 64, chunkSize: 8, topK: 2, dtype: 'bf16' }).forward(cache, 0, plan, q, k, k));
    await E('layer chunk not a multiple of page', () => smallLayer({ chunkSize: 6, decode: 'full' }).forward(cache, 0, plan, q, k, k));
    await E('moba layer chunk not a multiple of cache chunk', () => smallLayer({ chunkSize: 12 }).forward(cache, 0, plan, q, k, k));
    await E('append k shape', () => cache.append(0, plan, rows(rng, 13, 3), k));
    ensure(same(before, await snapshot(cache)), 'cache bytes changed by refused forward/append');
    // The plan still works on every layer after all that.
    await forwardsOnBothLayers(cache, layer, plan, () => [q, k, rows(rng, 13, 2)]);
    // plan() argument errors: nothing reserved, nothing changed.
    const u0 = JSON.stringify(cache.usage());
    await E('empty batch', () => cache.plan([]));
    await E('unknown seq', () => cache.plan([{ seq: 999, newTokens: 1 }]));
    await E('duplicate seq', () => cache.plan([{ seq: s, newTokens: 1 }, { seq: s, newTokens: 2 }]));
    await E('newTokens 0', () => cache.plan([{ seq: s, newTokens: 0 }]));
    await E('newTokens 1.5', () => cache.plan([{ seq: s, newTokens: 1.5 }]));
    await E('newTokens beyond the pool', () => cache.plan([{ seq: s, newTokens: 32 * 4 }]));
    await E('maxDecodeTokens 9', () => cache.plan([{ seq: s, newTokens: 1 }], { maxDecodeTokens: 9 }));
    await E('maxDecodeTokens -1', () => cache.plan([{ seq: s, newTokens: 1 }], { maxDecodeTokens: -1 }));
    await E('batch entry null', () => cache.plan([null]));
    await E('later entry bad', () => cache.plan([{ seq: s, newTokens: 1 }, { seq: t, newTokens: -4 }]));
    await expectError('ECAPACITY', 'batch needing more pages than free', () => cache.plan([{ seq: s, newTokens: 50 }, { seq: t, newTokens: 60 }]));
    ensure(JSON.stringify(cache.usage()) === u0, 'usage changed by refused plans');
    await E('fork unknown', () => cache.fork(12345));
    await E('free unknown', () => cache.free(-7));
    await E('KVCache chunk not a multiple of page', () => smallCache({ chunkSize: 6 }));
    await E('KVCache numPages 0', () => smallCache({ numPages: 0 }));
    await E('KVCache pageSize 0', () => smallCache({ pageSize: 0 }));
    await E('KVCache dtype f32', () => smallCache({ dtype: 'f32' }));
    await E('MobaAttention topK 0', () => smallLayer({ topK: 0 }));
    await E('MobaAttention decode "sparse"', () => smallLayer({ decode: 'sparse' }));
    cache.dispose();
    return 'ok';
  });

  add('misuse-other-device', async (rng) => {
    const other = m.openDevice({ backend: BACKEND });
    const q = rows(rng, 10, 4);
    const k = rows(rng, 10, 2);
    const ko = rows(rng, 10, 2, other);
    const cu = Int32Array.from([0, 4, 10]);
    const E = (what, fn) => expectError('EINVAL', what, fn);
    await E('gate k from another device', () => m.mobaGate(q, ko, { cuSeqlensQ: cu, chunkSize: 4, topK: 2 }));
    await E('moba v from another device', () => m.mobaAttention(q, k, ko, { cuSeqlensQ: cu, chunkSize: 4, topK: 2 }));
    await E('flash q from another device', () => m.flashAttention(rows(rng, 10, 4, other), k, k, { cuSeqlensQ: cu }));
    const { cache, layer, s } = await setup(rng);
    const before = await snapshot(cache);
    const plan = cache.plan([{ seq: s, newTokens: 3 }]);
    await E('forward k from another device', () => layer.forward(cache, 0, plan, rows(rng, 3, 4), rows(rng, 3, 2, other), rows(rng, 3, 2)));
    await E('forward q from another device', () => layer.forward(cache, 0, plan, rows(rng, 3, 4, other), rows(rng, 3, 2), rows(rng, 3, 2)));
    await E('append v from another device', () => cache.append(0, plan, rows(rng, 3, 2), rows(rng, 3, 2, other)));
    const otherLayer = new m.MobaAttention(other, { numQHeads: 4, numKVHeads: 2, headDim: 64, chunkSize: 8, topK: 2, dtype: 'bf16' });
    await E('layer of another device', () => otherLayer.forward(cache, 0, plan, rows(rng, 3, 4), rows(rng, 3, 2), rows(rng, 3, 2)));
    ensure(same(before, await snapshot(cache)), 'cache bytes changed by refused cross-device calls');
    // A disposed second device: its tensors are EDISPOSED, this device keeps working.
    const ko2 = rows(rng, 10, 2, other);
    other.dispose();
    await expectError('EDISPOSED', 'tensor of a disposed device', () => m.mobaGate(q, ko2, { cuSeqlensQ: cu, chunkSize: 4, topK: 2 }));
    await expectError('EDISPOSED', 'toArray of a disposed device tensor', () => ko2.toArray());
    await expectError('EDISPOSED', 'tensor() on a disposed device', () => other.tensor(new Float32Array(4), { dtype: 'bf16', shape: [4] }));
    await expectError('EDISPOSED', 'synchronize() on a disposed device', () => other.synchronize());
    await expectError('EDISPOSED', 'new KVCache on a disposed device', () => new m.KVCache(other, { numLayers: 1, numPages: 4, pageSize: 4, numKVHeads: 2, headDim: 64, dtype: 'bf16' }));
    await forwardsOnBothLayers(cache, layer, plan, () => [rows(rng, 3, 4), rows(rng, 3, 2), rows(rng, 3, 2)]);
    cache.dispose();
    return 'ok';
  });

  add('misuse-dispose-while-queued', async (rng) => {
    // Dispose inputs, the cache and a second device right after enqueueing work: queued work finishes, no crash.
    const other = m.openDevice({ backend: BACKEND });
    const n = S(2000);
    const qo = upload(randn(n * 8 * 128, rng, 'bf16'), 'bf16', [n, 8, 128], other);
    const ko = upload(randn(n * 2 * 128, rng, 'bf16'), 'bf16', [n, 2, 128], other);
    const o = m.mobaAttention(qo, ko, ko, { cuSeqlensQ: Int32Array.from([0, n]), chunkSize: 64, topK: 3 });
    const pending = o.toArray();
    qo.dispose();
    ko.dispose();
    other.dispose();
    let res;
    try {
      res = await pending;
    } catch (e) {
      ensure(e instanceof m.MobaError, `pending read after device dispose: ${e?.message}`);
    }
    if (res) ensure(res.every(Number.isFinite), 'result of queued work after dispose');
    const cache = smallCache({ numPages: 512 });
    const layer = smallLayer();
    const s = cache.addSequence();
    const plan = cache.plan([{ seq: s, newTokens: 300 }]);
    const outs = [0, 1].map((l) => layer.forward(cache, l, plan, rows(rng, 300, 4), rows(rng, 300, 2), rows(rng, 300, 2)));
    plan.dispose();
    cache.dispose();
    for (const t of outs) {
      const r = await t.toArray();
      ensure(r.every(Number.isFinite), 'forward output after cache dispose');
    }
    return 'ok';
  });
}

registerOpCases();
registerKVCases();
registerMisuseCases();

// ---------------------------------------------------------------------------------------------
// Child
// ---------------------------------------------------------------------------------------------

async function runChild(name) {
  m = await import(PKG.href);
  device = m.openDevice({ backend: BACKEND, poisonOutputs: POISON });
  const rng = makeRng((SEED ^ hashLabel(name)) >>> 0);
  const t0 = performance.now();
  let details;
  try {
    details = await CASES.get(name)(rng);
    // Catch a sticky CUDA error left behind: synchronize, then one more small op checked by value.
    await device.synchronize();
    const q = device.tensor(Float32Array.from({ length: 4 * 64 }, (_, i) => (i < 64 ? 1 : i < 128 ? -1 : i < 192 ? 0.5 : 2)), { dtype: 'bf16', shape: [4, 1, 64] });
    const g = await m.mobaGate(q, q, { cuSeqlensQ: Int32Array.from([0, 4]), chunkSize: 1, topK: 2 }).toArray();
    // Row 3 (q = 2): past blocks 0 (score 128), 1 (-128), 2 (64): picks 0, plus itself (3).
    ensure(g[6] === 0 && g[7] === 3 && g[0] === 0 && g[1] === -1, `post-case gate check: [${Array.from(g)}]`);
    const rt = await device.tensor(Float32Array.from([1.5, -2, 3.25]), { dtype: 'f16', shape: [3] }).toArray();
    ensure(rt[0] === 1.5 && rt[1] === -2 && rt[2] === 3.25, `post-case round trip: [${Array.from(rt)}]`);
    const line = `OK ${((performance.now() - t0) / 1000).toFixed(2)}s ${details ?? ''}`.replace(/\s+/g, ' ');
    console.log(line);
  } catch (e) {
    const msg = e instanceof m.MobaError ? `MobaError ${e.code}${e.cudaError ? ` (${e.cudaError})` : ''}: ${e.message}` : e instanceof Bad ? e.message : `${e?.name}: ${e?.message}\n${e?.stack}`;
    console.log(`BAD ${name}: ${msg}`.replace(/\n(?!$)/g, '\n  '));
    console.log(`BAD ${name}: ${msg.split('\n')[0]}`);
    process.exitCode = 1;
  }
}

// ---------------------------------------------------------------------------------------------
// Parent
// ---------------------------------------------------------------------------------------------

function runOne(name) {
  return new Promise((resolve) => {
    const t0 = Date.now();
    const child = spawn(process.execPath, [SELF, name], { env: process.env, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    const cap = (s, d) => (s.length > 200000 ? s.slice(-100000) : s) + d;
    child.stdout.on('data', (d) => (out = cap(out, d.toString())));
    child.stderr.on('data', (d) => (err = cap(err, d.toString())));
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill('SIGKILL');
    }, TIMEOUT_S * 1000);
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      const lines = out.split('\n').filter((l) => l.trim() !== '');
      const last = lines[lines.length - 1] ?? '';
      let outcome;
      if (timedOut) outcome = 'TIMEOUT';
      else if (signal) outcome = 'CRASH';
      else if (code === 0 && last.startsWith('OK')) outcome = 'OK';
      else if (last.startsWith('BAD')) outcome = 'BAD';
      else if (code === 0) outcome = 'NO_OK_LINE';
      else if (code === 13) outcome = 'HANG'; // Node: the event loop emptied with a promise never settled
      else outcome = 'CRASH';
      const tail = (out + (err ? `\n[stderr]\n${err}` : '')).split('\n').slice(-25).join('\n');
      resolve({ name, outcome, code, signal, timedOut, seconds: (Date.now() - t0) / 1000, last, tail });
    });
  });
}

async function runParent(filter) {
  const names = [...CASES.keys()].filter((n) => !filter || n.includes(filter));
  console.log(`moba-cuda fuzz: ${names.length} cases, backend ${BACKEND}, scale ${SCALE}, seed ${SEED}, ${JOBS} at once, timeout ${TIMEOUT_S}s`);
  const t0 = Date.now();
  const results = [];
  let next = 0;
  const worker = async () => {
    while (next < names.length) {
      const name = names[next++];
      const r = await runOne(name);
      results.push(r);
      const mark = r.outcome === 'OK' ? 'ok  ' : r.outcome;
      console.log(`[${String(results.length).padStart(3)}/${names.length}] ${mark} ${r.seconds.toFixed(1).padStart(5)}s ${name}${r.outcome === 'OK' ? '' : `: ${r.last.slice(0, 300)}`}`);
    }
  };
  await Promise.all(Array.from({ length: Math.min(JOBS, names.length) }, worker));
  const wall = (Date.now() - t0) / 1000;
  results.sort((a, b) => names.indexOf(a.name) - names.indexOf(b.name));
  const counts = {};
  for (const r of results) counts[r.outcome] = (counts[r.outcome] ?? 0) + 1;
  const bad = results.filter((r) => r.outcome !== 'OK');
  console.log('\n==================== summary ====================');
  console.log(`backend ${BACKEND}, scale ${SCALE}, seed ${SEED}: ${results.length} cases in ${wall.toFixed(1)}s`);
  console.log(Object.entries(counts).map(([k, v]) => `${k}: ${v}`).join(', '));
  for (const r of bad) {
    console.log(`\n--- ${r.outcome} ${r.name} (exit ${r.code}${r.signal ? `, signal ${r.signal}` : ''}${r.timedOut ? ', timed out' : ''}, ${r.seconds.toFixed(1)}s)`);
    console.log(r.tail.split('\n').map((l) => `    ${l}`).join('\n'));
  }
  if (process.env.OUT) {
    mkdirSync(process.env.OUT, { recursive: true });
    writeFileSync(join(process.env.OUT, 'fuzz.json'), JSON.stringify({
      backend: BACKEND, scale: SCALE, seed: SEED, jobs: JOBS, timeoutS: TIMEOUT_S, wallSeconds: wall, counts,
      failures: bad.map(({ name, outcome, code, signal, timedOut, seconds, last, tail }) => ({ name, outcome, code, signal, timedOut, seconds, last, tail })),
      cases: results.map(({ name, outcome, seconds, last }) => ({ name, outcome, seconds, last })),
    }, null, 2));
    console.log(`\nwrote ${join(process.env.OUT, 'fuzz.json')}`);
  }
  process.exitCode = bad.length ? 1 : 0;
}

const arg = process.argv[2];
if (arg === '--list') {
  for (const n of CASES.keys()) if (!process.argv[3] || n.includes(process.argv[3])) console.log(n);
} else if (arg !== undefined && CASES.has(arg)) {
  await runChild(arg);
} else {
  await runParent(arg);
}
