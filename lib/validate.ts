/**
 * Argument checks shared by every op. Each failure is an EINVAL MobaError
 * naming the argument, what was expected and what was received.
 */
import type { Device } from './device.js';
import { isFloat16Type } from './dtype.js';
import { describeValue, invalidArgument, isRevokedProxy, MobaError } from './errors.js';
import { Tensor } from './tensor.js';

export function checkOptions<T extends object>(options: unknown, arg = 'options'): T {
  if (options === null || typeof options !== 'object' || isRevokedProxy(options) || Array.isArray(options)) {
    throw invalidArgument(arg, 'an options object', options);
  }
  return options as T;
}

export function checkPositiveInt(value: unknown, arg: string, max = 2 ** 31 - 1): number {
  if (typeof value !== 'number' || !Number.isInteger(value) || value < 1 || value > max) {
    throw invalidArgument(arg, max < 2 ** 31 - 1 ? `a positive integer <= ${max}` : 'a positive integer', value);
  }
  return value;
}

export function checkBoolean(value: unknown, arg: string, fallback: boolean): boolean {
  if (value === undefined) return fallback;
  if (typeof value !== 'boolean') throw invalidArgument(arg, 'a boolean', value);
  return value;
}

/** The largest |softmaxScale| whose product with log2(e) stays finite in fp32, rounded down. */
const MAX_SOFTMAX_SCALE = 2.35e38;

export function checkSoftmaxScale(value: unknown, headDim: number): number {
  if (value === undefined) return 1 / Math.sqrt(headDim);
  if (typeof value !== 'number' || !Number.isFinite(value)) {
    throw invalidArgument('softmaxScale', 'a finite number', value);
  }
  // The kernels scale by softmaxScale * log2(e) in fp32: a larger magnitude
  // would become Infinity there.
  if (!(Math.abs(value) <= MAX_SOFTMAX_SCALE)) {
    throw invalidArgument('softmaxScale', `a number of magnitude at most ${MAX_SOFTMAX_SCALE}`, value);
  }
  return value;
}

export function checkTensor(value: unknown, arg: string): Tensor {
  if (isRevokedProxy(value) || !(value instanceof Tensor)) throw invalidArgument(arg, 'a Tensor', value);
  value.assertLive(arg);
  value.device.assertLive(arg);
  return value;
}

/** Shapes of q, k (and v) in THD layout, checked against each other. */
export interface QKVShape {
  device: Device;
  dtype: 'bf16' | 'f16';
  totalQ: number;
  totalK: number;
  numQHeads: number;
  numKVHeads: number;
  headDim: number;
}

/** Limits the native ops enforce too; checked here so the messages come from one place. */
export const MAX_CHUNK_SIZE = 2 ** 30;
const MAX_HEADS = 4096;
const MAX_HEAD_DIM = 1024;

/** Head dims the CUDA kernels are instantiated for. */
export const CUDA_HEAD_DIMS: readonly number[] = [64, 128];

function check3d(t: Tensor, arg: string, layout: string): void {
  if (t.shape.length !== 3) throw invalidArgument(`${arg}.shape`, `a 3-D shape ${layout}`, t.shape);
}

export function checkQKV(qv: unknown, kv: unknown, vv: unknown | undefined, withV: boolean): QKVShape {
  const q = checkTensor(qv, 'q');
  const k = checkTensor(kv, 'k');
  if (!isFloat16Type(q.dtype)) throw invalidArgument('q.dtype', '"bf16" or "f16"', q.dtype);
  check3d(q, 'q', '[totalQ, numQHeads, headDim]');
  check3d(k, 'k', '[totalK, numKVHeads, headDim]');
  if (k.device !== q.device) throw invalidArgument('k.device', `the device of q (${q.device})`, k.device.toString());
  if (k.dtype !== q.dtype) throw invalidArgument('k.dtype', `the dtype of q ("${q.dtype}")`, k.dtype);
  const [totalQ, numQHeads, headDim] = q.shape as [number, number, number];
  const [totalK, numKVHeads, kDim] = k.shape as [number, number, number];
  if (kDim !== headDim) throw invalidArgument('k.shape[2]', `the head dim of q (${headDim})`, kDim);
  if (headDim < 1 || headDim > MAX_HEAD_DIM) {
    throw invalidArgument('q.shape[2]', `a head dim in [1, ${MAX_HEAD_DIM}]`, headDim);
  }
  if (numQHeads < 1 || numQHeads > MAX_HEADS) {
    throw invalidArgument('q.shape[1]', `a number of query heads in [1, ${MAX_HEADS}]`, numQHeads);
  }
  if (numKVHeads < 1 || numQHeads % numKVHeads !== 0) {
    throw invalidArgument(
      'k.shape[1]',
      `a positive number of KV heads dividing the ${numQHeads} query heads of q`,
      numKVHeads,
    );
  }
  if (withV) {
    const v = checkTensor(vv, 'v');
    if (v.device !== q.device) throw invalidArgument('v.device', `the device of q (${q.device})`, v.device.toString());
    if (v.dtype !== q.dtype) throw invalidArgument('v.dtype', `the dtype of q ("${q.dtype}")`, v.dtype);
    if (v.shape.length !== 3 || v.shape.some((d, i) => d !== k.shape[i])) {
      throw invalidArgument('v.shape', `the shape of k [${k.shape.join(', ')}]`, v.shape);
    }
  }
  if (q.device.backend === 'cuda' && !CUDA_HEAD_DIMS.includes(headDim)) {
    throw invalidArgument('q.shape[2]', `a head dim of ${CUDA_HEAD_DIMS.join(' or ')} on CUDA`, headDim);
  }
  return { device: q.device, dtype: q.dtype, totalQ, totalK, numQHeads, numKVHeads, headDim };
}

export interface Varlen {
  cuSeqlensQ: Int32Array;
  cuSeqlensK: Int32Array;
  batch: number;
  /** Longest key length of any sequence. */
  maxSeqlenK: number;
}

function checkPrefixSums(input: unknown, arg: string, total: number, totalName: string, length?: number): Int32Array {
  if (isRevokedProxy(input) || !(input instanceof Int32Array) || !ArrayBuffer.isView(input)) {
    throw invalidArgument(arg, 'an Int32Array of prefix sums [batch+1]', input);
  }
  // Checked and used as a private copy: the caller's array (on a
  // SharedArrayBuffer, another thread may write it) could otherwise change
  // between this check and the kernels' reads.
  const value = new Int32Array(input); // a plain copy, whatever subclass or species the input has
  if (value.length < 2) throw invalidArgument(`${arg}.length`, 'at least 2 (batch + 1 with batch >= 1)', value.length);
  if (length !== undefined && value.length !== length) {
    throw invalidArgument(`${arg}.length`, `${length} (the length of cuSeqlensQ)`, value.length);
  }
  if (value[0] !== 0) throw invalidArgument(`${arg}[0]`, '0', value[0]);
  for (let i = 1; i < value.length; i++) {
    if (value[i]! < value[i - 1]!) {
      throw invalidArgument(`${arg}[${i}]`, `a value >= ${arg}[${i - 1}] (${value[i - 1]})`, value[i]);
    }
  }
  const last = value[value.length - 1]!;
  if (last !== total) throw invalidArgument(`${arg}[${value.length - 1}]`, `${totalName} (${total})`, last);
  return value;
}

export function checkVarlen(
  options: { cuSeqlensQ?: unknown; cuSeqlensK?: unknown },
  totalQ: number,
  totalK: number,
): Varlen {
  const cuSeqlensQ = checkPrefixSums(options.cuSeqlensQ, 'cuSeqlensQ', totalQ, 'q.shape[0]');
  const cuSeqlensK =
    options.cuSeqlensK === undefined
      ? checkPrefixSums(cuSeqlensQ, 'cuSeqlensQ', totalK, 'k.shape[0] (cuSeqlensK defaults to cuSeqlensQ)')
      : checkPrefixSums(options.cuSeqlensK, 'cuSeqlensK', totalK, 'k.shape[0]', cuSeqlensQ.length);
  const batch = cuSeqlensQ.length - 1;
  let maxSeqlenK = 0;
  for (let b = 0; b < batch; b++) {
    const lq = cuSeqlensQ[b + 1]! - cuSeqlensQ[b]!;
    const lk = cuSeqlensK[b + 1]! - cuSeqlensK[b]!;
    if (lk < lq) {
      throw invalidArgument(
        `the key length of sequence ${b} (cuSeqlensK)`,
        `at least its query length (${lq}): queries are the last positions of a sequence`,
        lk,
      );
    }
    if (lk > maxSeqlenK) maxSeqlenK = lk;
  }
  return { cuSeqlensQ, cuSeqlensK, batch, maxSeqlenK };
}

/**
 * The sparse attention's lists have one segment per (key block, query head):
 * fewer than 2^31 - 1 of them (the CUDA lists' offsets are 32-bit; the CPU
 * backend keeps the same limit).
 */
export function checkBlockLists(cuSeqlensK: Int32Array, chunkSize: number, numQHeads: number): void {
  let blocks = 0;
  for (let b = 0; b + 1 < cuSeqlensK.length; b++) blocks += Math.ceil((cuSeqlensK[b + 1]! - cuSeqlensK[b]!) / chunkSize);
  const pairs = blocks * numQHeads;
  if (pairs >= 2 ** 31 - 1) {
    throw new MobaError(
      'EINVAL',
      `Expected (key blocks of all sequences) * numQHeads below 2^31 - 1 but received ${describeValue(pairs)} ` +
        `(${blocks} * ${numQHeads}); use a larger chunkSize or split the batch`,
    );
  }
}

/**
 * The kernels' element offsets are 64-bit, so tensors may hold 2^31 elements
 * and more; what stays 32-bit is the count of (query row, head, block slot)
 * selections, which the gate's output and the sparse attention's lists of
 * query-head rows index. A batch past it can be split: its queries in chunks
 * (cuSeqlensK longer than cuSeqlensQ), each against the same keys.
 */
export function checkSelections(totalQ: number, numQHeads: number, topK: number): void {
  const count = totalQ * numQHeads * topK;
  if (count >= 2 ** 31 - 1) {
    throw new MobaError(
      'EINVAL',
      `Expected totalQ * numQHeads * topK below 2^31 - 1 (gate selections) but received ${describeValue(count)} ` +
        `(${totalQ} * ${numQHeads} * ${topK}); split the queries into chunks with cuSeqlensK`,
    );
  }
}
