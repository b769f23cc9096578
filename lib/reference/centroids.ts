/**
 * Block centroids (DESIGN.md section 1): the mean of each block's keys.
 * Block j of a sequence holds key positions [j*B, (j+1)*B); the last block may
 * be short, its centroid is the mean over the keys it actually has.
 */
import { invalidArgument } from '../errors.js';
import { checkCuSeqlens, checkNumeric, checkPositiveInt, type Numeric } from './types.js';

export interface CentroidResult {
  /** [totalBlocks, numKVHeads, headDim] */
  centroids: Float64Array;
  /** [batch+1] prefix sums of ceil(Lk / chunkSize) */
  cuBlocks: Int32Array;
}

export function blockCentroids(
  k: Numeric,
  o: { cuSeqlensK: Int32Array; numKVHeads: number; headDim: number; chunkSize: number },
): CentroidResult {
  if (o === null || typeof o !== 'object') throw invalidArgument('options', 'an object', o);
  const numKVHeads = checkPositiveInt('numKVHeads', o.numKVHeads);
  const headDim = checkPositiveInt('headDim', o.headDim);
  const chunkSize = checkPositiveInt('chunkSize', o.chunkSize);
  const cuK = o.cuSeqlensK;
  const totalK = checkCuSeqlens('cuSeqlensK', cuK);
  checkNumeric('k', k, totalK * numKVHeads * headDim);
  const batch = cuK.length - 1;

  const cuBlocks = blockOffsets(cuK, chunkSize);

  const rowStride = numKVHeads * headDim;
  const centroids = new Float64Array(cuBlocks[batch]! * rowStride);
  for (let b = 0; b < batch; b++) {
    const lk = cuK[b + 1]! - cuK[b]!;
    for (let j = 0; j < cuBlocks[b + 1]! - cuBlocks[b]!; j++) {
      const first = j * chunkSize;
      const end = Math.min(first + chunkSize, lk);
      const out = (cuBlocks[b]! + j) * rowStride;
      for (let s = first; s < end; s++) {
        const row = (cuK[b]! + s) * rowStride;
        for (let i = 0; i < rowStride; i++) centroids[out + i]! += k[row + i]!;
      }
      for (let i = 0; i < rowStride; i++) centroids[out + i]! /= end - first;
    }
  }
  return { centroids, cuBlocks };
}

/** Prefix sums of each sequence's block count, ceil(Lk / chunkSize): [batch + 1]. */
export function blockOffsets(cuSeqlensK: Int32Array, chunkSize: number): Int32Array {
  const batch = cuSeqlensK.length - 1;
  const cuBlocks = new Int32Array(batch + 1);
  for (let b = 0; b < batch; b++) cuBlocks[b + 1] = cuBlocks[b]! + Math.ceil((cuSeqlensK[b + 1]! - cuSeqlensK[b]!) / chunkSize);
  return cuBlocks;
}
