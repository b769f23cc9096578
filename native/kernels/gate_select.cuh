// Device pieces shared by the gate's tensor-core scorers (gate_topk.cu on
// mma.sync, gate_topk_sm90.cu on wgmma): compare-exchange networks for
// lists sorted best first, packed list entries, the q rows' fp16 operand
// and the error bound of a row's tensor-core scores.
#pragma once
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "gate_device.cuh"

namespace moba {
namespace gate {

// Compare-exchange for lists sorted best (largest) first; packed values are
// distinct, and equal sentinels may swap harmlessly.
__device__ __forceinline__ void exch(float& a, float& b) {
  const float hi = fmaxf(a, b);
  b = fminf(a, b);
  a = hi;
}
__device__ __forceinline__ void exch(int& a, int& b) {
  const int hi = max(a, b);
  b = min(a, b);
  a = hi;
}

// The 19-exchange sorting network for eight entries (first of each pair: the
// one that ends up first).
__device__ constexpr int kSort8[19][2] = {{0, 2}, {1, 3}, {4, 6}, {5, 7}, {0, 4}, {1, 5}, {2, 6}, {3, 7}, {0, 1}, {2, 3},
                                          {4, 5}, {6, 7}, {2, 4}, {3, 5}, {1, 4}, {3, 6}, {1, 2}, {3, 4}, {5, 6}};

// Sorts x[O, O + 8) best (largest) first.
template <int O, int N, typename V>
__device__ __forceinline__ void sort8(V (&x)[N]) {
#pragma unroll
  for (int i = 0; i < 19; ++i) exch(x[O + kSort8[i][0]], x[O + kSort8[i][1]]);
}

// Sorts the bitonic run x[O, O + Len) best first (half-cleaners of Len/2 ... 1).
template <int O, int Len, int N, typename V>
__device__ __forceinline__ void bitonicClean(V (&x)[N]) {
#pragma unroll
  for (int s = Len / 2; s >= 1; s >>= 1)
#pragma unroll
    for (int i = 0; i < Len; ++i)
      if ((i & s) == 0) exch(x[O + i], x[O + i + s]);
}

// Reverses x[O, O + Len): a sorted run followed by a reversed sorted run is bitonic.
template <int O, int Len, int N, typename V>
__device__ __forceinline__ void reverseRun(V (&x)[N]) {
#pragma unroll
  for (int i = 0; i < Len / 2; ++i) {
    const V t = x[O + i];
    x[O + i] = x[O + Len - 1 - i];
    x[O + Len - 1 - i] = t;
  }
}

// ls[i] for a run-time i < N, by selects (no local memory).
template <int N, int M>
__device__ __forceinline__ float pick(const float (&ls)[M], int i) {
  static_assert(N <= M, "pick within the list");
  float v = ls[0];
#pragma unroll
  for (int k = 1; k < N; ++k) v = i == k ? ls[k] : v;
  return v;
}

// rowState of a row whose selection was certain and is already written.
constexpr int kRowWritten = -2;

// Writes a row's keep (at most 7) chosen blocks from registers (a certain
// row, or a ranked band's best): idx holds their indices and INT_MAX in
// every other slot. Sorted largest first, the keep indices are the
// network's last entries, read backwards in ascending order; then the row's
// own block c and -1 padding.
__device__ __forceinline__ void writeCertainRow(int (&idx)[8], int keep, int c, int topK, int32_t* out) {
  sort8<0>(idx);
#pragma unroll
  for (int m = 0; m < 7; ++m)
    if (m < keep) out[m] = idx[7 - m];
  writeRowTail(out, keep, c, topK);
}

// A packed list entry (gate_topk.cu's file comment): score s with its low
// mantissa bits (packMask) replaced by block index j; and the index back.
__device__ __forceinline__ float packEntry(float s, uint32_t packMask, int j) {
  return __int_as_float((__float_as_int(s) & ~packMask) | static_cast<uint32_t>(j));
}
__device__ __forceinline__ int packedIndex(float v, uint32_t packMask) {
  return static_cast<int>(__float_as_uint(v) & packMask);
}

// Whether a row's squared norm q2 is in the range where its scale and error
// bound are formed (outside it the row is zero or takes the exact kernel).
__device__ __forceinline__ bool norm2InRange(float q2) { return q2 >= 1e-30f && q2 <= 1e30f; }

// The power of two that brings the norm of a row of squared norm q2 into
// [2^14, 2^15) (from the exponent of q2: floor(log2 ||q||)); 1 when q2 is
// out of range.
__device__ __forceinline__ float operandScaleForNorm2(float q2) {
  const int aExp = norm2InRange(q2) ? operandScaleExpForLog2(ilogbf(q2) >> 1) : 0;
  return __int_as_float((aExp + 127) << 23);
}

// sqrt(D) 2^-14 rounded up: the L2 norm of q elements too small for fp16
// (below 2^-14 each after scaling), which the tensor cores may flush.
template <int D>
constexpr float operandQsub() {
  return 1.220703125e-4f * (D == 128 ? 11.3137085f : 8.f) * (1.f + 1.f / 1024);
}

// Sixteen q rows (rows r0 + g and r0 + g + 8 for lane g * 4 + tq) as m16n8k16
// A fragments, straight from global memory in 16-byte loads: lane tq takes
// dims [tq D/4, (tq + 1) D/4) of its rows, in the centroid operand's
// permuted order (operandPairSlots): register [ks][i] holds row
// r0 + g + 8 (i & 1), pair 2 ks + (i >> 1) of the lane's span. Rows at or
// past nRows are zero. wgmma's register A operand has the same layout for
// each warp's 16 rows.
template <int D>
__device__ __forceinline__ void loadRowFragments(uint32_t (&qa)[D / 16][4], const uint16_t* qBase, size_t qRowStride,
                                                 int r0, int nRows, int lane) {
  const int g = lane >> 2, tq = lane & 3;
#pragma unroll
  for (int rh = 0; rh < 2; ++rh) {
    const int r = r0 + g + 8 * rh;
    const uint4* src = reinterpret_cast<const uint4*>(qBase + static_cast<size_t>(r) * qRowStride + tq * (D / 4));
#pragma unroll
    for (int c = 0; c < D / 32; ++c) {
      const uint4 w = r < nRows ? __ldg(src + c) : make_uint4(0u, 0u, 0u, 0u);
      qa[2 * c][rh] = w.x;
      qa[2 * c][rh + 2] = w.y;
      qa[2 * c + 1][rh] = w.z;
      qa[2 * c + 1][rh + 2] = w.w;
    }
  }
}

// One q row's fragment registers (row half hf of an m16n8k16 A fragment:
// registers hf and hf + 2 of each 16-dim step) become the fp16 operand,
// scaled by the power of two 2^a that brings the row's L2 norm into
// [2^14, 2^15): every element is then below 2^15, and elements of at least
// 2^-14 convert exactly (bf16 and fp16 inputs have at most 11 significant
// bits). The row's ||q||^2 (fp32 sum of squares, relative error below 2^-17
// here) and the OR of its magnitude bits come back summed over the quad,
// whose four lanes hold a quarter of the row each.
template <typename T, int D>
__device__ __forceinline__ void scaleRowOperand(uint32_t (&qa)[D / 16][4], int hf, float& q2Out, uint32_t& nonzeroOut) {
  float q2 = 0.f;
  uint32_t nonzero = 0;
#pragma unroll
  for (int ks = 0; ks < D / 16; ++ks)
#pragma unroll
    for (int part = 0; part < 2; ++part) {
      const uint32_t u = qa[ks][hf + 2 * part];
      nonzero |= u & 0x7fff7fffu;
      const float x0 = T::toFloat(static_cast<uint16_t>(u)), x1 = T::toFloat(static_cast<uint16_t>(u >> 16));
      q2 = fmaf(x0, x0, q2);
      q2 = fmaf(x1, x1, q2);
    }
#pragma unroll
  for (int off = 1; off <= 2; off <<= 1) {
    q2 += __shfl_xor_sync(0xffffffffu, q2, off);
    nonzero |= __shfl_xor_sync(0xffffffffu, nonzero, off);
  }
  const float scale = operandScaleForNorm2(q2);
#pragma unroll
  for (int ks = 0; ks < D / 16; ++ks)
#pragma unroll
    for (int part = 0; part < 2; ++part) {
      uint32_t& u = qa[ks][hf + 2 * part];
      const float y0 = T::toFloat(static_cast<uint16_t>(u)) * scale;
      const float y1 = T::toFloat(static_cast<uint16_t>(u >> 16)) * scale;
      const __half2 hv = __floats2half2_rn(y0, y1);
      u = *reinterpret_cast<const uint32_t*>(&hv);
    }
  q2Out = q2;
  nonzeroOut = nonzero;
}

// The bound on |tensor-core score - exact score| of one row, in the scaled
// units of the operands: eps = (||q'|| + qsub) E + qsub Cn, with E and Cn
// from gate_centroids.cu (stats of the row's sequence and KV head). With
// packed lists (packBits > 0) eps also covers the packing, which moves a
// score by at most delta = 2^(packBits - 23) (||q'|| Cn + eps). ok is false
// when the row's norm is not finite or underflows, or its products could
// overflow: such rows take the exact kernel.
struct RowBound {
  float eps = 0.f;
  float delta = 0.f;
  bool ok = false;
};
template <int D>
__device__ __forceinline__ RowBound rowBound(float q2, uint32_t nonzero, float E, float Cn, int packBits) {
  constexpr float kQsub = operandQsub<D>();
  RowBound r;
  const bool normal = norm2InRange(q2);
  const float qn = sqrtf(q2 * (1.f + 1.f / 4096)) * operandScaleForNorm2(q2) + kQsub;
  r.ok = (normal || nonzero == 0) && E <= 1e18f && Cn <= 1e18f;
  if (!r.ok) return r;
  r.eps = __fadd_ru(__fmul_ru(__fadd_ru(__fmul_ru(qn, E), __fmul_ru(kQsub, Cn)), 1.f + 1.f / 256),
                    7.888609052210118e-31f);  // + 2^-100
  if (packBits > 0) {
    const float rel = __int_as_float((127 + packBits - 23) << 23);  // 2^(packBits - 23)
    r.delta = __fmul_ru(__fadd_ru(__fmul_ru(qn, Cn), r.eps), __fmul_ru(rel, 1.f + 1.f / 1024));
    r.eps = __fadd_ru(r.eps, r.delta);
  }
  return r;
}

// Packed lists whose packing error is bounded per comparison, not per row
// (gate_topk_sm90.cu). Replacing a value's low packBits mantissa bits moves
// it by less than rel = 2^(packBits - 23) of its own magnitude (plus
// 2^(packBits - 149) where it is subnormal, which the 2^-100 floor of eps
// covers), and the value stays in its binade; x - rel |x| and x + rel |x|
// are increasing in x. So with eps the tensor cores' bound alone
// (rowBound with packBits 0):
//  - the row's keep-th best exact score is at least kth - rel |kth| - eps
//    (kth: the keep-th best packed value), so a block of the exact best
//    keep has a packed value of at least
//    kth - 2 eps - rel (2 |kth| + 2 eps + rel |kth|) (bandFloor);
//  - an entry u outranks, by exact score, every block whose packed value is
//    at most v when u - v > 2 eps + rel (|u| + |v|) (certainAbove).
// rel carries 2^-10 more, for rel^2 |kth| and the rounding of these sums.
// The per-row bound, 2^(packBits - 23) (||q'|| Cn + eps), is the same with
// the largest possible score in place of |kth|; the scores near a row's
// threshold are well below it, most of all for i.i.d. data, so fewer
// blocks fall in the band and need exact scores.
__device__ __forceinline__ float packingRel(int packBits) {
  return __fmul_ru(__int_as_float((127 + packBits - 23) << 23), 1.f + 1.f / 1024);
}
__device__ __forceinline__ float bandFloor(float kth, float twoEps, float rel) {
  const float ak = fabsf(kth);
  return __fsub_rd(kth, __fadd_ru(twoEps, __fmul_ru(rel, __fadd_ru(__fadd_ru(ak, ak), twoEps))));
}
__device__ __forceinline__ bool certainAbove(float u, float v, float twoEps, float rel) {
  return !(v >= __fsub_rd(u, __fadd_ru(twoEps, __fmul_ru(rel, __fadd_ru(fabsf(u), fabsf(v))))));
}

// P consecutive dims of a row, from one load each (P = 1, 2, 4).
template <int P>
struct DimRun;
template <>
struct DimRun<1> {
  using Centroids = float;
  using Q = uint16_t;
  static __device__ __forceinline__ void split(float c, float (&out)[1]) { out[0] = c; }
  template <typename T>
  static __device__ __forceinline__ void split(uint16_t u, float (&out)[1]) { out[0] = T::toFloat(u); }
};
template <>
struct DimRun<2> {
  using Centroids = float2;
  using Q = uint32_t;
  static __device__ __forceinline__ void split(float2 c, float (&out)[2]) { out[0] = c.x, out[1] = c.y; }
  template <typename T>
  static __device__ __forceinline__ void split(uint32_t u, float (&out)[2]) {
    out[0] = T::toFloat(static_cast<uint16_t>(u));
    out[1] = T::toFloat(static_cast<uint16_t>(u >> 16));
  }
};
template <>
struct DimRun<4> {
  using Centroids = float4;
  using Q = uint2;
  static __device__ __forceinline__ void split(float4 c, float (&out)[4]) { out[0] = c.x, out[1] = c.y, out[2] = c.z, out[3] = c.w; }
  template <typename T>
  static __device__ __forceinline__ void split(uint2 u, float (&out)[4]) {
    out[0] = T::toFloat(static_cast<uint16_t>(u.x));
    out[1] = T::toFloat(static_cast<uint16_t>(u.x >> 16));
    out[2] = T::toFloat(static_cast<uint16_t>(u.y));
    out[3] = T::toFloat(static_cast<uint16_t>(u.y >> 16));
  }
};

// Exact scores of queued band entries, a warp at a time: queue[i] = (row
// << 8) | slot (16 bits hold it: rows and slots below 256) names entry
// bandI[row * KL + slot], whose exact score
// replaces bandS[row * KL + slot]. The CPU backend's order (exactDot):
// partial sum e collects dims e, e+8, e+16, ... in turn, then
// ((s0+s1)+(s2+s3))+((s4+s5)+(s6+s7)). 8 / P lanes take an entry, 4 P
// entries per pass: lane p of an entry runs partial sums P p .. P p + P - 1
// from one load of P centroid floats and one of P q elements per 8 dims,
// adds them pairwise, and xor shuffles add the lanes' sums in the same
// pairs. cent: the sequence's fp32 centroids for the KV head, block stride
// cStride; kLoadUnroll: the 8-dim steps whose loads are in flight at once
// (rescoreQueued's is for P = 4, with as many registers for the others).
template <typename T, int D, int KL, int P, int kLoadUnroll, typename Code>
__device__ __forceinline__ void rescoreQueuedBy(const Code* queue, int total, const float* cent, size_t cStride,
                                                const uint16_t* qBase, size_t qRowStride, const int* bandI,
                                                float* bandS, int lane) {
  using Run = DimRun<P>;
  constexpr int kLanes = 8 / P;
  const int p = lane % kLanes;
  for (int first = 0; first < total; first += 32 / kLanes) {
    const int item = first + lane / kLanes;
    const int code = queue[item < total ? item : 0];
    const int r = code >> 8, m = code & 255;
    const auto* cp =
        reinterpret_cast<const typename Run::Centroids*>(cent + static_cast<size_t>(bandI[r * KL + m]) * cStride) + p;
    const auto* qp = reinterpret_cast<const typename Run::Q*>(qBase + static_cast<size_t>(r) * qRowStride) + p;
    float s[P];
#pragma unroll
    for (int e = 0; e < P; ++e) s[e] = 0.f;
#pragma unroll kLoadUnroll
    for (int i = 0; i < D / 8; ++i) {
      float c[P], q[P];
      Run::split(__ldg(cp + kLanes * i), c);
      Run::template split<T>(__ldg(qp + kLanes * i), q);
#pragma unroll
      for (int e = 0; e < P; ++e) s[e] = __fadd_rn(s[e], __fmul_rn(q[e], c[e]));
    }
#pragma unroll
    for (int w = 1; w < P; w *= 2)
#pragma unroll
      for (int e = 0; e < P; e += 2 * w) s[e] = __fadd_rn(s[e], s[e + w]);
    float sum = s[0];
#pragma unroll
    for (int off = 1; off < kLanes; off *= 2) sum = __fadd_rn(sum, __shfl_xor_sync(0xffffffffu, sum, off));
    if (item < total && p == 0) bandS[r * KL + m] = sum;
  }
}

// Lanes per entry by the warp's count. A pass is D/8 dependent steps
// whatever P, and a lane does P products per step: a few entries take eight
// lanes each (one pass, the fewest instructions), many take two (sixteen per
// pass). Scores that trend along the sequence contest several entries in
// most rows, and eight lanes each then made a warp wait for one round of
// loads per four entries; two lanes each for every count cost (512, 3)
// random inputs 3% at 128K, where a warp rarely has more than four.
template <typename T, int D, int KL, int kLoadUnroll, typename Code>
__device__ __forceinline__ void rescoreQueued(const Code* queue, int total, const float* cent, size_t cStride,
                                              const uint16_t* qBase, size_t qRowStride, const int* bandI, float* bandS,
                                              int lane) {
  // The same registers of loads in flight for each P.
  constexpr int kSteps = D / 8;
  constexpr int kUnroll2 = 2 * kLoadUnroll < kSteps ? 2 * kLoadUnroll : kSteps;
  constexpr int kUnroll1 = 4 * kLoadUnroll < kSteps ? 4 * kLoadUnroll : kSteps;
  if (total <= 4) {
    rescoreQueuedBy<T, D, KL, 1, kUnroll1>(queue, total, cent, cStride, qBase, qRowStride, bandI, bandS, lane);
  } else if (total <= 8) {
    rescoreQueuedBy<T, D, KL, 2, kUnroll2>(queue, total, cent, cStride, qBase, qRowStride, bandI, bandS, lane);
  } else {
    rescoreQueuedBy<T, D, KL, 4, kLoadUnroll>(queue, total, cent, cStride, qBase, qRowStride, bandI, bandS, lane);
  }
}

// The warp's contested entries re-scored exactly: each lane's row (ownRow)
// has entries [nc, nc + need) of its band still contested (need 0 for
// lanes without one). They are listed in the warp's queue (a prefix sum
// over the lanes; room for every need) and re-scored together;
// centOf() gives the row's fp32 centroids, read only when some lane has
// work; kLoadUnroll as for rescoreQueued (fewer where the kernel is short
// of registers).
template <typename T, int D, int KL, int kLoadUnroll, typename Code, typename CentOf>
__device__ __forceinline__ void rescoreContested(int need, int nc, int ownRow, Code* queue, CentOf centOf,
                                                 size_t cStride, const uint16_t* qBase, size_t qRowStride,
                                                 const int* bandI, float* bandS, int lane) {
  int upTo = need;
#pragma unroll
  for (int off = 1; off < 32; off <<= 1) {
    const int x = __shfl_up_sync(0xffffffffu, upTo, off);
    if (lane >= off) upTo += x;
  }
  const int total = __shfl_sync(0xffffffffu, upTo, 31);
  if (total == 0) return;  // warp-uniform
  for (int i = 0; i < need; ++i) queue[upTo - need + i] = static_cast<Code>((ownRow << 8) | (nc + i));
  __syncwarp();
  rescoreQueued<T, D, KL, kLoadUnroll>(queue, total, centOf(), cStride, qBase, qRowStride, bandI, bandS, lane);
  __syncwarp();
}

// Sorts x[O, O + Len) largest first, Len = 8, 16, 32 or 64: sorts of eight,
// then bitonic merges of the runs.
template <int O, int Len, int N, typename V>
__device__ __forceinline__ void sortRun(V (&x)[N]) {
  if constexpr (Len == 8) {
    sort8<O>(x);
  } else {
    sortRun<O, Len / 2>(x);
    sortRun<O + Len / 2, Len / 2>(x);
    reverseRun<O + Len / 2, Len / 2>(x);
    bitonicClean<O, Len>(x);
  }
}
template <int N, typename V>
__device__ __forceinline__ void sortNetwork(V (&x)[N]) {
  static_assert(N == 16 || N == 32 || N == 64, "networks of 16, 32 or 64");
  sortRun<0, N>(x);
}

// Writes a row's keep (at most N) blocks idx[0, keep) in ascending order,
// then its own block c and -1 padding up to topK; idx[keep, N) hold INT_MIN.
// idx is sorted in place.
template <int N>
__device__ __forceinline__ void writeAscending(int (&idx)[N], int keep, int c, int topK, int32_t* out) {
  sortNetwork<N>(idx);
  // Largest first, the keep indices lead: written backwards.
#pragma unroll
  for (int m = 0; m < N; ++m)
    if (m < keep) out[keep - 1 - m] = idx[m];
  writeRowTail(out, keep, c, topK);
}
// The same for blocks bi[0, keep) in shared memory.
template <int N>
__device__ __forceinline__ void writeBandAscending(const int* bi, int keep, int c, int topK, int32_t* out) {
  int idx[N];
#pragma unroll
  for (int m = 0; m < N; ++m) idx[m] = m < keep ? bi[m] : INT_MIN;
  writeAscending(idx, keep, c, topK, out);
}

// Writes a row from its band (bs, bi: nb entries, the first nc certain to be
// among its best keep): the entries [nc, nb), re-scored exactly, are ranked
// by (exact score, block index), the best keep - nc join the certain ones,
// and the keep blocks go out ascending, then the row's own block c and -1
// padding up to topK. keep is at most kMaxKeep, which picks the networks
// compiled in (the caller's largest keep, at most kRankedBandMaxKeep).
constexpr int kRankedBandMaxKeep = 63;
template <int kMaxKeep>
__device__ __forceinline__ void writeRankedBand(float* bs, int* bi, int nc, int nb, int keep, int c, int topK,
                                                int32_t* out) {
  // Only the set [0, keep) matters (it goes out in block order), so a row
  // may move whichever side of the cut is smaller: the best keep - nc
  // entries of [nc, nb) to the front, or the worst nb - keep to the back.
  // Scores that trend along the sequence contest much of a long band whose
  // cut lies near its end (at (128, 64) about 24 of 64 entries, with one
  // past the cut). Keeps up to 15 (lists in registers, at their register
  // caps) take the first way only.
  auto swapEntries = [&](int x, int y) {
    const float ts = bs[x];
    const int ti = bi[x];
    bs[x] = bs[y];
    bi[x] = bi[y];
    bs[y] = ts;
    bi[y] = ti;
  };
  if (kMaxKeep <= 15 || keep - nc <= nb - keep) {
    for (int r = nc; r < keep; ++r) {  // the best of [r, nb) to r
      int best = r;
      for (int m = r + 1; m < nb; ++m)
        if (ranksAbove(bs[m], bi[m], bs[best], bi[best])) best = m;
      swapEntries(r, best);
    }
  } else {
    for (int e = nb - 1; e >= keep; --e) {  // the worst of [nc, e] to e
      int worst = e;
      for (int m = nc; m < e; ++m)
        if (ranksAbove(bs[worst], bi[worst], bs[m], bi[m])) worst = m;
      swapEntries(e, worst);
    }
  }
  // Ascending block order by a sorting network in registers: an insertion
  // sort in shared memory is a chain of dependent loads (about 5% of a
  // one-tile (4096, 8) gate's instructions at 128K, 8% of its stall samples;
  // half the stall samples of (128, 32) at keep 31).
  static_assert(kMaxKeep >= 1 && kMaxKeep <= kRankedBandMaxKeep, "keep within the networks");
  if (kMaxKeep <= 7 || keep <= 7) {
    int idx[8];
#pragma unroll
    for (int m = 0; m < 8; ++m) idx[m] = m < keep ? bi[m] : INT_MAX;
    writeCertainRow(idx, keep, c, topK, out);
  } else if (kMaxKeep <= 15 || keep <= 15) {
    writeBandAscending<16>(bi, keep, c, topK, out);
  } else if (kMaxKeep <= 31 || keep <= 31) {
    writeBandAscending<32>(bi, keep, c, topK, out);
  } else {
    writeBandAscending<64>(bi, keep, c, topK, out);
  }
}

// The last step of a row in the tensor-core gates (its owner thread): a row
// with at most keep past blocks takes them all; a row written right after
// the selection is done; a row without a band (state < 0, not written)
// goes on the fallback list for the exact kernel; any other is ranked from
// its band (bandS, bandI: nb entries, the first nc certain). keep is at
// most kMaxKeep (writeRankedBand).
template <int kMaxKeep>
__device__ __forceinline__ void finishRow(const GateArgs& a, int h, int row, int c, int keep, int state, float* bandS,
                                          int* bandI, int nc, int nb) {
  int32_t* out = a.indices + (static_cast<size_t>(h) * a.totalQ + row) * a.topK;
  if (c <= keep) {
    writeAllPast(out, c, a.topK, 0, 1);
  } else if (state == kRowWritten) {
    // written after the selection
  } else if (state < 0) {
    a.fallback[atomicAdd(a.fallbackCount, 1)] = h * a.totalQ + row;
  } else {
    writeRankedBand<kMaxKeep>(bandS, bandI, nc, nb, keep, c, a.topK, out);
  }
}

}  // namespace gate
}  // namespace moba
