// Attention forward on Hopper (sm_90a): wgmma tensor cores, warp-specialized
// and persistent.
//
// A CTA loops over work items (blockIdx.x, + gridDim.x, ...): query tiles of
// 128 rows (Dense, MobaCurrent) or tiles of gathered rows of one past block
// (MobaPast), as common/attn_job.cuh decodes them. Warpgroup 0 loads:
// cp.async into 128-byte-swizzled tiles, completion signalled on mbarriers;
// Q is double-buffered across work items and K/V run through two stages each,
// so the next item's loads overlap this item's tail and epilogue. Warpgroups
// 1 and 2 each own 64 of the tile's rows: S = Q K^T (both operands from
// shared memory), the fp32 exp2 online softmax in registers, O += P V (P from
// registers, V read transposed through its descriptor). Each consumer issues
// the next tile's S together with this tile's P V and runs the softmax while
// both are on the tensor cores; the two consumers take turns issuing (named
// barriers), so one's softmax overlaps the other's matrix work.
#pragma once
#include <type_traits>

#include "common/attn_args.h"
#include "common/attn_device.cuh"
#include "common/attn_job.cuh"
#include "common/sm90_sync.cuh"
#include "common/wgmma_ops.cuh"

namespace moba {
namespace attn {

template <int D>
struct Sm90Tile {
  static constexpr int BM = 128;
  static constexpr int BN = 128;
  static constexpr int kThreads = 384;
  static constexpr int kQBytes = BM * D * 2;   // one Q buffer
  static constexpr int kKVBytes = BN * D * 2;  // one stage of K or of V
  static constexpr int kBarBytes = 256;  // 12 mbarriers, then the two job slots
  // Two Q buffers, two K and two V stages, barriers, slack to align to 1024.
  static constexpr int kSmemBytes = 2 * kQBytes + 4 * kKVBytes + kBarBytes + 1024;
};

// S = Q K^T for one warpgroup: 64 rows of Q (K-major, at qAddr) against a
// 128-key tile of K (K-major, at kAddr), D/16 k-steps of 16.
template <typename T, int D, int BM, int BN>
__device__ __forceinline__ void issueScores(float (&s)[BN / 8][4], uint32_t qAddr, uint32_t kAddr) {
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk) {
    const uint64_t dq = wgmmaDesc(qAddr + (kk >> 2) * (BM * 128) + (kk & 3) * 32, 16, 1024);
    const uint64_t dk = wgmmaDesc(kAddr + (kk >> 2) * (BN * 128) + (kk & 3) * 32, 16, 1024);
    wgmmaSS<T, 0>(s, dq, dk, kk > 0 ? 1 : 0);
  }
}

// O += P V: P (registers, bf16/f16 A fragments) against a 128-key tile of V,
// read MN-major (transposed) through the descriptor: 8-key groups 1024 bytes
// apart, 64-column halves BN * 128 bytes apart.
template <typename T, int D, int BN>
__device__ __forceinline__ void issueValues(float (&o)[D / 8][4], const uint32_t (&p)[BN / 16][4], uint32_t vAddr) {
#pragma unroll
  for (int kk = 0; kk < BN / 16; ++kk) {
    const uint64_t dv = wgmmaDesc(vAddr + kk * 16 * 128, BN * 128, 1024);
    wgmmaRS<T, 1>(o, p[kk], dv, 1);
  }
}

template <typename T, int NS>
__device__ __forceinline__ void packProbs(uint32_t (&p)[NS / 2][4], const float (&s)[NS][4]) {
#pragma unroll
  for (int kk = 0; kk < NS / 2; ++kk) {
    p[kk][0] = pack2<T>(s[2 * kk][0], s[2 * kk][1]);
    p[kk][1] = pack2<T>(s[2 * kk][2], s[2 * kk][3]);
    p[kk][2] = pack2<T>(s[2 * kk + 1][0], s[2 * kk + 1][1]);
    p[kk][3] = pack2<T>(s[2 * kk + 1][2], s[2 * kk + 1][3]);
  }
}

template <typename T, int D, FwdMode M>
__global__ void __launch_bounds__(384, 1) attnFwdSm90(const FwdArgs a) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  using Cfg = Sm90Tile<D>;
  constexpr int BM = Cfg::BM, BN = Cfg::BN;
  constexpr int NS = BN / 8, NO = D / 8;
  extern __shared__ uint8_t smemRaw[];
  // wgmma's 128-byte swizzle repeats every 1024 bytes: align the tiles to it.
  const uint32_t rawAddr = smemAddr(smemRaw);
  uint8_t* smem = smemRaw + ((1024 - (rawAddr & 1023)) & 1023);
  T* sQ = reinterpret_cast<T*>(smem);  // [2][BM * D]
  T* sK = reinterpret_cast<T*>(smem + 2 * Cfg::kQBytes);
  T* sV = reinterpret_cast<T*>(smem + 2 * Cfg::kQBytes + 2 * Cfg::kKVBytes);
  const uint32_t bars = smemAddr(smem + 2 * Cfg::kQBytes + 4 * Cfg::kKVBytes);
  auto qFull = [&](int b) { return bars + 8 * (0 + b); };
  auto qEmpty = [&](int b) { return bars + 8 * (2 + b); };
  auto kFull = [&](int s) { return bars + 8 * (4 + s); };
  auto vFull = [&](int s) { return bars + 8 * (6 + s); };
  auto kEmpty = [&](int s) { return bars + 8 * (8 + s); };
  auto vEmpty = [&](int s) { return bars + 8 * (10 + s); };
  // The producer decodes each work item once and hands it to the consumers
  // with its Q buffer (rows == 0: no more work).
  Job* jobs = reinterpret_cast<Job*>(smem + 2 * Cfg::kQBytes + 4 * Cfg::kKVBytes + 128);

  const int tid = threadIdx.x;
  const int wg = tid >> 7;
  if (tid == 0) {
    for (int b = 0; b < 2; ++b) {
      mbarInit(qFull(b), 129);  // 128 producer threads' copies + the job
      mbarInit(qEmpty(b), 256);
      mbarInit(kFull(b), 128);
      mbarInit(vFull(b), 128);
      mbarInit(kEmpty(b), 256);
      mbarInit(vEmpty(b), 256);
    }
  }
  __syncthreads();
  auto nextItem = [&](int64_t item, Job& job) {
    return item < 0x7fffffff && decodeJob<M, BM>(a, static_cast<int>(item), D, job);
  };
  auto tilesOf = [&](const Job& job) {
    return job.keyEnd > job.keyBegin ? (job.keyEnd - job.keyBegin + BN - 1) / BN : 0;
  };

  if (wg == 0) {
    // Producer warpgroup: every thread copies a share of each tile.
    setMaxRegsDec<40>();
    const T* q = static_cast<const T*>(a.q);
    const int64_t kvStride = static_cast<int64_t>(a.numKVHeads) * D;
    // One loop for contiguous K/V and one for paged keys, chosen once: the
    // contiguous loop stays as lean as it is without paging.
    auto produce = [&](auto pagedTag) {
      constexpr bool kPaged = decltype(pagedTag)::value;
      int g = 0;  // key tiles loaded so far, over all items
      for (int64_t item = blockIdx.x, it = 0;; item += gridDim.x, ++it) {
        Job job;
        const bool more = nextItem(item, job);
        const int qb = static_cast<int>(it & 1);
        if (it >= 2) mbarWait(qEmpty(qb), ((it >> 1) - 1) & 1);
        if (more) {
          loadRows<T, BM, D>(sQ + qb * BM * D, q, job.rows, tid, 128, [&](int r) { return qRowOffset<M>(a, job, r, D); });
        }
        mbarArriveCpAsync(qFull(qb));
        if (tid == 0) {
          if (!more) job.rows = 0;
          jobs[qb] = job;
          mbarArrive(qFull(qb));
        }
        if (!more) break;
        const T* kBase = static_cast<const T*>(a.k) + job.kvBase;
        const T* vBase = static_cast<const T*>(a.v) + job.kvBase;
        const int n = tilesOf(job);
        for (int jt = 0; jt < n; ++jt, ++g) {
          const int st = g & 1;
          const int s0 = job.keyBegin + jt * BN;
          const int valid = min(BN, job.keyEnd - s0);
          auto copy = [&](T* tile, const T* base) {
            if constexpr (kPaged) {
              // The tile's rows looked up (for K, then again for V: the
              // producer's 40 registers hold no offsets across a wait).
              const int64_t looked =
                  tileRowLookup<BN, D, 128>(valid, tid, [&](int r) { return keyRowOffset(a, job, s0 + r, kvStride); });
              loadRowsLooked<T, BN, D, 128>(tile, base, valid, tid, looked);
            } else {
              loadRows<T, BN, D>(tile, base, valid, tid, 128,
                                 [&](int r) { return static_cast<int64_t>(s0 + r) * kvStride; });
            }
          };
          if (g >= 2) mbarWait(kEmpty(st), ((g >> 1) - 1) & 1);
          copy(sK + st * BN * D, kBase);
          mbarArriveCpAsync(kFull(st));
          if (g >= 2) mbarWait(vEmpty(st), ((g >> 1) - 1) & 1);
          copy(sV + st * BN * D, vBase);
          mbarArriveCpAsync(vFull(st));
        }
      }
    };
    if (a.keyRows) {
      produce(std::true_type{});
    } else {
      produce(std::false_type{});
    }
    asm volatile("cp.async.wait_all;\n" ::: "memory");
  } else {
    // Consumer warpgroups.
    setMaxRegsInc<232>();
    const int c = wg - 1;
    const int ctid = tid - 128 * wg;
    const int warp = ctid >> 5, lane = ctid & 31;
    const int rowBase = 64 * c + 16 * warp;  // this warp's 16 rows of the tile
    const uint32_t kAddr = smemAddr(sK);
    const uint32_t vAddr = smemAddr(sV);
    // Turns alternate 1, 2, 1, 2, ...: warpgroup 2 opens the first turn, and
    // warpgroup 1 takes the last arrival of warpgroup 2 after the loop.
    if (c == 1) namedBarArrive(1, 256);
    auto turnBegin = [&] { namedBarSync(1 + c, 256); };
    auto turnEnd = [&] { namedBarArrive(2 - c, 256); };

    int g = 0;  // key tiles consumed so far, over all items
    for (int it = 0;; ++it) {
      const int qb = it & 1;
      mbarWait(qFull(qb), (it >> 1) & 1);
      const Job job = jobs[qb];
      if (job.rows <= 0) break;
      T* sQb = sQ + qb * BM * D;
      const uint32_t qAddr = smemAddr(sQb) + c * 64 * 128;
      float o[NO][4];
#pragma unroll
      for (int i = 0; i < NO; ++i) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.f;
      float m[2] = {negInf(), negInf()};
      float l[2] = {0.f, 0.f};
      int lo[2], hi[2];
      rowWindow<M>(a, job, rowBase + (lane >> 2), lo[0], hi[0]);
      rowWindow<M>(a, job, rowBase + (lane >> 2) + 8, lo[1], hi[1]);
      const int n = tilesOf(job);
      if (n > 0) {
        float s[NS][4];
        uint32_t p[NS / 2][4];
        float corr[2];
        // First tile's scores.
        {
          const int st = g & 1;
          mbarWait(kFull(st), (g >> 1) & 1);
          fenceProxyAsync();
          turnBegin();
          wgmmaFence();
          issueScores<T, D, BM, BN>(s, qAddr, kAddr + st * Cfg::kKVBytes);
          wgmmaCommit();
          turnEnd();
          wgmmaWait<0>();
          fenceRegs(s);
          mbarArrive(kEmpty(st));
          scaleScores(s, a.scaleLog2);
          if (tileNeedsMask<M, BN>(a, job, job.keyBegin)) applyMask(s, job.keyBegin, lane, lo, hi);
          softmaxTile(s, m, l, corr);
          packProbs<T>(p, s);
        }
        // Steady state: the next tile's S and this tile's P V go to the
        // tensor cores together; the next softmax runs while P V computes.
        for (int jt = 0; jt + 1 < n; ++jt) {
          const int gc = g + jt, stc = gc & 1;
          const int gn = gc + 1, stn = gn & 1;
          mbarWait(kFull(stn), (gn >> 1) & 1);
          mbarWait(vFull(stc), (gc >> 1) & 1);
          fenceProxyAsync();
          turnBegin();
          wgmmaFence();
          issueScores<T, D, BM, BN>(s, qAddr, kAddr + stn * Cfg::kKVBytes);
          wgmmaCommit();
          issueValues<T, D, BN>(o, p, vAddr + stc * Cfg::kKVBytes);
          wgmmaCommit();
          turnEnd();
          wgmmaWait<1>();
          fenceRegs(s);
          mbarArrive(kEmpty(stn));
          scaleScores(s, a.scaleLog2);
          const int s0 = job.keyBegin + (jt + 1) * BN;
          if (tileNeedsMask<M, BN>(a, job, s0)) applyMask(s, s0, lane, lo, hi);
          softmaxTile(s, m, l, corr);
          wgmmaWait<0>();
          fenceRegs(o);
          fenceRegs(p);
          mbarArrive(vEmpty(stc));
          rescaleRows(o, corr);
          packProbs<T>(p, s);
        }
        // Last tile: P V alone.
        {
          const int gc = g + n - 1, stc = gc & 1;
          mbarWait(vFull(stc), (gc >> 1) & 1);
          fenceProxyAsync();
          turnBegin();
          wgmmaFence();
          issueValues<T, D, BN>(o, p, vAddr + stc * Cfg::kKVBytes);
          wgmmaCommit();
          turnEnd();
          wgmmaWait<0>();
          fenceRegs(o);
          fenceRegs(p);
          mbarArrive(vEmpty(stc));
        }
        g += n;
      }

      finishRowSums(l);
      if (M == FwdMode::MobaCurrent) {
#pragma unroll
        for (int r = 0; r < 2; ++r) {
          const int i = rowBase + (lane >> 2) + 8 * r;
          mergePartials<T>(o, m[r], l[r], r, lane, entrySlots(a, job, i), a.topK - 1,
                           static_cast<const T*>(a.partial), a.partialLse, D);
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
      // This warpgroup's Q rows become its output staging area (wgmma read
      // them through the async proxy), then go back to the producer.
      fenceProxyAsync();
      namedBarSync(3 + c, 128);
      stageOutput<T, BM>(sQb, o, inv, rowBase, lane);
      namedBarSync(3 + c, 128);
      storeRows<T, BM, D>(sQb, static_cast<T*>(a.out), 64 * c, 64, job.rows, ctid, 128,
                          [&](int r) { return outRowOffset<M>(a, job, r, D); });
      mbarArrive(qEmpty(qb));
    }
    if (c == 0) namedBarSync(1, 256);
  }
#endif
}

}  // namespace attn
}  // namespace moba
