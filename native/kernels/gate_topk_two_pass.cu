// Gate scores and top-(k-1) selection on Hopper (sm_90a) for topK 17 to 64,
// in two passes over each CTA's centroid tiles, scored on wgmma as in
// gate_topk_sm90.cu (same q operand, tiles, packed entries and error bound).
//
// Why two passes. Lists of keep entries per thread do not fit in registers
// past topK 12, and a heap per row in shared memory (gate_topk_large.cu)
// pays a dependent insertion for every block that enters it, on FP32 scores.
// Here a row's work per score is the same few instructions whatever keep:
//  1. The row's blocks are cut into parts: a thread's 16 columns of each
//     tile for its two rows (a column's blocks are 64 apart), and past topK
//     32 also by the tile's parity. Each thread keeps the best raw score of
//     each of its parts, one max per score. The quad's part maxima are
//     scores of distinct blocks, so their keep-th best is at most the row's
//     keep-th best score; lowered by the packing's error it bounds the
//     row's keep-th best packed entry, and its band floor T the row's band
//     floor L (bandFloor increases with its argument).
//  2. The tiles again: every score whose packed entry may reach T (one
//     compare of the raw score) joins the row's candidates in shared memory
//     as a packed entry (up to kCap; a row with more takes the exact
//     kernel).
// Then the quad sorts the row's candidates (kCap / 4 per lane, merged
// across the quad), and the band [L, ...), its certain prefix, the exact
// re-scoring of the rest and the ranked output are those of the other
// tensor-core gates, so the indices are the CPU backend's.
//
// The part maxima give a useful floor only while keep is well below the
// number of parts. On i.i.d. scores over 512 to 2048 blocks: 64 parts
// leave about 40 candidates at keep 31 and about 80 at keep 47; 128 parts
// leave about 55 at keep 47 and 75 to 82 at keep 63 (all measured at 128K
// but the 64-part keep 47). So topK 17 to 32 takes 64 parts and 64
// candidates per row, topK 33 to 64 takes 128 of each; topK 65 and more
// stay on gate_topk_large.cu.
#include <climits>
#include <type_traits>

#include "common/attn_device.cuh"
#include "common/cuda_context.h"
#include "common/dependent_launch.h"
#include "common/env_switch.h"
#include "common/grid_dependency.cuh"
#include "common/sm90_sync.cuh"
#include "common/wgmma_ops.cuh"
#include "gate_device.cuh"
#include "gate_dispatch.cuh"
#include "gate_internal.h"
#include "gate_select.cuh"
#include "gate_sm90_cta.cuh"

namespace moba {
namespace {

using namespace gate;

constexpr int kTwoPassMinTopK = 17, kTwoPassNarrowMaxTopK = 32, kTwoPassMaxTopK = 64;

// kSlots: parts per thread and row (16 columns, times 2 tile parities when
// wide), also the candidates per lane of the quad.
template <int D, int kSlots>
struct TwoPassCfg {
  static_assert(kSlots == 16 || kSlots == 32, "16 columns, or 16 columns by tile parity");
  static constexpr bool kWide = kSlots == 32;
  static constexpr int kParities = kSlots / 16;
  static constexpr int kMaxKeep = kWide ? kTwoPassMaxTopK - 1 : kTwoPassNarrowMaxTopK - 1;
  static constexpr int kWarps = 4;
  static constexpr int kThreads = kWarps * 32;
  static constexpr int kRows = kWarps * 16;  // one warpgroup: an m64 product
  static constexpr int kBN = 64;             // centroids per tile
  static constexpr int kStages = 2;
  static constexpr int kStageBytes = kBN * D * 2;
  static constexpr int kCap = 4 * kSlots;  // candidates per row: kSlots per lane of the quad
  // Band entries per row; a row with more takes the exact kernel. At keep
  // 63 a band holds about 64 entries on i.i.d. and trending scores alike;
  // 96 keeps three wide CTAs per SM in shared memory.
  static constexpr int kBand = kWide ? 96 : kCap;
  // Rows of candidates and bands one word past their size: the quad's
  // lanes and a warp's 16 row owners then touch distinct banks.
  static constexpr int kCandStride = kCap + 1;
  static constexpr int kBandStride = kBand + 1;
  // A warp's re-scoring queue: room for every band entry of its 16 rows,
  // as 16-bit codes.
  static constexpr int kQueueLen = 16 * kBand;
  static constexpr int kLoopBytes = kStages * kStageBytes + kRows * kCandStride * 4;
  static constexpr int kAfterLoop = kRows * kBandStride * 8 + kWarps * kQueueLen * 2;
  static constexpr int kBytes = kLoopBytes > kAfterLoop ? kLoopBytes : kAfterLoop;
  static constexpr int kSmemBytes = kBytes + 1024;  // + alignment of the swizzled tiles
  static constexpr int kCtasPerSm = kWide ? 3 : 4;
};

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
constexpr unsigned kFull = 0xffffffffu;

// The quad's 4 N values (N per lane, any order) sorted best first across
// it: lane tq ends with ranks [N tq, N tq + N). Merge-splits: lanes tq and
// tq ^ 1 into a sorted 2 N, then the two 2 Ns (tq ^ 3 on mirrored ranks, a
// half-cleaner between tq and tq ^ 1, a clean within the lane).
template <int N>
__device__ __forceinline__ void quadSort(float (&v)[N], int tq) {
  sortNetwork(v);
  const bool lowHalf = (tq & 1) == 0, lowPair = tq < 2;
  float o[N];
#pragma unroll
  for (int k = 0; k < N; ++k) o[k] = __shfl_xor_sync(kFull, v[N - 1 - k], 1);
#pragma unroll
  for (int k = 0; k < N; ++k) v[k] = lowHalf ? fmaxf(v[k], o[k]) : fminf(v[k], o[k]);
  bitonicClean<0, N>(v);
#pragma unroll
  for (int k = 0; k < N; ++k) o[k] = __shfl_xor_sync(kFull, v[N - 1 - k], 3);
#pragma unroll
  for (int k = 0; k < N; ++k) v[k] = lowPair ? fmaxf(v[k], o[k]) : fminf(v[k], o[k]);
#pragma unroll
  for (int k = 0; k < N; ++k) o[k] = __shfl_xor_sync(kFull, v[k], 1);
#pragma unroll
  for (int k = 0; k < N; ++k) v[k] = lowHalf ? fmaxf(v[k], o[k]) : fminf(v[k], o[k]);
  bitonicClean<0, N>(v);
}

// dst = src, element by element (static indices keep both in registers).
template <int N>
__device__ __forceinline__ void moveInto(float (&dst)[N], const float (&src)[N]) {
#pragma unroll
  for (int k = 0; k < N; ++k) dst[k] = src[k];
}

// Rank r (run-time, below 4 N) of a quad-sorted row, in every lane of the quad.
template <int N>
__device__ __forceinline__ float quadRank(const float (&v)[N], int r, int lane) {
  static_assert((N & (N - 1)) == 0, "lanes hold a power of two");
  return __shfl_sync(kFull, pick<N>(v, r & (N - 1)), (lane & ~3) | (r / N));
}

// f(hf, s, j, past, x) for each score x of the tile the thread holds:
// column 8 i + 2 tq + e is block j = jq | (8 i + e), jq = j0 | 2 tq, slot
// s = 2 i + e of row half hf (acc: half 0 in elements 0-1, half 1 in 2-3 of
// each 8-column chunk). past: j is below the row's own block (cA, cB).
// Only a Masked tile (one that reaches past cMin, the fewest past blocks of
// the warp's rows) tests it, and stops at cMax, the most.
template <bool Masked, typename F>
__device__ __forceinline__ void forEachEntry(const float (&acc)[8][4], int j0, int jq, int cA, int cB, int cMin,
                                             int cMax, F&& f) {
#pragma unroll
  for (int i = 0; i < 8; ++i) {
    if (Masked && j0 + 8 * i >= cMax) break;  // no row of the warp has these blocks
    const bool masked = Masked && j0 + 8 * (i + 1) > cMin;
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      const int j = jq | (8 * i + e);
#pragma unroll
      for (int hf = 0; hf < 2; ++hf) f(hf, 2 * i + e, j, !masked || j < (hf ? cB : cA), acc[i][2 * hf + e]);
    }
  }
}

// Packing moves a score x by at most rel |x| (packingRel), and x - rel |x|
// increases with x. So a score of at least v has a packed entry of at
// least packedFloor(v); and a score whose packed entry reaches v is at
// least rawFloor(v) (2 rel |v| covers rel |x| near v).
__device__ __forceinline__ float packedFloor(float v, float rel) { return __fsub_rd(v, __fmul_ru(rel, fabsf(v))); }
__device__ __forceinline__ float rawFloor(float v, float rel) {
  return __fsub_rd(v, __fmul_ru(2.f * rel, fabsf(v)));
}
#endif  // __CUDA_ARCH_FEAT_SM90_ALL

template <typename T, int D, int kSlots>
__global__ void __launch_bounds__(TwoPassCfg<D, kSlots>::kThreads, TwoPassCfg<D, kSlots>::kCtasPerSm)
    twoPassKernelSm90(GateArgs a) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  using C = TwoPassCfg<D, kSlots>;
  constexpr int kRows = C::kRows, kBN = C::kBN, kStages = C::kStages, KBS = C::kBandStride, kCap = C::kCap;
  extern __shared__ uint8_t smemRaw[];
  const uint32_t rawAddr = smemAddr(smemRaw);
  const uint32_t stages = (rawAddr + 1023u) & ~1023u;
  uint8_t* smem = smemRaw + (stages - rawAddr);
  float* cand = reinterpret_cast<float*>(smem + kStages * C::kStageBytes);  // [row][kCandStride]
  // After the second pass all of it holds each row's band and the warps' queues.
  float* bandS = reinterpret_cast<float*>(smem);
  int* bandI = reinterpret_cast<int*>(smem + kRows * KBS * 4);
  uint16_t* queues = reinterpret_cast<uint16_t*>(smem + kRows * KBS * 8);
  __shared__ int candCount[kRows];
  // Band size; or -1: hand to the exact kernel.
  __shared__ int rowState[kRows];
  __shared__ int rowCertain[kRows];  // band entries certain to be among the row's best keep

  allowDependentGrid();
  const Sm90Place p = sm90PlaceOf<D, kRows, kBN>(a, 1);
  const int lane = p.lane, tq = p.tq, rowA = p.rowA, rowB = p.rowB, keepMax = p.keepMax;
  const int numCTiles = p.numCTiles, nRows = p.tile.nRows, pLast = p.tile.pLast;
  if (numCTiles > 0) {
    for (int r = threadIdx.x; r < kRows; r += C::kThreads) candCount[r] = 0;  // seen after the loop's first barrier
    // Load n of 2 numCTiles is tile n, then tile n - numCTiles.
    const Sm90TileCopy<D, C::kThreads, kBN> copier(a, p.tile, stages);
    const int numLoads = 2 * numCTiles;
    int nextLoad = 0;
    auto loadNextTile = [&]() {
      if (nextLoad < numLoads) {
        const int t = nextLoad < numCTiles ? nextLoad : nextLoad - numCTiles;
        copier.copy(copier.first + static_cast<size_t>(t) * kBN * copier.hiStride, pLast - t * kBN - copier.ldRow,
                    (nextLoad % kStages) * C::kStageBytes);
        ++nextLoad;
      }
      cpAsyncCommit();
    };

    uint32_t qa[D / 16][4];
    float q2[2];
    uint32_t nonzero[2];
    loadQOperand<T, D>(p, qa, q2, nonzero, [&] {
#pragma unroll
      for (int s = 0; s < kStages - 1; ++s) loadNextTile();
    });
    const uint32_t* st = statsOf(a, p);
    const float statBound = __uint_as_float(st[kStatBound]), statNorm = __uint_as_float(st[kStatNorm]);
    const RowBound rbA = rowBound<D>(q2[0], nonzero[0], statBound, statNorm, 0);
    const RowBound rbB = rowBound<D>(q2[1], nonzero[1], statBound, statNorm, 0);
    const uint32_t packMask = (1u << a.packBits) - 1u;
    const float rel = packingRel(a.packBits);
    const Sm90Past past = sm90PastOf(a, p);
    const int cA = past.cA, cB = past.cB, cWarpMin = past.cWarpMin, cWarpMax = past.cWarpMax;

    // Part maxima: slots[hf][16 parity + s] (parity of the tile when wide).
    float slots[2][kSlots];
#pragma unroll
    for (int hf = 0; hf < 2; ++hf)
#pragma unroll
      for (int s = 0; s < kSlots; ++s) slots[hf][s] = -INFINITY;
    float acc[8][4];
#pragma unroll
    for (int i = 0; i < 8; ++i)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[i][e] = 0.f;
    // Load n's product: issued once its tile is in, and awaited.
    auto issueProduct = [&](int n) {
      cpAsyncWait<kStages - 2>();
      attn::fenceProxyAsync();  // this thread's copies, visible to wgmma's reads
      __syncthreads();
      loadNextTile();
      issueTileProduct<D, kBN>(acc, qa, stages + (n % kStages) * C::kStageBytes);
    };
    // The tile's body, by whether its columns need the past test (a column
    // is not past for some row of the warp; warp-uniform).
    auto forTile = [&](int j0, auto&& body) {
      if (j0 >= cWarpMax) return;  // no row of the warp has these blocks
      if (j0 + kBN > cWarpMin) {
        body(std::true_type{});
      } else {
        body(std::false_type{});
      }
    };

    // Pass 1: part maxima. The tile's parity picks the slots at compile
    // time (a warp-uniform branch between two copies of the body).
    for (int n = 0; n < numCTiles; ++n) {
      issueProduct(n);
      awaitTileProduct<D>(acc, qa);
      const int j0 = n * kBN;
      auto fold = [&](auto parity) {
        constexpr int kOff = 16 * decltype(parity)::value;
        forTile(j0, [&](auto masked) {
          forEachEntry<decltype(masked)::value>(acc, j0, j0 | (2 * tq), cA, cB, cWarpMin, cWarpMax,
                                                [&](int hf, int s, int, bool past, float x) {
                                                  slots[hf][kOff + s] = fmaxf(slots[hf][kOff + s], past ? x : -INFINITY);
                                                });
        });
      };
      if (C::kParities == 2 && (n & 1)) {
        fold(std::integral_constant<int, C::kParities - 1>{});
      } else {
        fold(std::integral_constant<int, 0>{});
      }
    }
    // Between the passes, while the first product of the second runs: each
    // row's floor from its quad's part maxima (warp-uniform). The keep-th
    // best raw maximum is at most the row's keep-th best raw score, so its
    // packedFloor is at most the keep-th best entry.
    issueProduct(numCTiles);
    // The two rows in turn through one copy of the sorts (they are most of
    // the kernel's code): row B's maxima move into row A's registers.
    float thr[2] = {INFINITY, INFINITY};  // raw scores at or above it are candidates
#pragma unroll 1
    for (int hf = 0; hf < 2; ++hf) {
      if (hf == 1) moveInto(slots[0], slots[1]);
      quadSort(slots[0], tq);
      const float kth = packedFloor(quadRank(slots[0], keepMax - 1, lane), rel);
      const int c = hf ? cB : cA;
      const RowBound rb = hf ? rbB : rbA;
      // Rows with at most keep past blocks, or without a bound, collect nothing.
      const float t = c > keepMax && rb.ok ? rawFloor(bandFloor(kth, 2.f * rb.eps, rel), rel) : INFINITY;
      thr[0] = hf ? thr[0] : t;
      thr[1] = hf ? t : thr[1];
    }

    // Pass 2: scores at or above the floor join the row's candidates as
    // packed entries: one compare each into a bit mask (bit 16 hf + s), one
    // shared-memory atomic per row, then a store of every entry, without
    // branches: those not taken, or past the row's capacity, go to the row's
    // pad word (column kCap).
    float* const candA = cand + rowA * C::kCandStride;
    float* const candB = cand + rowB * C::kCandStride;
    // The pass has numCTiles >= 1 tiles. As a do-while the compiler sees no
    // path that skips awaiting the product issued above (it would add a
    // wgmma wait of its own after the loop).
    int n = numCTiles;
    do {
      if (n > numCTiles) issueProduct(n);
      awaitTileProduct<D>(acc, qa);
      const int j0 = (n - numCTiles) * kBN;
      const int jq = j0 | (2 * tq);
      forTile(j0, [&](auto masked) {
        constexpr bool kMasked = decltype(masked)::value;
        uint32_t take = 0;
        forEachEntry<kMasked>(acc, j0, jq, cA, cB, cWarpMin, cWarpMax, [&](int hf, int s, int, bool past, float x) {
          take |= past && x >= thr[hf] ? 1u << (16 * hf + s) : 0u;
        });
        if (take == 0) return;
        int pos[2];
#pragma unroll
        for (int hf = 0; hf < 2; ++hf) {
          const int cnt = __popc(hf ? take >> 16 : take & 0xffffu);
          pos[hf] = cnt > 0 ? atomicAdd(&candCount[hf ? rowB : rowA], cnt) : 0;
        }
        forEachEntry<kMasked>(acc, j0, jq, cA, cB, cWarpMin, cWarpMax, [&](int hf, int s, int j, bool, float x) {
          const bool taken = (take >> (16 * hf + s)) & 1u;
          const int col = taken && pos[hf] < kCap ? pos[hf] : kCap;
          (hf ? candB : candA)[col] = packEntry(x, packMask, j);
          pos[hf] += taken ? 1 : 0;
        });
      });
    } while (++n < numLoads);
    cpAsyncWait<0>();
    __syncthreads();  // every candidate is in

    // Each row's candidates, kSlots per lane of the quad, sorted across it.
    float cv[2][kSlots];
    int count[2];
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
      count[hf] = candCount[hf ? rowB : rowA];
      const int have = min(count[hf], kCap);
      const float* rowCand = hf ? candB : candA;
#pragma unroll
      for (int m = 0; m < kSlots; ++m) cv[hf][m] = kSlots * tq + m < have ? rowCand[kSlots * tq + m] : -INFINITY;
    }
    __syncthreads();  // the stages and candidates become band buffers
#pragma unroll 1
    for (int hf = 0; hf < 2; ++hf) {
      if (hf == 1) moveInto(cv[0], cv[1]);
      float (&v)[kSlots] = cv[0];
      quadSort(v, tq);
      const int r = hf ? rowB : rowA;
      const int c = hf ? cB : cA;
      const int countRow = hf ? count[1] : count[0];
      const RowBound rb = hf ? rbB : rbA;
      const float twoEps = 2.f * rb.eps;
      const float kth = quadRank(v, keepMax - 1, lane);
      const float next = quadRank(v, keepMax, lane);
      const float L = bandFloor(kth, twoEps, rel);
      // The band is the row's entries at or above L (all of them candidates,
      // as T <= L); its certain prefix outranks the (keep+1)-th and so every
      // block past it.
      int nb = 0, nc = 0;
#pragma unroll
      for (int m = 0; m < kSlots; ++m) {
        nb += v[m] >= L ? 1 : 0;
        nc += kSlots * tq + m < keepMax && certainAbove(v[m], next, twoEps, rel) ? 1 : 0;
      }
#pragma unroll
      for (int off = 1; off <= 2; off <<= 1) {
        nb += __shfl_xor_sync(kFull, nb, off);
        nc += __shfl_xor_sync(kFull, nc, off);
      }
      const bool live = r < nRows && c > keepMax;
      const bool exact = !rb.ok || countRow > kCap || nb > C::kBand;
      if (live && !exact) {
#pragma unroll
        for (int m = 0; m < kSlots; ++m) {
          if (kSlots * tq + m < nb) {
            bandS[r * KBS + kSlots * tq + m] = v[m];
            bandI[r * KBS + kSlots * tq + m] = packedIndex(v[m], packMask);
          }
        }
      }
      if (live && tq == hf) {
        rowState[r] = exact ? -1 : nb;
        rowCertain[r] = nc;
      }
    }
    __syncthreads();
  } else {
    waitForPrimaryGrid();  // every CTA: this grid never completes ahead of those before it
  }

  finishCtaRows<T, D, KBS, C::kQueueLen, C::kMaxKeep>(a, p, rowState, rowCertain, queues, bandS, bandI);
#endif
}

template <typename T, int D, int kSlots>
Status launchTyped(const GateArgs& a, int numTiles, bool dependent, cudaStream_t stream) {
  using C = TwoPassCfg<D, kSlots>;
  const dim3 grid(static_cast<unsigned>(numTiles), static_cast<unsigned>(a.nqh));
  return launchScoresKernel(twoPassKernelSm90<T, D, kSlots>, grid, C::kThreads, C::kSmemBytes, a, dependent, stream,
                            "gate scores (two passes)");
}

}  // namespace

bool gateUsesTwoPass(int topK, int packBits, const CudaContext& ctx) {
  static const bool forceOld = envIs("MOBA_GATE_KERNEL", "sm80");
  return runsSm90a(ctx) && !forceOld && topK >= kTwoPassMinTopK && topK <= kTwoPassMaxTopK &&
         packBits <= kGateMaxPackBits;
}

Status launchGateTwoPass(const GateArgs& a, DType dtype, int numTiles, bool dependent, cudaStream_t stream) {
  if (numTiles == 0) return Status::Ok();
  return withGateTypes(dtype, a.headDim, [&](auto t, auto d) {
    return a.topK > kTwoPassNarrowMaxTopK ? launchTyped<decltype(t), decltype(d)::value, 32>(a, numTiles, dependent, stream)
                                          : launchTyped<decltype(t), decltype(d)::value, 16>(a, numTiles, dependent, stream);
  });
}

}  // namespace moba
