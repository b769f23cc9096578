// Device helpers of the gate kernels: 16-bit element access, the exact fp32
// score in the CPU backend's summation order, the ranking rule, and the
// PTX wrappers (cp.async, ldmatrix, mma.sync) the tensor-core scorer uses.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "common/moba_rank.cuh"
#include "common/ptx.cuh"
#include "gate_internal.h"

namespace moba {
namespace gate {

struct Bf16 {
  static __device__ __forceinline__ float toFloat(uint16_t u) { return __uint_as_float(static_cast<uint32_t>(u) << 16); }
};

// Also the tensor cores' operand type, whatever the input dtype.
struct F16 {
  static __device__ __forceinline__ float toFloat(uint16_t u) { return __half2float(__ushort_as_half(u)); }
  static __device__ __forceinline__ uint16_t fromFloat(float f) { return __half_as_ushort(__float2half_rn(f)); }
  // Smallest normal magnitude: tensor cores may flush smaller inputs, so the
  // gate never feeds them subnormal centroids and bounds small q elements.
  static constexpr float kMinNormal = 6.10351562e-05f;
};

// The exponent of the power of two that brings a magnitude in [2^e, 2^(e+1))
// into [2^14, 2^15): fp16's top binades, below its 65504 limit; kept within
// fp32's normal exponents so that 2^result is a normal float.
__device__ __forceinline__ int operandScaleExpForLog2(int e) { return min(max(14 - e, -126), 126); }

// The same for a largest magnitude m; 0 when m is 0 or not finite (such data
// gets no usable bound anyway).
__device__ __forceinline__ int operandScaleExp(float m) {
  if (!(m > 0.f) || !(m <= 3.4028235e38f)) return 0;
  return operandScaleExpForLog2(ilogbf(m));
}

// Score of one query row against one centroid, exactly as the CPU backend's
// dotF32: eight interleaved partial sums, separate multiply and add (no FMA
// contraction), then a fixed pairwise combination. qAt(i) gives the row's
// element i (wherever the row is kept); `c` holds D floats.
template <int D, typename QAt>
__device__ __forceinline__ float exactDotBy(QAt qAt, const float* __restrict__ c) {
  static_assert(D % 8 == 0, "head dim must be a multiple of 8");
  float s[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
#pragma unroll 4
  for (int i = 0; i < D; i += 8) {
    const float4 c0 = *reinterpret_cast<const float4*>(c + i);
    const float4 c1 = *reinterpret_cast<const float4*>(c + i + 4);
    const float cv[8] = {c0.x, c0.y, c0.z, c0.w, c1.x, c1.y, c1.z, c1.w};
#pragma unroll
    for (int k = 0; k < 8; ++k) s[k] = __fadd_rn(s[k], __fmul_rn(qAt(i + k), cv[k]));
  }
  return __fadd_rn(__fadd_rn(__fadd_rn(s[0], s[1]), __fadd_rn(s[2], s[3])),
                   __fadd_rn(__fadd_rn(s[4], s[5]), __fadd_rn(s[6], s[7])));
}
// The same for a row of D contiguous floats.
template <int D>
__device__ __forceinline__ float exactDot(const float* q, const float* __restrict__ c) {
  return exactDotBy<D>([=](int i) { return q[i]; }, c);
}

// The fp16 centroid operand is stored with its dims permuted so that each
// lane of the scores kernel loads its part of a q row as whole 16-byte
// chunks (a dot product does not depend on the order of its terms). mma.sync
// m16n8k16 gives lane tq (= lane % 4) the dim pairs 2 tq and 2 tq + 8 of
// each 16-dim step ks; lane tq instead gets dims [tq D/4, (tq + 1) D/4) of
// the row in order: pair p of its span is step p / 2, half p % 2 (at +8).
// slot: where the four dim pairs of chunk c8 (dims [8 c8, 8 c8 + 8)) go in
// the operand's row, in 32-bit words.
template <int D>
__device__ __forceinline__ void operandPairSlots(int c8, int (&slot)[4]) {
  constexpr int kSpan = D / 4;  // dims per lane
  const int tq = c8 * 8 / kSpan, ks = c8 * 8 % kSpan / 4;
  slot[0] = 8 * ks + tq;           // (step ks, half 0): dims 16 ks + 2 tq, +1
  slot[1] = 8 * ks + 4 + tq;       // (step ks, half 1): 16 ks + 8 + 2 tq
  slot[2] = 8 * (ks + 1) + tq;     // (step ks + 1, half 0)
  slot[3] = 8 * (ks + 1) + 4 + tq; // (step ks + 1, half 1)
}

// Sequence b with cu[b] <= x < cu[b+1] among batch sequences (skips empty ones).
__device__ __forceinline__ int sequenceOf(const int32_t* cu, int batch, int x) {
  int lo = 0, hi = batch - 1;
  while (lo < hi) {
    int mid = (lo + hi + 1) >> 1;
    if (__ldg(cu + mid) <= x) lo = mid;
    else hi = mid - 1;
  }
  return lo;
}

// Where query row `row` (of a.totalQ) sits: its sequence b, and its own
// block c, the number of complete blocks before it (a sequence's queries are
// its last positions, chunked queries included).
struct RowPlace {
  int b;
  int c;
};
__device__ __forceinline__ RowPlace placeOfRow(const GateArgs& a, int row) {
  const int b = sequenceOf(a.cuQ, a.batch, row);
  const int lq = a.cuQ[b + 1] - a.cuQ[b];
  const int lk = a.cuK[b + 1] - a.cuK[b];
  return {b, (lk - lq + row - a.cuQ[b]) / a.chunkSize};
}

// The query rows a CTA of the tiled kernels owns: part blockIdx.x % parts of
// tile blockIdx.x / parts of a.tiles (up to kRows consecutive rows of one
// sequence; a tile holds parts x kRows), query head blockIdx.y. nRows may be
// 0 or less for a part past the sequence's last query.
struct RowTile {
  int b;      // sequence
  int h;      // query head
  int kvh;    // its KV head
  int nRows;  // rows in the tile (fewer at the end of a sequence)
  int row0;   // the first row, as a global query row
  int pos0;   // its position in the sequence
  int pLast;  // past blocks of the tile's last row, the most of any of its rows
};
__device__ __forceinline__ RowTile rowTileOf(const GateArgs& a, int kRows, int parts = 1) {
  RowTile t;
  const int tileIdx = blockIdx.x / parts;
  t.b = a.tiles[2 * tileIdx];
  const int local0 = a.tiles[2 * tileIdx + 1] + static_cast<int>(blockIdx.x % parts) * kRows;
  t.h = blockIdx.y;
  t.kvh = t.h / a.group;
  const int qBegin = a.cuQ[t.b];
  const int lq = a.cuQ[t.b + 1] - qBegin;
  const int lk = a.cuK[t.b + 1] - a.cuK[t.b];
  t.nRows = min(kRows, lq - local0);
  t.row0 = qBegin + local0;
  t.pos0 = lk - lq + local0;
  t.pLast = (t.pos0 + t.nRows - 1) / a.chunkSize;
  return t;
}

// The end of a row that keeps `keep` past blocks: its own block c, then -1 padding.
__device__ __forceinline__ void writeRowTail(int32_t* out, int keep, int c, int topK) {
  out[keep] = c;
  for (int m = keep + 1; m < topK; ++m) out[m] = -1;
}

// Writes the trivial selection of a query with c <= topK-1 past blocks: all
// of them, its own block c, then -1 padding (this thread: m = from, from + step, ...).
__device__ __forceinline__ void writeAllPast(int32_t* out, int c, int topK, int from, int step) {
  for (int m = from; m < topK; m += step) out[m] = m <= c ? m : -1;
}

// ---- PTX (common/ptx.cuh) --------------------------------------------------

using ptx::cpAsync16;
using ptx::cpAsyncCommit;
using ptx::cpAsyncWait;
using ptx::ldsF32;
using ptx::ldsm4;
using ptx::mma16816;
using ptx::smemAddr;

// Shared-memory tiles of 16-bit rows of D elements, 16-byte chunks XOR-swizzled
// by the row so that ldmatrix's eight rows hit eight different bank groups.
template <int D>
__device__ __forceinline__ int swz(int row, int chunk) {
  return row * (D / 8) + (chunk ^ (row & 7));
}

}  // namespace gate
}  // namespace moba
