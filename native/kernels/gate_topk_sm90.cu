// Gate scores and top-(k-1) selection on Hopper (sm_90a) for topK 2 to 8,
// MoBA's usual (512, 3) and (128, 8) among them, and for topK 9 to 12 up to
// a number of blocks per sequence that falls with topK (wideMaxBlocks): the
// scores on wgmma, the selection in the accumulator registers, with no
// branch and no pass through shared memory. The exactness argument, the
// band, its certification and exact re-scoring are gate_topk.cu's (see its
// file comment); only the way the band's candidates are gathered differs.
//
// A CTA (one warpgroup) owns 64 consecutive query rows of one sequence and
// one query head, half of a plan tile. q goes from global memory into
// wgmma's register A operand as scaled fp16 (loadRowFragments,
// scaleRowOperand); centroid tiles of 64 blocks (scaled fp16 from
// gate_centroids.cu) stream through shared memory in wgmma's
// 128-byte-swizzled K-major layout (cp.async, two stages), and one m64n64
// product per tile leaves each thread 16 scores of each of its two rows: a
// quarter of the tile's columns.
//
// Selection. Every score enters a packed entry (its low packBits mantissa
// bits replaced by its block index) and each thread keeps, per row, its best
// KL entries of the columns it sees (KL = 4 for topK 2 and 3, 8 for topK 4
// to 12; past 8 only where a thread sees at most eight of a row's past
// blocks, so that its list drops nothing): four (KL = 4) or eight (KL = 8)
// scores at a time are sorted and merged into the list, whatever the data,
// so a warp's cost does not depend on its busiest row. At the end the quad
// merges its four lists into the row's best 2 KL (shuffles and bitonic
// merges). The row's band
// [T - 2 eps, ...) is complete unless some thread may have dropped a band
// entry, which only a thread whose last entry reaches the band can have
// done: it takes KL or more near-ties in one quarter of the row. Such rows,
// and bands of more than 2 KL, take the exact kernel, as in gate_topk.cu.
#include <climits>
#include <string>

#include "common/cuda_context.h"
#include "common/attn_device.cuh"
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

// Lists of four for up to two kept blocks. A row's band is incomplete where
// one thread's quarter of the row may hold four band entries; the row then
// goes to the exact kernel. With three kept blocks that takes only a
// near-tie with the third, yet bands grow with the blocks and with a shared
// component of the scores: topK 4 on lists of four, at 128K, was faster at
// chunk 512 (1.55 -> 1.36 ms random, 1.65 -> 1.29 drift) and slower with
// more blocks (chunk 128: 3.20 -> 3.47 random, 3.59 -> 4.55 drift; chunk 64
// drift: 5.7 -> 17.3 ms), so topK 4 stays on lists of eight.
constexpr int kMaxTopKLists4 = 3;

// topK 9 to kWideMaxTopK on lists of eight (Wide below). The band holds the
// quad's best 16 entries, so keep 11 leaves room for five near-ties; a
// fuller band, or a thread whose eight may have dropped a band entry, sends
// the row to the exact kernel, a CTA per row. Near-ties grow with the
// blocks a row scores, so the longest sequence allowed falls with keep.
// Measured at 128K against the mma.sync kernel (ms per call, random /
// drift inputs): keep 8 gains up to 4,096 blocks ((32, 9) 11.0 -> 10.0 /
// 13.8 -> 12.9); keep 9 to 2,048 ((64, 10) 6.70 -> 6.22 / 6.75 -> 6.69;
// 4,096: (32, 10) 15.7 -> 20.4 drift); keep 10 to 1,024 ((128, 11) 4.45 ->
// 4.52 / 4.29 -> 3.97; 2,048: (64, 11) 6.86 -> 7.85 / 6.86 -> 9.62); keep
// 11 to 256 ((512, 12) 2.51 -> 2.46 / 2.19 -> 1.91; 512: (256, 12) 3.31 ->
// 3.55 random; 1,024: (128, 12) 4.54 -> 6.38). topK 16 (room for one) cost
// 3x even at 32 blocks ((4096, 16) 1.52 -> 4.65 ms random).
constexpr int kWideMaxTopK = 12;
constexpr int wideMaxBlocks(int topK) {
  return topK == 9 ? 4096 : topK == 10 ? 2048 : topK == 11 ? 1024 : topK == 12 ? 256 : 0;
}

// One warpgroup per CTA with two centroid stages; five CTAs per SM for
// lists of four and at head dim 64 (at most 102 registers per thread; 95-96
// used), four for lists of eight at head dim 128 (127 used; five spill 124
// bytes there). Head dim 64, (128, 6) / (128, 8) at 128K: five CTAs 1-3%
// faster than four. At 128K (512, 3), random / drift inputs: two
// warpgroups sharing three stages in 128-row CTAs (two per SM) 1.43 / 1.45
// ms per gate; one warpgroup, three stages, four CTAs per SM 1.34 / 1.37;
// this 1.25 / 1.29 (more independent warps to hide the copies' and the
// wgmma's latency; the extra copies from L2 cost less).
template <int D, int KL>
struct Sm90GateCfg {
  static constexpr int kWarps = 4;
  static constexpr int kThreads = kWarps * 32;
  static constexpr int kRows = kWarps * 16;
  static constexpr int kParts = 2;  // CTAs per plan tile (gateTileRows: 128 rows)
  static constexpr int kCtasPerSm = KL == 4 || D == 64 ? 5 : 4;
  static constexpr int kBN = 64;  // centroids per tile: one m64n64 product per warpgroup
  static constexpr int kStages = 2;
  static constexpr int kStageBytes = kBN * D * 2;
  static constexpr int kBand = 2 * KL;            // a row's band list
  static constexpr int kQueueInts = 16 * kBand;   // a warp's re-scoring queue: 16 rows
  static constexpr int kAfterLoop = kRows * kBand * 8 + kWarps * kQueueInts * 4;
  static_assert(kAfterLoop <= kStages * kStageBytes, "band buffers and queues overlay the centroid stages");
  static constexpr int kSmemBytes = kStages * kStageBytes + 1024;  // + alignment of the swizzled tiles
};

// The device code exists in sm_90a builds only (wgmma).
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
constexpr unsigned kFull = 0xffffffffu;

// Folds four packed entries into a best-first list of four: the four are
// sorted (five exchanges), each list entry meets its mirror among them (the
// larger of each pair is a bitonic run of the best four) and the run is
// cleaned (four exchanges): 22 min/max.
__device__ __forceinline__ void foldInto(float (&l)[4], float (&x)[4]) {
  exch(x[0], x[1]);
  exch(x[2], x[3]);
  exch(x[0], x[2]);
  exch(x[1], x[3]);
  exch(x[1], x[2]);
  float m[4] = {fmaxf(l[0], x[3]), fmaxf(l[1], x[2]), fmaxf(l[2], x[1]), fmaxf(l[3], x[0])};
  bitonicClean<0, 4>(m);
#pragma unroll
  for (int k = 0; k < 4; ++k) l[k] = m[k];
}

// Eight into a list of eight the same way: a sort of eight (19 exchanges),
// mirrors, a clean of eight (12 exchanges): 70 min/max, against 76 for two
// folds of four into the list. (128, 8) at 128K: 3.77-3.80 -> 3.64-3.69 ms
// random, 4.10-4.11 -> 4.01-4.05 drift.
__device__ __forceinline__ void foldInto(float (&l)[8], float (&x)[8]) {
  sort8<0>(x);
  float m[8];
#pragma unroll
  for (int k = 0; k < 8; ++k) m[k] = fmaxf(l[k], x[7 - k]);
  bitonicClean<0, 8>(m);
#pragma unroll
  for (int k = 0; k < 8; ++k) l[k] = m[k];
}

// One tile's 64 scores of the thread's two rows (acc, the m64n64 fragment:
// row half 0 in elements 0-1, half 1 in 2-3 of each 8-column chunk) into
// their lists, KL scores per row (4 KL columns) at a time. Column
// 8 i + 2 tq + e of the tile is block jq | (8 i + e), jq = j0 | 2 tq (j0 is a
// multiple of 64, so the OR is a sum). Columns at or past a row's own block
// (c0, c1) become -inf, tested only in the column groups where some row of
// the warp needs it (cMin, cMax: the fewest and most past blocks of the
// warp's rows; warp-uniform).
template <int KL>
__device__ __forceinline__ void foldTile(float (&l0)[KL], float (&l1)[KL], const float (&acc)[8][4], int j0, int jq,
                                         uint32_t notMask, int c0, int c1, int cMin, int cMax) {
  constexpr int kChunks = KL / 2;  // 8-column chunks per step
#pragma unroll
  for (int i = 0; i < 8; i += kChunks) {
    if (j0 + 8 * i >= cMax) break;  // no row of the warp has these blocks
    const bool masked = j0 + 8 * (i + kChunks) > cMin;
    int j[KL];
#pragma unroll
    for (int e = 0; e < KL; ++e) j[e] = jq | (8 * (i + (e >> 1)) + (e & 1));
    float x[2][KL];
#pragma unroll
    for (int hf = 0; hf < 2; ++hf)
#pragma unroll
      for (int e = 0; e < KL; ++e)
        x[hf][e] = __int_as_float((__float_as_int(acc[i + (e >> 1)][2 * hf + (e & 1)]) & notMask) |
                                  static_cast<uint32_t>(j[e]));
    if (masked) {
#pragma unroll
      for (int e = 0; e < KL; ++e) {
        x[0][e] = j[e] < c0 ? x[0][e] : -INFINITY;
        x[1][e] = j[e] < c1 ? x[1][e] : -INFINITY;
      }
    }
    foldInto(l0, x[0]);
    foldInto(l1, x[1]);
  }
}

#endif  // __CUDA_ARCH_FEAT_SM90_ALL

// Wide: topK 9 to 12 (keep past KL) on lists of eight. A thread's list is
// then complete only where it saw at most eight of the row's past blocks;
// elsewhere its last entry bounds what it dropped, as for topK up to 8.
template <typename T, int D, int KL, bool Wide>
__global__ void __launch_bounds__(Sm90GateCfg<D, KL>::kThreads, Sm90GateCfg<D, KL>::kCtasPerSm)
    fastKernelSm90(GateArgs a) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  using C = Sm90GateCfg<D, KL>;
  constexpr int kRows = C::kRows, kBN = C::kBN, kStages = C::kStages, KB = C::kBand;
  extern __shared__ uint8_t smemRaw[];
  const uint32_t rawAddr = smemAddr(smemRaw);
  const uint32_t stages = (rawAddr + 1023u) & ~1023u;
  uint8_t* smem = smemRaw + (stages - rawAddr);
  // After the main loop the stages hold each row's band and the warps' queues.
  float* bandS = reinterpret_cast<float*>(smem);
  int* bandI = reinterpret_cast<int*>(smem + kRows * KB * 4);
  int* queues = reinterpret_cast<int*>(smem + kRows * KB * 8);
  // Band size; or -1: hand to the exact kernel; or kRowWritten.
  __shared__ int rowState[kRows];
  __shared__ int rowCertain[kRows];  // band entries certain to be among the row's best keep

  // The exact kernel after this one may be placed as soon as every CTA here
  // has started; it waits for this grid's end before it reads anything.
  allowDependentGrid();
  const Sm90Place p = sm90PlaceOf<D, kRows, kBN>(a, C::kParts);
  const int tq = p.tq, half = p.half, ownRow = p.ownRow, keepMax = p.keepMax;
  const int numCTiles = p.numCTiles, nRows = p.tile.nRows, row0 = p.tile.row0, h = p.tile.h, pOwn = p.pOwn;
  const bool owner = p.owner;
  if (numCTiles > 0) {
    // Tiles are loaded in order: the next one's source advances by a tile.
    const Sm90TileCopy<D, C::kThreads, kBN> copier(a, p.tile, stages);
    const uint16_t* nextSrc = copier.first;
    int rowsLeft = p.tile.pLast - copier.ldRow;  // rows of the next tile this thread may copy, from its first
    int nextTile = 0;
    auto loadNextTile = [&]() {
      if (nextTile < numCTiles) {
        copier.copy(nextSrc, rowsLeft, (nextTile % kStages) * C::kStageBytes);
        nextSrc += kBN * copier.hiStride;
        rowsLeft -= kBN;
        ++nextTile;
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
    // The packing's error is bounded per comparison below (bandFloor,
    // certainAbove): eps is the tensor cores' alone.
    const RowBound rb = rowBound<D>(half ? q2[1] : q2[0], half ? nonzero[1] : nonzero[0],
                                    __uint_as_float(st[kStatBound]), __uint_as_float(st[kStatNorm]), 0);
    const uint32_t packMask = (1u << a.packBits) - 1u;
    const Sm90Past past = sm90PastOf(a, p);
    const int cA = past.cA, cB = past.cB, cWarpMin = past.cWarpMin, cWarpMax = past.cWarpMax;

    float lA[KL], lB[KL];
#pragma unroll
    for (int k = 0; k < KL; ++k) lA[k] = lB[k] = -INFINITY;
    float acc[8][4];
#pragma unroll
    for (int i = 0; i < 8; ++i)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[i][e] = 0.f;
    for (int t = 0; t < numCTiles; ++t) {
      cpAsyncWait<kStages - 2>();
      attn::fenceProxyAsync();  // this thread's copies, visible to wgmma's reads
      __syncthreads();
      loadNextTile();
      issueTileProduct<D, kBN>(acc, qa, stages + (t % kStages) * C::kStageBytes);
      awaitTileProduct<D>(acc, qa);
      const int j0 = t * kBN;
      if (j0 >= cWarpMax) continue;  // warp-uniform: no row of the warp has these blocks
      foldTile(lA, lB, acc, j0, j0 | (2 * tq), ~packMask, cA, cB, cWarpMin, cWarpMax);
    }
    cpAsyncWait<0>();
    __syncthreads();  // the stages become band buffers

    // The quad's four lists of the row into its best eight: the lane of the
    // other half sends its list of this lane's row (a bitonic run of eight
    // with this lane's own list), then the lane of the same half (the best
    // eight of two sorted eights).
    float R[KB];
#pragma unroll
    for (int k = 0; k < KL; ++k) {
      R[k] = half ? lB[k] : lA[k];
      R[KB - 1 - k] = __shfl_xor_sync(kFull, half ? lA[k] : lB[k], 1);
    }
    bitonicClean<0, KB>(R);
    {
      float other[KB];
#pragma unroll
      for (int k = 0; k < KB; ++k) other[k] = __shfl_xor_sync(kFull, R[KB - 1 - k], 2);
#pragma unroll
      for (int k = 0; k < KB; ++k) R[k] = fmaxf(R[k], other[k]);
    }
    bitonicClean<0, KB>(R);
    // Each thread's list dropped only entries at most its last, and only if
    // the thread saw more than KL of the row's past blocks (columns
    // 8 i + 2 tq and 8 i + 2 tq + 1 of each tile are its own; rows of at
    // most 33 blocks never do): the most any of the row's four lists may
    // have dropped.
    float lastA = lA[KL - 1], lastB = lB[KL - 1];
    if constexpr (Wide) {
      auto seen = [&](int c) { return 2 * (c >> 3) + min(max((c & 7) - 2 * tq, 0), 2); };
      if (seen(cA) <= KL) lastA = -INFINITY;
      if (seen(cB) <= KL) lastB = -INFINITY;
    }
    float dropped = fmaxf(half ? lastB : lastA, __shfl_xor_sync(kFull, half ? lastA : lastB, 1));
    dropped = fmaxf(dropped, __shfl_xor_sync(kFull, dropped, 2));

    if (owner && ownRow < nRows && pOwn > keepMax) {
      const int keep = keepMax;  // 1 or 2 (lists of 4), 3 to 7 (lists of 8), 8 to 11 (Wide)
      constexpr int kPicked = Wide ? KB : KL;  // entries that may hold the keep-th and the next
      const float twoEps = 2.f * rb.eps;
      const float rel = packingRel(a.packBits);
      const float kth = pick<kPicked>(R, keep - 1);
      const float next = pick<kPicked>(R, keep);
      const float L = bandFloor(kth, twoEps, rel);
      int nb = 0;  // the band: R[0, nb)
#pragma unroll
      for (int k = 0; k < KB; ++k) nb += R[k] >= L ? 1 : 0;
      const bool overflow = R[KB - 1] >= L || dropped >= L;
      int state = !rb.ok || overflow ? -1 : nb;
      if (state == keep) {
        // No near-tie: the row's blocks are its first keep entries.
        int32_t* out = a.indices + (static_cast<size_t>(h) * a.totalQ + row0 + ownRow) * a.topK;
        if constexpr (Wide) {
          if (pOwn <= 64) {
            // Block indices below 64: ascending from a bit mask.
            uint64_t set = 0;
#pragma unroll
            for (int k = 0; k < KB - 1; ++k)
              if (k < keep) set |= uint64_t{1} << packedIndex(R[k], packMask);
            for (int m = 0; m < keep; ++m, set &= set - 1) out[m] = __ffsll(static_cast<long long>(set)) - 1;
            writeRowTail(out, keep, pOwn, a.topK);
          } else {
            int idx[KB];
#pragma unroll
            for (int k = 0; k < KB; ++k) idx[k] = k < keep ? packedIndex(R[k], packMask) : INT_MIN;
            writeAscending(idx, keep, pOwn, a.topK, out);
          }
        } else if constexpr (KL == 4) {
          const int i0 = packedIndex(R[0], packMask), i1 = packedIndex(R[1], packMask);
          if (keep == 1) {
            out[0] = i0;
          } else {
            out[0] = min(i0, i1);
            out[1] = max(i0, i1);
          }
          writeRowTail(out, keep, pOwn, a.topK);
        } else {
          int idx[8];
#pragma unroll
          for (int k = 0; k < 8; ++k) idx[k] = k < keep ? packedIndex(R[k], packMask) : INT_MAX;
          writeCertainRow(idx, keep, pOwn, a.topK, out);
        }
        state = kRowWritten;
      } else if (state > keep) {
        // An entry is certain when it outranks the (keep+1)-th and so every
        // block past it (at most keep-1 others can then outrank it); that
        // holds for a prefix of the sorted band.
        int nc = 0;
#pragma unroll
        for (int k = 0; k < kPicked - 1; ++k) nc += k < keep && certainAbove(R[k], next, twoEps, rel) ? 1 : 0;
        rowCertain[ownRow] = nc;
#pragma unroll
        for (int k = 0; k < KB; ++k) {
          if (k < nb) {
            bandS[ownRow * KB + k] = R[k];
            bandI[ownRow * KB + k] = packedIndex(R[k], packMask);
          }
        }
      }
      rowState[ownRow] = state;
    }
    __syncthreads();
  } else {
    waitForPrimaryGrid();  // every CTA: this grid never completes ahead of those before it
  }

  finishCtaRows<T, D, KB, C::kQueueInts, Wide ? kWideMaxTopK - 1 : 7>(a, p, rowState, rowCertain, queues, bandS, bandI);
#endif
}

template <typename T, int D, int KL, bool Wide = false>
Status launchTyped(const GateArgs& a, int numTiles, bool dependent, cudaStream_t stream) {
  using C = Sm90GateCfg<D, KL>;
  const dim3 grid(static_cast<unsigned>(numTiles * C::kParts), static_cast<unsigned>(a.nqh));
  return launchScoresKernel(fastKernelSm90<T, D, KL, Wide>, grid, C::kThreads, C::kSmemBytes, a, dependent, stream,
                            "gate scores (sm90)");
}

}  // namespace

bool gateUsesSm90(int topK, int packBits, int maxBlocks, const CudaContext& ctx) {
  static const bool forceSm80 = envIs("MOBA_GATE_KERNEL", "sm80");
  const bool wide = topK <= kWideMaxTopK && maxBlocks <= wideMaxBlocks(topK);
  return runsSm90a(ctx) && !forceSm80 && topK >= 2 && (topK <= 8 || wide) && packBits <= kGateMaxPackBits;
}

Status launchGateFastSm90(const GateArgs& a, DType dtype, int numTiles, bool dependent, cudaStream_t stream) {
  if (numTiles == 0) return Status::Ok();
  return withGateTypes(dtype, a.headDim, [&](auto t, auto d) {
    using T = decltype(t);
    constexpr int D = decltype(d)::value;
    if (a.topK <= kMaxTopKLists4) return launchTyped<T, D, 4>(a, numTiles, dependent, stream);
    return a.topK <= 8 ? launchTyped<T, D, 8>(a, numTiles, dependent, stream)
                       : launchTyped<T, D, 8, true>(a, numTiles, dependent, stream);
  });
}

}  // namespace moba
