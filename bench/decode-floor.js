// The floor of a batch-1 moba (512, 3) decode step at 128K: the step's
// structure (wait for the grid ahead, read the union, look up its pages,
// stream 18.9 MB of K and V, the gate's hand-off between CTAs, the split-KV
// merge) with no attention math, from bench/floors/decode_step.cu, which this
// compiles with nvcc (sm_90a) and runs. What a real step costs against it:
// `npm run bench -- decode --cases moba`. Writes bench/results/decode-floor-<time>.json.
//
//   npm run bench -- decode-floor
import { writeResults } from './_common.js';
import { buildAndRunFloor, floorRows } from './_floor.js';

const output = buildAndRunFloor('decode-floor', 'decode_step.cu');
const variants = floorRows(output).map(([name, best, worst, tbps]) => ({ name, bestUs: Number(best), worstUs: Number(worst), tbps: Number(tbps) || null }));
console.log(`results: ${writeResults('decode-floor', { header: output.split('\n')[0], variants })}`);
