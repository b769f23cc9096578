// Device helpers shared by the attention kernels: 16-bit element packing,
// cp.async, ldmatrix and mma.sync wrappers, the swizzled shared-memory tile
// layout, and the fp32 online softmax on accumulator fragments.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

#include "ptx.cuh"

namespace moba {
namespace attn {

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

__device__ __forceinline__ float negInf() { return __int_as_float(0xff800000); }

// ---------------------------------------------------------------------------
// 16-bit element types
// ---------------------------------------------------------------------------

template <typename T>
__device__ __forceinline__ uint32_t pack2(float lo, float hi);
template <>
__device__ __forceinline__ uint32_t pack2<__nv_bfloat16>(float lo, float hi) {
  __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&v);
}
template <>
__device__ __forceinline__ uint32_t pack2<__half>(float lo, float hi) {
  __half2 v = __floats2half2_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&v);
}

template <typename T>
__device__ __forceinline__ float2 unpack2(uint32_t x);
template <>
__device__ __forceinline__ float2 unpack2<__nv_bfloat16>(uint32_t x) {
  return __bfloat1622float2(*reinterpret_cast<__nv_bfloat162*>(&x));
}
template <>
__device__ __forceinline__ float2 unpack2<__half>(uint32_t x) {
  return __half22float2(*reinterpret_cast<__half2*>(&x));
}

// ---------------------------------------------------------------------------
// Asynchronous copies, ldmatrix, mma.sync (common/ptx.cuh)
// ---------------------------------------------------------------------------

using ptx::cpAsync16;
using ptx::cpAsyncCommit;
using ptx::cpAsyncWait;
using ptx::ldsm4;
using ptx::ldsm4t;
using ptx::smemAddr;

template <typename T>
__device__ __forceinline__ void mma16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  ptx::mma16816<std::is_same_v<T, __nv_bfloat16>>(c, a, b0, b1);
}

__device__ __forceinline__ float ex2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

// ---------------------------------------------------------------------------
// Shared-memory tiles
// ---------------------------------------------------------------------------

// A tile of ROWS rows x D (64 or 128) 16-bit elements is stored as D/64
// column halves [D/64][ROWS][64]: each row of a half is 128 bytes, and the
// 16-byte chunk c of row r sits at chunk position c ^ (r % 8). This is the
// 128-byte swizzle of the Hopper tensor-memory layouts (so wgmma reads the
// same tiles through descriptors), and it keeps ldmatrix and cp.async free of
// bank conflicts. Returns the element offset of (row r, 16-byte chunk c).
template <int ROWS>
__device__ __forceinline__ int tileOffset(int r, int c) {
  return (c >> 3) * (ROWS * 64) + r * 64 + (((c & 7) ^ (r & 7)) << 3);
}

// ---------------------------------------------------------------------------
// Online softmax on accumulator fragments
// ---------------------------------------------------------------------------
//
// Both kernels hold scores and outputs in the m16n8 accumulator layout: per
// 8-column chunk i a thread owns s[i][0..1] of row lane/4 and s[i][2..3] of
// row lane/4 + 8, at columns 8i + 2*(lane%4) + {0,1}. A row is spread over the
// four threads of a quad. State per row: running max m (log2 units, -inf when
// nothing seen yet) and this thread's share of the running sum l.

// Folds a tile of scores (log2 units) into the running max and sum and turns
// them into unnormalized probabilities in place; corr[r] is the factor the
// row's output accumulator must be multiplied by (see rescaleRows).
template <int NS>
__device__ __forceinline__ void softmaxTile(float (&s)[NS][4], float (&m)[2], float (&l)[2], float (&corr)[2]) {
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    float mx = negInf();
#pragma unroll
    for (int i = 0; i < NS; ++i) mx = fmaxf(mx, fmaxf(s[i][2 * r], s[i][2 * r + 1]));
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
    const float mNew = fmaxf(m[r], mx);
    // A row with nothing visible yet keeps max -inf; subtracting 0 instead
    // keeps exp2 at 0 rather than NaN.
    const float mUse = mNew == negInf() ? 0.f : mNew;
    corr[r] = ex2(m[r] - mUse);
    m[r] = mNew;
    float sum = 0.f;
#pragma unroll
    for (int i = 0; i < NS; ++i) {
      s[i][2 * r] = ex2(s[i][2 * r] - mUse);
      s[i][2 * r + 1] = ex2(s[i][2 * r + 1] - mUse);
      sum += s[i][2 * r] + s[i][2 * r + 1];
    }
    l[r] = l[r] * corr[r] + sum;
  }
}

template <int NO>
__device__ __forceinline__ void rescaleRows(float (&o)[NO][4], const float (&corr)[2]) {
#pragma unroll
  for (int i = 0; i < NO; ++i) {
    o[i][0] *= corr[0];
    o[i][1] *= corr[0];
    o[i][2] *= corr[1];
    o[i][3] *= corr[1];
  }
}

template <int NS, int NO>
__device__ __forceinline__ void softmaxUpdate(float (&s)[NS][4], float (&o)[NO][4], float (&m)[2], float (&l)[2]) {
  float corr[2];
  softmaxTile(s, m, l, corr);
  rescaleRows(o, corr);
}

// Registers that an asynchronous tensor-core operation reads or writes
// (wgmma) must not be touched by code the compiler moves across its wait:
// these empty asm statements pin their values at the point of the call.
template <int N>
__device__ __forceinline__ void fenceRegs(float (&x)[N][4]) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+f"(x[i][0]), "+f"(x[i][1]), "+f"(x[i][2]), "+f"(x[i][3])::"memory");
}
template <int N>
__device__ __forceinline__ void fenceRegs(uint32_t (&x)[N][4]) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+r"(x[i][0]), "+r"(x[i][1]), "+r"(x[i][2]), "+r"(x[i][3])::"memory");
}

// Sets scores outside each row's key window [lo, hi) to -inf. s0 is the key
// position of column 0 of the tile.
template <int NS>
__device__ __forceinline__ void applyMask(float (&s)[NS][4], int s0, int lane, const int (&lo)[2], const int (&hi)[2]) {
#pragma unroll
  for (int i = 0; i < NS; ++i) {
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int col = s0 + i * 8 + 2 * (lane & 3) + (e & 1);
      const int r = e >> 1;
      if (col < lo[r] || col >= hi[r]) s[i][e] = negInf();
    }
  }
}

template <int NS>
__device__ __forceinline__ void scaleScores(float (&s)[NS][4], float scaleLog2) {
#pragma unroll
  for (int i = 0; i < NS; ++i) {
#pragma unroll
    for (int e = 0; e < 4; ++e) s[i][e] *= scaleLog2;
  }
}

// Completes the row sums across the quad.
__device__ __forceinline__ void finishRowSums(float (&l)[2]) {
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    l[r] += __shfl_xor_sync(0xffffffffu, l[r], 1);
    l[r] += __shfl_xor_sync(0xffffffffu, l[r], 2);
  }
}

// Folds normalized partial outputs (with their natural-log lse) of other key
// ranges into a row's unnormalized state. Runs after finishRowSums. The quad's
// four threads walk the same entries; `entryRow` points at the row's topK-1
// entry slots (nullptr for a padding row). Entries are read four at a time so
// their loads are in flight together.
template <typename T, int NO>
__device__ __forceinline__ void mergePartials(float (&o)[NO][4], float& m, float& l, int r, int lane,
                                              const int32_t* entryRow, int slots, const T* partial,
                                              const float* partialLse, int headDim) {
  if (entryRow == nullptr) return;
  constexpr int G = 4;
  for (int base = 0; base < slots; base += G) {
    int e[G];
    float lp[G];
    uint32_t x[G][NO];
#pragma unroll
    for (int g = 0; g < G; ++g) e[g] = base + g < slots ? __ldg(entryRow + base + g) : -1;
#pragma unroll
    for (int g = 0; g < G; ++g) {
      lp[g] = e[g] >= 0 ? __ldg(partialLse + e[g]) * kLog2e : negInf();
      const unsigned int* pr =
          reinterpret_cast<const unsigned int*>(partial + static_cast<size_t>(e[g] >= 0 ? e[g] : 0) * headDim) +
          (lane & 3);
#pragma unroll
      for (int i = 0; i < NO; ++i) x[g][i] = e[g] >= 0 ? __ldg(pr + i * 4) : 0u;
    }
#pragma unroll
    for (int g = 0; g < G; ++g) {
      if (e[g] < 0) continue;
      const float mNew = fmaxf(m, lp[g]);
      const float mUse = mNew == negInf() ? 0.f : mNew;
      const float a = ex2(m - mUse);
      const float b = ex2(lp[g] - mUse);
      m = mNew;
      l = l * a + b;
#pragma unroll
      for (int i = 0; i < NO; ++i) {
        const float2 v = unpack2<T>(x[g][i]);
        o[i][2 * r] = o[i][2 * r] * a + b * v.x;
        o[i][2 * r + 1] = o[i][2 * r + 1] * a + b * v.y;
      }
    }
    if (e[G - 1] < 0) break;
  }
}

}  // namespace attn
}  // namespace moba
