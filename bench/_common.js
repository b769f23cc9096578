// Helpers shared by the benchmarks: timing on the device's stream, fast
// random inputs, PyTorch's attention as a yardstick, a table, JSON results.
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

export const benchDir = dirname(fileURLToPath(import.meta.url));
export const rootDir = join(benchDir, '..');

/** Parses `--name value` and `--flag` options; the rest are positional. */
export function parseArgs(argv) {
  const opts = { _: [] };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a.startsWith('--')) {
      const key = a.slice(2);
      const next = argv[i + 1];
      if (next !== undefined && !next.startsWith('--')) {
        opts[key] = next;
        i++;
      } else {
        opts[key] = true;
      }
    } else {
      opts._.push(a);
    }
  }
  return opts;
}

/**
 * Median milliseconds of one call of `fn` (which enqueues device work and
 * returns tensors to dispose): `warmup` calls first, then `iters` calls each
 * timed from enqueue to a device synchronize.
 */
export async function timeOp(device, fn, { warmup = 1, iters = 5 } = {}) {
  const run = () => {
    const r = fn();
    for (const t of [r].flat()) t?.dispose?.();
  };
  for (let i = 0; i < warmup; i++) run();
  await device.synchronize();
  const times = [];
  for (let i = 0; i < iters; i++) {
    const t0 = performance.now();
    run();
    await device.synchronize();
    times.push(performance.now() - t0);
  }
  return median(times);
}

/** The median of `x` (sorts it in place; the upper one of an even count). */
export function median(x) {
  x.sort((a, b) => a - b);
  return x[Math.floor(x.length / 2)];
}

/** xorshift32: uniform 32-bit integers. */
export function makeUniform(seed) {
  let x = (seed ^ 0x9e3779b9) >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return x;
  };
}

/** Standard normal samples (Box-Muller) from uniform 32-bit integers. */
export function makeNormal(seed) {
  const u = makeUniform(seed);
  return () => {
    const a = (u() + 1) / 4294967297;
    const b = u() / 4294967296;
    return Math.sqrt(-2 * Math.log(a)) * Math.cos(2 * Math.PI * b);
  };
}

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);
/** float -> bf16 bits, round to nearest even (finite inputs). */
export function bf16Bits(x) {
  f32[0] = x;
  const u = u32[0];
  return ((u + 0x7fff + ((u >>> 16) & 1)) >>> 16) & 0xffff;
}

// 65536 normal samples as bf16 bits: a random 16-bit index draws from them,
// so gigabytes of inputs take a table lookup per element.
let normalTable;
function normalBits() {
  if (!normalTable) {
    const normal = makeNormal(12345);
    normalTable = new Uint16Array(65536);
    for (let i = 0; i < 65536; i++) normalTable[i] = bf16Bits(normal());
  }
  return normalTable;
}

/** n standard-normal bf16 values as raw bits (device.tensor takes a Uint16Array as bf16 bits). */
export function randomBf16(n, seed) {
  const table = normalBits();
  const x = new Uint16Array(n);
  let r = (seed ^ 0x9e3779b9) | 0 || 1;
  for (let i = 0; i < n; i += 2) {
    r ^= r << 13;
    r ^= r >>> 17;
    r ^= r << 5;
    x[i] = table[r & 0xffff];
    if (i + 1 < n) x[i + 1] = table[(r >>> 16) & 0xffff];
  }
  return x;
}

/**
 * Runs a PyTorch timing script with OUT set to a fresh folder and returns the
 * rows it wrote there as `jsonName`, or null with the reason when Python,
 * PyTorch or the script is missing.
 */
function runPythonRows(script, args, jsonName) {
  if (!existsSync(script)) return { rows: null, reason: `${script} not found` };
  const out = join(tmpdir(), `moba-python-${process.pid}-${jsonName}`);
  mkdirSync(out, { recursive: true });
  const r = spawnSync('python3', [script, ...args], { env: { ...process.env, OUT: out }, encoding: 'utf8' });
  if (r.status !== 0) return { rows: null, reason: `python3 ${script} ${args.join(' ')} failed: ${(r.stderr || r.error || '').toString().trim().split('\n').pop()}` };
  process.stdout.write(r.stdout);
  return { rows: JSON.parse(readFileSync(join(out, jsonName), 'utf8')), reason: null };
}

/**
 * Runs PyTorch's dense attention yardstick (.gpu/torch_sdpa.py, or
 * $MOBA_TORCH_SDPA) for the given sizes; returns its rows, or null with the
 * reason when Python, PyTorch or the script is missing.
 */
export function runTorchSdpa(seqlens, { batch, heads, dim }) {
  const script = process.env.MOBA_TORCH_SDPA ?? join(rootDir, '.gpu', 'torch_sdpa.py');
  const args = [...seqlens.map(String), '--batch', String(batch), '--heads', String(heads), '--dim', String(dim)];
  return runPythonRows(script, args, 'torch_sdpa.json');
}

/**
 * Runs bench/torch_chunked.py: PyTorch's dense attention of `chunk` new
 * tokens over each context of cached ones (contiguous K/V).
 */
export function runTorchChunked(contexts, { chunk, heads, kvHeads, dim }) {
  const args = [...contexts.map(String), '--chunk', String(chunk), '--heads', String(heads), '--kv-heads', String(kvHeads), '--dim', String(dim)];
  return runPythonRows(join(benchDir, 'torch_chunked.py'), args, 'torch_chunked.json');
}

/** Prints rows (objects) as an aligned table with the given columns. */
export function printTable(rows, columns) {
  const cells = [columns.map((c) => c.title), ...rows.map((r) => columns.map((c) => c.format(r)))];
  const widths = columns.map((_, i) => Math.max(...cells.map((row) => String(row[i]).length)));
  for (const [n, row] of cells.entries()) {
    console.log(row.map((v, i) => String(v).padStart(widths[i])).join('  '));
    if (n === 0) console.log(widths.map((w) => '-'.repeat(w)).join('  '));
  }
}

/** Writes bench/results/<name>-<time>.json (and to $OUT when set) and returns the path. */
export function writeResults(name, data) {
  const dir = join(benchDir, 'results');
  mkdirSync(dir, { recursive: true });
  const file = join(dir, `${name}-${new Date().toISOString().replace(/[:.]/g, '-')}.json`);
  const text = JSON.stringify(data, null, 1);
  writeFileSync(file, text);
  if (process.env.OUT) writeFileSync(join(process.env.OUT, `${name}.json`), text);
  return file;
}

export const fmt = {
  ms: (x) => (x == null ? '-' : x < 10 ? x.toFixed(3) : x.toFixed(1)),
  num: (x, d = 0) => (x == null || !Number.isFinite(x) ? '-' : x.toFixed(d)),
  ratio: (x) => (x == null || !Number.isFinite(x) ? '-' : `${x.toFixed(1)}x`),
};
