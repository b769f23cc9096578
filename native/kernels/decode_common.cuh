// Decode over the paged KV cache: what the attention kernel (decode.cu) and
// the moba gates (decode_gate.cuh) share: launch constants, the kernel
// arguments and small device helpers. Included by decode.cu only.
#pragma once
#include <cuda.h>  // CUtensorMap (the driver entry point is looked up at run time)
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "common/fast_div.h"
#include "common/grid_dependency.cuh"
#include "common/ptx.cuh"

namespace moba {
namespace {

constexpr int kThreads = 128;  // 4 warps; warp w takes keys [16w, 16w+16) of every virtual tile
constexpr int kTile = 64;      // keys per virtual tile (the unit of the split and of moba blocks)
constexpr int kStages = 3;     // per warp: three 16-key tiles in flight while it waits, two while it computes
constexpr int kCtasPerSm = 2;
constexpr int kMaxSlots = 64;
// Partial outputs each thread of the split-KV merge loads at once: the 33
// slots of a batch-1 step on the H200 in two round trips. All 33 at once
// (one round trip) took about 200 registers and made full decode 8% slower.
constexpr int kMergeBatch = 17;
// The most CTAs of an item that form one cluster (a non-portable size on sm_90).
constexpr int kMaxCluster = 16;
// The mbarriers of the warps' rings, then the fused gate's exchange
// mbarrier (clusters), ahead of the query rows.
constexpr int kBarBytes = 128;
static_assert(kBarBytes >= ((kThreads / 32) * kStages + 1) * 8, "one mbarrier per (warp, stage), and one more");
constexpr float kLog2e = 1.4426950408889634f;
// Floats between rows of the warps' merge: rows 8 floats apart make a warp's
// float2 stores of 4 rows x 4 column pairs cover the 32 banks once (rows D
// apart put all 4 rows on the same banks).
__host__ __device__ constexpr int warpMergeStride(int D) { return D + 8; }

struct DecodeArgs {
  CUtensorMap kvMap;    // tma: the pool as rows of headDim elements (128-byte swizzled boxes of 16 x 64)
  int kvRow0, pageRows, vRows;  // tma: the layer's first row, rows per page, rows from K to V
  const uint16_t* q;
  uint16_t* out;
  const uint16_t* kv;   // pool + layer offset
  int64_t pageStride;   // elements between pages
  int64_t vOffset;      // elements from K to V within a (page, layer)
  const float* sums;    // keySums + layer offset
  int64_t sumsPageStride;
  int sumPages;         // pages per key-sum run (a run's sum is read at its last page)
  const int32_t* qStart;
  const int32_t* qLen;
  const int32_t* kvLen;
  const int32_t* pageIndptr;
  const int32_t* pageIndices;
  int numPageIndices, numPages, numRows, numQHeads, numKVHeads, group, pageSize, batch;
  int maxQLen, maxKvLen;
  int rowTiles;         // row tiles per (sequence, KV head)
  int rowTileRows;      // query rows per row tile (16 * M)
  float scaleLog2;      // softmaxScale * log2(e)
  int moba, chunkSize, topK, tilesPerBlock;
  int numSlots;         // CTAs per (sequence, KV head, row tile)
  // The run-time divisors above, for the kernels' divisions (fast_div.h).
  FastDiv byGroup, byRowTiles, bySlots, byChunk, byTopK, byTilesPerBlock, bySumRuns;
  int sumRuns;          // moba: key-sum runs per block
  int fusedChunk;       // fusedGate: blocks whose key sums one tile holds
  int scoresRows;       // scoresKernel: query rows whose fp32 copies its shared memory holds at once
  int gateChunk;        // gateKernel: blocks whose key sums one tile holds (kGateChunk, less where its shared memory runs out)
  int maxPast;          // moba: row stride of `scores`
  int bitmapWords, unionCap;
  int scoresReady;      // moba: scoresKernel filled `scores` (a block spans several key-sum runs)
  int stageScores;      // moba: gateKernel keeps its rows' scores in shared memory, not in `scores`
  int fusedGate;        // moba: the attention CTAs gate themselves (cluster or cooperative launch, no gateKernel)
  int cluster;          // moba, tensor copies: the item's numSlots CTAs are one cluster and trade the
                        // fused gate's candidates and the partials through shared memory (0: global)
  int gatePer;          // fusedGate: blocks scored per CTA at most (row stride of its staged scores)
  int regionBytes;      // shared bytes of the warps' rings (also the merge scratch)
  float* scores;        // moba: [numRows * numQHeads, maxPast]
  int32_t* selection;   // moba: per item [unionSize, unionList[unionCap], unionRows[unionCap]]
  uint64_t* candidates;  // fusedGate: per (item, row) [numSlots][topK - 1] order keys (0: none)
  float* partO;         // [items, numSlots, rowTile, headDim]
  float* partL;         // [items, numSlots, rowTile] log2-sum-exp
  int32_t* counters;    // [items]
  // forward(): the new tokens' K and V rows ([numRows, numKVHeads, headDim],
  // the rows of q), written into their pages and key sums by this op and read
  // from these rows by it; null: already in the cache.
  const uint16_t* newK;
  const uint16_t* newV;
};

// ---------------------------------------------------------------- helpers --

struct SeqView {
  int qStart, qLen, kvLen;
  const int32_t* pages;
};

// The admission rule shared with the CPU backend: metadata that could reach
// outside a buffer (or past the host facts the grids were sized from) makes
// the sequence skipped, consistently in every CTA that reads it.
__device__ __forceinline__ bool loadSeq(const DecodeArgs& a, int b, SeqView* s) {
  const int qs = a.qStart[b], ql = a.qLen[b], kl = a.kvLen[b];
  const int p0 = a.pageIndptr[b], p1 = a.pageIndptr[b + 1];
  if (ql < 1 || ql > a.maxQLen || qs < 0 || qs > a.numRows - ql) return false;
  if (kl < ql || kl > a.maxKvLen) return false;
  if (p0 < 0 || p1 < p0 || p1 > a.numPageIndices) return false;
  if (static_cast<int64_t>(p1 - p0) * a.pageSize < kl) return false;
  s->qStart = qs;
  s->qLen = ql;
  s->kvLen = kl;
  s->pages = a.pageIndices + p0;
  return true;
}

// Row index into q / out of the item's local query row `gr` (token i, head g
// of KV head h's group, gr = i * group + g).
__device__ __forceinline__ int64_t globalRowOf(const DecodeArgs& a, const SeqView& s, int h, int gr) {
  const int i = a.byGroup(gr), g = gr - i * a.group;
  return static_cast<int64_t>(s.qStart + i) * a.numQHeads + h * a.group + g;
}

// The position in the sequence of local query row gr's token: the last key
// it attends to, and (divided by chunkSize) its current block.
__device__ __forceinline__ int rowPosition(const DecodeArgs& a, const SeqView& s, int gr) {
  return s.kvLen - s.qLen + a.byGroup(gr);
}

using ptx::mma16816;
using ptx::smemAddr;

// The decode tiles address shared memory through generic pointers.
__device__ __forceinline__ void ldsm4(uint32_t (&r)[4], const void* p) { ptx::ldsm4(r, smemAddr(p)); }
__device__ __forceinline__ void ldsm4T(uint32_t (&r)[4], const void* p) { ptx::ldsm4t(r, smemAddr(p)); }

template <bool kBf16>
__device__ __forceinline__ uint32_t pack2(float lo, float hi) {
  if constexpr (kBf16) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&v);
  } else {
    __half2 v = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&v);
  }
}

template <bool kBf16>
__device__ __forceinline__ float widen(uint16_t bits) {
  if constexpr (kBf16) return __uint_as_float(static_cast<uint32_t>(bits) << 16);
  return __half2float(__ushort_as_half(bits));
}

template <bool kBf16>
__device__ __forceinline__ uint16_t narrow(float f) {
  if constexpr (kBf16) return __bfloat16_as_ushort(__float2bfloat16_rn(f));
  return __half_as_ushort(__float2half_rn(f));
}

// Four floats times `scale`, rounded to the dtype, stored at dst.
template <bool kBf16>
__device__ __forceinline__ void storeRow4(uint16_t* dst, float4 o, float scale) {
  uint2 packed;
  packed.x = static_cast<uint32_t>(narrow<kBf16>(o.x * scale)) | (static_cast<uint32_t>(narrow<kBf16>(o.y * scale)) << 16);
  packed.y = static_cast<uint32_t>(narrow<kBf16>(o.z * scale)) | (static_cast<uint32_t>(narrow<kBf16>(o.w * scale)) << 16);
  *reinterpret_cast<uint2*>(dst) = packed;
}

// The weight of a partial (its row maximum or log2-sum-exp l) in a merge
// whose largest is mx: every merge of the decode (warps, cluster, split-KV)
// uses it. All partials empty (mx = -inf): 0, not exp2(-inf - -inf).
__device__ __forceinline__ float lseWeight(float l, float mx) { return mx == -INFINITY ? 0.f : exp2f(l - mx); }

// Four packed bf16 or f16 values as floats.
template <bool kBf16>
__device__ __forceinline__ float4 widen4(uint2 raw) {
  return make_float4(widen<kBf16>(raw.x & 0xffffu), widen<kBf16>(raw.x >> 16), widen<kBf16>(raw.y & 0xffffu),
                     widen<kBf16>(raw.y >> 16));
}

}  // namespace
}  // namespace moba
