/**
 * The typed surface of the native addon: the only file that knows its shape.
 * Everything here is positional and unchecked for friendliness; lib/ validates
 * arguments first and the addon re-checks only what could crash it.
 */
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';

import { MobaError } from './errors.js';

export interface NativeBuffer {
  bytes(): number;
  disposed(): boolean;
  dispose(): void;
}

export interface NativeMemoryInfo {
  free: number;
  total: number;
  used: number;
}

export interface NativeDevice {
  readonly kind: 'cpu' | 'cuda';
  readonly name: string;
  /** "9.0" on CUDA, null on the CPU. */
  readonly computeCapability: string | null;
  memoryInfo(): NativeMemoryInfo;
  alloc(bytes: number): NativeBuffer;
  /** Converts `data` to `dtypeCode` and enqueues the upload. */
  write(buffer: NativeBuffer, data: Float32Array | Float64Array | Int32Array | Uint16Array, dtypeCode: number): void;
  read(buffer: NativeBuffer, dtypeCode: number, count: number): Promise<Float32Array | Int32Array>;
  fill(buffer: NativeBuffer, count: number, elemBytes: 1 | 2 | 4, pattern: number): void;
  /** Byte copy between disjoint ranges (on CUDA a cudaMemcpyAsync). */
  copy(dst: NativeBuffer, dstOffset: number, src: NativeBuffer, srcOffset: number, bytes: number): void;
  synchronize(): Promise<void>;
  dispose(): void;
  mobaGate(
    q: NativeBuffer, k: NativeBuffer, out: NativeBuffer,
    cuSeqlensQ: Int32Array, cuSeqlensK: Int32Array, dtypeCode: number,
    numQHeads: number, numKVHeads: number, headDim: number, chunkSize: number, topK: number,
  ): void;
  /**
   * chunkSize 0 selects dense attention (flashAttention). With keyRows (from
   * kvKeyRows: an int64 per key of cuSeqlensK's packed order) K and V are read
   * from the KV cache's pages: k and v are then both the page pool, whose
   * geometry the trailing arguments give; keySums, when the cache keeps one
   * key sum per block of chunkSize tokens, gives the MoBA gate its centroids.
   */
  attention(
    q: NativeBuffer, k: NativeBuffer, v: NativeBuffer, out: NativeBuffer, lse: NativeBuffer | null,
    cuSeqlensQ: Int32Array, cuSeqlensK: Int32Array, dtypeCode: number,
    numQHeads: number, numKVHeads: number, headDim: number,
    softmaxScale: number, causal: boolean, chunkSize: number, topK: number,
    keyRows?: NativeBuffer, numPages?: number, numLayers?: number, layer?: number, pageSize?: number,
    keySums?: NativeBuffer | null,
  ): void;
  /**
   * Internal, for tests of the CUDA gate only (not part of the public API):
   * runs mobaGate into `out` and also builds the CSR lists the sparse
   * attention kernels consume (native/kernels/common/moba_lists.h), copying
   * them into the given i32 buffers: cuBlocksOut [batch+1], segmentOffsetsOut
   * [totalBlocks*numQHeads+1], entriesOut and entryOfOut [numQHeads*totalQ*(topK-1)].
   * The CPU backend throws EINVAL.
   */
  mobaGateLists(
    q: NativeBuffer, k: NativeBuffer, out: NativeBuffer,
    cuSeqlensQ: Int32Array, cuSeqlensK: Int32Array, dtypeCode: number,
    numQHeads: number, numKVHeads: number, headDim: number, chunkSize: number, topK: number,
    cuBlocksOut: NativeBuffer, segmentOffsetsOut: NativeBuffer, entriesOut: NativeBuffer, entryOfOut: NativeBuffer,
  ): void;
  /**
   * Paged KV cache ops (lib/kv-cache.ts, metadata from lib/kv-plan.ts). `meta`
   * is an i32 buffer; segments are [page, slot, row, count, pieceSegments,
   * carryPage] (native/common/params.h) starting at int offset segOffset.
   * The trailing (dtype ... headDim) arguments describe the page pool.
   */
  kvAppend(
    pool: NativeBuffer, keySums: NativeBuffer, k: NativeBuffer, v: NativeBuffer,
    meta: NativeBuffer, segOffset: number, numSegments: number, numRows: number,
    dtypeCode: number, numPages: number, numLayers: number, layer: number,
    numKVHeads: number, pageSize: number, headDim: number, sumPages: number,
  ): void;
  kvGather(
    pool: NativeBuffer, k: NativeBuffer, v: NativeBuffer,
    meta: NativeBuffer, segOffset: number, numSegments: number, numRows: number,
    dtypeCode: number, numPages: number, numLayers: number, layer: number,
    numKVHeads: number, pageSize: number, headDim: number, sumPages: number,
  ): void;
  /** The gather's segments, but each row's key offset in the pages (int64, attention's keyRows) is written to keyRows instead of copying K and V. */
  kvKeyRows(
    pool: NativeBuffer, keyRows: NativeBuffer,
    meta: NativeBuffer, segOffset: number, numSegments: number, numRows: number,
    dtypeCode: number, numPages: number, numLayers: number, layer: number,
    numKVHeads: number, pageSize: number, headDim: number, sumPages: number,
  ): void;
  /**
   * Decode over the cache; meta at infoOffset holds qStart[batch], qLen[batch],
   * kvLen[batch], pageIndptr[batch+1], then numPageIndices page indices.
   * policy: 0 full, 1 moba.
   * out: null to have the op allocate the output (one call fewer per step);
   * returns that buffer, or undefined when out was given or batch is 0.
   * With k and v, the op first appends the plan's new K/V (as kvAppend);
   * spansBlocks: whether some sequence's new tokens lie in two moba blocks.
   */
  decodeAttention(
    q: NativeBuffer, out: NativeBuffer | null, pool: NativeBuffer, keySums: NativeBuffer,
    meta: NativeBuffer, infoOffset: number, batch: number, numPageIndices: number,
    numRows: number, numQHeads: number, maxQLen: number, maxKvLen: number, sumKvLen: number,
    softmaxScale: number, policy: number, chunkSize: number, topK: number,
    dtypeCode: number, numPages: number, numLayers: number, layer: number,
    numKVHeads: number, pageSize: number, headDim: number, sumPages: number,
    // forward(): the new tokens' K/V, appended by this op (kvAppend's arguments k .. numRows).
    k?: NativeBuffer, v?: NativeBuffer, appendMeta?: NativeBuffer, segOffset?: number, numSegments?: number,
    appendRows?: number, spansBlocks?: 0 | 1,
  ): NativeBuffer | undefined;
}

export interface CudaProbe {
  /** The binary was built with nvcc. */
  compiled: boolean;
  usable: boolean;
  deviceCount: number;
  /** CUDA version the driver supports (e.g. 13000), 0 without a driver. */
  driverVersion: number;
  runtimeVersion: number;
  reason: string;
  /** GPU architectures compiled in, e.g. "80,86,89,90a,compute_90". */
  archs: string;
}

export interface NativeAddon {
  NativeDevice: new (kind: 'cpu' | 'cuda', index: number) => NativeDevice;
  probeCuda(): CudaProbe;
  setErrorClass(ctor: typeof MobaError): void;
  version: string;
}

export const packageRoot = fileURLToPath(new URL('..', import.meta.url));

let cached: NativeAddon | undefined;

/**
 * Loads the addon once: the file named by MOBA_NATIVE_PATH when set (for
 * trying out a build elsewhere), else prebuilds/ first, then build/.
 * Throws ENOBINARY when none loads.
 */
export function loadNative(): NativeAddon {
  if (cached) return cached;
  const require = createRequire(import.meta.url);
  let addon: NativeAddon;
  try {
    const explicit = process.env.MOBA_NATIVE_PATH;
    if (explicit) {
      addon = require(explicit) as NativeAddon;
    } else {
      const load = require('node-gyp-build') as (dir: string) => NativeAddon;
      addon = load(packageRoot);
    }
  } catch (cause) {
    const reason = cause instanceof Error ? cause.message.split('\n')[0] : String(cause);
    throw new MobaError(
      'ENOBINARY',
      `moba-cuda's native addon could not be loaded for ${process.platform}-${process.arch} ` +
        `(Node ${process.versions.node}, N-API ${process.versions.napi}): ${reason}. ` +
        `Build it with \`npm run build:native\` in ${packageRoot} (needs cmake and a C++ compiler; nvcc adds CUDA).`,
      { cause },
    );
  }
  addon.setErrorClass(MobaError);
  cached = addon;
  return addon;
}
