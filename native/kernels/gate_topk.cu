// Gate scores and top-(k-1) selection, fused: the [tokens x blocks] score
// matrix never reaches global memory.
//
// Fast kernel (topK <= 16). A CTA owns up to 128 (64) consecutive query rows
// of one sequence and one query head. The rows' q tile stays in registers as
// MMA A fragments; centroid tiles (64 blocks, rounded to the input dtype)
// stream through shared memory (cp.async, three stages), and mma.sync gives
// fp32 scores. Each thread sees every fourth pair of blocks of its rows and
// keeps, per row, a list of its best KL scores in registers (insertion only
// when a score beats the list's minimum).
//
// Exactness. The tensor-core score a_j differs from the exact fp32 score s_j
// (CPU summation order) by at most eps = ||q|| * E + ||q_subnormal|| * C
// (E, C from gate_centroids.cu: rounding of the centroid to 16 bits plus
// accumulation error; subnormal q values may be flushed by the tensor cores).
// With T the (k-1)-th best a and L = T - 2 eps, every block of the exact
// top-(k-1) has a >= L. The quad's lists are merged into the band of blocks
// with a >= L; if it holds exactly k-1 blocks the choice is certain. Else the
// blocks that can still change places are re-scored exactly and ranked by the
// exact scores. A row goes to the exact kernel when its band may hold blocks
// no list kept, when it has more than KL + 4 band blocks, or when its q or
// centroids are non-finite or huge.
//
// Exact kernel. One warp per (head, row): exact fp32 scores of all past
// blocks (lanes take every 32nd block), a sorted per-lane list in shared
// memory, then a warp-wide merge. Handles any topK and any data (NaN ranks
// lowest, ties to the lower index), at the cost of reading every past
// centroid per row.
#include <climits>

#include "gate_device.cuh"
#include "gate_internal.h"
#include "common/cuda_context.h"

namespace moba {
namespace {

using namespace gate;

constexpr unsigned kFull = 0xffffffffu;

template <int D, int KL, int MT>
struct FastCfg {
  static constexpr int kWarps = 4;
  static constexpr int kThreads = kWarps * 32;
  static constexpr int kRows = kWarps * MT * 16;
  static constexpr int kBN = 64;  // centroids per shared-memory tile
  static constexpr int kStages = 3;
  static constexpr int kMcap = KL + 4;  // band entries a row may keep
  static constexpr int kQBytes = kRows * D * 2;
  static constexpr int kStageBytes = kBN * D * 2;
  static constexpr int kSmemBytes = kQBytes + kStages * kStageBytes;
  static_assert(kRows * kMcap * 8 <= kStages * kStageBytes, "band buffers overlay the centroid stages");
};

// Higher score first, ties to the lower index; used where scores are finite
// or -inf (the fast kernel's certified rows).
__device__ __forceinline__ bool better(float sa, int ia, float sb, int ib) {
  return sa > sb || (sa == sb && ia < ib);
}

// Inserts (s, j) into a list sorted best first, dropping the last entry.
// Every index is a compile-time constant (a select chain rather than a
// computed slot), so the lists stay in registers.
template <int KL>
__device__ __forceinline__ void insertSorted(float (&ls)[KL], int (&li)[KL], float s, int j) {
#pragma unroll
  for (int k = 0; k < KL; ++k) {
    const bool above = better(s, j, ls[k], li[k]);
    const float ts = above ? ls[k] : s;
    const int ti = above ? li[k] : j;
    ls[k] = above ? s : ls[k];
    li[k] = above ? j : li[k];
    s = ts;
    j = ti;
  }
}

template <typename T, int D>
__device__ __forceinline__ float exactDotSmemQ(const uint16_t* qs, int row, const float* __restrict__ c) {
  float s[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
#pragma unroll 4
  for (int ch = 0; ch < D / 8; ++ch) {
    uint4 v = *reinterpret_cast<const uint4*>(qs + swz<D>(row, ch) * 8);
    const uint16_t* q = reinterpret_cast<const uint16_t*>(&v);
    float4 c0 = *reinterpret_cast<const float4*>(c + ch * 8);
    float4 c1 = *reinterpret_cast<const float4*>(c + ch * 8 + 4);
    const float cv[8] = {c0.x, c0.y, c0.z, c0.w, c1.x, c1.y, c1.z, c1.w};
#pragma unroll
    for (int e = 0; e < 8; ++e) s[e] = __fadd_rn(s[e], __fmul_rn(T::toFloat(q[e]), cv[e]));
  }
  return __fadd_rn(__fadd_rn(__fadd_rn(s[0], s[1]), __fadd_rn(s[2], s[3])),
                   __fadd_rn(__fadd_rn(s[4], s[5]), __fadd_rn(s[6], s[7])));
}

// Writes the trivial selection of a query with c <= topK-1 past blocks: all of them.
__device__ __forceinline__ void writeAllPast(int32_t* out, int c, int topK, int from, int step) {
  for (int m = from; m < topK; m += step) out[m] = m <= c ? m : -1;
}

template <typename T, int D, int KL, int MT>
__global__ void __launch_bounds__(FastCfg<D, KL, MT>::kThreads, 2) fastKernel(GateArgs a) {
  using C = FastCfg<D, KL, MT>;
  constexpr int kRows = C::kRows, kBN = C::kBN, kStages = C::kStages, kMcap = C::kMcap;
  extern __shared__ __align__(128) uint8_t smem[];
  uint16_t* qs = reinterpret_cast<uint16_t*>(smem);
  uint16_t* cs = reinterpret_cast<uint16_t*>(smem + C::kQBytes);
  // After the main loop the stages hold the merged bands.
  float* bandS = reinterpret_cast<float*>(smem + C::kQBytes);
  int* bandI = reinterpret_cast<int*>(smem + C::kQBytes + kRows * kMcap * 4);
  __shared__ int rowState[kRows];  // band size, or -1: hand to the exact kernel
  __shared__ float rowEps[kRows];

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int g = lane >> 2, tq = lane & 3;
  const int b = a.tiles[2 * blockIdx.x];
  const int local0 = a.tiles[2 * blockIdx.x + 1];
  const int h = blockIdx.y;
  const int qBegin = a.cuQ[b];
  const int lq = a.cuQ[b + 1] - qBegin;
  const int lk = a.cuK[b + 1] - a.cuK[b];
  const int nRows = min(kRows, lq - local0);
  const int row0 = qBegin + local0;
  const int pos0 = lk - lq + local0;
  const int B = a.chunkSize;
  const int keepMax = a.topK - 1;
  const int kvh = h / a.group;
  const int pLast = (pos0 + nRows - 1) / B;
  const int numCTiles = pLast > keepMax ? (pLast + kBN - 1) / kBN : 0;

  if (numCTiles > 0) {
    const size_t qRowStride = static_cast<size_t>(a.nqh) * D;
    const uint16_t* qBase = static_cast<const uint16_t*>(a.q) + static_cast<size_t>(row0) * qRowStride +
                            static_cast<size_t>(h) * D;
    const int blockBase = a.cuBlocks[b];
    const size_t hiStride = static_cast<size_t>(a.nkvh) * D;
    const uint16_t* hiBase = static_cast<const uint16_t*>(a.hi) + (static_cast<size_t>(blockBase) * a.nkvh + kvh) * D;

    for (int i = tid; i < kRows * (D / 8); i += C::kThreads) {
      int r = i / (D / 8), ch = i % (D / 8);
      bool valid = r < nRows;
      cpAsync16(smemAddr(qs + swz<D>(r, ch) * 8), qBase + (valid ? static_cast<size_t>(r) * qRowStride + ch * 8 : 0),
                valid);
    }
    cpAsyncCommit();
    auto loadTile = [&](int t) {
      if (t < numCTiles) {
        uint16_t* st = cs + (t % kStages) * kBN * D;
        const int j0 = t * kBN;
        for (int i = tid; i < kBN * (D / 8); i += C::kThreads) {
          int r = i / (D / 8), ch = i % (D / 8);
          bool valid = j0 + r < pLast;
          cpAsync16(smemAddr(st + swz<D>(r, ch) * 8), hiBase + (valid ? (j0 + r) * hiStride + ch * 8 : 0), valid);
        }
      }
      cpAsyncCommit();
    };
#pragma unroll
    for (int s = 0; s < kStages - 1; ++s) loadTile(s);

    // Per-thread rows: (mt, hf) -> local row warp*MT*16 + mt*16 + g + 8*hf.
    int P[MT][2];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int hf = 0; hf < 2; ++hf) {
        int lr = warp * MT * 16 + mt * 16 + g + 8 * hf;
        P[mt][hf] = lr < nRows ? (pos0 + lr) / B : 0;
      }
    int warpPmax = 0;
    {
      int lastRow = min(warp * MT * 16 + MT * 16, nRows) - 1;
      if (lastRow >= warp * MT * 16) warpPmax = (pos0 + lastRow) / B;
      if (warpPmax <= keepMax) warpPmax = 0;  // every row of this warp keeps all its past blocks
    }

    cpAsyncWait<kStages - 1>();  // the q tile
    __syncthreads();
    uint32_t qa[MT][D / 16][4];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int ks = 0; ks < D / 16; ++ks) {
        int r = warp * MT * 16 + mt * 16 + (lane & 15);
        int ch = ks * 2 + (lane >> 4);
        ldmatrixX4(smemAddr(qs + swz<D>(r, ch) * 8), qa[mt][ks][0], qa[mt][ks][1], qa[mt][ks][2], qa[mt][ks][3]);
      }

    // Error bound of each row's tensor-core scores (see the file comment).
    float eps[MT][2];
    bool bad[MT][2];
    {
      const float E = __uint_as_float(a.stats[(static_cast<size_t>(b) * a.nkvh + kvh) * 2]);
      const float Cn = __uint_as_float(a.stats[(static_cast<size_t>(b) * a.nkvh + kvh) * 2 + 1]);
#pragma unroll
      for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int hf = 0; hf < 2; ++hf) {
          double q2 = 0, sub2 = 0;
#pragma unroll
          for (int ks = 0; ks < D / 16; ++ks)
#pragma unroll
            for (int part = 0; part < 2; ++part) {
              uint32_t u = qa[mt][ks][hf + 2 * part];
#pragma unroll
              for (int e = 0; e < 2; ++e) {
                double v = T::toFloat(static_cast<uint16_t>(u >> (16 * e)));
                q2 += v * v;
                if (v != 0 && fabs(v) < T::kMinNormal) sub2 += v * v;
              }
            }
          q2 += __shfl_xor_sync(kFull, q2, 1);
          q2 += __shfl_xor_sync(kFull, q2, 2);
          sub2 += __shfl_xor_sync(kFull, sub2, 1);
          sub2 += __shfl_xor_sync(kFull, sub2, 2);
          double qn = sqrt(q2);
          bool ok = qn <= 1e30 && E <= 3e38f && Cn <= 3e38f && qn * Cn < 1e36;
          double bound = (qn * E + sqrt(sub2) * Cn) * (1.0 + 1.0 / 256) + 7.888609052210118e-31;  // + 2^-100
          eps[mt][hf] = ok ? __double2float_ru(bound) : 0.f;
          bad[mt][hf] = !ok;
        }
    }

    // Per row: this thread's best KL blocks so far, sorted best first;
    // (-inf, INT_MAX) marks an empty slot.
    float ls[MT][2][KL];
    int li[MT][2][KL];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int hf = 0; hf < 2; ++hf)
#pragma unroll
        for (int k = 0; k < KL; ++k) {
          ls[mt][hf][k] = -INFINITY;
          li[mt][hf][k] = INT_MAX;
        }

    for (int t = 0; t < numCTiles; ++t) {
      cpAsyncWait<kStages - 2>();
      __syncthreads();
      loadTile(t + kStages - 1);
      const uint16_t* st = cs + (t % kStages) * kBN * D;
      const int j0 = t * kBN;
#pragma unroll
      for (int nh = 0; nh < 2; ++nh) {
        const int jh = j0 + nh * 32;
        if (jh >= warpPmax) break;  // warp-uniform
        float acc[MT][4][4];
#pragma unroll
        for (int mt = 0; mt < MT; ++mt)
#pragma unroll
          for (int n8 = 0; n8 < 4; ++n8)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[mt][n8][e] = 0.f;
#pragma unroll
        for (int ks = 0; ks < D / 16; ++ks) {
          uint32_t bf[4][2];
#pragma unroll
          for (int p = 0; p < 2; ++p) {
            int n = nh * 32 + p * 16 + (lane >> 4) * 8 + (lane & 7);
            int ch = ks * 2 + ((lane >> 3) & 1);
            ldmatrixX4(smemAddr(st + swz<D>(n, ch) * 8), bf[2 * p][0], bf[2 * p][1], bf[2 * p + 1][0],
                       bf[2 * p + 1][1]);
          }
#pragma unroll
          for (int mt = 0; mt < MT; ++mt)
#pragma unroll
            for (int n8 = 0; n8 < 4; ++n8) mma16816<T>(acc[mt][n8], qa[mt][ks], bf[n8][0], bf[n8][1]);
        }
        // Blocks are visited in ascending order per thread, so a later block
        // with an equal score ranks lower: strict > keeps the tie rule.
#pragma unroll
        for (int mt = 0; mt < MT; ++mt)
#pragma unroll
          for (int hf = 0; hf < 2; ++hf)
#pragma unroll
            for (int n8 = 0; n8 < 4; ++n8)
#pragma unroll
              for (int e = 0; e < 2; ++e) {
                const int j = jh + n8 * 8 + 2 * tq + e;
                const float s = acc[mt][n8][2 * hf + e];
                if (j < P[mt][hf] && s > ls[mt][hf][KL - 1]) insertSorted<KL>(ls[mt][hf], li[mt][hf], s, j);
              }
      }
    }
    cpAsyncWait<0>();
    __syncthreads();  // the stages become band buffers

    // Merge the quad's four lists of each row into its band.
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int hf = 0; hf < 2; ++hf) {
        const int lr = warp * MT * 16 + mt * 16 + g + 8 * hf;
        const int p = P[mt][hf];
        const int keep = min(keepMax, p);
        // Blocks this thread saw (j < p with j % 8 in {2tq, 2tq+1}); if more
        // than KL, blocks it dropped score at most its list's minimum.
        const int seen = (p >> 3) * 2 + min(max((p & 7) - 2 * tq, 0), 2);
        float wm = seen > KL ? ls[mt][hf][KL - 1] : -INFINITY;
        wm = fmaxf(wm, __shfl_xor_sync(kFull, wm, 1));
        wm = fmaxf(wm, __shfl_xor_sync(kFull, wm, 2));
        bool active = lr < nRows && p > keepMax && !bad[mt][hf];
        bool overflow = false;
        int n = 0;
        float L = -INFINITY;
        while (__any_sync(kFull, active)) {
          float s = ls[mt][hf][0];
          int i = li[mt][hf][0];
#pragma unroll
          for (int off = 1; off <= 2; off <<= 1) {
            float s2 = __shfl_xor_sync(kFull, s, off);
            int i2 = __shfl_xor_sync(kFull, i, off);
            if (better(s2, i2, s, i)) {
              s = s2;
              i = i2;
            }
          }
          if (active) {
            bool take = n < keep || s >= L;
            if (take && n == kMcap) {
              overflow = true;
              active = false;
            } else if (take) {
              if (tq == 0) {
                bandS[lr * kMcap + n] = s;
                bandI[lr * kMcap + n] = i;
              }
              ++n;
              if (n == keep) L = __fsub_rd(s, 2.f * eps[mt][hf]);
              if (li[mt][hf][0] == i) {  // this thread's list supplied the block
#pragma unroll
                for (int k = 0; k + 1 < KL; ++k) {
                  ls[mt][hf][k] = ls[mt][hf][k + 1];
                  li[mt][hf][k] = li[mt][hf][k + 1];
                }
                ls[mt][hf][KL - 1] = -INFINITY;
                li[mt][hf][KL - 1] = INT_MAX;
              }
            } else {
              active = false;
            }
          }
        }
        if (tq == 0 && lr < nRows && p > keepMax) {
          bool handOff = bad[mt][hf] || overflow || wm >= L;
          rowState[lr] = handOff ? -1 : n;
          rowEps[lr] = eps[mt][hf];
        }
      }
    __syncthreads();
  }

  // One thread per row: certify, re-score what is contested, write.
  if (tid < nRows) {
    const int lr = tid;
    const int row = row0 + lr;
    const int c = (pos0 + lr) / B;
    int32_t* out = a.indices + (static_cast<size_t>(h) * a.totalQ + row) * a.topK;
    if (c <= keepMax) {
      writeAllPast(out, c, a.topK, 0, 1);
    } else if (rowState[lr] < 0) {
      int slot = atomicAdd(a.fallbackCount, 1);
      a.fallback[slot] = h * a.totalQ + row;
    } else {
      const int keep = keepMax;
      const int nb = rowState[lr];
      float* bs = bandS + lr * kMcap;
      int* bi = bandI + lr * kMcap;
      if (nb > keep) {
        const float twoEps = 2.f * rowEps[lr];
        // Entries that at most keep-1 others could outrank are certain.
        int nc = 0;
        for (; nc < keep; ++nc) {
          const float thr = __fsub_rd(bs[nc], twoEps);
          int rivals = 0;
          for (int m = 0; m < nb; ++m) rivals += bs[m] >= thr;
          if (rivals > keep) break;
        }
        const float* cent = a.cent + (static_cast<size_t>(a.cuBlocks[b]) * a.nkvh + kvh) * D;
        const size_t cStride = static_cast<size_t>(a.nkvh) * D;
        for (int m = nc; m < nb; ++m) bs[m] = exactDotSmemQ<T, D>(qs, lr, cent + bi[m] * cStride);
        for (int r = nc; r < keep; ++r) {
          int best = r;
          for (int m = r + 1; m < nb; ++m)
            if (ranksAbove(bs[m], bi[m], bs[best], bi[best])) best = m;
          float ts = bs[r];
          int ti = bi[r];
          bs[r] = bs[best];
          bi[r] = bi[best];
          bs[best] = ts;
          bi[best] = ti;
        }
      }
      for (int x = 1; x < keep; ++x) {  // ascending block order
        int v = bi[x], y = x - 1;
        while (y >= 0 && bi[y] > v) {
          bi[y + 1] = bi[y];
          --y;
        }
        bi[y + 1] = v;
      }
      for (int m = 0; m < keep; ++m) out[m] = bi[m];
      out[keep] = c;
      for (int m = keep + 1; m < a.topK; ++m) out[m] = -1;
    }
  }
}

// ---- exact kernel ----------------------------------------------------------

template <typename T, int D>
__global__ void __launch_bounds__(128) exactKernel(GateArgs a, int allRows, int keepCap) {
  extern __shared__ __align__(128) uint8_t smem[];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int warpsPerCta = blockDim.x >> 5;
  const size_t perWarp = static_cast<size_t>(D) * 4 + static_cast<size_t>(keepCap) * 32 * 8 + keepCap * 4;
  uint8_t* base = smem + warp * ((perWarp + 15) / 16 * 16);
  float* qf = reinterpret_cast<float*>(base);
  float* ls = qf + D;                                  // [keepCap][32]
  int* li = reinterpret_cast<int*>(ls + keepCap * 32);  // [keepCap][32]
  int* sel = li + keepCap * 32;                        // [keepCap]

  const int64_t items = allRows ? static_cast<int64_t>(a.nqh) * a.totalQ : *a.fallbackCount;
  const int keepMax = a.topK - 1;
  for (int64_t w = static_cast<int64_t>(blockIdx.x) * warpsPerCta + warp; w < items;
       w += static_cast<int64_t>(gridDim.x) * warpsPerCta) {
    const int item = allRows ? static_cast<int>(w) : a.fallback[w];
    const int h = item / a.totalQ, row = item % a.totalQ;
    const int b = sequenceOf(a.cuQ, a.batch, row);
    const int lq = a.cuQ[b + 1] - a.cuQ[b];
    const int lk = a.cuK[b + 1] - a.cuK[b];
    const int c = (lk - lq + row - a.cuQ[b]) / a.chunkSize;
    int32_t* out = a.indices + static_cast<size_t>(item) * a.topK;
    if (keepMax == 0) {
      if (lane == 0) out[0] = c;
      continue;
    }
    if (c <= keepMax) {
      writeAllPast(out, c, a.topK, lane, 32);
      continue;
    }
    const int keep = keepMax;
    const uint16_t* qrow = static_cast<const uint16_t*>(a.q) + (static_cast<size_t>(row) * a.nqh + h) * D;
    for (int d = lane; d < D; d += 32) qf[d] = T::toFloat(qrow[d]);
    __syncwarp();
    const int kvh = h / a.group;
    const size_t cStride = static_cast<size_t>(a.nkvh) * D;
    const float* cent = a.cent + (static_cast<size_t>(a.cuBlocks[b]) * a.nkvh + kvh) * D;
    int cnt = 0;
    for (int j = lane; j < c; j += 32) {
      const float s = exactDot<D>(qf, cent + j * cStride);
      if (cnt < keep || ranksAbove(s, j, ls[(cnt - 1) * 32 + lane], li[(cnt - 1) * 32 + lane])) {
        int p = cnt < keep ? cnt : keep - 1;
        while (p > 0 && ranksAbove(s, j, ls[(p - 1) * 32 + lane], li[(p - 1) * 32 + lane])) {
          ls[p * 32 + lane] = ls[(p - 1) * 32 + lane];
          li[p * 32 + lane] = li[(p - 1) * 32 + lane];
          --p;
        }
        ls[p * 32 + lane] = s;
        li[p * 32 + lane] = j;
        if (cnt < keep) ++cnt;
      }
    }
    int ptr = 0;
    for (int r = 0; r < keep; ++r) {
      float s = ptr < cnt ? ls[ptr * 32 + lane] : __int_as_float(0x7fc00000);
      int i = ptr < cnt ? li[ptr * 32 + lane] : INT_MAX;
#pragma unroll
      for (int off = 16; off > 0; off >>= 1) {
        float s2 = __shfl_xor_sync(kFull, s, off);
        int i2 = __shfl_xor_sync(kFull, i, off);
        if (ranksAbove(s2, i2, s, i)) {
          s = s2;
          i = i2;
        }
      }
      if (ptr < cnt && li[ptr * 32 + lane] == i) ++ptr;
      if (lane == 0) sel[r] = i;
    }
    __syncwarp();
    for (int e = lane; e < keep; e += 32) {  // rank sort: block indices are distinct
      const int v = sel[e];
      int rank = 0;
      for (int x = 0; x < keep; ++x) rank += sel[x] < v;
      out[rank] = v;
    }
    for (int m = keep + lane; m < a.topK; m += 32) out[m] = m == keep ? c : -1;
    __syncwarp();  // qf and sel are rewritten by the next item
  }
}

template <typename T, int D, int KL, int MT>
Status launchFastTyped(const GateArgs& a, int numTiles, cudaStream_t stream) {
  using C = FastCfg<D, KL, MT>;
  auto kernel = fastKernel<T, D, KL, MT>;
  MOBA_RETURN_IF_ERROR(cudaStatus(
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, C::kSmemBytes), "gate smem limit"));
  dim3 grid(static_cast<unsigned>(numTiles), static_cast<unsigned>(a.nqh));
  kernel<<<grid, C::kThreads, C::kSmemBytes, stream>>>(a);
  return checkLaunch("gate scores");
}

template <typename T, int D>
Status launchFastDim(const GateArgs& a, int listCap, int numTiles, cudaStream_t stream) {
  switch (listCap) {
    case 4: return launchFastTyped<T, D, 4, 2>(a, numTiles, stream);
    case 8: return launchFastTyped<T, D, 8, 2>(a, numTiles, stream);
    case 16: return launchFastTyped<T, D, 16, 1>(a, numTiles, stream);
    default: return Status::Invalid("unsupported gate list size: " + std::to_string(listCap));
  }
}

template <typename T>
Status launchFastT(const GateArgs& a, int listCap, int numTiles, cudaStream_t stream) {
  switch (a.headDim) {
    case 64: return launchFastDim<T, 64>(a, listCap, numTiles, stream);
    case 128: return launchFastDim<T, 128>(a, listCap, numTiles, stream);
    default: return Status::Invalid("unsupported head_dim: " + std::to_string(a.headDim));
  }
}

template <typename T, int D>
Status launchExactDim(const GateArgs& a, bool allRows, int smCount, cudaStream_t stream) {
  const int keepCap = a.topK - 1 > 0 ? a.topK - 1 : 1;
  const size_t perWarp = (static_cast<size_t>(D) * 4 + static_cast<size_t>(keepCap) * 32 * 8 + keepCap * 4 + 15) / 16 * 16;
  int warps = static_cast<int>((48 * 1024) / perWarp);
  warps = warps < 1 ? 1 : (warps > 4 ? 4 : warps);
  const size_t smem = perWarp * warps;
  auto kernel = exactKernel<T, D>;
  if (smem > 48 * 1024) {
    MOBA_RETURN_IF_ERROR(cudaStatus(
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)),
        "gate smem limit"));
  }
  int64_t grid = smCount * 8;
  if (allRows) {
    int64_t need = (static_cast<int64_t>(a.nqh) * a.totalQ + warps - 1) / warps;
    if (need < grid) grid = need;
  }
  if (grid < 1) grid = 1;
  kernel<<<static_cast<unsigned>(grid), warps * 32, smem, stream>>>(a, allRows ? 1 : 0, keepCap);
  return checkLaunch("gate exact");
}

template <typename T>
Status launchExactT(const GateArgs& a, bool allRows, int smCount, cudaStream_t stream) {
  switch (a.headDim) {
    case 64: return launchExactDim<T, 64>(a, allRows, smCount, stream);
    case 128: return launchExactDim<T, 128>(a, allRows, smCount, stream);
    default: return Status::Invalid("unsupported head_dim: " + std::to_string(a.headDim));
  }
}

}  // namespace

Status launchGateFast(const GateArgs& a, DType dtype, int listCap, int numTiles, cudaStream_t stream) {
  if (numTiles == 0) return Status::Ok();
  if (dtype == DType::BF16) return launchFastT<Bf16>(a, listCap, numTiles, stream);
  if (dtype == DType::F16) return launchFastT<F16>(a, listCap, numTiles, stream);
  return Status::Invalid(std::string("unsupported dtype for the CUDA gate: ") + dtypeName(dtype));
}

Status launchGateExact(const GateArgs& a, DType dtype, bool allRows, int smCount, cudaStream_t stream) {
  if (a.totalQ == 0) return Status::Ok();
  if (smCount < 1) smCount = 1;
  if (dtype == DType::BF16) return launchExactT<Bf16>(a, allRows, smCount, stream);
  if (dtype == DType::F16) return launchExactT<F16>(a, allRows, smCount, stream);
  return Status::Invalid(std::string("unsupported dtype for the CUDA gate: ") + dtypeName(dtype));
}

}  // namespace moba
