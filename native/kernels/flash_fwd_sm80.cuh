// Attention forward on mma.sync tensor cores (sm_80 and newer): 8 warps, a
// tile of 128 query rows (16 per warp) against key tiles of 64, K and V
// double-buffered through cp.async, scores and the output accumulated in fp32
// registers with an exp2 online softmax. One template serves the three modes
// of FwdMode; the job decoding in common/attn_job.cuh says which rows and keys.
#pragma once
#include "common/attn_args.h"
#include "common/attn_device.cuh"
#include "common/attn_job.cuh"

namespace moba {
namespace attn {

template <int D>
struct Sm80Tile {
  static constexpr int BM = 128;
  static constexpr int BN = 64;
  static constexpr int kThreads = 256;
  // Q tile, then two stages of K and two of V.
  static constexpr int kSmemBytes = (BM * D + 4 * BN * D) * 2;
};

template <typename T, int D, FwdMode M>
__global__ void __launch_bounds__(256, 1) attnFwdSm80(const FwdArgs a) {
  using Cfg = Sm80Tile<D>;
  constexpr int BM = Cfg::BM, BN = Cfg::BN, NT = Cfg::kThreads;
  constexpr int NS = BN / 8, NO = D / 8;
  extern __shared__ __align__(128) uint8_t smemRaw[];
  T* sQ = reinterpret_cast<T*>(smemRaw);
  T* sK = sQ + BM * D;
  T* sV = sK + 2 * BN * D;

  Job job;
  if (!decodeJob<M, BM>(a, blockIdx.x, D, job)) return;
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const T* q = static_cast<const T*>(a.q);
  const T* kBase = static_cast<const T*>(a.k) + job.kvBase;
  const T* vBase = static_cast<const T*>(a.v) + job.kvBase;
  const int64_t kvStride = static_cast<int64_t>(a.numKVHeads) * D;

  loadRows<T, BM, D>(sQ, q, job.rows, tid, NT, [&](int r) { return qRowOffset<M>(a, job, r, D); });
  cpAsyncCommit();
  auto loadKV = [&](int tile, int stage) {
    const int s0 = job.keyBegin + tile * BN;
    const int valid = min(BN, job.keyEnd - s0);
    auto rowOff = [&](int r) { return keyRowOffset(a, job, s0 + r, kvStride); };
    if (a.keyRows) {
      // Paged keys: the tile's rows looked up once, for K and V.
      const int64_t looked = tileRowLookup<BN, D, NT>(valid, tid, rowOff);
      loadRowsLooked<T, BN, D, NT>(sK + stage * BN * D, kBase, valid, tid, looked);
      loadRowsLooked<T, BN, D, NT>(sV + stage * BN * D, vBase, valid, tid, looked);
    } else {
      loadRows<T, BN, D>(sK + stage * BN * D, kBase, valid, tid, NT, rowOff);
      loadRows<T, BN, D>(sV + stage * BN * D, vBase, valid, tid, NT, rowOff);
    }
  };
  const int nTiles = job.keyEnd > job.keyBegin ? (job.keyEnd - job.keyBegin + BN - 1) / BN : 0;
  if (nTiles > 0) loadKV(0, 0);
  cpAsyncCommit();

  float o[NO][4];
#pragma unroll
  for (int i = 0; i < NO; ++i) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.f;
  float m[2] = {negInf(), negInf()};
  float l[2] = {0.f, 0.f};
  int lo[2], hi[2];
  const int rowBase = warp * 16;
  rowWindow<M>(a, job, rowBase + (lane >> 2), lo[0], hi[0]);
  rowWindow<M>(a, job, rowBase + (lane >> 2) + 8, lo[1], hi[1]);

  for (int jt = 0; jt < nTiles; ++jt) {
    if (jt + 1 < nTiles) loadKV(jt + 1, (jt + 1) & 1);
    cpAsyncCommit();
    cpAsyncWait<1>();
    __syncthreads();
    const T* kS = sK + (jt & 1) * BN * D;
    const T* vS = sV + (jt & 1) * BN * D;

    float s[NS][4];
#pragma unroll
    for (int i = 0; i < NS; ++i) s[i][0] = s[i][1] = s[i][2] = s[i][3] = 0.f;
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      uint32_t aq[4];
      ldsm4(aq, smemAddr(sQ + tileOffset<BM>(rowBase + (lane & 15), 2 * kk + (lane >> 4))));
#pragma unroll
      for (int np = 0; np < BN / 16; ++np) {
        uint32_t bk[4];
        ldsm4(bk, smemAddr(kS + tileOffset<BN>(np * 16 + (lane & 7) + ((lane >> 4) << 3), 2 * kk + ((lane >> 3) & 1))));
        mma16816<T>(s[2 * np], aq, bk[0], bk[1]);
        mma16816<T>(s[2 * np + 1], aq, bk[2], bk[3]);
      }
    }
    scaleScores(s, a.scaleLog2);
    const int s0 = job.keyBegin + jt * BN;
    if (tileNeedsMask<M, BN>(a, job, s0)) applyMask(s, s0, lane, lo, hi);
    softmaxUpdate(s, o, m, l);

#pragma unroll
    for (int kk = 0; kk < BN / 16; ++kk) {
      uint32_t ap[4] = {pack2<T>(s[2 * kk][0], s[2 * kk][1]), pack2<T>(s[2 * kk][2], s[2 * kk][3]),
                        pack2<T>(s[2 * kk + 1][0], s[2 * kk + 1][1]), pack2<T>(s[2 * kk + 1][2], s[2 * kk + 1][3])};
#pragma unroll
      for (int dp = 0; dp < D / 16; ++dp) {
        uint32_t bv[4];
        ldsm4t(bv, smemAddr(vS + tileOffset<BN>(kk * 16 + (lane & 7) + (((lane >> 3) & 1) << 3), 2 * dp + (lane >> 4))));
        mma16816<T>(o[2 * dp], ap, bv[0], bv[1]);
        mma16816<T>(o[2 * dp + 1], ap, bv[2], bv[3]);
      }
    }
    __syncthreads();
  }
  // The Q tile's copy may still be in flight when no key tile was visited.
  cpAsyncWait<0>();
  __syncthreads();

  finishRowSums(l);
  if (M == FwdMode::MobaCurrent) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int i = rowBase + (lane >> 2) + 8 * r;
      mergePartials<T>(o, m[r], l[r], r, lane, entrySlots(a, job, i), a.topK - 1, static_cast<const T*>(a.partial),
                       a.partialLse, D);
    }
  }
  float inv[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    inv[r] = l[r] > 0.f ? 1.f / l[r] : 0.f;
    const int i = rowBase + (lane >> 2) + 8 * r;
    if (a.lse != nullptr && (lane & 3) == 0 && i < job.rows) {
      // No key: -inf; a NaN score (the row's output is NaN too): NaN.
      a.lse[lseIndex<M>(a, job, i)] = l[r] > 0.f ? (m[r] + __log2f(l[r])) * kLn2 : l[r] == 0.f ? negInf() : l[r];
    }
  }
  stageOutput<T, BM>(sQ, o, inv, rowBase, lane);
  __syncthreads();
  storeRows<T, BM, D>(sQ, static_cast<T*>(a.out), 0, BM, job.rows, tid, NT,
                      [&](int r) { return outRowOffset<M>(a, job, r, D); });
}

}  // namespace attn
}  // namespace moba
