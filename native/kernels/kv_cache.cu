// Paged KV cache writes and reads on the GPU. Append copies the new K/V rows
// of a whole batch into their pages in one launch and keeps the fp32 key sums
// of each key-sum block (MoBA decode's block centroids); gather copies pages
// back into contiguous rows, or (keyRows) writes where each row lies in the
// pages, for chunked prefill's attention to read them in place. One CTA per
// (segment, KV head): a segment is a run of tokens of one sequence inside one
// page (params.h); the CTA of a piece's first segment also adds the piece's
// sums.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "common/grid_dependency.cuh"
#include "ops.h"

namespace moba {
namespace {

constexpr int kThreads = 128;

struct Segment {
  int page, slot, row, count;
  int pieceSegments, carryPage;
};

// False for a segment that would reach outside the pool or the rows: the
// metadata comes from lib/, but a kernel never trusts it with memory.
__device__ __forceinline__ bool loadSegment(const int32_t* segments, int index, int numPages, int pageSize,
                                            int numRows, Segment* g) {
  const int32_t* s = segments + static_cast<int64_t>(index) * kSegmentInts;
  g->page = s[0];
  g->slot = s[1];
  g->row = s[2];
  g->count = s[3];
  g->pieceSegments = s[4];
  g->carryPage = s[5];
  return g->page >= 0 && g->page < numPages && g->count >= 0 && g->slot >= 0 && g->slot <= pageSize - g->count &&
         g->row >= 0 && g->row <= numRows - g->count;
}

struct KvArgs {
  uint16_t* kv;            // pool + layer offset: K of (page 0, head 0, slot 0)
  int64_t pageStride;      // elements between pages
  int64_t vOffset;         // elements from K to V within a (page, layer)
  float* sums;             // keySums + layer offset
  int64_t sumsPageStride;  // floats between pages
  int numPages, numKVHeads, pageSize, headDim;
  int sumPages;            // pages per key-sum block: the most segments one piece spans
  uint16_t* rowsK;         // [numRows, numKVHeads, headDim]
  uint16_t* rowsV;
  int numRows;
  const int32_t* segments;
  int numSegments;
  bool bf16;
};

KvArgs kvArgs(const PagedKV& kv, const void* k, const void* v, int numRows, const int32_t* segments, int numSegments) {
  KvArgs a;
  a.kv = static_cast<uint16_t*>(kv.pool) + kv.layerOffset();
  a.pageStride = kv.pageStride();
  a.vOffset = kv.vOffset();
  a.sums = kv.keySums ? kv.keySums + kv.sumsLayerOffset() : nullptr;
  a.sumsPageStride = kv.sumsPageStride();
  a.numPages = kv.numPages;
  a.numKVHeads = kv.numKVHeads;
  a.pageSize = kv.pageSize;
  a.headDim = kv.headDim;
  a.sumPages = kv.sumPages;
  a.rowsK = static_cast<uint16_t*>(const_cast<void*>(k));
  a.rowsV = static_cast<uint16_t*>(const_cast<void*>(v));
  a.numRows = numRows;
  a.segments = segments;
  a.numSegments = numSegments;
  a.bf16 = kv.dtype == DType::BF16;
  return a;
}

__device__ __forceinline__ float widen(uint16_t bits, bool bf16) {
  return bf16 ? __uint_as_float(static_cast<uint32_t>(bits) << 16) : __half2float(__ushort_as_half(bits));
}

// kToPages: rows -> pages (append); otherwise pages -> rows (gather).
template <bool kToPages>
__global__ void __launch_bounds__(kThreads) copySegmentsKernel(const KvArgs a) {
  // A decode grid launched behind this one may start at once: it waits for
  // this grid before reading the cache (common/grid_dependency.cuh).
  allowDependentGrid();
  Segment g;
  if (!loadSegment(a.segments, blockIdx.x, a.numPages, a.pageSize, a.numRows, &g)) return;
  const int h = blockIdx.y;
  const int D = a.headDim;
  const int chunksPerRow = D / 8;  // 16-byte chunks
  uint16_t* pageK = a.kv + g.page * a.pageStride + (static_cast<int64_t>(h) * a.pageSize + g.slot) * D;
  uint16_t* pageV = pageK + a.vOffset;
  const int64_t rowStride = static_cast<int64_t>(a.numKVHeads) * D;
  uint16_t* rowK = a.rowsK + static_cast<int64_t>(g.row) * rowStride + static_cast<int64_t>(h) * D;
  uint16_t* rowV = a.rowsV + static_cast<int64_t>(g.row) * rowStride + static_cast<int64_t>(h) * D;
  for (int c = threadIdx.x; c < g.count * chunksPerRow; c += kThreads) {
    const int i = c / chunksPerRow;
    const int e = (c - i * chunksPerRow) * 8;
    uint4* pk = reinterpret_cast<uint4*>(pageK + static_cast<int64_t>(i) * D + e);
    uint4* pv = reinterpret_cast<uint4*>(pageV + static_cast<int64_t>(i) * D + e);
    uint4* rk = reinterpret_cast<uint4*>(rowK + i * rowStride + e);
    uint4* rv = reinterpret_cast<uint4*>(rowV + i * rowStride + e);
    if (kToPages) {
      *pk = *rk;
      *pv = *rv;
    } else {
      *rk = *pk;
      *rv = *pv;
    }
  }
  if (!kToPages || g.pieceSegments <= 0) return;
  // The piece's key sums: one thread per dimension adds its tokens in
  // position order (as the CPU backend does) from the value the piece
  // continues, storing the running sum into each of its pages. They come
  // from the rows, so no order against the copies is needed.
  auto sumsOf = [&](int page) { return a.sums + page * a.sumsPageStride + static_cast<int64_t>(h) * D; };
  // A piece lies in one key-sum block, so it spans at most sumPages segments,
  // and the next piece's first segment ends it: metadata claiming more cannot
  // make one thread add up the whole batch.
  const int n = min(min(g.pieceSegments, a.sumPages), a.numSegments - static_cast<int>(blockIdx.x));
  for (int d = threadIdx.x; d < D; d += kThreads) {
    Segment e = g;
    float s = 0.f;
    if (g.slot > 0) {
      s = sumsOf(g.page)[d];
    } else if (g.carryPage >= 0 && g.carryPage < a.numPages) {
      s = sumsOf(g.carryPage)[d];
    }
    for (int i = 0; i < n; ++i) {
      if (i > 0 && (!loadSegment(a.segments, blockIdx.x + i, a.numPages, a.pageSize, a.numRows, &e) || e.slot != 0 ||
                    e.pieceSegments != 0)) {
        break;
      }
      const uint16_t* key = a.rowsK + static_cast<int64_t>(e.row) * rowStride + static_cast<int64_t>(h) * D + d;
#pragma unroll 8
      for (int t = 0; t < e.count; ++t) s += widen(key[t * rowStride], a.bf16);
      sumsOf(e.page)[d] = s;
    }
  }
}

// Gather's alternative for attention that reads the pages itself: each row's
// K offset in a layer's pages (KV head 0), one CTA per segment.
__global__ void __launch_bounds__(kThreads) keyRowsKernel(const KvArgs a, int64_t* keyRows) {
  allowDependentGrid();
  Segment g;
  if (!loadSegment(a.segments, blockIdx.x, a.numPages, a.pageSize, a.numRows, &g)) return;
  for (int i = threadIdx.x; i < g.count; i += kThreads) {
    keyRows[g.row + i] = g.page * a.pageStride + static_cast<int64_t>(g.slot + i) * a.headDim;
  }
}

Status launchCopy(const KvArgs& a, bool toPages, cudaStream_t stream) {
  if (a.numSegments == 0) return Status::Ok();
  if (a.headDim % 8 != 0) return Status::Invalid("unsupported head_dim for the KV cache: " + std::to_string(a.headDim));
  if (a.numKVHeads > 65535) return Status::Invalid("unsupported numKVHeads: " + std::to_string(a.numKVHeads));
  dim3 grid(a.numSegments, a.numKVHeads);
  if (toPages) {
    copySegmentsKernel<true><<<grid, kThreads, 0, stream>>>(a);
    return checkLaunch("kvAppend");
  }
  copySegmentsKernel<false><<<grid, kThreads, 0, stream>>>(a);
  return checkLaunch("kvGather");
}

}  // namespace

Status kvAppendLaunch(const KVAppendParams& p, CudaContext& ctx) {
  return launchCopy(kvArgs(p.kv, p.k, p.v, p.numRows, p.segments, p.numSegments), true, ctx.stream);
}

Status kvGatherLaunch(const KVGatherParams& p, CudaContext& ctx) {
  const KvArgs a = kvArgs(p.kv, p.k, p.v, p.numRows, p.segments, p.numSegments);
  if (!p.keyRows) return launchCopy(a, false, ctx.stream);
  if (p.numRows == 0) return Status::Ok();
  MOBA_RETURN_IF_ERROR(cudaStatus(cudaMemsetAsync(p.keyRows, 0, static_cast<size_t>(p.numRows) * 8, ctx.stream), "kvKeyRows"));
  if (p.numSegments == 0) return Status::Ok();
  keyRowsKernel<<<p.numSegments, kThreads, 0, ctx.stream>>>(a, p.keyRows);
  return checkLaunch("kvKeyRows");
}

}  // namespace moba
