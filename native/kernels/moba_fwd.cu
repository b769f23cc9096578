// Attention forward on CUDA: the op's entry point (dense or MoBA) and the
// host side of MoBA's key-block-centric sparse attention.
//
// MoBA runs in three steps after the gate has built its lists (gate.h):
//  1. workScan: for every (key block, KV head) pair, the number of 128-row
//     tiles of gathered query-head rows that chose the block (all query heads
//     of the KV head together), as prefix sums: a flat work list; then
//     pastJobs writes one record per work item, so a CTA decodes its item
//     with one load instead of searches.
//  2. MobaPast kernel: one CTA per work item, a dense tile of gathered rows
//     against the whole past block; writes a normalized partial output (input
//     dtype) and its lse per list entry.
//  3. MobaCurrent kernel: each query tile against its rows' own blocks
//     (causal), then merges the row's partials by log-sum-exp in registers and
//     writes the final output and lse once.
// One ctx.scratch() holds the gate's lists, the partials and the work list.
#include <climits>

#include "attn_launch.h"
#include "common/attn_job.cuh"
#include "gate.h"
#include "ops.h"

namespace moba {
namespace {

constexpr int kScanThreads = 1024;

__device__ __forceinline__ int tilesOfPair(const int32_t* segmentOffsets, int pair, int group) {
  const int n = segmentOffsets[(pair + 1) * group] - segmentOffsets[pair * group];
  return (n + kAttnTileRows - 1) / kAttnTileRows;
}

// workOffsets[p] = tiles of pairs before p; workOffsets[numPairs] = total.
// One CTA: each thread scans a contiguous run of pairs.
__global__ void __launch_bounds__(kScanThreads) workScanKernel(const int32_t* __restrict__ segmentOffsets,
                                                               int numPairs, int group,
                                                               int32_t* __restrict__ workOffsets) {
  __shared__ int warpTotals[32];
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int per = (numPairs + kScanThreads - 1) / kScanThreads;
  const int begin = min(tid * per, numPairs);
  const int end = min(begin + per, numPairs);
  int local = 0;
  for (int p = begin; p < end; ++p) local += tilesOfPair(segmentOffsets, p, group);
  int x = local;
#pragma unroll
  for (int d = 1; d < 32; d <<= 1) {
    const int y = __shfl_up_sync(0xffffffffu, x, d);
    if (lane >= d) x += y;
  }
  if (lane == 31) warpTotals[warp] = x;
  __syncthreads();
  if (warp == 0) {
    int w = warpTotals[lane];
#pragma unroll
    for (int d = 1; d < 32; d <<= 1) {
      const int y = __shfl_up_sync(0xffffffffu, w, d);
      if (lane >= d) w += y;
    }
    warpTotals[lane] = w;
  }
  __syncthreads();
  int running = x - local + (warp > 0 ? warpTotals[warp - 1] : 0);
  for (int p = begin; p < end; ++p) {
    workOffsets[p] = running;
    running += tilesOfPair(segmentOffsets, p, group);
  }
  if (tid == kScanThreads - 1) workOffsets[numPairs] = running;
}

// One record per past-block work item (attn_args.h, FwdArgs::pastJobs).
// A thread per (block, KV head) pair writes its pair's tiles.
__global__ void pastJobsKernel(const int32_t* __restrict__ segmentOffsets, const int32_t* __restrict__ workOffsets,
                               const int32_t* __restrict__ cuBlocks, const int32_t* __restrict__ cuSeqlensK,
                               int numPairs, int group, int numKVHeads, int batch, int chunkSize, int headDim,
                               int64_t keyHeadStride, int4* __restrict__ jobs) {
  const int pair = blockIdx.x * blockDim.x + threadIdx.x;
  if (pair >= numPairs) return;
  const int eBegin = segmentOffsets[pair * group];
  const int eEnd = segmentOffsets[(pair + 1) * group];
  if (eEnd <= eBegin) return;
  const int gb = pair / numKVHeads;
  const int kvh = pair - gb * numKVHeads;
  const int b = attn::upperBound(cuBlocks, batch + 1, gb) - 1;
  const int blk = gb - cuBlocks[b];
  const int k0 = cuSeqlensK[b];
  const int lk = cuSeqlensK[b + 1] - k0;
  // Paged keys (keyHeadStride > 0): the KV head's offset within a page.
  const int64_t kvBase = keyHeadStride > 0 ? kvh * keyHeadStride : (static_cast<int64_t>(k0) * numKVHeads + kvh) * headDim;
  const int keyBegin = blk * chunkSize;
  const int keyEnd = min(keyBegin + chunkSize, lk);
  int w = workOffsets[pair];
  for (int e0 = eBegin; e0 < eEnd; e0 += kAttnTileRows, ++w) {
    jobs[2 * w] = make_int4(e0, min(kAttnTileRows, eEnd - e0), keyBegin, keyEnd);
    jobs[2 * w + 1] = make_int4(static_cast<int>(kvBase & 0xffffffff), static_cast<int>(kvBase >> 32), lk, k0);
  }
}

// Every pair's tiles number at most entries/128 + 1.
int64_t pastItemsBound(int64_t maxEntries, int64_t numPairs) {
  return (maxEntries + kAttnTileRows - 1) / kAttnTileRows + numPairs;
}

struct AttendLayout {
  size_t partial, partialLse, workOffsets, pastJobs, total;
};

AttendLayout attendLayout(const AttentionParams& p, int64_t maxEntries, int numPairs) {
  AttendLayout l;
  const size_t elem = dtypeSize(p.dtype);
  l.partial = 0;
  l.partialLse = CudaContext::alignUp(static_cast<size_t>(maxEntries) * p.heads.headDim * elem);
  l.workOffsets = l.partialLse + CudaContext::alignUp(static_cast<size_t>(maxEntries) * 4);
  l.pastJobs = l.workOffsets + CudaContext::alignUp((static_cast<size_t>(numPairs) + 1) * 4);
  const int64_t items = maxEntries > 0 ? pastItemsBound(maxEntries, numPairs) : 0;
  l.total = l.pastJobs + CudaContext::alignUp(static_cast<size_t>(items) * 2 * sizeof(int4));
  return l;
}

Status checkGrid(int64_t grid, const char* what) {
  if (grid > INT_MAX) return Status::Invalid(std::string(what) + ": problem too large for one launch");
  return Status::Ok();
}

Status mobaAttentionLaunch(const AttentionParams& p, CudaContext& ctx) {
  const Varlen& v = p.varlen;
  GateParams gp;
  gp.dtype = p.dtype;
  gp.q = p.q;
  gp.k = p.k;
  gp.indices = nullptr;
  gp.varlen = v;
  gp.heads = p.heads;
  gp.chunkSize = p.chunkSize;
  gp.topK = p.topK;
  gp.keyRows = p.keyRows;
  gp.keyHeadStride = p.keyHeadStride;
  gp.keyRowsMax = p.keyRowsMax;
  gp.keySums = p.keySums;
  gp.sumsPageStride = p.sumsPageStride;
  gp.keyPageStride = p.keyPageStride;
  const bool hasPast = p.topK >= 2;
  size_t listBytes = 0;
  if (hasPast) {
    Status st;
    listBytes = mobaListsWorkspaceBytes(gp, &st);
    if (!st.ok()) return st;
  }
  int64_t totalBlocks = 0;
  for (int b = 0; b < v.batch; ++b) {
    const int64_t lk = v.cuSeqlensK[b + 1] - v.cuSeqlensK[b];
    totalBlocks += (lk + p.chunkSize - 1) / p.chunkSize;
  }
  const int64_t numPairs = totalBlocks * p.heads.numKVHeads;
  MOBA_RETURN_IF_ERROR(checkGrid(numPairs, "mobaAttention"));
  const int64_t maxEntries = hasPast ? static_cast<int64_t>(v.totalQ) * p.heads.numQHeads * (p.topK - 1) : 0;
  const size_t listRegion = CudaContext::alignUp(listBytes);
  const size_t attendBytes = mobaAttendWorkspaceBytes(p, maxEntries, static_cast<int>(numPairs));
  void* ws = nullptr;
  MOBA_RETURN_IF_ERROR(ctx.scratch(listRegion + attendBytes, &ws));

  MobaLists lists;
  if (hasPast) MOBA_RETURN_IF_ERROR(mobaListsLaunch(gp, ctx, ws, &lists));

  // After the gate's own metadata upload (gate.h).
  QueryTiles qt;
  MOBA_RETURN_IF_ERROR(uploadQueryTiles(v, ctx, &qt));
  return mobaAttendLaunch(p, lists, qt, static_cast<uint8_t*>(ws) + listRegion, ctx);
}

}  // namespace

size_t mobaAttendWorkspaceBytes(const AttentionParams& p, int64_t maxEntries, int numPairs) {
  return attendLayout(p, maxEntries, numPairs).total;
}

Status mobaAttendLaunch(const AttentionParams& p, const MobaLists& lists, const QueryTiles& qt, void* workspace,
                        CudaContext& ctx) {
  const int D = p.heads.headDim;
  const int group = p.heads.numQHeads / p.heads.numKVHeads;
  const int numPairs = lists.totalBlocks * p.heads.numKVHeads;
  const bool hasPast = p.topK >= 2 && lists.maxEntries > 0 && lists.entries != nullptr;
  const AttendLayout lay = attendLayout(p, hasPast ? lists.maxEntries : 0, numPairs);
  uint8_t* ws = static_cast<uint8_t*>(workspace);
  void* partial = ws + lay.partial;
  float* partialLse = reinterpret_cast<float*>(ws + lay.partialLse);
  int32_t* workOffsets = reinterpret_cast<int32_t*>(ws + lay.workOffsets);
  int4* pastJobs = reinterpret_cast<int4*>(ws + lay.pastJobs);

  if (hasPast) {
    workScanKernel<<<1, kScanThreads, 0, ctx.stream>>>(lists.segmentOffsets, numPairs, group, workOffsets);
    MOBA_RETURN_IF_ERROR(checkLaunch("moba work scan"));
    if (numPairs > 0) {
      pastJobsKernel<<<(numPairs + 255) / 256, 256, 0, ctx.stream>>>(
          lists.segmentOffsets, workOffsets, lists.cuBlocks, qt.cuK, numPairs, group, p.heads.numKVHeads,
          p.varlen.batch, p.chunkSize, D, p.keyRows ? p.keyHeadStride : 0, pastJobs);
      MOBA_RETURN_IF_ERROR(checkLaunch("moba past jobs"));
    }
    FwdArgs a = baseArgs(p, qt);
    a.out = partial;
    a.lse = partialLse;
    a.segmentOffsets = lists.segmentOffsets;
    a.entries = lists.entries;
    a.workOffsets = workOffsets;
    a.pastJobs = pastJobs;
    a.numPairs = numPairs;
    // The item count is known on the device only: launch for the bound;
    // items past the device-side total are skipped.
    const int64_t grid = pastItemsBound(lists.maxEntries, numPairs);
    MOBA_RETURN_IF_ERROR(checkGrid(grid, "mobaAttention"));
    MOBA_RETURN_IF_ERROR(launchAttn(a, FwdMode::MobaPast, p.dtype, D, static_cast<int>(grid), ctx));
  }
  FwdArgs a = baseArgs(p, qt);
  if (hasPast) {
    a.entryOf = lists.entryOf;
    a.partial = partial;
    a.partialLse = partialLse;
  } else {
    a.topK = 1;
  }
  const int64_t grid = static_cast<int64_t>(qt.numTiles) * p.heads.numQHeads;
  MOBA_RETURN_IF_ERROR(checkGrid(grid, "mobaAttention"));
  return launchAttn(a, FwdMode::MobaCurrent, p.dtype, D, static_cast<int>(grid), ctx);
}

Status attentionLaunch(const AttentionParams& p, CudaContext& ctx) {
  if (p.heads.headDim != 64 && p.heads.headDim != 128) {
    return Status::Invalid("unsupported head_dim: " + std::to_string(p.heads.headDim) +
                           " (CUDA attention supports 64 and 128)");
  }
  if (p.dtype != DType::BF16 && p.dtype != DType::F16) {
    return Status::Invalid(std::string("unsupported dtype for attention: ") + dtypeName(p.dtype));
  }
  if (p.varlen.totalQ == 0) return Status::Ok();
  if (p.chunkSize <= 0) return flashAttentionLaunch(p, ctx);
  return mobaAttentionLaunch(p, ctx);
}

}  // namespace moba
