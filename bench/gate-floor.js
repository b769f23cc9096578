// The floor of the MoBA gate at 128K (batch 2, 16 heads, head dim 128, bf16)
// on this GPU: a warp-specialized, persistent scores kernel after a
// centroid pass, with a free selection (one max per score), a list of two or
// the sorting networks' lists of 4 and 8, and none of mobaGate's exactness
// work, from bench/floors/gate_step.cu, which this compiles with nvcc
// (sm_90a) and runs. What the real gate costs against it:
// `npm run bench -- gate --n 131072`. Writes bench/results/gate-floor-<time>.json.
//
//   npm run bench -- gate-floor
import { writeResults } from './_common.js';
import { buildAndRunFloor, floorRows } from './_floor.js';

const output = buildAndRunFloor('gate-floor', 'gate_step.cu', 300_000);
const variants = floorRows(output).map(([name, best, worst, tbps]) => ({ name, bestMs: Number(best), worstMs: Number(worst), tbps: Number(tbps) || null }));
console.log(`results: ${writeResults('gate-floor', { header: output.split('\n')[0], variants })}`);
