// Gate scores and top-(k-1) selection, fused: the [tokens x blocks] score
// matrix never reaches global memory.
//
// Fast kernel (topK <= 16). A CTA owns 128 consecutive query rows of one
// sequence and one query head. The rows' q is loaded from global memory
// straight into MMA A fragments (in 16-byte loads: the centroid operand's
// dims are permuted to match) and converted to scaled fp16 whatever the
// input dtype; centroid tiles (64 blocks, scaled fp16 from
// gate_centroids.cu) stream through shared memory (cp.async, three stages),
// and mma.sync gives fp32 scores, 32 blocks at a time per warp. Each warp
// passes those 32 x 32 scores through a small shared-memory tile so that
// every thread owns one row: it keeps that row's best KL blocks in
// registers, sorted, and inserts only scores above its threshold (see
// below), one candidate per loop trip for all 32 rows at once. Selection
// thus costs a few instructions per score plus an insertion per new record,
// instead of one code path per score. With packed lists of 16 and 24 (see
// below) the first tile visited, where a row has no threshold yet and most
// of its records, goes in by sorting network instead.
//
// Exactness. The tensor-core score a_j differs from the exact fp32 score s_j
// (CPU summation order) by at most eps = (||q|| + qsub) * E + qsub * C, all
// in the scaled units of the operands (E, C from gate_centroids.cu: rounding
// of the centroid to fp16 plus accumulation error; qsub bounds the q elements
// too small for fp16, which the tensor cores may flush).
// With T the (k-1)-th best a and L = T - 2 eps, every block of the exact
// top-(k-1) has a >= L ("the band"). Scores below the running (k-1)-th best
// minus 2 eps can never reach the band, so they are dropped at once; the
// row's list holds the band. If the band holds exactly k-1 blocks the choice
// is certain. Else the blocks that can still change places are re-scored
// exactly and ranked by the exact scores. A row goes to the exact kernel
// when its band may not fit the list (KL entries) or when its q or
// centroids are non-finite or huge (gate_exact_rows.cu).
//
// Packed lists. When a sequence's block indices fit in `packBits` <= 12
// bits, a candidate enters the list as one float: its score with the low
// packBits mantissa bits replaced by its block index. The list is then
// sorted floats, and an insertion is a max and a min per slot instead of
// compares and selects on two arrays. Replacing those bits moves a score by
// less than 2^(packBits - 23) of its magnitude, at most delta = 2^(packBits
// - 23) (||q|| C + eps); the band logic runs on the packed values with
// eps + delta, and raw scores are tested against thresholds lowered by delta
// more.

#include <climits>

#include "gate_device.cuh"
#include "gate_dispatch.cuh"
#include "gate_internal.h"
#include "gate_select.cuh"
#include "common/cuda_context.h"
#include "common/dependent_launch.h"
#include "common/grid_dependency.cuh"

namespace moba {
namespace {

using namespace gate;

constexpr unsigned kFull = 0xffffffffu;

template <int D, int KL>
struct FastCfg {
  static constexpr int kWarps = 4;
  static constexpr int kThreads = kWarps * 32;
  static constexpr int kRows = kWarps * 32;  // one row per thread
  static constexpr int kBN = 64;             // centroids per shared-memory tile
  static constexpr int kStages = 3;
  static constexpr int kPitch = 40;          // floats per row of a warp's score tile (see ownG)
  static constexpr int kStageBytes = kBN * D * 2;
  static constexpr int kScoreBytes = kWarps * 32 * kPitch * 4;
  // q goes from global memory straight into registers (no q tile), so three
  // CTAs fit per SM.
  static constexpr int kSmemBytes = kStages * kStageBytes + kScoreBytes;
  static constexpr int kCtasPerSm = 3;
  static_assert(kRows * KL * 8 <= kStages * kStageBytes, "band buffers overlay the centroid stages");
};

// Inserts (s, j) into a list sorted best first, dropping the last entry.
// Among equal scores the earlier arrival stays first; the order of equal
// tensor-core scores never decides the result, because certification counts
// them as rivals and exact re-scoring ranks them by (score, index). Each slot's
// new value depends only on the old list (no carried chain), and every index
// is a compile-time constant, so the list stays in registers.
template <int KL>
__device__ __forceinline__ void insertSorted(float (&ls)[KL], int (&li)[KL], float s, int j) {
  bool above[KL];
#pragma unroll
  for (int k = 0; k < KL; ++k) above[k] = s > ls[k];
#pragma unroll
  for (int k = KL - 1; k > 0; --k) {
    ls[k] = above[k] ? (above[k - 1] ? ls[k - 1] : s) : ls[k];
    li[k] = above[k] ? (above[k - 1] ? li[k - 1] : j) : li[k];
  }
  ls[0] = above[0] ? s : ls[0];
  li[0] = above[0] ? j : li[0];
}

// Folds v into a best-first list of distinct values: a max and a min per slot.
template <int KL>
__device__ __forceinline__ void foldTop(float (&ls)[KL], float v) {
#pragma unroll
  for (int k = KL - 1; k > 0; --k) ls[k] = fmaxf(ls[k], fminf(ls[k - 1], v));
  ls[0] = fmaxf(ls[0], v);
}

// The first tile of a row's scores goes into its packed list by sorting
// network, with no branch: ls (KL = 16 or 24, best first) becomes the best
// KL of ls and v (32 values, any order; v is clobbered). About 440 (16) or
// 650 (24) instructions, against 45-60 per candidate inserted one at a
// time; the first tile is where a row's candidates are most (there is no
// threshold yet), and a warp takes as many trips as its busiest row.
template <int KL>
__device__ __forceinline__ void mergeBest(float (&ls)[KL], float (&v)[32]) {
  static_assert(KL == 16 || KL == 24, "sorting-network merge for lists of 16 or 24");
  sort8<0>(v);
  sort8<8>(v);
  sort8<16>(v);
  sort8<24>(v);
  reverseRun<8, 8>(v);
  reverseRun<24, 8>(v);
  bitonicClean<0, 16>(v);
  bitonicClean<16, 16>(v);
  if constexpr (KL == 16) {
    // The best 16 of two sorted sixteens: maxima against the other reversed (bitonic), sorted.
#pragma unroll
    for (int i = 0; i < 16; ++i) v[i] = fmaxf(v[i], v[31 - i]);
    bitonicClean<0, 16>(v);
#pragma unroll
    for (int i = 0; i < 16; ++i) ls[i] = fmaxf(ls[i], v[15 - i]);
    bitonicClean<0, 16>(ls);
  } else {
    reverseRun<16, 16>(v);
    bitonicClean<0, 32>(v);  // all 32 sorted
    // Maxima of ls against v's best 24 reversed fall then rise; eight +inf
    // in front keep the run bitonic at a length of 32.
    float w[32];
#pragma unroll
    for (int i = 0; i < 8; ++i) w[i] = INFINITY;
#pragma unroll
    for (int i = 0; i < 24; ++i) w[8 + i] = fmaxf(ls[i], v[23 - i]);
    bitonicClean<0, 32>(w);
#pragma unroll
    for (int i = 0; i < 24; ++i) ls[i] = w[8 + i];
  }
}

template <typename T, int D, int KL, bool kPacked>
__global__ void __launch_bounds__(FastCfg<D, KL>::kThreads, FastCfg<D, KL>::kCtasPerSm) fastKernel(GateArgs a) {
  using C = FastCfg<D, KL>;
  constexpr int kRows = C::kRows, kBN = C::kBN, kStages = C::kStages, kPitch = C::kPitch;
  // Packed lists: the slot of the row's keep-th best (the largest keep of
  // this list size, launchFastDim, minus one), and whether the first tile is
  // merged by sorting network (lists of 16 and 24: keep 4..15).
  constexpr int kKeepSlot = KL <= 8 ? 2 : KL <= 16 ? 6 : 14;
  constexpr bool kSortFirst = kPacked && KL >= 16;
  extern __shared__ __align__(128) uint8_t smem[];
  uint16_t* cs = reinterpret_cast<uint16_t*>(smem);
  float* scoreTile = reinterpret_cast<float*>(smem + kStages * C::kStageBytes);
  // After the main loop the stages hold each row's band.
  float* bandS = reinterpret_cast<float*>(smem);
  int* bandI = reinterpret_cast<int*>(smem + kRows * KL * 4);
  // Band size; or -1: hand to the exact kernel; or kRowWritten.
  __shared__ int rowState[kRows];
  __shared__ int rowCertain[kRows];  // packed lists of 16, 24: band entries certain to be in the top-(k-1)
  __shared__ float rowEps[kRows];

  // The exact kernel after this one may be placed as soon as every CTA here
  // has started; it waits for this grid's end before it reads anything.
  allowDependentGrid();
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int g = lane >> 2, tq = lane & 3;
  // A warp's rows are g + 8 j (g = 0..7, j = 0..3: the MMA fragment's row
  // g of m16 tile j >> 1, half j & 1). In the warp's score tile (32 rows of
  // kPitch floats) column c of row g + 8 j sits at c ^ 4 j: 4-float chunks
  // XOR-ed with j. With a pitch of 40, the fragment-order float2 stores are
  // conflict-free for any such XOR, so a store's address is a per-thread base
  // (two: j even or odd) plus a constant. The owner of a row reads it as
  // float4s; the 8 lanes of each quarter-warp own rows g1 + 8 j and
  // g1 + 2 + 8 j (j = their tq), which keeps those reads conflict-free too.
  const int ownG = (g & 4) | ((g & 1) << 1) | ((g >> 1) & 1);
  const int ownWarpRow = ownG + 8 * tq;       // row within the warp's 32
  const int ownRow = warp * 32 + ownWarpRow;  // row within the CTA
  const RowTile tile = rowTileOf(a, kRows);
  const int b = tile.b, h = tile.h, kvh = tile.kvh;
  const int nRows = tile.nRows, row0 = tile.row0, pos0 = tile.pos0, pLast = tile.pLast;
  const int B = a.chunkSize;
  const int keepMax = a.topK - 1;
  const int numCTiles = pLast > keepMax ? (pLast + kBN - 1) / kBN : 0;
  const int pOwn = ownRow < nRows ? (pos0 + ownRow) / B : 0;

  const size_t qRowStride = static_cast<size_t>(a.nqh) * D;
  const uint16_t* qBase = static_cast<const uint16_t*>(a.q) + static_cast<size_t>(row0) * qRowStride +
                            static_cast<size_t>(h) * D;
  if (numCTiles > 0) {
    const int blockBase = a.cuBlocks[b];
    const size_t hiStride = static_cast<size_t>(a.nkvh) * D;
    const uint16_t* hiBase = static_cast<const uint16_t*>(a.hi) + (static_cast<size_t>(blockBase) * a.nkvh + kvh) * D;

    // Each thread copies the same 16-byte chunk of every kLoadStep-th row of
    // each centroid tile: its shared-memory offsets and its source pointer
    // advance by constants (kLoadStep is a multiple of 8, so the swizzle is
    // fixed).
    constexpr int kLoadStep = C::kThreads / (D / 8);
    static_assert(kLoadStep % 8 == 0 && kBN % kLoadStep == 0, "tile rows per copy step");
    const int ldRow = tid / (D / 8), ldCh = tid % (D / 8);
    // Tiles are visited newest, oldest, second newest, second oldest, ...:
    // when scores trend with the block index (either way), the first two
    // tiles already hold a row's best blocks and later ones rarely insert.
    auto tileAt = [&](int t) { return (t & 1) ? (t >> 1) : numCTiles - 1 - (t >> 1); };
    const uint32_t ldDst = smemAddr(cs + swz<D>(ldRow, ldCh) * 8);
    const uint16_t* ldSrc = hiBase + static_cast<size_t>(ldRow) * hiStride + ldCh * 8;
    const size_t hiStep = kLoadStep * hiStride;
    auto loadTile = [&](int t) {
      if (t < numCTiles) {
        const uint32_t dst = ldDst + (t % kStages) * C::kStageBytes;
        const int j0 = tileAt(t) * kBN;
        const uint16_t* src = ldSrc + static_cast<size_t>(j0) * hiStride;
        const int rowsLeft = pLast - j0 - ldRow;
#pragma unroll
        for (int it = 0; it < kBN / kLoadStep; ++it, src += hiStep) {
          const bool valid = it * kLoadStep < rowsLeft;
          cpAsync16(dst + it * kLoadStep * D * 2, valid ? src : hiBase, valid);
        }
      }
      cpAsyncCommit();
    };
    int warpPmax = 0;
    {
      int lastRow = min(warp * 32 + 32, nRows) - 1;
      if (lastRow >= warp * 32) warpPmax = (pos0 + lastRow) / B;
      if (warpPmax <= keepMax) warpPmax = 0;  // every row of this warp keeps all its past blocks
    }

    // The warp's q rows as mma.sync A fragments (loadRowFragments): register
    // [mt][ks][i] holds row warp * 32 + mt * 16 + g + 8 (i & 1).
    uint32_t qa[2][D / 16][4];
#pragma unroll
    for (int mt = 0; mt < 2; ++mt) loadRowFragments<D>(qa[mt], qBase, qRowStride, warp * 32 + mt * 16, nRows, lane);
    // Up to here the CTA read only the op's inputs: the centroid operand and
    // its statistics come from the grids before this one, which it may have
    // started alongside (programmatic dependent launch).
    waitForPrimaryGrid();
#pragma unroll
    for (int s = 0; s < kStages - 1; ++s) loadTile(s);

    // The q fragments become the scaled fp16 operand (scaleRowOperand). Scores
    // come out scaled by the row's power of two times the centroids': positive
    // factors that do not change a row's order, so the band logic below runs
    // in these units, with the owned row's error bound from rowBound (see the
    // file comment). Each quad holds four rows, its threads a quarter of each.
    float eps = 0.f;
    float delta = 0.f;  // packed lists: how far packing moves a score
    bool bad = true;
    {
      // Each fragment row's ||q||^2 and nonzero bits (every lane of its quad holds them).
      float rowQ2[4];
      uint32_t rowNz[4];
#pragma unroll
      for (int mt = 0; mt < 2; ++mt)
#pragma unroll
        for (int hf = 0; hf < 2; ++hf) scaleRowOperand<T, D>(qa[mt], hf, rowQ2[2 * mt + hf], rowNz[2 * mt + hf]);
      // The owned row (g = ownG, j = tq) from its quad.
      float q2 = 0.f;
      uint32_t nonzero = 0;
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const float x = __shfl_sync(kFull, rowQ2[j], 4 * ownG);
        const uint32_t z = __shfl_sync(kFull, rowNz[j], 4 * ownG);
        q2 = tq == j ? x : q2;
        nonzero = tq == j ? z : nonzero;
      }
      const uint32_t* st = a.stats + (static_cast<size_t>(b) * a.nkvh + kvh) * kGateStats;
      const RowBound rb = rowBound<D>(q2, nonzero, __uint_as_float(st[kStatBound]), __uint_as_float(st[kStatNorm]),
                                      kPacked ? a.packBits : 0);
      eps = rb.eps;
      delta = rb.delta;
      bad = !rb.ok;
    }
    const float twoEps = 2.f * eps;
    // Raw scores against a threshold from the list (packed values) or from
    // raw scores (the seed): how far below the band's floor each may be.
    const float listSlack = __fadd_ru(twoEps, delta);
    const float seedSlack = __fadd_ru(listSlack, delta);
    const uint32_t packMask = kPacked ? (1u << a.packBits) - 1u : 0u;

    // The owned row's best blocks so far, best first; (-inf, INT_MAX) marks
    // an empty slot. Packed lists carry the index in ls (li is unused), and
    // start with `lead` +inf sentinels (they stay first) so that the row's
    // keep-th best is always slot kKeepSlot: its threshold is one register,
    // not a pick by a run-time index (about 30 instructions per half-tile).
    const int keepOwn = min(keepMax, pOwn);
    const int lead = kPacked ? kKeepSlot + 1 - keepOwn : 0;
    float ls[KL];
    int li[kPacked ? 1 : KL];
#pragma unroll
    for (int k = 0; k < KL; ++k) {
      ls[k] = k < lead ? INFINITY : -INFINITY;
      if constexpr (!kPacked) li[k] = INT_MAX;
    }
    float thr = -INFINITY;  // scores at or below it cannot enter the band
    float* myTile = scoreTile + warp * 32 * kPitch;
    // Score-tile addresses (see ownG): the fragment stores' bases for rows
    // g + 8 j with j even and odd, and the owned row with its XOR.
    float* const storeEven = myTile + g * kPitch + 2 * (tq & 1) + 4 * (tq >> 1);
    float* const storeOdd = myTile + g * kPitch + 2 * (tq & 1) + 4 * ((tq >> 1) ^ 1);
    const float* const rowTile = myTile + ownWarpRow * kPitch;
    const int rowXor = 4 * tq;
    const uint32_t rowTileAddr = smemAddr(rowTile);

    // ldmatrix of centroid fragments: this lane's row within a 16-row group and
    // its swizzled chunk offset (bytes), fixed for the whole loop.
    const int bRowOff = ((lane >> 4) * 8 + (lane & 7)) * D * 2;
    const uint32_t bSwz16 = ((((lane >> 3) & 1) ^ (lane & 7)) * 16);
    for (int t = 0; t < numCTiles; ++t) {
      cpAsyncWait<kStages - 2>();
      __syncthreads();
      loadTile(t + kStages - 1);
      const uint32_t stAddr = smemAddr(cs) + (t % kStages) * C::kStageBytes;
      const int j0 = tileAt(t) * kBN;
#pragma unroll
      for (int nh = 0; nh < 2; ++nh) {
        const int jh = j0 + nh * 32;
        if (jh >= warpPmax) break;  // warp-uniform
        float acc[2][4][4];
#pragma unroll
        for (int mt = 0; mt < 2; ++mt)
#pragma unroll
          for (int n8 = 0; n8 < 4; ++n8)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[mt][n8][e] = 0.f;
#pragma unroll
        for (int ks = 0; ks < D / 16; ++ks) {
          uint32_t bf[4][2];
#pragma unroll
          for (int p = 0; p < 2; ++p) {
            // Row nh*32 + p*16 + bRow; chunk (2 ks + bHalf) ^ (row & 7) = 2 ks ^ bSwz.
            uint32_t r[4];
            ldsm4(r, stAddr + ((nh * 32 + p * 16) * D * 2 + bRowOff + ((32 * ks) ^ bSwz16)));
            bf[2 * p][0] = r[0];
            bf[2 * p][1] = r[1];
            bf[2 * p + 1][0] = r[2];
            bf[2 * p + 1][1] = r[3];
          }
#pragma unroll
          for (int mt = 0; mt < 2; ++mt)
#pragma unroll
            for (int n8 = 0; n8 < 4; ++n8) mma16816<false>(acc[mt][n8], qa[mt][ks], bf[n8][0], bf[n8][1]);  // fp16
        }
        // Re-deal the 32 x 32 scores so that each thread holds its own row.
#pragma unroll
        for (int mt = 0; mt < 2; ++mt)
#pragma unroll
          for (int hf = 0; hf < 2; ++hf)
#pragma unroll
            for (int n8 = 0; n8 < 4; ++n8) {
              // Row g + 8 j, column 8 n8 + 2 tq: chunk (2 n8 + (tq >> 1)) ^ j, split
              // into its bit 0 (in the base) and bits 1-2 (a constant).
              const int j = 2 * mt + hf;
              float* const at = (hf ? storeOdd : storeEven) + 8 * j * kPitch + 4 * ((2 * n8) ^ (j & 2));
              *reinterpret_cast<float2*>(at) = make_float2(acc[mt][n8][2 * hf], acc[mt][n8][2 * hf + 1]);
            }
        __syncwarp();
        float v[32];
#pragma unroll
        for (int c4 = 0; c4 < 8; ++c4) {
          float4 x = *reinterpret_cast<const float4*>(rowTile + ((4 * c4) ^ rowXor));
          v[4 * c4] = x.x;
          v[4 * c4 + 1] = x.y;
          v[4 * c4 + 2] = x.z;
          v[4 * c4 + 3] = x.w;
        }
        const int lim = min(max(pOwn - jh, 0), 32);  // valid columns: blocks below the current one
        const uint32_t validMask = lim == 32 ? kFull : ((1u << lim) - 1u);
        if constexpr (kSortFirst) {
          if (t == 0) {
            // The first tile's 64 blocks go in by sorting network: they are
            // where most of a row's insertions would be (no threshold yet).
#pragma unroll
            for (int c = 0; c < 32; ++c)
              v[c] = (validMask >> c) & 1u ? packEntry(v[c], packMask, jh + c) : -INFINITY;
            mergeBest<KL>(ls, v);
            thr = fmaxf(thr, __fsub_rd(ls[kKeepSlot], listSlack));
            __syncwarp();  // the tile is rewritten by the next half
            continue;
          }
        }
        if (!kSortFirst && (t == 0 || j0 == 0) && nh == 0 && keepOwn > 0 && keepOwn <= 8) {
          // First looks at the row (the first half-tile visited, and blocks
          // 0-31): the keep-th best of eight group maxima is a lower bound of
          // its keep-th best score, a cheap threshold.
          float gm[8];
#pragma unroll
          for (int q4 = 0; q4 < 8; ++q4) {
            float m = -INFINITY;
#pragma unroll
            for (int e = 0; e < 4; ++e) m = (validMask >> (4 * q4 + e)) & 1u ? fmaxf(m, v[4 * q4 + e]) : m;
            gm[q4] = m;
          }
#pragma unroll
          for (int pass = 0; pass < 8; ++pass)
#pragma unroll
            for (int k = pass & 1; k + 1 < 8; k += 2) {
              float hi = fmaxf(gm[k], gm[k + 1]), lo = fminf(gm[k], gm[k + 1]);
              gm[k] = hi;
              gm[k + 1] = lo;
            }
          thr = fmaxf(thr, __fsub_rd(pick<8>(gm, keepOwn - 1), seedSlack));
        }
        // The candidates: bit c of `below` is the sign of v[c] - thrLow,
        // gathered by one funnel shift per score (a compare, a select and
        // part of an OR each before). thrLow is strictly below thr (rounded
        // down), so every v >= thr gives a positive difference, or +0 when
        // flushed, and stays a candidate; a few just below thr may join
        // them, which only costs a trip. NaN scores (rows handed to the
        // exact kernel anyway) may join too.
        const float thrLow = __fsub_rd(thr, 1.17549435e-38f);  // thr - FLT_MIN
        uint32_t below = 0;
#pragma unroll
        for (int c = 31; c >= 0; --c) below = __funnelshift_l(__float_as_uint(__fsub_rn(v[c], thrLow)), below, 1);
        uint32_t mask = ~below & validMask;
        // Packed lists: the row's next candidate as a packed entry, taken off
        // the mask; -inf when it has none left, which a fold leaves unchanged
        // (so the trips need no branch around the fold).
        auto takeCandidate = [&]() {
          const bool has = mask != 0;
          const int c = has ? __ffs(mask) - 1 : 0;
          mask &= mask - 1;
          // Lists of 8 and 24 load the score whether or not the row has a
          // candidate, with no branch around the load: 3.5% faster at
          // (512, 3); lists of 16 measured 5% slower that way at (128, 8).
          const float s = KL != 16 ? ldsF32(rowTileAddr + 4u * (c ^ rowXor)) : rowTile[c ^ rowXor];
          return has ? packEntry(s, packMask, jh + c) : -INFINITY;
        };
        // Two candidates per trip while some row has two or more left (its
        // fixed part, the vote, bit search and branch, is then paid once).
        // Lists of 16 measured 2% slower with it at (128, 8); lists of 8 and
        // 24 3% and 1.5% faster at (512, 3) and (64, 16).
        if constexpr (kPacked && KL != 16) {
          while (__any_sync(kFull, (mask & (mask - 1)) != 0)) {
            const float e1 = takeCandidate();
            const float e2 = takeCandidate();
            foldTop<KL>(ls, e1);
            foldTop<KL>(ls, e2);
          }
        }
        while (__any_sync(kFull, mask != 0)) {
          if constexpr (kPacked) {
            foldTop<KL>(ls, takeCandidate());
          } else if (mask != 0) {
            const int c = __ffs(mask) - 1;
            mask &= mask - 1;
            const float s = rowTile[c ^ rowXor];
            if (s > ls[KL - 1]) insertSorted<KL>(ls, li, s, jh + c);
          }
        }
        // The running keep-th best only grows: scores below it minus 2 eps
        // can never reach the final band.
        if constexpr (kPacked) {
          thr = fmaxf(thr, __fsub_rd(ls[kKeepSlot], listSlack));  // +inf when the row keeps nothing
        } else if (keepOwn > 0) {
          thr = fmaxf(thr, __fsub_rd(pick<KL>(ls, keepOwn - 1), listSlack));
        }
        __syncwarp();  // the tile is rewritten by the next half
      }
    }
    cpAsyncWait<0>();
    __syncthreads();  // the stages become band buffers

    if (ownRow < nRows && pOwn > keepMax) {
      const int keep = keepMax;
      const float L = __fsub_rd(kPacked ? ls[kKeepSlot] : pick<KL>(ls, keep - 1), twoEps);
      int nb = 0;  // the band: list entries [lead, lead + nb)
#pragma unroll
      for (int k = 0; k < KL; ++k) nb += k >= lead && ls[k] >= L ? 1 : 0;
      // A full list may have dropped band blocks (they score at most its last entry).
      const bool overflow = ls[KL - 1] >= L;
      int state = bad || overflow ? -1 : nb;
      // Lists of 16 and 24 (keep 4..15), where the finishing loops below cost
      // most: the rows' bands are certified in registers, and those of 16
      // write rows without near-ties straight away. (For keep <= 3 the loops
      // are short, and the extra registers here made the kernel slower.)
      if constexpr (kPacked && KL >= 16) {
        if constexpr (KL == 16) {
          if (state == keep) {
            // No near-tie: the row's blocks are its first keep entries.
            int idx[8];
#pragma unroll
            for (int k = 0; k < 8; ++k) idx[k] = k < lead || k > kKeepSlot ? INT_MAX : packedIndex(ls[k], packMask);
            writeCertainRow(idx, keep, pOwn, a.topK,
                            a.indices + (static_cast<size_t>(h) * a.totalQ + row0 + ownRow) * a.topK);
            state = kRowWritten;
          }
        }
        if (state > keep) {
          // Certification in registers: the band is sorted, so an entry is
          // certain when the (keep+1)-th is below it by more than 2 eps (at
          // most keep-1 others can then outrank it); that holds for a prefix.
          int nc = 0;
#pragma unroll
          for (int k = 0; k <= kKeepSlot; ++k) nc += k >= lead && !(ls[kKeepSlot + 1] >= __fsub_rd(ls[k], twoEps)) ? 1 : 0;
          rowCertain[ownRow] = nc;
        }
      }
      if (state >= 0) {
#pragma unroll
        for (int k = 0; k < KL; ++k) {
          if (k >= lead && k < lead + nb) {
            bandS[ownRow * KL + k - lead] = ls[k];
            if constexpr (kPacked) bandI[ownRow * KL + k - lead] = packedIndex(ls[k], packMask);
            else bandI[ownRow * KL + k] = li[k];
          }
        }
      }
      rowState[ownRow] = state;
      rowEps[ownRow] = eps;
    }
    __syncthreads();
  } else {
    waitForPrimaryGrid();  // every CTA: this grid never completes ahead of those before it
  }

  // Finish each row: its owner certifies the band; the blocks still
  // contested are re-scored exactly a warp at a time (8 lanes per score, see
  // below); then the owner ranks them and writes the row.
  const int c = pOwn;
  const int state = ownRow < nRows && c > keepMax ? rowState[ownRow] : -1;
  const bool live = state >= 0;
  int nb = 0, nc = 0;
  if (live) {
    nb = state;
    nc = keepMax;
    if (kPacked && KL >= 16 && nb > keepMax) {
      nc = rowCertain[ownRow];
    } else if (nb > keepMax) {
      const float* bs = bandS + ownRow * KL;
      const float twoEps = 2.f * rowEps[ownRow];
      // Entries that at most keep-1 others could outrank are certain.
      for (nc = 0; nc < keepMax; ++nc) {
        const float thrC = __fsub_rd(bs[nc], twoEps);
        int rivals = 0;
        for (int m = 0; m < nb; ++m) rivals += bs[m] >= thrC;
        if (rivals > keepMax) break;
      }
    }
  }
  const int need = max(nb - nc, 0);  // entries [nc, nb) of the row get exact scores
  rescoreContested<T, D, KL, KL <= 8 ? D / 32 : 2>(
      need, nc, ownRow, reinterpret_cast<int*>(scoreTile + warp * 32 * kPitch),  // free after the main loop
      [&] { return a.cent + (static_cast<size_t>(a.cuBlocks[b]) * a.nkvh + kvh) * D; },
      static_cast<size_t>(a.nkvh) * D, qBase, qRowStride, bandI, bandS, lane);

  if (ownRow < nRows)
    finishRow<kKeepSlot + 1>(a, h, row0 + ownRow, c, keepMax, state, bandS + ownRow * KL, bandI + ownRow * KL, nc, nb);
}

template <typename T, int D, int KL, bool kPacked>
Status launchFastTyped(const GateArgs& a, int numTiles, bool dependent, cudaStream_t stream) {
  using C = FastCfg<D, KL>;
  auto kernel = fastKernel<T, D, KL, kPacked>;
  MOBA_RETURN_IF_ERROR(cudaStatus(
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, C::kSmemBytes), "gate smem limit"));
  dim3 grid(static_cast<unsigned>(numTiles), static_cast<unsigned>(a.nqh));
  return cudaStatus(launchInOrder(kernel, grid, dim3(C::kThreads), C::kSmemBytes, stream, dependent, a), "gate scores");
}

// Packed lists for keep >= 4 take 4 more entries than gateListCap's (an
// entry costs two instructions per insertion there): their band is a little
// wider (the packing error), and rows with many near-ties (scores trending
// with the block index) then stay on the fast path.
template <typename T, int D>
Status launchFastDim(const GateArgs& a, int listCap, int numTiles, bool dependent, cudaStream_t stream) {
  const bool packed = a.packBits <= kGateMaxPackBits;
  switch (listCap) {
    case 8: return packed ? launchFastTyped<T, D, 8, true>(a, numTiles, dependent, stream) : launchFastTyped<T, D, 8, false>(a, numTiles, dependent, stream);
    case 12: return packed ? launchFastTyped<T, D, 16, true>(a, numTiles, dependent, stream) : launchFastTyped<T, D, 12, false>(a, numTiles, dependent, stream);
    case 20: return packed ? launchFastTyped<T, D, 24, true>(a, numTiles, dependent, stream) : launchFastTyped<T, D, 20, false>(a, numTiles, dependent, stream);
    default: return Status::Invalid("unsupported gate list size: " + std::to_string(listCap));
  }
}

}  // namespace

Status launchGateFast(const GateArgs& a, DType dtype, int listCap, int numTiles, bool dependent, cudaStream_t stream) {
  if (numTiles == 0) return Status::Ok();
  return withGateTypes(dtype, a.headDim, [&](auto t, auto d) {
    return launchFastDim<decltype(t), decltype(d)::value>(a, listCap, numTiles, dependent, stream);
  });
}

}  // namespace moba
