// Decode attention over the paged KV cache (DESIGN.md section 1, decode).
//
// Bytes decide decode: every step reads the K/V of the whole context. One CTA
// owns one (sequence, KV head, row tile, slot): the row tile holds all query
// heads of that KV head for the sequence's 1..8 new tokens (GQA: K/V are read
// once for the group). Each of its 4 warps streams its own 16-key tiles
// through its own ring of shared-memory stages (decode_stream.cuh: one bulk
// copy per K or V row on sm_90, cp.async elsewhere) and keeps its own online
// softmax, so no CTA-wide barrier sits in the loop; the warps are merged once
// at the end. Two CTAs per SM, each warp with three tiles in flight.
// Flash-decoding: when (sequences x KV heads) cannot fill the GPU, the keys
// are split over `numSlots` CTAs whose normalized partial outputs and
// log-sum-exps are merged by the last CTA of the group to finish (a counter
// per group, reset by that CTA), so a step is one launch.
//
// 'moba' adds the gate over the cache: each row's top-(k-1) past blocks by
// the dot product of its query with the blocks' mean keys (from the cache's
// block key sums), plus its current block; the attention CTAs read only the
// union of the rows' blocks, each masked to the rows that picked it. When a
// block is one key-sum run and the step's CTAs all fit on the GPU at once,
// the attention CTAs of an item gate themselves (fusedGate, one cooperative
// launch): each scores a share of the blocks and publishes its rows' best,
// then every one merges them into the same selection. Otherwise gateKernel
// selects for them, after scoresKernel has added up the runs of each block
// when a block spans several.
#include <cuda.h>  // CUtensorMap (the driver entry point is looked up at run time)
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <cudaTypedefs.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "common/ptx.cuh"
#include "decode_stream.cuh"
#include "ops.h"

namespace moba {
namespace {

constexpr int kThreads = 128;  // 4 warps; warp w takes keys [16w, 16w+16) of every virtual tile
constexpr int kTile = 64;      // keys per virtual tile (the unit of the split and of moba blocks)
constexpr int kStages = 3;     // per warp: three 16-key tiles in flight while it waits, two while it computes
constexpr int kCtasPerSm = 2;
// scoresKernel: as many CTAs of 128 threads as an SM has threads for, so that
// on the H200 a grid of up to 132 * 16 blocks (128K tokens, 8 KV heads,
// chunks of 512) runs in one wave; unbounded, 38 registers allowed only 12
// per SM and the grid took two.
#if defined(__CUDA_ARCH__) && (__CUDA_ARCH__ == 860 || __CUDA_ARCH__ == 870 || __CUDA_ARCH__ == 890)
constexpr int kScoresCtasPerSm = 12;  // 1536 threads per SM
#else
constexpr int kScoresCtasPerSm = 16;  // 2048 threads per SM
#endif
constexpr int kMaxSlots = 64;
// Partial outputs each thread of the split-KV merge loads at once: the 33
// slots of a batch-1 step on the H200 in two round trips. All 33 at once
// (one round trip) took about 200 registers and made full decode 8% slower.
constexpr int kMergeBatch = 17;
// gateKernel: 8 warps per item (1024 threads measured no faster: its phases
// are latency chains); the key sums of up to kGateChunk blocks are copied in
// at once.
constexpr int kGateThreads = 256;
constexpr int kGateChunk = 256;  // blocks whose key sums are in flight at once
constexpr size_t kGateStaticBytes = kGateChunk * 4 + 64;  // its static shared memory (sumPage, unionSize)
constexpr int kSelectBatch = 8;
// Fused gate (see fusedGate): key sums of up to kFusedChunk blocks in flight per CTA.
constexpr int kFusedChunk = 64;
// A block's key sum in the gates' shared tiles: padded so that the eight
// lanes reading one block stay conflict-free next to the other blocks.
template <int D>
constexpr int kSumRow = D + 16;
// The mbarriers of the warps' rings, ahead of the query rows.
constexpr int kBarBytes = 128;
static_assert(kBarBytes >= (kThreads / 32) * kStages * 8, "one mbarrier per (warp, stage)");
constexpr float kLog2e = 1.4426950408889634f;

struct DecodeArgs {
  CUtensorMap kvMap;    // tma: the pool as rows of headDim elements (128-byte swizzled boxes of 16 x 64)
  int tma;              // the host chose the kTma kernel (K/V tiles by tensor copies)
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
  int maxPast;          // moba: row stride of `scores`
  int bitmapWords, unionCap;
  int scoresReady;      // moba: scoresKernel filled `scores` (a block spans several key-sum runs)
  int stageScores;      // moba: gateKernel keeps its rows' scores in shared memory, not in `scores`
  int fusedGate;        // moba: the attention CTAs gate themselves (cooperative launch, no gateKernel)
  int gatePer;          // fusedGate: blocks scored per CTA at most (row stride of its staged scores)
  int regionBytes;      // shared bytes of the warps' rings (also the merge scratch)
  float* scores;        // moba: [numRows * numQHeads, maxPast]
  int32_t* selection;   // moba: per item [unionSize, unionList[unionCap], unionRows[unionCap]]
  uint64_t* candidates;  // fusedGate: per (item, row) [numSlots][topK - 1] order keys (0: none)
  float* partO;         // [items, numSlots, rowTile, headDim]
  float* partL;         // [items, numSlots, rowTile] log2-sum-exp
  int32_t* counters;    // [items]
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
  const int i = gr / a.group, g = gr - i * a.group;
  return static_cast<int64_t>(s.qStart + i) * a.numQHeads + h * a.group + g;
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

// Four packed bf16 or f16 values as floats.
template <bool kBf16>
__device__ __forceinline__ float4 widen4(uint2 raw) {
  return make_float4(widen<kBf16>(raw.x & 0xffffu), widen<kBf16>(raw.x >> 16), widen<kBf16>(raw.y & 0xffffu),
                     widen<kBf16>(raw.y >> 16));
}

// Programmatic dependent launch (sm_90): the attention kernel may start while
// the moba gate runs and waits here before reading its selection.
__device__ __forceinline__ void waitForPrimaryGrid() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void allowDependentGrid() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
#endif
}

// ---------------------------------------------------------------- kernels --

// moba: scores[(row * numQHeads + head) * maxPast + j] = q . centroid_j for
// every complete block j of the sequence; centroid = page sums / chunkSize.
// One CTA per block: its threads split the block's pages so that all of a
// block's page sums are in flight at once, then one warp per query row.
template <int D, bool kBf16>
__global__ void __launch_bounds__(kThreads, kScoresCtasPerSm) scoresKernel(const DecodeArgs a) {
  allowDependentGrid();
  constexpr int kCols = D / 4;                // float4 columns of a page's sums
  constexpr int kGroups = kThreads / kCols;   // threads per column
  __shared__ float4 part[kThreads];
  __shared__ float cent[D];
  extern __shared__ float qf[];  // [qLen * group, D] fp32
  SeqView s;
  if (!loadSeq(a, blockIdx.z, &s)) return;
  const int h = blockIdx.y;
  const int j = blockIdx.x;
  if (j >= min((s.kvLen - 1) / a.chunkSize, a.maxPast)) return;
  const int tid = threadIdx.x;
  const int R = s.qLen * a.group;
  for (int e = tid; e < R * D; e += kThreads) {
    const int r = e / D, d = e - r * D;
    qf[e] = widen<kBf16>(a.q[globalRowOf(a, s, h, r) * D + d]);
  }
  const int col = tid % kCols, grp = tid / kCols;
  // The block's key-sum runs, each read at its last page.
  const int runsPerBlock = a.chunkSize / (a.pageSize * a.sumPages);
  const int32_t* pages = s.pages + static_cast<int64_t>(j) * runsPerBlock * a.sumPages + a.sumPages - 1;
  float4 acc = make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll 8
  for (int p = grp; p < runsPerBlock; p += kGroups) {
    const int pg = pages[p * a.sumPages];
    if (pg < 0 || pg >= a.numPages) continue;
    const float4 v =
        *reinterpret_cast<const float4*>(a.sums + pg * a.sumsPageStride + static_cast<int64_t>(h) * D + col * 4);
    acc.x += v.x;
    acc.y += v.y;
    acc.z += v.z;
    acc.w += v.w;
  }
  part[tid] = acc;
  __syncthreads();
  if (tid < kCols) {
    float4 c = part[tid];
    for (int g = 1; g < kGroups; ++g) {
      const float4 o = part[g * kCols + tid];
      c.x += o.x;
      c.y += o.y;
      c.z += o.z;
      c.w += o.w;
    }
    const float inv = 1.f / static_cast<float>(a.chunkSize);
    cent[tid * 4] = c.x * inv;
    cent[tid * 4 + 1] = c.y * inv;
    cent[tid * 4 + 2] = c.z * inv;
    cent[tid * 4 + 3] = c.w * inv;
  }
  __syncthreads();
  const int lane = tid & 31, warp = tid >> 5;
  for (int r = warp; r < R; r += kThreads / 32) {
    float dot = 0.f;
#pragma unroll
    for (int k = 0; k < D / 32; ++k) dot += qf[r * D + lane + 32 * k] * cent[lane + 32 * k];
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) dot += __shfl_xor_sync(0xffffffffu, dot, off);
    if (lane == 0) a.scores[globalRowOf(a, s, h, r) * a.maxPast + j] = dot;
  }
}

// Where the selection of an item lives in the workspace.
__device__ __forceinline__ int32_t* selectionOf(const DecodeArgs& a, int64_t item) {
  return a.selection + item * (1 + 2 * static_cast<int64_t>(a.unionCap));
}

// moba gates: the page holding each of the blocks [c0, c0 + n) key sum, then
// those sums copied into `sumTile` (16-byte cp.async, one commit group; the
// caller waits). All page-index loads are in flight before any copy: a
// cp.async between two of them would order them one after another.
template <int D>
__device__ __forceinline__ void copySumTile(const DecodeArgs& a, const SeqView& s, int h, int c0, int n, int* sumPage,
                                            float* sumTile) {
  const int tid = threadIdx.x, threads = blockDim.x;
  for (int i = tid; i < n; i += threads) {
    const int pg = s.pages[static_cast<int64_t>(c0 + i + 1) * a.sumPages - 1];
    sumPage[i] = pg >= 0 && pg < a.numPages ? pg : -1;
  }
  __syncthreads();
  const float* sumsHead = a.sums + static_cast<int64_t>(h) * D;
  for (int e = tid; e < n * (D / 4); e += threads) {
    const int blk = e / (D / 4), col = e - blk * (D / 4);
    const int pg = sumPage[blk];
    const bool ok = pg >= 0;
    ptx::cpAsync16(smemAddr(sumTile + blk * kSumRow<D> + col * 4),
                   sumsHead + static_cast<int64_t>(ok ? pg : 0) * a.sumsPageStride + col * 4, ok);
  }
  ptx::cpAsyncCommit();
}

// Scores of the first n blocks of a key-sum tile against rows [0, rowsHere):
// eight lanes per block; lane `part` takes dims [32u + 4 part, +4) of the
// block (a quarter-warp reads one row: 32 banks) and keeps the same dims of
// four query rows in registers for all its blocks, so a block costs 4 shared
// loads, not 4 per row. qAt(r, d): dims [d, d + 4) of row r as floats;
// store(r, blk, score) receives every score. Both gates score this way, so a
// block's score is the same bits whichever gate runs.
template <int D, class QAt, class Store>
__device__ __forceinline__ void scoreSumTile(const float* sumTile, int n, int rowsHere, float inv, QAt qAt, Store store) {
  constexpr int kLanes = 8;
  constexpr int kVec = D / kLanes / 4;  // float4 per lane
  const int part = threadIdx.x % kLanes;
  const int perRound = blockDim.x / kLanes;
  for (int r0 = 0; r0 < rowsHere; r0 += 4) {
    float4 qv[4][kVec];
#pragma unroll
    for (int r = 0; r < 4; ++r) {
#pragma unroll
      for (int u = 0; u < kVec; ++u) qv[r][u] = r0 + r < rowsHere ? qAt(r0 + r, u * 32 + part * 4) : make_float4(0.f, 0.f, 0.f, 0.f);
    }
    // Whole warps go round together: the shuffles need every lane.
    for (int b0 = 0; b0 < n; b0 += perRound) {
      const int blk = b0 + static_cast<int>(threadIdx.x) / kLanes;
      float dot[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
      for (int u = 0; u < kVec; ++u) {
        const float4 v = *reinterpret_cast<const float4*>(sumTile + min(blk, n - 1) * kSumRow<D> + u * 32 + part * 4);
        const float4 c = make_float4(v.x * inv, v.y * inv, v.z * inv, v.w * inv);
#pragma unroll
        for (int r = 0; r < 4; ++r) {
          dot[r] = fmaf(qv[r][u].x, c.x, dot[r]);
          dot[r] = fmaf(qv[r][u].y, c.y, dot[r]);
          dot[r] = fmaf(qv[r][u].z, c.z, dot[r]);
          dot[r] = fmaf(qv[r][u].w, c.w, dot[r]);
        }
      }
#pragma unroll
      for (int r = 0; r < 4; ++r) {
#pragma unroll
        for (int off = 1; off < kLanes; off <<= 1) dot[r] += __shfl_xor_sync(0xffffffffu, dot[r], off);
      }
      if (blk < n && part < 4 && r0 + part < rowsHere) {
        store(r0 + part, blk, part == 0 ? dot[0] : part == 1 ? dot[1] : part == 2 ? dot[2] : dot[3]);
      }
    }
  }
}

// The gate's ranking of (score, block) (common/moba_rank.cuh: higher score
// first, NaN below every number, -0 equal to +0, ties to the lower block) as
// one unsigned comparison: monotone score bits above the inverted block
// index. 0 ranks below every entry and stands for "none".
__device__ __forceinline__ uint64_t orderKey(float score, int j) {
  uint32_t hi = 0u;  // NaN
  if (!isnan(score)) {
    const uint32_t f = score == 0.f ? 0u : __float_as_uint(score);
    hi = (f & 0x80000000u) ? ~f : (f | 0x80000000u);
  }
  return (static_cast<uint64_t>(hi) << 32) | (0xffffffffu - static_cast<uint32_t>(j));
}
__device__ __forceinline__ int blockOfKey(uint64_t key) { return static_cast<int>(0xffffffffu - static_cast<uint32_t>(key)); }

// The warp's largest key, in every lane: two single-instruction reductions.
__device__ __forceinline__ uint64_t warpMaxKey(uint64_t key) {
  const uint32_t hi = __reduce_max_sync(0xffffffffu, static_cast<uint32_t>(key >> 32));
  const uint32_t lo = __reduce_max_sync(0xffffffffu, static_cast<uint32_t>(key >> 32) == hi ? static_cast<uint32_t>(key) : 0u);
  return (static_cast<uint64_t>(hi) << 32) | lo;
}

// Row `lr` picked block j (lane 0 of the row's warp).
__device__ __forceinline__ void pick(int32_t* sel, int32_t* bitmap, int topK, int lr, int n, int j) {
  sel[lr * topK + n] = j;
  atomicOr(&bitmap[j >> 5], 1 << (j & 31));
}

// Every thread of the CTA: the union of the rows' picks (bits of `bitmap`),
// ascending, and every block's mask of the rows that picked it. unionRows
// must be zero on entry.
__device__ __forceinline__ void buildUnion(const DecodeArgs& a, int rowsHere, const int32_t* bitmap, int32_t* wordPrefix,
                                           const int32_t* sel, const int32_t* selCount, int32_t* unionList,
                                           uint32_t* unionRows, int* unionSize) {
  const int tid = threadIdx.x, lane = tid & 31;
  __syncthreads();
  // An exclusive scan of the bitmap's popcounts, then every set bit written at its rank.
  if (tid < 32) {
    int running = 0;
    for (int base = 0; base < a.bitmapWords; base += 32) {
      const int w = base + lane;
      uint32_t word = w < a.bitmapWords ? static_cast<uint32_t>(bitmap[w]) : 0u;
      const int cnt = __popc(word);
      int incl = cnt;
#pragma unroll
      for (int off = 1; off < 32; off <<= 1) {
        const int o = __shfl_up_sync(0xffffffffu, incl, off);
        if (lane >= off) incl += o;
      }
      const int excl = running + incl - cnt;
      if (w < a.bitmapWords) {
        wordPrefix[w] = excl;
        for (int k = excl; word; ++k) {
          const int bit = __ffs(static_cast<int>(word)) - 1;
          word &= word - 1;
          if (k < a.unionCap) unionList[k] = w * 32 + bit;
        }
      }
      running += __shfl_sync(0xffffffffu, incl, 31);
    }
    if (lane == 0) *unionSize = min(running, a.unionCap);
  }
  __syncthreads();
  for (int e = tid; e < rowsHere * a.topK; e += blockDim.x) {
    const int lr = e / a.topK, n = e - lr * a.topK;
    if (n >= selCount[lr]) continue;
    const int j = sel[e];
    const int u = wordPrefix[j >> 5] + __popc(static_cast<uint32_t>(bitmap[j >> 5]) & ((1u << (j & 31)) - 1u));
    if (u < a.unionCap) atomicOr(&unionRows[u], 1u << lr);
  }
  __syncthreads();
}

// moba: the gate of one (KV head x row tile, sequence) item. Scores come from
// scoresKernel (`scoresReady`) or are computed here from one key sum per block
// (the cache's key-sum block is the layer's block). Then every row's
// top-(k-1) by repeated arg-max below the previous pick, its current block,
// and the union with its row masks.
template <int D, bool kBf16>
__global__ void __launch_bounds__(kGateThreads, 1) gateKernel(const DecodeArgs a) {
  allowDependentGrid();
  constexpr int kWarps = kGateThreads / 32;
  extern __shared__ __align__(16) unsigned char smem[];
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int RT = a.rowTileRows;
  const int h = blockIdx.x / a.rowTiles, rt = blockIdx.x - h * a.rowTiles;
  const int b = blockIdx.y;
  SeqView s;
  if (!loadSeq(a, b, &s) || rt * RT >= s.qLen * a.group) return;
  const int row0 = rt * RT;
  const int rowsHere = min(RT, s.qLen * a.group - row0);
  const int64_t item = (static_cast<int64_t>(b) * a.numKVHeads + h) * a.rowTiles + rt;

  float* qf = reinterpret_cast<float*>(smem);              // [RT][D]
  float* sumTile = qf + RT * D;                            // [kGateChunk][kSumRow] unless scoresReady
  float* stage = sumTile + (a.scoresReady ? 0 : kGateChunk * kSumRow<D>);  // [RT][maxPast] when staged
  int32_t* bitmap = reinterpret_cast<int32_t*>(stage + (a.stageScores ? RT * a.maxPast : 0));
  int32_t* wordPrefix = bitmap + a.bitmapWords;
  int32_t* sel = wordPrefix + a.bitmapWords;               // [RT, topK]
  int32_t* selCount = sel + RT * a.topK;                   // [RT]
  int32_t* unionList = selCount + RT;                      // [unionCap]
  uint32_t* unionRows = reinterpret_cast<uint32_t*>(unionList + a.unionCap);
  __shared__ int unionSize;
  __shared__ int sumPage[kGateChunk];  // page holding each block's key sum (-1: none)

  auto globalRow = [&](int lr) { return globalRowOf(a, s, h, row0 + lr); };
  // Scores of local row lr: staged here, or in the workspace (L2: written by
  // this CTA or by scoresKernel, never through this SM's L1 for the latter).
  auto scoreAt = [&](int lr, int j) {
    return a.stageScores ? stage[lr * a.maxPast + j] : __ldcg(a.scores + globalRow(lr) * a.maxPast + j);
  };
  for (int i = tid; i < a.bitmapWords; i += kGateThreads) bitmap[i] = 0;
  for (int i = tid; i < a.unionCap; i += kGateThreads) unionRows[i] = 0u;
  const int maxCur = (s.kvLen - 1) / a.chunkSize;  // complete blocks the last row may pick from

  if (!a.scoresReady && maxCur > 0) {
    const float inv = 1.f / static_cast<float>(a.chunkSize);
    for (int c0 = 0; c0 < maxCur; c0 += kGateChunk) {
      const int n = min(kGateChunk, maxCur - c0);
      copySumTile<D>(a, s, h, c0, n, sumPage, sumTile);
      if (c0 == 0) {
        // The query rows, widened to fp32, while the first sums are in flight.
        for (int e = tid; e < rowsHere * (D / 4); e += kGateThreads) {
          const int lr = e / (D / 4), c = e - lr * (D / 4);
          reinterpret_cast<float4*>(qf)[e] = widen4<kBf16>(*reinterpret_cast<const uint2*>(a.q + globalRow(lr) * D + c * 4));
        }
      }
      ptx::cpAsyncWait<0>();
      __syncthreads();
      scoreSumTile<D>(
          sumTile, n, rowsHere, inv, [&](int r, int d) { return *reinterpret_cast<const float4*>(qf + r * D + d); },
          [&](int lr, int blk, float score) {
            if (a.stageScores) {
              stage[lr * a.maxPast + c0 + blk] = score;
            } else {
              a.scores[globalRow(lr) * a.maxPast + c0 + blk] = score;
            }
          });
      __syncthreads();  // the tile is free for the next chunk
    }
  }
  __syncthreads();

  for (int lr = warp; lr < rowsHere; lr += kWarps) {
    const int gr = row0 + lr, i = gr / a.group;
    const int t = s.kvLen - s.qLen + i;
    const int cur = t / a.chunkSize;
    const int want = min(a.topK - 1, cur);
    uint64_t prev = ~0ull;  // each pick ranks below the previous one
    for (int n = 0; n < want; ++n) {
      uint64_t best = 0;
      for (int base = 0; base < cur; base += 32 * kSelectBatch) {
        // kSelectBatch independent loads in flight before the first compare.
        float v[kSelectBatch];
#pragma unroll
        for (int u = 0; u < kSelectBatch; ++u) {
          const int j = base + u * 32 + lane;
          v[u] = j < cur ? scoreAt(lr, j) : 0.f;
        }
#pragma unroll
        for (int u = 0; u < kSelectBatch; ++u) {
          const int j = base + u * 32 + lane;
          const uint64_t key = j < cur ? orderKey(v[u], j) : 0;
          if (key < prev && key > best) best = key;
        }
      }
      best = warpMaxKey(best);
      if (lane == 0) pick(sel, bitmap, a.topK, lr, n, blockOfKey(best));
      prev = best;
    }
    if (lane == 0) {
      pick(sel, bitmap, a.topK, lr, want, cur);
      selCount[lr] = want + 1;
    }
  }
  buildUnion(a, rowsHere, bitmap, wordPrefix, sel, selCount, unionList, unionRows, &unionSize);
  int32_t* out = selectionOf(a, item);
  const int n = unionSize;
  if (tid == 0) out[0] = n;
  for (int u = tid; u < n; u += kGateThreads) {
    out[1 + u] = unionList[u];
    out[1 + a.unionCap + u] = static_cast<int32_t>(unionRows[u]);
  }
}

// Cross-CTA hand-offs (one thread, after a CTA barrier that orders the other
// threads' writes before it): release the CTA's global writes and count it,
// returning the count before; and the acquiring side.
__device__ __forceinline__ int arriveRelease(int32_t* counter) {
  int old;
  asm volatile("fence.acq_rel.gpu;\n" ::: "memory");
  asm volatile("atom.relaxed.gpu.global.add.s32 %0, [%1], 1;\n" : "=r"(old) : "l"(counter) : "memory");
  return old;
}
__device__ __forceinline__ int loadAcquire(const int32_t* p) {
  int v;
  asm volatile("ld.acquire.gpu.global.b32 %0, [%1];\n" : "=r"(v) : "l"(p) : "memory");
  return v;
}
__device__ __forceinline__ void fenceAcquire() { asm volatile("fence.acq_rel.gpu;\n" ::: "memory"); }

// Shared bytes fusedGate needs in the rings' region (host and device agree).
__host__ __device__ constexpr size_t fusedGateBytes(int D, int RT, int gatePer, int numSlots, int topK, int bitmapWords) {
  return static_cast<size_t>(kFusedChunk) * 4 + static_cast<size_t>(kFusedChunk) * (D + 16) * 4 +
         static_cast<size_t>(RT) * gatePer * 8 + static_cast<size_t>(RT) * numSlots * (topK - 1) * 8 +
         (static_cast<size_t>(RT) * topK + RT + 2 * static_cast<size_t>(bitmapWords)) * 4;
}

// moba, one launch per step: the numSlots attention CTAs of an item are its
// gate. Each scores its share of the complete blocks for every row of the
// tile and publishes each row's top-(k-1) of that share; once all of the
// item's CTAs have (a counter; the launch is cooperative, so they are all
// resident and the wait ends), every CTA merges the same candidates into the
// same selection. The picks equal gateKernel's: the same scores, and a
// share's top-(k-1) holds every one of its blocks in the row's top-(k-1).
// Fills unionList / unionRows / unionSize; scratch is the rings' region.
// Returns whether the CTA counted itself in counters[item].
template <int D, bool kBf16>
__device__ bool fusedGate(const DecodeArgs& a, const SeqView& s, int h, int64_t item, int slot, int row0, int rowsHere,
                          const uint16_t* Qs, unsigned char* scratch, int32_t* unionList, uint32_t* unionRows,
                          int* unionSize) {
  constexpr int kWarps = kThreads / 32;
  using L = decode::RowLayout<D>;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int RT = a.rowTileRows;
  const int keep = a.topK - 1;
  const int nc = a.numSlots * keep;  // candidates per row
  const int maxCur = (s.kvLen - 1) / a.chunkSize;
  const int per = (maxCur + a.numSlots - 1) / a.numSlots;
  const int jb = min(maxCur, slot * per), je = min(maxCur, jb + per);

  int* sumPage = reinterpret_cast<int*>(scratch);                      // [kFusedChunk]
  float* sumTile = reinterpret_cast<float*>(sumPage + kFusedChunk);    // [kFusedChunk][kSumRow]
  uint64_t* stage = reinterpret_cast<uint64_t*>(sumTile + kFusedChunk * kSumRow<D>);  // [RT][gatePer] order keys
  uint64_t* cand = stage + RT * a.gatePer;                                                // [RT][nc]
  int32_t* sel = reinterpret_cast<int32_t*>(cand + RT * nc);           // [RT][topK]
  int32_t* selCount = sel + RT * a.topK;                               // [RT]
  int32_t* bitmap = selCount + RT;                                     // [bitmapWords]
  int32_t* wordPrefix = bitmap + a.bitmapWords;                        // [bitmapWords]
  for (int i = tid; i < a.bitmapWords; i += kThreads) bitmap[i] = 0;
  for (int i = tid; i < a.unionCap; i += kThreads) unionRows[i] = 0u;
  auto curOf = [&](int lr) { return (s.kvLen - s.qLen + (row0 + lr) / a.group) / a.chunkSize; };

  // Identical in every CTA of the item, so they all wait or none does.
  const bool exchange = keep > 0 && maxCur > 0;
  const bool counted = exchange && a.numSlots > 1;
  if (exchange) {
    const float inv = 1.f / static_cast<float>(a.chunkSize);
    for (int c0 = jb; c0 < je; c0 += kFusedChunk) {
      const int n = min(kFusedChunk, je - c0);
      copySumTile<D>(a, s, h, c0, n, sumPage, sumTile);
      ptx::cpAsyncWait<0>();  // the sums and, the first time, this thread's query rows
      __syncthreads();
      scoreSumTile<D>(
          sumTile, n, rowsHere, inv,
          [&](int r, int d) { return widen4<kBf16>(*reinterpret_cast<const uint2*>(Qs + r * L::kRowHalves + d)); },
          [&](int lr, int blk, float score) { stage[lr * a.gatePer + c0 - jb + blk] = orderKey(score, c0 + blk); });
      __syncthreads();
    }
    // Each row's top-(k-1) of this CTA's share (key 0: none).
    for (int lr = warp; lr < rowsHere; lr += kWarps) {
      const int cnt = max(0, min(je, curOf(lr)) - jb);
      uint64_t* out = a.candidates + (item * RT + lr) * nc + slot * keep;
      uint64_t prev = ~0ull;
      for (int n = 0; n < keep; ++n) {
        uint64_t best = 0;
        for (int k = lane; k < cnt; k += 32) {
          const uint64_t key = stage[lr * a.gatePer + k];
          if (key < prev && key > best) best = key;
        }
        best = warpMaxKey(best);
        if (lane == 0) out[n] = best;
        prev = best;
      }
    }
    if (counted) {
      __syncthreads();
      if (tid == 0) {
        arriveRelease(a.counters + item);
        while (loadAcquire(a.counters + item) < a.numSlots) {
        }
      }
      __syncthreads();
    }
    // Every candidate of the tile's rows (L2: written by other CTAs).
    for (int e = tid; e < rowsHere * nc; e += kThreads) cand[e] = __ldcg(a.candidates + item * RT * nc + e);
    __syncthreads();
  }
  for (int lr = warp; lr < rowsHere; lr += kWarps) {
    const int cur = curOf(lr);
    const int want = exchange ? min(keep, cur) : 0;
    uint64_t prev = ~0ull;
    int got = 0;
    for (; got < want; ++got) {
      uint64_t best = 0;
      for (int e = lane; e < nc; e += 32) {
        const uint64_t key = cand[lr * nc + e];
        if (key < prev && key > best) best = key;
      }
      best = warpMaxKey(best);
      if (best == 0) break;  // never, as the shares cover every past block; kept so a pick is always in range
      if (lane == 0) pick(sel, bitmap, a.topK, lr, got, blockOfKey(best));
      prev = best;
    }
    if (lane == 0) {
      pick(sel, bitmap, a.topK, lr, got, cur);
      selCount[lr] = got + 1;
    }
  }
  buildUnion(a, rowsHere, bitmap, wordPrefix, sel, selCount, unionList, unionRows, unionSize);
#if MOBA_DECODE_BULK
  attn::fenceProxyAsync();  // the rings' bulk copies will overwrite this scratch
#endif
  return counted;
}

// One CTA per (slot, KV head x row tile, sequence). M: 16-row MMA tiles per CTA.
// The CTA's keys come in virtual tiles of kTile keys; warp w owns keys
// [16w, 16w + 16) of every one of them and streams them through its own ring
// (decode_stream.cuh) with its own online softmax; the warps meet only at the
// start (query rows, moba selection) and once at the end (the merge).
// kTma: K/V tiles by tensor copies (sm_90; every tile 16 keys of one page).
template <int D, int M, bool kBf16, bool kTma>
__global__ void __launch_bounds__(kThreads, kCtasPerSm) decodeKernel(const __grid_constant__ DecodeArgs a) {
#if !MOBA_DECODE_BULK
  if constexpr (kTma) return;  // never launched: tensor copies are sm_90 only
#endif
  constexpr int RT = 16 * M;                 // rows per CTA
  constexpr int CPR = D / 8;                 // 16-byte chunks per row
  constexpr int KSTEPS = D / 16;             // k-steps of q.k
  constexpr int NT = D / 8;                  // n-tiles of the output
  constexpr int kWarps = kThreads / 32;
  using L = decode::RowLayout<D>;
  constexpr int RH = L::kRowHalves;
  using Ring = decode::WarpRing<D, kStages>;

  extern __shared__ __align__(16) unsigned char smem[];
  uint64_t* bars = reinterpret_cast<uint64_t*>(smem);                       // [kWarps][kStages]
  uint16_t* Qs = reinterpret_cast<uint16_t*>(smem + kBarBytes);             // [RT][RH]
  // The rings start at a multiple of 1024 bytes with tensor copies (the
  // swizzle pattern follows address bits 7-9); the host leaves room for it.
  uint16_t* rings = Qs + RT * RH;                                           // [kWarps][kStages][stage]
  if (kTma) rings += ((1024u - (smemAddr(rings) & 1023u)) & 1023u) / 2;
  unsigned char* region = reinterpret_cast<unsigned char*>(rings);          // rings, then the warps' merge
  int32_t* unionList = reinterpret_cast<int32_t*>(region + a.regionBytes);  // [unionCap]
  uint32_t* unionRows = reinterpret_cast<uint32_t*>(unionList + a.unionCap);
  __shared__ int unionSize;
  __shared__ int isLast;

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int slot = blockIdx.x;
  const int h = blockIdx.y / a.rowTiles, rt = blockIdx.y - h * a.rowTiles;
  const int b = blockIdx.z;
  SeqView s;
  const bool live = loadSeq(a, b, &s) && rt * RT < s.qLen * a.group;
  if (!live) {
    // No CTA may let this grid complete ahead of the scores it depends on.
    if (a.moba) waitForPrimaryGrid();
    return;
  }
  const int R = s.qLen * a.group;
  const int row0 = rt * RT;
  const int rowsHere = min(RT, R - row0);
  const int item = (b * a.numKVHeads + h) * a.rowTiles + rt;
  const uint16_t* kvHead = a.kv + static_cast<int64_t>(h) * a.pageSize * D;

  // Query rows (inputs of the op, not of the scores grid: read before waiting
  // for it): local row r is (token i, head g) with r + row0 = i * group + g.
  // cp.async (rows past the tile zero-filled), so that the first page and
  // key-sum lookups go out behind them rather than after them.
  for (int c = tid; c < RT * CPR; c += kThreads) {
    const int r = c / CPR, ch = c - r * CPR;
    const uint16_t* src = a.q;
    if (r < rowsHere) src = a.q + globalRowOf(a, s, h, row0 + r) * D + ch * 8;
    ptx::cpAsync16(smemAddr(Qs + r * RH + ch * 8), src, r < rowsHere);
  }
  ptx::cpAsyncCommit();
  Ring ring{rings + warp * kStages * (kTma ? L::kTmaStageHalves : L::kStageHalves), bars + warp * kStages, a.kv, kTma};
  if (lane == 0) ring.init();
  // Causal limit of the rows this thread holds in the MMA layout (-1: padding row).
  int tRow[M][2];
#pragma unroll
  for (int m = 0; m < M; ++m) {
#pragma unroll
    for (int hh = 0; hh < 2; ++hh) {
      const int lr = m * 16 + (lane >> 2) + hh * 8;
      tRow[m][hh] = lr < rowsHere ? s.kvLen - s.qLen + (row0 + lr) / a.group : -1;
    }
  }

  int numTiles, vtBegin;
  bool gateCounted = false;  // this CTA already counted itself in counters[item] (fused gate)
  if (a.moba) {
    if (a.fusedGate) {
      gateCounted = fusedGate<D, kBf16>(a, s, h, item, slot, row0, rowsHere, Qs, region, unionList, unionRows, &unionSize);
    } else {
      // The item's selection, written by gateKernel.
      waitForPrimaryGrid();
      // Size, blocks and row masks in one round trip: entries past the size
      // are read too (never used) rather than waiting for the size first.
      const int32_t* selected = selectionOf(a, item);
      if (tid == 0) unionSize = min(max(__ldcg(selected), 0), a.unionCap);
      for (int u = tid; u < a.unionCap; u += kThreads) {
        unionList[u] = __ldcg(selected + 1 + u);
        unionRows[u] = static_cast<uint32_t>(__ldcg(selected + 1 + a.unionCap + u));
      }
    }
    __syncthreads();
    const int nVirtual = unionSize * a.tilesPerBlock;
    const int split = (nVirtual + a.numSlots - 1) / a.numSlots;
    vtBegin = slot * split;
    numTiles = max(0, min(nVirtual, vtBegin + split) - vtBegin);
  } else {
    vtBegin = numTiles = 0;  // full policy: the warps' feed below decides
  }
  // Q, the union and its row masks and the barriers are visible to all.
  ptx::cpAsyncWait<0>();
  __syncthreads();

  // The warp's keys come as warp tiles of 16: full policy, tile t holds keys
  // [16t, 16t + 16); moba, tile vt * kWarps + w is warp w's quarter of
  // virtual tile vt of the union.
  struct KeyRange {
    int p0, end;    // first key; keys at positions >= end are masked
    uint32_t rows;  // bit r: local row r attends to these keys
  };
  auto rangeOf = [&](int t) {
    KeyRange r;
    if (a.moba) {
      const int vt = t / kWarps, quarter = t - vt * kWarps;
      const int u = vt / a.tilesPerBlock, w = vt - u * a.tilesPerBlock;
      const int j = unionList[u];
      r.p0 = j * a.chunkSize + w * kTile + quarter * decode::kWarpKeys;
      r.end = min(j * a.chunkSize + a.chunkSize, s.kvLen);
      r.rows = unionRows[u];
    } else {
      r.p0 = t * decode::kWarpKeys;
      r.end = s.kvLen;
      r.rows = 0xffffffffu;
    }
    return r;
  };
  // Which tiles this warp takes: every kWarps-th tile of the CTA's range, so
  // the 4 warps stream neighbouring keys. Full decode splits each sequence's
  // tiles into numSlots contiguous shares. The split is static on purpose:
  // which CTA sums which keys must not depend on timing, or the result would
  // change in the last bit from run to run (tests require the same bits for
  // any page placement); a run-time hand-out of the last 15% of the tiles
  // gained 0-2% at batch 1 and broke that.
  int feedNext, feedEnd;
  if (a.moba) {
    feedNext = vtBegin * kWarps + warp;
    feedEnd = (vtBegin + numTiles) * kWarps;
  } else {
    const int nWarpTiles = (s.kvLen + decode::kWarpKeys - 1) / decode::kWarpKeys;
    const int share = (nWarpTiles + a.numSlots - 1) / a.numSlots;
    feedNext = slot * share + warp;
    feedEnd = min(nWarpTiles, (slot + 1) * share);
  }
  auto take = [&]() -> int {  // the warp's next tile, -1 when none is left
    if (feedNext >= feedEnd) return -1;
    const int t = feedNext;
    feedNext += kWarps;
    return t;
  };
  // Where this lane's row of tile t lives: its page (-1: no row to fetch) and
  // the row's element offset inside the page. The page index is a dependent
  // global load, so it is asked for one tile ahead of its use.
  const int myKey = lane & (decode::kWarpKeys - 1);
  struct RowRef {
    int page;
    int inPage;
  };
  auto lookup = [&](int t) {
    RowRef r{-1, 0};
    if (t >= 0) {
      const KeyRange kr = rangeOf(t);
      const int pos = kr.p0 + myKey;
      if (pos < kr.end) {
        const int pi = pos / a.pageSize;
        r.page = s.pages[pi];
        r.inPage = pos - pi * a.pageSize;
      }
    }
    return r;
  };
  auto source = [&](RowRef r) -> const uint16_t* {
    // A page index outside the pool (corrupt metadata) reads nothing: zeros.
    if (r.page < 0 || r.page >= a.numPages) return nullptr;
    return kvHead + r.page * a.pageStride + static_cast<int64_t>(r.inPage) * D + (lane >= 16 ? a.vOffset : 0);
  };
  // Fetch tile r (this lane's row of it) into `stage`: by tensor copies
  // (lane 0's row is the tile's first key), or one row per lane.
  auto issue = [&](int stage, RowRef r) {
#if MOBA_DECODE_BULK
    if constexpr (kTma) {
      const int kRow = a.kvRow0 + r.page * a.pageRows + h * a.pageSize + r.inPage;
      ring.issueTile(stage, &a.kvMap, r.page >= 0 && r.page < a.numPages, kRow, kRow + a.vRows, lane);
      return;
    }
#endif
    ring.issue(stage, source(r), lane);
  };

  float acc[M][NT][4];
  float mRow[M][2], lRow[M][2];
#pragma unroll
  for (int m = 0; m < M; ++m) {
#pragma unroll
    for (int n = 0; n < NT; ++n) acc[m][n][0] = acc[m][n][1] = acc[m][n][2] = acc[m][n][3] = 0.f;
    mRow[m][0] = mRow[m][1] = -INFINITY;
    lRow[m][0] = lRow[m][1] = 0.f;
  }

  // win[i]: the tile of iteration it + i (-1: none); tiles are issued in the
  // order they are taken, so the ring's stage of a tile is its ordinal % kStages.
  // Every stage is in flight while the warp waits: the tile after them goes
  // into the stage just consumed. The first tiles' page lookups go out
  // together, before any copy (a copy between two lookups would order them
  // one after another).
  int win[kStages + 1];
  RowRef first[kStages];
#pragma unroll
  for (int i = 0; i < kStages; ++i) {
    win[i] = take();
    first[i] = lookup(win[i]);
  }
#pragma unroll
  for (int i = 0; i < kStages; ++i) {
    if (win[i] >= 0) {
      issue(i, first[i]);
    } else {
      ring.skip();
    }
  }
  win[kStages] = take();
  RowRef ahead = lookup(win[kStages]);
  for (int it = 0; win[0] >= 0; ++it) {
    ring.wait(it);  // tile `it` landed
    const KeyRange ti = rangeOf(win[0]);
    const int stg = it % kStages;
#if MOBA_DECODE_BULK
    if (kTma && ti.end - ti.p0 < decode::kWarpKeys) ring.zeroTailV(stg, max(0, ti.end - ti.p0), lane);
#endif
    const uint16_t* ks = ring.k(stg);
    const uint16_t* vs = ring.v(stg);

    float sc[M][2][4];
#pragma unroll
    for (int m = 0; m < M; ++m)
#pragma unroll
      for (int n = 0; n < 2; ++n) sc[m][n][0] = sc[m][n][1] = sc[m][n][2] = sc[m][n][3] = 0.f;
#pragma unroll
    for (int kk = 0; kk < KSTEPS; ++kk) {
      uint32_t kf[4];
      {
        const int key = (lane & 7) + ((lane >> 4) << 3);
        ldsm4(kf, decode::tileChunk<D>(ks, key, kk * 2 + ((lane >> 3) & 1), kTma));
      }
#pragma unroll
      for (int m = 0; m < M; ++m) {
        uint32_t qa[4];
        const int row = m * 16 + (lane & 7) + (((lane >> 3) & 1) << 3);
        ldsm4(qa, Qs + row * RH + (kk * 2 + (lane >> 4)) * 8);
        mma16816<kBf16>(sc[m][0], qa, kf[0], kf[1]);
        mma16816<kBf16>(sc[m][1], qa, kf[2], kf[3]);
      }
    }

    // Mask, then the online softmax in log2 units, per row.
    uint32_t pa[M][4];
#pragma unroll
    for (int m = 0; m < M; ++m) {
#pragma unroll
      for (int hh = 0; hh < 2; ++hh) {
        const int lr = m * 16 + (lane >> 2) + hh * 8;
        const bool rowOn = (ti.rows >> lr) & 1u;
        float mx = -INFINITY;
#pragma unroll
        for (int n = 0; n < 2; ++n) {
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            const int pos = ti.p0 + n * 8 + (lane & 3) * 2 + e;
            const bool ok = rowOn && pos < ti.end && pos <= tRow[m][hh];
            const float x = ok ? sc[m][n][hh * 2 + e] * a.scaleLog2 : -INFINITY;
            sc[m][n][hh * 2 + e] = x;
            mx = fmaxf(mx, x);
          }
        }
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
        const float mNew = fmaxf(mRow[m][hh], mx);
        const float mUse = mNew == -INFINITY ? 0.f : mNew;  // keeps exp2(-inf - -inf) out
        const float corr = exp2f(mRow[m][hh] - mUse);
        mRow[m][hh] = mNew;
        lRow[m][hh] *= corr;
#pragma unroll
        for (int n = 0; n < NT; ++n) {
          acc[m][n][hh * 2] *= corr;
          acc[m][n][hh * 2 + 1] *= corr;
        }
#pragma unroll
        for (int n = 0; n < 2; ++n) {
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            const float p = exp2f(sc[m][n][hh * 2 + e] - mUse);
            sc[m][n][hh * 2 + e] = p;
            lRow[m][hh] += p;
          }
        }
      }
      // The probabilities as the A operand: the accumulator layout of two
      // n-tiles is the A layout of one k16 step.
      pa[m][0] = pack2<kBf16>(sc[m][0][0], sc[m][0][1]);
      pa[m][1] = pack2<kBf16>(sc[m][0][2], sc[m][0][3]);
      pa[m][2] = pack2<kBf16>(sc[m][1][0], sc[m][1][1]);
      pa[m][3] = pack2<kBf16>(sc[m][1][2], sc[m][1][3]);
    }
#pragma unroll
    for (int dp = 0; dp < D / 16; ++dp) {
      uint32_t vf[4];
      const int key = (lane & 7) + (((lane >> 3) & 1) << 3);
      ldsm4T(vf, decode::tileChunk<D>(vs, key, dp * 2 + (lane >> 4), kTma));
#pragma unroll
      for (int m = 0; m < M; ++m) {
        mma16816<kBf16>(acc[m][2 * dp], pa[m], vf[0], vf[1]);
        mma16816<kBf16>(acc[m][2 * dp + 1], pa[m], vf[2], vf[3]);
      }
    }
    // Every lane is done with the stage: refill it.
    __syncwarp();
    if (win[kStages] >= 0) {
      issue(stg, ahead);
    } else {
      ring.skip();
    }
#pragma unroll
    for (int i = 0; i < kStages; ++i) win[i] = win[i + 1];
    win[kStages] = take();
    ahead = lookup(win[kStages]);
  }
  ring.drain();
  __syncthreads();  // every warp is done with its ring: reuse the bytes to merge the warps

  float* accW = reinterpret_cast<float*>(region);  // [kWarps][RT][D]
  float* mW = accW + kWarps * RT * D;              // [kWarps][RT]
  float* lW = mW + kWarps * RT;                    // [kWarps][RT]
  float* wW = lW + kWarps * RT;                    // [kWarps][RT] each warp's weight in a row
  float* lseRow = wW + kWarps * RT;                // [RT]
#pragma unroll
  for (int m = 0; m < M; ++m) {
#pragma unroll
    for (int hh = 0; hh < 2; ++hh) {
      float l = lRow[m][hh];
      l += __shfl_xor_sync(0xffffffffu, l, 1);
      l += __shfl_xor_sync(0xffffffffu, l, 2);
      const int lr = m * 16 + (lane >> 2) + hh * 8;
      if ((lane & 3) == 0) {
        mW[warp * RT + lr] = mRow[m][hh];
        lW[warp * RT + lr] = l;
      }
#pragma unroll
      for (int n = 0; n < NT; ++n) {
        const int col = n * 8 + (lane & 3) * 2;
        *reinterpret_cast<float2*>(accW + (warp * RT + lr) * D + col) = make_float2(acc[m][n][hh * 2], acc[m][n][hh * 2 + 1]);
      }
    }
  }
  __syncthreads();

  // Per row, once: each warp's weight exp2(m_w - m) / l and the row's log2-sum-exp.
  if (tid < rowsHere) {
    const int lr = tid;
    float mx = -INFINITY;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) mx = fmaxf(mx, mW[w * RT + lr]);
    float l = 0.f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) {
      const float f = mx == -INFINITY ? 0.f : exp2f(mW[w * RT + lr] - mx);
      wW[w * RT + lr] = f;
      l += lW[w * RT + lr] * f;
    }
    const float inv = l > 0.f ? 1.f / l : 0.f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) wW[w * RT + lr] *= inv;
    lseRow[lr] = l > 0.f ? mx + log2f(l) : -INFINITY;
  }
  __syncthreads();
  float* partO = a.partO + (static_cast<int64_t>(item) * a.numSlots + slot) * RT * D;
  float* partL = a.partL + (static_cast<int64_t>(item) * a.numSlots + slot) * RT;
  for (int e = tid; e < rowsHere * (D / 4); e += kThreads) {
    const int lr = e / (D / 4), d = (e - lr * (D / 4)) * 4;
    float4 o = make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll
    for (int w = 0; w < kWarps; ++w) {
      const float f = wW[w * RT + lr];
      const float4 v = *reinterpret_cast<const float4*>(accW + (w * RT + lr) * D + d);
      o.x += f * v.x;
      o.y += f * v.y;
      o.z += f * v.z;
      o.w += f * v.w;
    }
    if (a.numSlots == 1) {
      storeRow4<kBf16>(a.out + globalRowOf(a, s, h, row0 + lr) * D + d, o, 1.f);
    } else {
      *reinterpret_cast<float4*>(partO + lr * D + d) = o;
      if (d == 0) partL[lr] = lseRow[lr];
    }
  }
  if (a.numSlots == 1) return;

  // Split-KV: the last CTA of the group to finish merges every slot.
  __syncthreads();
  if (tid == 0) {
    // With the fused gate every CTA of the item counted once before.
    isLast = arriveRelease(a.counters + item) == (gateCounted ? 2 : 1) * a.numSlots - 1;
    if (isLast) fenceAcquire();
  }
  __syncthreads();
  if (!isLast) return;
  const float* groupO = a.partO + static_cast<int64_t>(item) * a.numSlots * RT * D;
  const float* groupL = a.partL + static_cast<int64_t>(item) * a.numSlots * RT;
  // Per (row, slot) weights first (one warp per row, slots over lanes), so
  // that the pass over the partial outputs is independent loads only.
  float* weight = accW;                   // [rowsHere, numSlots]
  float* invSum = accW + RT * a.numSlots; // [rowsHere]
  for (int lr = warp; lr < rowsHere; lr += kWarps) {
    float mx = -INFINITY;
    for (int sl = lane; sl < a.numSlots; sl += 32) mx = fmaxf(mx, __ldcg(groupL + sl * RT + lr));
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, off));
    float sum = 0.f;
    for (int sl = lane; sl < a.numSlots; sl += 32) {
      const float w = mx == -INFINITY ? 0.f : exp2f(__ldcg(groupL + sl * RT + lr) - mx);
      weight[lr * a.numSlots + sl] = w;
      sum += w;
    }
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, off);
    if (lane == 0) invSum[lr] = sum > 0.f ? 1.f / sum : 0.f;
  }
  __syncthreads();
  for (int e = tid; e < rowsHere * (D / 4); e += kThreads) {
    const int lr = e / (D / 4), d = (e - lr * (D / 4)) * 4;
    float4 o = make_float4(0.f, 0.f, 0.f, 0.f);
    const float* w = weight + lr * a.numSlots;
    // kMergeBatch slots' loads in flight at once.
    for (int sl0 = 0; sl0 < a.numSlots; sl0 += kMergeBatch) {
      float4 v[kMergeBatch];
#pragma unroll
      for (int u = 0; u < kMergeBatch; ++u) {
        v[u] = sl0 + u < a.numSlots
                   ? __ldcg(reinterpret_cast<const float4*>(groupO + (static_cast<int64_t>(sl0 + u) * RT + lr) * D + d))
                   : make_float4(0.f, 0.f, 0.f, 0.f);
      }
#pragma unroll
      for (int u = 0; u < kMergeBatch; ++u) {
        const float f = sl0 + u < a.numSlots ? w[sl0 + u] : 0.f;
        o.x += f * v[u].x;
        o.y += f * v[u].y;
        o.z += f * v[u].z;
        o.w += f * v[u].w;
      }
    }
    storeRow4<kBf16>(a.out + globalRowOf(a, s, h, row0 + lr) * D + d, o, invSum[lr]);
  }
  if (tid == 0) a.counters[item] = 0;
}

// ------------------------------------------------------------ host launch --

// The kernels of one (head dim, row tiles, dtype) instance.
struct Kernels {
  const void* decode;
  const void* decodeTma;
  const void* scores;
  const void* gate;
};

template <int D, int M, bool kBf16>
Kernels kernelsOf() {
  return {reinterpret_cast<const void*>(decodeKernel<D, M, kBf16, false>),
          reinterpret_cast<const void*>(decodeKernel<D, M, kBf16, true>), reinterpret_cast<const void*>(scoresKernel<D, kBf16>),
          reinterpret_cast<const void*>(gateKernel<D, kBf16>)};
}

Kernels kernelsFor(int D, int M, bool bf16) {
  if (D == 64) {
    if (bf16) return M == 1 ? kernelsOf<64, 1, true>() : kernelsOf<64, 2, true>();
    return M == 1 ? kernelsOf<64, 1, false>() : kernelsOf<64, 2, false>();
  }
  if (bf16) return M == 1 ? kernelsOf<128, 1, true>() : kernelsOf<128, 2, true>();
  return M == 1 ? kernelsOf<128, 1, false>() : kernelsOf<128, 2, false>();
}

// Allows `kernel` `bytes` of dynamic shared memory with the whole carveout
// given to shared memory (the driver's default carveout can leave room for
// only one of our 100 KB CTAs per SM), and returns how many of its CTAs fit
// on one SM. Cached per (kernel, device); JavaScript thread only.
Status prepareKernel(const void* kernel, size_t bytes, int threads, int* perSm) {
  struct Prepared {
    const void* kernel;
    int device;
    size_t granted;  // largest dynamic shared memory allowed so far
    size_t bytes;    // size of the last occupancy query
    int perSm;
  };
  static std::vector<Prepared> prepared;
  int dev = 0;
  cudaGetDevice(&dev);
  Prepared* e = nullptr;
  for (Prepared& x : prepared) {
    if (x.kernel == kernel && x.device == dev) e = &x;
  }
  if (!e) {
    MOBA_RETURN_IF_ERROR(cudaStatus(
        cudaFuncSetAttribute(kernel, cudaFuncAttributePreferredSharedMemoryCarveout, cudaSharedmemCarveoutMaxShared),
        "cudaFuncSetAttribute(carveout)"));
    prepared.push_back({kernel, dev, 48 * 1024, 0, 0});
    e = &prepared.back();
  }
  if (bytes > e->granted) {
    MOBA_RETURN_IF_ERROR(cudaStatus(
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)),
        "cudaFuncSetAttribute(shared memory)"));
    e->granted = bytes;
  }
  if (e->perSm == 0 || e->bytes != bytes) {
    int n = 0;
    MOBA_RETURN_IF_ERROR(cudaStatus(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, kernel, threads, bytes),
                                    "cudaOccupancyMaxActiveBlocksPerMultiprocessor"));
    e->perSm = n > 0 ? n : 1;
    e->bytes = bytes;
  }
  *perSm = e->perSm;
  return Status::Ok();
}

enum class LaunchMode { Plain, Dependent, Cooperative };

// Dependent: programmatic dependent launch (may start before the previous
// kernel ends). Cooperative: every CTA resident at once (the fused gate's
// CTAs wait for each other).
Status launch(const void* kernel, dim3 grid, int threads, size_t smem, DecodeArgs& args, LaunchMode mode, CudaContext& ctx) {
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = grid;
  cfg.blockDim = dim3(threads);
  cfg.dynamicSmemBytes = smem;
  cfg.stream = ctx.stream;
  cudaLaunchAttribute attr[1];
  if (mode == LaunchMode::Dependent) {
    attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr[0].val.programmaticStreamSerializationAllowed = 1;
  } else {
    attr[0].id = cudaLaunchAttributeCooperative;
    attr[0].val.cooperative = 1;
  }
  cfg.attrs = attr;
  cfg.numAttrs = mode == LaunchMode::Plain ? 0 : 1;
  void* params[] = {&args};
  return cudaStatus(cudaLaunchKernelExC(&cfg, kernel, params), "decode launch");
}

int64_t ceilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

// The pool as a 2D tensor of rows of headDim elements, for tensor copies of
// 16-row x 64-column boxes with the 128-byte swizzle. Cached per (pool, rows,
// head dim); false when the driver offers no encoder or the pool has more
// rows than 32-bit coordinates reach. JavaScript thread only.
bool poolTensorMap(const PagedKV& kv, CUtensorMap* out) {
  static PFN_cuTensorMapEncodeTiled_v12000 encode = nullptr;
  static bool looked = false;
  if (!looked) {
    looked = true;
    void* fn = nullptr;
    cudaDriverEntryPointQueryResult found;
    if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &fn, 12000, cudaEnableDefault, &found) == cudaSuccess &&
        found == cudaDriverEntryPointSuccess) {
      encode = reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(fn);
    }
    cudaGetLastError();
  }
  if (encode == nullptr) return false;
  const int64_t rows = static_cast<int64_t>(kv.numPages) * (kv.pageStride() / kv.headDim);
  if (rows <= 0 || rows > INT32_MAX) return false;
  struct Cached {
    const void* pool;
    int64_t rows;
    int headDim;
    CUtensorMap map;
  };
  static std::vector<Cached> cache;
  for (const Cached& c : cache) {
    if (c.pool == kv.pool && c.rows == rows && c.headDim == kv.headDim) {
      *out = c.map;
      return true;
    }
  }
  const cuuint64_t dims[2] = {static_cast<cuuint64_t>(kv.headDim), static_cast<cuuint64_t>(rows)};
  const cuuint64_t strides[1] = {static_cast<cuuint64_t>(kv.headDim) * 2};
  const cuuint32_t box[2] = {64, static_cast<cuuint32_t>(decode::kWarpKeys)};
  const cuuint32_t elementStrides[2] = {1, 1};
  CUtensorMap map;
  if (encode(&map, CU_TENSOR_MAP_DATA_TYPE_UINT16, 2, kv.pool, dims, strides, box, elementStrides,
             CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
             CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) != CUDA_SUCCESS) {
    return false;
  }
  if (cache.size() >= 16) cache.erase(cache.begin());
  cache.push_back({kv.pool, rows, kv.headDim, map});
  *out = map;
  return true;
}


}  // namespace

Status decodeLaunch(const DecodeParams& p, CudaContext& ctx) {
  const PagedKV& kv = p.kv;
  const int D = kv.headDim;
  if (D != 64 && D != 128) return Status::Invalid("unsupported head_dim for decode: " + std::to_string(D));
  if (kv.dtype != DType::BF16 && kv.dtype != DType::F16) {
    return Status::Invalid(std::string("unsupported dtype for decode: ") + dtypeName(kv.dtype));
  }
  if (p.batch == 0) return Status::Ok();
  if (p.batch > 65535) return Status::Invalid("decode takes at most 65535 sequences per op, received " + std::to_string(p.batch));
  const bool moba = p.policy == DecodePolicy::Moba;
  if (moba && (p.chunkSize < 1 || p.topK < 1 || p.chunkSize % kv.pageSize != 0)) {
    return Status::Invalid("moba decode needs chunkSize >= 1, topK >= 1 and pageSize dividing chunkSize");
  }
  const int group = p.numQHeads / kv.numKVHeads;
  const int R = p.maxQLen * group;
  const int M = R <= 16 ? 1 : 2;
  const int RT = 16 * M;
  const int rowTiles = static_cast<int>(ceilDiv(R, RT));
  if (static_cast<int64_t>(kv.numKVHeads) * rowTiles > 65535) {
    return Status::Invalid("decode: too many KV heads x row tiles (" + std::to_string(kv.numKVHeads * rowTiles) + ")");
  }
  const int64_t items = static_cast<int64_t>(p.batch) * kv.numKVHeads * rowTiles;
  const Kernels kernels = kernelsFor(D, M, kv.dtype == DType::BF16);

  DecodeArgs a = {};
  a.q = static_cast<const uint16_t*>(p.q);
  a.out = static_cast<uint16_t*>(p.out);
  a.kv = static_cast<const uint16_t*>(kv.pool) + kv.layerOffset();
  a.pageStride = kv.pageStride();
  a.vOffset = kv.vOffset();
  a.sums = kv.keySums + kv.sumsLayerOffset();
  a.sumsPageStride = kv.sumsPageStride();
  a.sumPages = kv.sumPages;
  a.qStart = p.seqInfo;
  a.qLen = p.seqInfo + p.batch;
  a.kvLen = p.seqInfo + 2 * p.batch;
  a.pageIndptr = p.seqInfo + 3 * p.batch;
  a.pageIndices = p.pageIndices;
  a.numPageIndices = p.numPageIndices;
  a.numPages = kv.numPages;
  a.numRows = p.numRows;
  a.numQHeads = p.numQHeads;
  a.numKVHeads = kv.numKVHeads;
  a.group = group;
  a.pageSize = kv.pageSize;
  a.batch = p.batch;
  a.maxQLen = p.maxQLen;
  a.maxKvLen = p.maxKvLen;
  a.rowTiles = rowTiles;
  a.scaleLog2 = p.softmaxScale * kLog2e;
  a.moba = moba ? 1 : 0;

  // Shared memory: the rings' mbarriers, the query rows, then one region that
  // holds in turn the warps' rings and the merge of the warps, then (moba)
  // the union of the selected blocks.
  const size_t rowBytes = static_cast<size_t>(D + 8) * 2;
  const size_t ringBytes = static_cast<size_t>(kThreads / 32) * kStages * 2 * decode::kWarpKeys * rowBytes;
  const size_t warpMergeBytes = (static_cast<size_t>(kThreads / 32) * RT * D + 3 * (kThreads / 32) * RT + RT) * 4;
  const size_t regionBytes = CudaContext::alignUp(std::max(ringBytes, warpMergeBytes), 16);
  size_t unionBytes = 0;
  int maxPast = 0;
  size_t scoresSmem = 0, gateSmem = 0;
  const int64_t maxTiles = ceilDiv(p.maxKvLen, kTile);
  if (moba) {
    a.chunkSize = p.chunkSize;
    a.topK = p.topK;
    a.tilesPerBlock = static_cast<int>(ceilDiv(p.chunkSize, kTile));
    const int64_t numBlocks = ceilDiv(p.maxKvLen, p.chunkSize);
    maxPast = static_cast<int>((p.maxKvLen - 1) / p.chunkSize);
    a.maxPast = maxPast;
    a.bitmapWords = static_cast<int>(ceilDiv(numBlocks, 32));
    a.unionCap = static_cast<int>(std::min<int64_t>(numBlocks, static_cast<int64_t>(RT) * p.topK));
    unionBytes = static_cast<size_t>(a.unionCap) * 2 * 4;
    // One key-sum read per block: the gate scores the blocks itself.
    // Otherwise scoresKernel adds a block's runs first, one CTA per block.
    a.scoresReady = p.chunkSize / (kv.pageSize * kv.sumPages) > 1 ? 1 : 0;
    const size_t stageBytes = static_cast<size_t>(RT) * maxPast * 4;
    const size_t selectBytes = (static_cast<size_t>(a.bitmapWords) * 2 + static_cast<size_t>(RT) * p.topK + RT) * 4;
    gateSmem = (static_cast<size_t>(RT) * D + (a.scoresReady ? 0 : static_cast<size_t>(kGateChunk) * (D + 16))) * 4 +
               selectBytes + unionBytes;
    // The rows' scores stay in shared memory when they fit, else in the workspace.
    a.stageScores = !a.scoresReady && gateSmem + kGateStaticBytes + stageBytes <= ctx.maxSharedPerBlockOptin ? 1 : 0;
    if (a.stageScores) gateSmem += stageBytes;
    if (a.scoresReady) scoresSmem = static_cast<size_t>(R) * D * 4;
  }
  a.rowTileRows = RT;
  // Tensor copies for moba, whose few tiles per warp wait on their issue: 4
  // instructions per tile, not 32 one lane at a time (the 1 x 128K moba step
  // 12% faster). Full decode streams faster with row copies (tensor copies
  // of 16 x 64 boxes: 6% slower at 1 x 128K and 16 x 32K). Every tile must be
  // 16 keys of one page: pages and blocks of a multiple of 16 keys.
  if (moba && ctx.ccMajor == 9 && kv.pageSize % decode::kWarpKeys == 0 && p.chunkSize % decode::kWarpKeys == 0 &&
      poolTensorMap(kv, &a.kvMap)) {
    a.tma = 1;
    a.kvRow0 = static_cast<int>(kv.layerOffset() / D);
    a.pageRows = static_cast<int>(kv.pageStride() / D);
    a.vRows = static_cast<int>(kv.vOffset() / D);
  }
  a.regionBytes = static_cast<int>(regionBytes);
  // (+ up to 1023 bytes that align the rings for tensor copies)
  const size_t smemBytes = kBarBytes + static_cast<size_t>(RT) * rowBytes + (a.tma ? 1024 : 0) + regionBytes + unionBytes;
  const size_t worst = std::max({smemBytes, scoresSmem, gateSmem + (moba ? kGateStaticBytes : 0)});
  if (worst > ctx.maxSharedPerBlockOptin) {
    return Status::Invalid("decode: the batch needs " + std::to_string(worst) +
                           " bytes of shared memory per CTA (too many blocks or query rows)");
  }
  // Slots per item: enough CTAs for one full wave (every SM holding as many
  // as fit), so that batch 1 at long context still keeps every SM streaming.
  int perSm = 1;
  const void* attention = a.tma ? kernels.decodeTma : kernels.decode;
  MOBA_RETURN_IF_ERROR(prepareKernel(attention, smemBytes, kThreads, &perSm));
  const int64_t target = static_cast<int64_t>(ctx.smCount > 0 ? ctx.smCount : 132) * perSm;
  const int slotsWanted = static_cast<int>(std::min<int64_t>(kMaxSlots, std::max<int64_t>(1, target / items)));
  if (moba) {
    const int64_t maxVirtual = static_cast<int64_t>(a.unionCap) * a.tilesPerBlock;
    a.numSlots = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(slotsWanted, maxVirtual)));
  } else {
    a.numSlots = static_cast<int>(ceilDiv(maxTiles, ceilDiv(maxTiles, slotsWanted)));
  }
  // The fused gate: when a block is one key-sum run, the whole grid fits on
  // the GPU at once (a cooperative launch) and its scratch fits in the rings'
  // region, the attention CTAs gate themselves: one launch, no selection
  // round trip through a second kernel.
  if (moba && !a.scoresReady && ctx.cooperativeLaunch && items * a.numSlots <= target) {
    a.gatePer = static_cast<int>(ceilDiv(std::max(maxPast, 1), a.numSlots));
    a.fusedGate = fusedGateBytes(D, RT, a.gatePer, a.numSlots, p.topK, a.bitmapWords) <= regionBytes ? 1 : 0;
  }
  if (a.numSlots > 1 && (p.counters == nullptr || p.numCounters < items)) {
    return Status::Invalid("decode: split-KV needs a counters buffer of " + std::to_string(items) + " ints");
  }
  a.counters = p.counters;

  // Workspace: the gate's scores and selections, then the partial outputs and their lse.
  // (fused gate: its candidates in place of both).
  const bool gateKernelRuns = moba && !a.fusedGate;
  const bool globalScores = gateKernelRuns && !a.stageScores;
  const size_t scoreFloats = globalScores ? static_cast<size_t>(p.numRows) * p.numQHeads * maxPast : 0;
  const size_t selectionInts =
      gateKernelRuns ? static_cast<size_t>(items) * (1 + 2 * static_cast<size_t>(a.unionCap))
                     : a.fusedGate ? static_cast<size_t>(items) * RT * a.numSlots * (p.topK - 1) * 2 : 0;
  const size_t partials = a.numSlots > 1 ? static_cast<size_t>(items) * a.numSlots * RT : 0;
  const size_t scoreBytes = CudaContext::alignUp(scoreFloats * 4);
  const size_t selectionBytes = CudaContext::alignUp(selectionInts * 4);
  const size_t partOBytes = CudaContext::alignUp(partials * D * 4);
  const size_t bytes = scoreBytes + selectionBytes + partOBytes + partials * 4;
  if (bytes > 0) {
    void* ws = nullptr;
    MOBA_RETURN_IF_ERROR(ctx.scratch(bytes, &ws));
    char* base = static_cast<char*>(ws);
    a.scores = reinterpret_cast<float*>(base);
    a.selection = reinterpret_cast<int32_t*>(base + scoreBytes);
    a.candidates = reinterpret_cast<uint64_t*>(base + scoreBytes);
    a.partO = reinterpret_cast<float*>(base + scoreBytes + selectionBytes);
    a.partL = reinterpret_cast<float*>(base + scoreBytes + selectionBytes + partOBytes);
  }
  if (gateKernelRuns) {
    int unused = 0;
    if (a.scoresReady && maxPast > 0) {
      MOBA_RETURN_IF_ERROR(prepareKernel(kernels.scores, scoresSmem, kThreads, &unused));
      MOBA_RETURN_IF_ERROR(
          launch(kernels.scores, dim3(maxPast, kv.numKVHeads, p.batch), kThreads, scoresSmem, a, LaunchMode::Plain, ctx));
    }
    // The gate reads key sums this step's append may have completed: plain
    // stream order behind it (a programmatic launch measured no faster).
    MOBA_RETURN_IF_ERROR(prepareKernel(kernels.gate, gateSmem, kGateThreads, &unused));
    MOBA_RETURN_IF_ERROR(
        launch(kernels.gate, dim3(kv.numKVHeads * rowTiles, p.batch), kGateThreads, gateSmem, a, LaunchMode::Plain, ctx));
  }
  // With the gate, the attention grid may start while the gate finishes (it
  // waits for the selection first): programmatic dependent launch, sm_90 and later.
  const LaunchMode mode = a.fusedGate ? LaunchMode::Cooperative
                          : gateKernelRuns && ctx.ccMajor >= 9 ? LaunchMode::Dependent
                                                               : LaunchMode::Plain;
  return launch(attention, dim3(a.numSlots, kv.numKVHeads * rowTiles, p.batch), kThreads, smemBytes, a, mode, ctx);
}

}  // namespace moba
