// The moba gate of decode over the paged KV cache: scores of the complete
// blocks from the cache's block key sums, each row's top-(k-1) plus its
// current block, and the union the attention CTAs read. gateKernel selects
// for an item in its own launch (after scoresKernel when a block spans
// several key-sum runs); fusedGate lets the attention CTAs select
// themselves. Included by decode.cu only.
#pragma once
#include "common/moba_rank.cuh"
#include "common/sm90_sync.cuh"
#include "decode_common.cuh"
#include "decode_stream.cuh"

namespace moba {
namespace {

// scoresKernel: as many CTAs of 128 threads as an SM has threads for, so that
// on the H200 a grid of up to 132 * 16 blocks (128K tokens, 8 KV heads,
// chunks of 512) runs in one wave; unbounded, 38 registers allowed only 12
// per SM and the grid took two.
#if defined(__CUDA_ARCH__) && (__CUDA_ARCH__ == 860 || __CUDA_ARCH__ == 870 || __CUDA_ARCH__ == 890)
constexpr int kScoresCtasPerSm = 12;  // 1536 threads per SM
#else
constexpr int kScoresCtasPerSm = 16;  // 2048 threads per SM
#endif
// scoresKernel's staged query rows at most (their fp32 copies), so that any
// number of query heads per KV head fits.
constexpr int kScoresStageBytes = 48 * 1024;
// gateKernel: 8 warps per item (1024 threads measured no faster: its phases
// are latency chains); the key sums of up to kGateChunk blocks are copied in
// at once. Where the rows' selections and union leave too little shared
// memory for that tile (large topK over many blocks), the host halves it, down
// to kGateChunkMin.
constexpr int kGateThreads = 256;
constexpr int kGateChunk = 256;  // blocks whose key sums are in flight at once
constexpr int kGateChunkMin = 16;
constexpr int kSelectBatch = 8;
// Fused gate (see fusedGate): key sums of up to kFusedChunk blocks in flight
// per CTA. When a block spans several key-sum runs, a CTA adds up at most
// kFusedRuns runs in all; more go to scoresKernel, whose grid spreads them
// over the whole GPU. Blocks of 512, each step a new query: 1 x 128K, 16
// blocks of 8 runs per CTA (pages of 64) took 2.8 us less fused than through
// scoresKernel, 16 of 32 runs (pages of 16) 6.5 us more (31.5 -> 38.1 us);
// 16 x 32K, 32 blocks of 8 runs, 6 us less (108 -> 101 us).
constexpr int kFusedChunk = 64;
constexpr int kFusedRuns = 256;
static_assert(kFusedRuns >= kFusedChunk, "the page-index scratch serves both");
// A block's key sum in the gates' shared tiles: padded so that the eight
// lanes reading one block stay conflict-free next to the other blocks.
// Floats per block in those tiles (also the host's shared-memory sizes).
__host__ __device__ constexpr int sumRowFloats(int D) { return D + 16; }

// ---------------------------------------------------------------- kernels --

// Where the selection of an item lives in the workspace.
__device__ __forceinline__ int32_t* selectionOf(const DecodeArgs& a, int64_t item) {
  return a.selection + item * (1 + 2 * static_cast<int64_t>(a.unionCap));
}

// moba gates: the page holding the key sum of each of the blocks
// [c0, c0 + n), from the plan's page table (which no kernel writes), into
// sumPage (-1: outside the pool). kPrefetch: each found sum is also
// prefetched into L2, for a caller that looks them up before it may read them.
template <int D, bool kPrefetch>
__device__ __forceinline__ void lookUpSumPages(const DecodeArgs& a, const SeqView& s, int h, int c0, int n, int* sumPage) {
  for (int i = threadIdx.x; i < n; i += blockDim.x) {
    const int pg = s.pages[static_cast<int64_t>(c0 + i + 1) * a.sumPages - 1];
    const bool ok = pg >= 0 && pg < a.numPages;
    sumPage[i] = ok ? pg : -1;
    if (kPrefetch && ok) {
      const char* sum = reinterpret_cast<const char*>(a.sums + static_cast<int64_t>(h) * D + static_cast<int64_t>(pg) * a.sumsPageStride);
#pragma unroll
      for (int b = 0; b < D * 4; b += 128) asm volatile("prefetch.global.L2 [%0];\n" ::"l"(sum + b));
    }
  }
}

// moba gates: the key sums of the blocks [c0, c0 + n) copied into `sumTile`
// (16-byte cp.async, one commit group; the caller waits), their pages looked
// up first unless sumPage already holds them (pagesKnown). All page-index
// loads are in flight before any copy: a cp.async between two of them would
// order them one after another.
template <int D>
__device__ __forceinline__ void copySumTile(const DecodeArgs& a, const SeqView& s, int h, int c0, int n, int* sumPage,
                                            float* sumTile, bool pagesKnown = false) {
  const int tid = threadIdx.x, threads = blockDim.x;
  if (!pagesKnown) lookUpSumPages<D, false>(a, s, h, c0, n, sumPage);
  __syncthreads();
  const float* sumsHead = a.sums + static_cast<int64_t>(h) * D;
  for (int e = tid; e < n * (D / 4); e += threads) {
    const int blk = e / (D / 4), col = e - blk * (D / 4);
    const int pg = sumPage[blk];
    const bool ok = pg >= 0;
    ptx::cpAsync16(smemAddr(sumTile + blk * sumRowFloats(D) + col * 4),
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
        const float4 v = *reinterpret_cast<const float4*>(sumTile + min(blk, n - 1) * sumRowFloats(D) + u * 32 + part * 4);
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

// The key sum of a block that spans `runs` key-sum runs, one float4 column
// of it: run r's sum (read at the run's last page, `page(r)`: -1 for none)
// added into accumulator r % kGroups, the accumulators then added in order.
// kGroups = kThreads / (D / 4): scoresKernel's threads split a block's runs
// this way, and fusedGate adds them in the same order, so both give the same
// bits. kAhead rounds of kGroups loads are in flight at once.
template <int D, int kAhead, class PageOf>
__device__ __forceinline__ float4 sumRunsColumn(const DecodeArgs& a, int h, int col, int runs, PageOf page) {
  constexpr int kGroups = kThreads / (D / 4);
  const float* sumsHead = a.sums + static_cast<int64_t>(h) * D + col * 4;
  float4 acc[kGroups];
#pragma unroll
  for (int g = 0; g < kGroups; ++g) acc[g] = make_float4(0.f, 0.f, 0.f, 0.f);
  for (int r0 = 0; r0 < runs; r0 += kAhead * kGroups) {
    float4 v[kAhead][kGroups];
    bool ok[kAhead][kGroups];
#pragma unroll
    for (int u = 0; u < kAhead; ++u) {
#pragma unroll
      for (int g = 0; g < kGroups; ++g) {
        const int r = r0 + u * kGroups + g;
        const int pg = r < runs ? page(r) : -1;
        ok[u][g] = pg >= 0;
        v[u][g] = ok[u][g] ? __ldg(reinterpret_cast<const float4*>(sumsHead + pg * a.sumsPageStride))
                           : make_float4(0.f, 0.f, 0.f, 0.f);
      }
    }
#pragma unroll
    for (int u = 0; u < kAhead; ++u) {
#pragma unroll
      for (int g = 0; g < kGroups; ++g) {
        if (ok[u][g]) {
          acc[g].x += v[u][g].x;
          acc[g].y += v[u][g].y;
          acc[g].z += v[u][g].z;
          acc[g].w += v[u][g].w;
        }
      }
    }
  }
  float4 c = acc[0];
#pragma unroll
  for (int g = 1; g < kGroups; ++g) {
    c.x += acc[g].x;
    c.y += acc[g].y;
    c.z += acc[g].z;
    c.w += acc[g].w;
  }
  return c;
}

// The page holding run r's key sum of block j (-1: outside the pool).
__device__ __forceinline__ int runPage(const DecodeArgs& a, const int32_t* pages, int j, int runs, int r) {
  const int pg = pages[(static_cast<int64_t>(j) * runs + r + 1) * a.sumPages - 1];
  return pg >= 0 && pg < a.numPages ? pg : -1;
}

// fusedGate, blocks of several key-sum runs: the key sums of blocks
// [c0, c0 + n) into `sumTile` (rows of sumRowFloats), as scoresKernel adds
// them. The page indices of all their runs come first (`runPages`, n * runs
// entries), then each thread adds up (block, column) pairs. Only the run
// adder's instance of the attention kernel has it: its loads in flight need
// many registers, which the other steps' code should not be compiled for
// (inlined into an instance they share, it made them 2.5 us slower; inlined
// in its own instance, the 1 x 128K step with pages of 64 went 27.0-27.5 ->
// 24.4-24.8 us, where out of line there it took 29.5-29.9).
template <int D>
__device__ __forceinline__ void sumRunsTile(const DecodeArgs& a, const int32_t* pages, int h, int c0, int n, int runs,
                                            int* runPages, float* sumTile) {
  constexpr int kCols = D / 4;
  const int tid = threadIdx.x;
  for (int i = tid; i < n * runs; i += kThreads) {
    const int blk = a.bySumRuns(i);
    runPages[i] = runPage(a, pages, c0 + blk, runs, i - blk * runs);
  }
  __syncthreads();
  for (int e = tid; e < n * kCols; e += kThreads) {
    const int blk = e / kCols, col = e - blk * kCols;
    const float4 c = sumRunsColumn<D, 32 / (kThreads / kCols)>(
        a, h, col, runs, [&](int r) { return runPages[blk * runs + r]; });
    *reinterpret_cast<float4*>(sumTile + blk * sumRowFloats(D) + col * 4) = c;
  }
}

// moba: scores[(row * numQHeads + head) * maxPast + j] = q . centroid_j for
// every complete block j of the sequence, when a block spans several key-sum
// runs (centroid = the runs' sums / chunkSize). One CTA per block: its
// threads split the block's runs so that all of them are in flight at once,
// then the block is scored as the fused gate scores it (same bits).
template <int D, bool kBf16>
__global__ void __launch_bounds__(kThreads, kScoresCtasPerSm) scoresKernel(const DecodeArgs a) {
  allowDependentGrid();
  constexpr int kCols = D / 4;                // float4 columns of a page's sums
  constexpr int kGroups = kThreads / kCols;   // threads per column
  __shared__ float4 part[kThreads];
  __shared__ __align__(16) float cent[sumRowFloats(D)];
  extern __shared__ float qf[];  // [min(qLen * group, scoresRows), D] fp32
  SeqView s;
  if (!loadSeq(a, blockIdx.z, &s)) return;
  const int h = blockIdx.y;
  const int j = blockIdx.x;
  if (j >= min(a.byChunk(s.kvLen - 1), a.maxPast)) return;
  const int tid = threadIdx.x;
  const int R = s.qLen * a.group;
  // The rows in turns of scoresRows (all of them at once unless many query
  // heads share the KV head).
  auto stageRows = [&](int r0, int n) {
    for (int e = tid; e < n * D; e += kThreads) {
      const int r = e / D, d = e - r * D;
      qf[e] = widen<kBf16>(a.q[globalRowOf(a, s, h, r0 + r) * D + d]);
    }
  };
  stageRows(0, min(R, a.scoresRows));
  // Thread (col, grp) adds the runs grp, grp + kGroups, ...: accumulator grp
  // of sumRunsColumn, which then adds the accumulators in order.
  const int col = tid % kCols, grp = tid / kCols;
  const int runs = a.sumRuns;
  float4 acc = make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll 8
  for (int p = grp; p < runs; p += kGroups) {
    const int pg = runPage(a, s.pages, j, runs, p);
    if (pg < 0) continue;
    const float4 v = *reinterpret_cast<const float4*>(a.sums + pg * a.sumsPageStride + static_cast<int64_t>(h) * D + col * 4);
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
    *reinterpret_cast<float4*>(cent + tid * 4) = c;
  }
  __syncthreads();
  // Eight lanes per row, each with the dims scoreSumTile gives its lane,
  // in its order (its registers for four rows would spill here).
  constexpr int kLanes = 8;
  const int lanePart = tid % kLanes;
  const float inv = 1.f / static_cast<float>(a.chunkSize);
  for (int rs = 0; rs < R; rs += a.scoresRows) {
    const int n = min(R - rs, a.scoresRows);
    if (rs > 0) {
      __syncthreads();  // every row of the previous turn scored
      stageRows(rs, n);
      __syncthreads();
    }
    for (int r0 = 0; r0 < n; r0 += kThreads / kLanes) {
      const int r = r0 + tid / kLanes;
      float dot = 0.f;
#pragma unroll
      for (int u = 0; u < D / kLanes / 4; ++u) {
        const int d = u * 32 + lanePart * 4;
        const float4 v = *reinterpret_cast<const float4*>(cent + d);
        const float4 q = r < n ? *reinterpret_cast<const float4*>(qf + r * D + d) : make_float4(0.f, 0.f, 0.f, 0.f);
        dot = fmaf(q.x, v.x * inv, dot);
        dot = fmaf(q.y, v.y * inv, dot);
        dot = fmaf(q.z, v.z * inv, dot);
        dot = fmaf(q.w, v.w * inv, dot);
      }
#pragma unroll
      for (int off = 1; off < kLanes; off <<= 1) dot += __shfl_xor_sync(0xffffffffu, dot, off);
      if (r < n && lanePart == 0) a.scores[globalRowOf(a, s, h, rs + r) * a.maxPast + j] = dot;
    }
  }
}

// The warp's largest key, in every lane: two single-instruction reductions.
__device__ __forceinline__ uint64_t warpMaxKey(uint64_t key) {
  const uint32_t hi = __reduce_max_sync(0xffffffffu, static_cast<uint32_t>(key >> 32));
  const uint32_t lo = __reduce_max_sync(0xffffffffu, static_cast<uint32_t>(key >> 32) == hi ? static_cast<uint32_t>(key) : 0u);
  return (static_cast<uint64_t>(hi) << 32) | lo;
}

// The warp's largest of keys[0, count) that ranks below `prev` (0: none).
__device__ __forceinline__ uint64_t warpBestBelow(const uint64_t* keys, int count, uint64_t prev) {
  uint64_t best = 0;
  for (int k = threadIdx.x & 31; k < count; k += 32) {
    const uint64_t key = keys[k];
    if (key < prev && key > best) best = key;
  }
  return warpMaxKey(best);
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
    const int lr = a.byTopK(e), n = e - lr * a.topK;
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
  const int h = a.byRowTiles(blockIdx.x), rt = blockIdx.x - h * a.rowTiles;
  const int b = blockIdx.y;
  SeqView s;
  if (!loadSeq(a, b, &s) || rt * RT >= s.qLen * a.group) return;
  const int row0 = rt * RT;
  const int rowsHere = min(RT, s.qLen * a.group - row0);
  const int64_t item = (static_cast<int64_t>(b) * a.numKVHeads + h) * a.rowTiles + rt;

  float* qf = reinterpret_cast<float*>(smem);              // [RT][D]
  float* sumTile = qf + RT * D;                            // [gateChunk][sumRowFloats] unless scoresReady
  float* stage = sumTile + (a.scoresReady ? 0 : a.gateChunk * sumRowFloats(D));  // [RT][maxPast] when staged
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
  const int maxCur = a.byChunk(s.kvLen - 1);  // complete blocks the last row may pick from

  if (!a.scoresReady && maxCur > 0) {
    const float inv = 1.f / static_cast<float>(a.chunkSize);
    for (int c0 = 0; c0 < maxCur; c0 += a.gateChunk) {
      const int n = min(a.gateChunk, maxCur - c0);
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
    const int cur = a.byChunk(rowPosition(a, s, row0 + lr));
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
          const uint64_t key = j < cur ? rankKey(v[u], j) : 0;
          if (key < prev && key > best) best = key;
        }
      }
      best = warpMaxKey(best);
      if (lane == 0) pick(sel, bitmap, a.topK, lr, n, keyBlock(best));
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

// fusedGate's scratch in the rings' region: byte offsets of its arrays, in
// order, and the bytes in all (the host sizes the region with the same
// struct). 8-byte arrays first after the 16-byte aligned tiles.
struct FusedScratch {
  size_t sumTile, stage, cand, sel, selCount, bitmap, wordPrefix, bytes;
  __host__ __device__ FusedScratch(int D, int RT, int gatePer, int numSlots, int topK, int bitmapWords) {
    sumTile = static_cast<size_t>(kFusedRuns) * 4;                                   // after sumPage [kFusedRuns]
    stage = sumTile + static_cast<size_t>(kFusedChunk) * sumRowFloats(D) * 4;        // [RT][gatePer] order keys
    cand = stage + static_cast<size_t>(RT) * gatePer * 8;                            // [RT][numSlots * (topK - 1)]
    sel = cand + static_cast<size_t>(RT) * numSlots * (topK - 1) * 8;                // [RT][topK]
    selCount = sel + static_cast<size_t>(RT) * topK * 4;                             // [RT]
    bitmap = selCount + static_cast<size_t>(RT) * 4;                                 // [bitmapWords]
    wordPrefix = bitmap + static_cast<size_t>(bitmapWords) * 4;                      // [bitmapWords]
    bytes = wordPrefix + static_cast<size_t>(bitmapWords) * 4;
  }
};

// The blocks [jb, je) whose key sums CTA `slot` of a fusedGate item scores.
__device__ __forceinline__ void fusedGateShare(const DecodeArgs& a, const SeqView& s, int slot, int* jb, int* je) {
  const int maxCur = a.byChunk(s.kvLen - 1);
  const int per = a.bySlots(maxCur + a.numSlots - 1);
  *jb = min(maxCur, slot * per);
  *je = min(maxCur, *jb + per);
}

// Before the kernel waits for the grid ahead of it (the rings' region is
// still free): the pages of the key sums that this CTA's first fusedGate
// tile reads, into the scratch's sumPage, and the sums prefetched into L2
// (harmless if that grid still writes them: its writes go to L2). Returns
// whether it did: blocks of one key-sum run (fusedGate adds up several runs
// through its own lookups).
template <int D>
__device__ __forceinline__ bool fusedGateEarlyPages(const DecodeArgs& a, const SeqView& s, int h, int slot,
                                                    unsigned char* scratch) {
  if (a.sumRuns != 1) return false;
  int jb, je;
  fusedGateShare(a, s, slot, &jb, &je);
  lookUpSumPages<D, true>(a, s, h, jb, min(kFusedChunk, je - jb), reinterpret_cast<int*>(scratch));
  return true;
}

// moba, one launch per step: the numSlots attention CTAs of an item are its
// gate. Each scores its share of the complete blocks for every row of the
// tile and publishes each row's top-(k-1) of that share; once all of the
// item's CTAs have, every CTA merges the same candidates into the same
// selection. Publishing: in a cluster (kTma, a.cluster), straight into
// every CTA's candidate list, counted on its exchangeBar; else to the
// workspace, with a counter (the launch is cooperative, so all CTAs are
// resident and the wait ends). The picks equal gateKernel's: the same
// scores, and a share's top-(k-1) holds every one of its blocks in the row's
// top-(k-1). Fills unionList / unionRows / unionSize; scratch is the rings'
// region. Returns whether the CTA counted itself in counters[item]. kTma:
// the tensor-copy instances (sm_90), the only ones compiled with the cluster
// exchange. kRuns: blocks of several key-sum runs, added up here; only that
// instance has the run adder (the host launches it only for them).
// sumPagesKnown: fusedGateEarlyPages filled sumPage for the first tile.
template <int D, bool kBf16, bool kTma, bool kRuns>
__device__ bool fusedGate(const DecodeArgs& a, const SeqView& s, int h, int64_t item, int slot, int row0, int rowsHere,
                          const uint16_t* Qs, unsigned char* scratch, uint64_t* exchangeBar, int32_t* unionList,
                          uint32_t* unionRows, int* unionSize, bool sumPagesKnown) {
  constexpr int kWarps = kThreads / 32;
  using L = decode::RowLayout<D>;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int RT = a.rowTileRows;
  const int keep = a.topK - 1;
  const int nc = a.numSlots * keep;  // candidates per row
  const int maxCur = a.byChunk(s.kvLen - 1);
  int jb, je;
  fusedGateShare(a, s, slot, &jb, &je);

  const FusedScratch at(D, RT, a.gatePer, a.numSlots, a.topK, a.bitmapWords);
  int* sumPage = reinterpret_cast<int*>(scratch);  // [kFusedRuns] (>= kFusedChunk)
  float* sumTile = reinterpret_cast<float*>(scratch + at.sumTile);
  uint64_t* stage = reinterpret_cast<uint64_t*>(scratch + at.stage);
  uint64_t* cand = reinterpret_cast<uint64_t*>(scratch + at.cand);
  int32_t* sel = reinterpret_cast<int32_t*>(scratch + at.sel);
  int32_t* selCount = reinterpret_cast<int32_t*>(scratch + at.selCount);
  int32_t* bitmap = reinterpret_cast<int32_t*>(scratch + at.bitmap);
  int32_t* wordPrefix = reinterpret_cast<int32_t*>(scratch + at.wordPrefix);
  for (int i = tid; i < a.bitmapWords; i += kThreads) bitmap[i] = 0;
  for (int i = tid; i < a.unionCap; i += kThreads) unionRows[i] = 0u;
  // The picks below set bitmap bits from other threads: without this barrier
  // a word could be cleared after a pick (topK 1, where no exchange barrier
  // comes between, lost the current block of rows in a second block).
  __syncthreads();
  auto curOf = [&](int lr) { return a.byChunk(rowPosition(a, s, row0 + lr)); };

  // Identical in every CTA of the item, so they all wait or none does.
  const bool exchange = keep > 0 && maxCur > 0;
  const bool cluster = kTma && a.cluster;
  const bool counted = exchange && a.numSlots > 1 && !cluster;
  // Cluster: the other CTAs write their candidates straight into this CTA's
  // list (asynchronous remote stores that count their bytes on exchangeBar),
  // once they know it has started and set up that barrier.
  const uint32_t bar = smemAddr(exchangeBar);
  if (cluster) {
    if (tid == 0) {
      attn::mbarInit(bar, 1);
      if (exchange) attn::mbarArriveExpectTx(bar, static_cast<uint32_t>(a.numSlots * rowsHere * keep * 8));
      attn::mbarInitFence();
    }
    attn::clusterArriveRelaxed();
  }
  if (exchange) {
    const float inv = 1.f / static_cast<float>(a.chunkSize);
    // Key-sum runs per block: one (a read per block), or several (added up
    // here as scoresKernel adds them).
    const int chunk = kRuns ? a.fusedChunk : kFusedChunk;
    for (int c0 = jb; c0 < je; c0 += chunk) {
      const int n = min(chunk, je - c0);
      if constexpr (kRuns) {
        sumRunsTile<D>(a, s.pages, h, c0, n, a.sumRuns, sumPage, sumTile);
      } else {
        copySumTile<D>(a, s, h, c0, n, sumPage, sumTile, sumPagesKnown && c0 == jb);
      }
      ptx::cpAsyncWait<0>();  // the sums and, the first time, this thread's query rows
      __syncthreads();
      scoreSumTile<D>(
          sumTile, n, rowsHere, inv,
          [&](int r, int d) { return widen4<kBf16>(*reinterpret_cast<const uint2*>(Qs + r * L::kRowHalves + d)); },
          [&](int lr, int blk, float score) { stage[lr * a.gatePer + c0 - jb + blk] = rankKey(score, c0 + blk); });
      __syncthreads();
    }
  }
  // Cluster: every CTA of the cluster has started and set up its barrier.
  if (cluster) attn::clusterWait();
  if (exchange) {
    // Each row's top-(k-1) of this CTA's share (key 0: none): into every
    // cluster CTA's candidate list (lane c writes to CTA c), or to the workspace.
    for (int lr = warp; lr < rowsHere; lr += kWarps) {
      const int cnt = max(0, min(je, curOf(lr)) - jb);
      uint64_t* out = a.candidates + (item * RT + lr) * nc + slot * keep;
      const uint32_t mine = smemAddr(cand + lr * nc + slot * keep);
      uint64_t prev = ~0ull;
      for (int n = 0; n < keep; ++n) {
        const uint64_t best = warpBestBelow(stage + lr * a.gatePer, cnt, prev);
        if (cluster) {
          if (lane < a.numSlots) attn::clusterStoreAsync(attn::clusterMap(mine + n * 8, lane), best, attn::clusterMap(bar, lane));
        } else if (lane == 0) {
          out[n] = best;
        }
        prev = best;
      }
    }
    if (cluster) {
      attn::mbarWait(bar, 0);  // every CTA's candidates have landed here
    } else if (counted) {
      __syncthreads();
      if (tid == 0) {
        arriveRelease(a.counters + item);
        while (loadAcquire(a.counters + item) < a.numSlots) {
        }
      }
      __syncthreads();
    }
    // Every candidate of the tile's rows (L2: written by other CTAs).
    if (!cluster) {
      for (int e = tid; e < rowsHere * nc; e += kThreads) cand[e] = __ldcg(a.candidates + item * RT * nc + e);
    }
    __syncthreads();
  }
  for (int lr = warp; lr < rowsHere; lr += kWarps) {
    const int cur = curOf(lr);
    const int want = exchange ? min(keep, cur) : 0;
    uint64_t prev = ~0ull;
    int got = 0;
    for (; got < want; ++got) {
      const uint64_t best = warpBestBelow(cand + lr * nc, nc, prev);
      // Never, as the shares cover every past block; kept so that a pick is
      // always a past block (the bitmap has a bit per block, no more).
      if (best == 0 || keyBlock(best) < 0 || keyBlock(best) >= cur) break;
      if (lane == 0) pick(sel, bitmap, a.topK, lr, got, keyBlock(best));
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

}  // namespace
}  // namespace moba
