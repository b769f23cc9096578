// Eight floats as one value (a GCC vector type, also Clang's): element-wise
// IEEE operations, one AVX register in an AVX2 clone (simd_clones.h), two
// SSE registers in the baseline build, and the same bits in both, since
// neither has fused multiply-add. A scalar operand of a binary operation is
// broadcast to every element.
//
// Only for code inlined into its caller: a function that took or returned
// one by value would have a different ABI in the two builds, which is what
// GCC's -Wpsabi warns of (silenced for the files that include this).
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

#include "../common/dtype.h"

#pragma GCC diagnostic ignored "-Wpsabi"

namespace moba {

typedef float F8 __attribute__((vector_size(32)));

__attribute__((always_inline)) inline F8 load8(const float* p) {
  F8 v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

__attribute__((always_inline)) inline void store8(float* p, F8 v) { std::memcpy(p, &v, sizeof v); }

// dotF32's final sum of its eight partial sums (moba_select.h), in its order.
__attribute__((always_inline)) inline float sumTree8(F8 p) {
  return ((p[0] + p[1]) + (p[2] + p[3])) + ((p[4] + p[5]) + (p[6] + p[7]));
}

// sumTree8 of four vectors at once, the same additions in the same order:
// each level adds neighbours, brought together by in-lane shuffles (one
// instruction each on AVX), instead of 28 scalar adds of spilled elements.
__attribute__((always_inline)) inline void sumTree8x4(F8 a, F8 b, F8 c, F8 d, float* out) {
  typedef int I8 __attribute__((vector_size(32)));
  typedef float F4 __attribute__((vector_size(16)));
  const I8 even = {0, 2, 8, 10, 4, 6, 12, 14}, odd = {1, 3, 9, 11, 5, 7, 13, 15};
  // [a0+a1, a2+a3, b0+b1, b2+b3, a4+a5, a6+a7, b4+b5, b6+b7]
  const F8 ab = __builtin_shuffle(a, b, even) + __builtin_shuffle(a, b, odd);
  const F8 cd = __builtin_shuffle(c, d, even) + __builtin_shuffle(c, d, odd);
  // [a0..3, b0..3, c0..3, d0..3, a4..7, b4..7, c4..7, d4..7]
  const F8 t = __builtin_shuffle(ab, cd, even) + __builtin_shuffle(ab, cd, odd);
  const F4 sum = __builtin_shufflevector(t, t, 0, 1, 2, 3) + __builtin_shufflevector(t, t, 4, 5, 6, 7);
  std::memcpy(out, &sum, sizeof sum);
}

typedef uint32_t U8 __attribute__((vector_size(32)));

// Eight 16-bit values, each in one 32-bit lane: in its high half with zeros
// below (High) or in its low half. Two unpacks and a lane permute on AVX2
// (a conversion to 32-bit lanes and a shift came out as six instructions).
template <bool High>
__attribute__((always_inline)) inline U8 lanes16(const uint16_t* p) {
  typedef uint16_t H8 __attribute__((vector_size(16)));
  typedef uint16_t H16 __attribute__((vector_size(32)));
  H8 h;
  std::memcpy(&h, p, sizeof h);
  H16 w;
  if constexpr (High) {
    w = __builtin_shufflevector(H8{}, h, 0, 8, 1, 9, 2, 10, 3, 11, 4, 12, 5, 13, 6, 14, 7, 15);
  } else {
    w = __builtin_shufflevector(h, H8{}, 0, 8, 1, 9, 2, 10, 3, 11, 4, 12, 5, 13, 6, 14, 7, 15);
  }
  return (U8)w;
}

// Rows of keys (or values) as dotsRows and attendRows read them: fp32 rows
// `stride` floats apart, or bf16 / f16 rows anywhere (a tile's rows in the
// cache's pages), widened as they are loaded with the bits of dtype.h's
// conversions, so the same values give the same bits either way.
struct F32Rows {
  const float* base;
  size_t stride;
  const float* row(int s) const { return base + static_cast<size_t>(s) * stride; }
  F32Rows from(int s) const { return {row(s), stride}; }
  __attribute__((always_inline)) static F8 load(const float* p) { return load8(p); }
  static float at(const float* p, int i) { return p[i]; }
};

// A bf16 is the top half of its float.
struct Bf16Rows {
  const uint16_t* const* rows;
  const uint16_t* row(int s) const { return rows[s]; }
  Bf16Rows from(int s) const { return {rows + s}; }
  __attribute__((always_inline)) static F8 load(const uint16_t* p) { return (F8)lanes16<true>(p); }
  static float at(const uint16_t* p, int i) { return bf16BitsToFloat(p[i]); }
};

// f16BitsToFloat's operations on eight lanes at once.
struct F16Rows {
  const uint16_t* const* rows;
  const uint16_t* row(int s) const { return rows[s]; }
  F16Rows from(int s) const { return {rows + s}; }
  __attribute__((always_inline)) static F8 load(const uint16_t* p) {
    const U8 x = lanes16<false>(p);
    const U8 o = (x & 0x7fffu) << 13;
    const U8 e = o & 0x0f800000u;
    const U8 infNan = (U8)(e == 0x0f800000u);
    const U8 tiny = (U8)(e == 0u);
    const U8 sub = (U8)((F8)(o + 0x38800000u) - bitsFloat(0x38800000u));
    const U8 r = ((o + 0x38000000u) & ~(infNan | tiny)) | ((o + 0x70000000u) & infNan) | (sub & tiny) |
                 ((x & 0x8000u) << 16);
    return (F8)r;
  }
  static float at(const uint16_t* p, int i) { return f16BitsToFloat(p[i]); }
};

// out[r][b] = dotF32(q[r], keys.row(b), d) for Q query rows and KB key rows,
// with its bits: Q x KB independent chains of eight partial sums (one after
// another, they wait on each other's adds), every key load serving the Q
// rows.
template <int Q, int KB, typename Rows>
__attribute__((always_inline)) inline void dotsRows(const float* const* q, const Rows& keys, int d, float (&out)[Q][KB]) {
  const int d8 = d & ~7;
  F8 part[Q][KB];
  for (int r = 0; r < Q; ++r)
    for (int b = 0; b < KB; ++b) part[r][b] = F8{};
  for (int i = 0; i < d8; i += 8) {
    F8 qv[Q];
    for (int r = 0; r < Q; ++r) qv[r] = load8(q[r] + i);
    for (int b = 0; b < KB; ++b) {
      const F8 kv = Rows::load(keys.row(b) + i);
      for (int r = 0; r < Q; ++r) part[r][b] += qv[r] * kv;
    }
  }
  // The trees, four at a time, then each dot product's tail in order.
  constexpr int N = Q * KB;
  float total[N];
  int n = 0;
  for (; n + 4 <= N; n += 4) {
    sumTree8x4(part[n / KB][n % KB], part[(n + 1) / KB][(n + 1) % KB], part[(n + 2) / KB][(n + 2) % KB],
               part[(n + 3) / KB][(n + 3) % KB], total + n);
  }
  for (; n < N; ++n) total[n] = sumTree8(part[n / KB][n % KB]);
  for (int b = 0; b < KB; ++b) {
    const auto* k = keys.row(b);
    for (int r = 0; r < Q; ++r) {
      float t8 = total[r * KB + b];
      for (int t = d8; t < d; ++t) t8 += q[r][t] * Rows::at(k, t);
      out[r][b] = t8;
    }
  }
}

// dotsRows over fp32 rows `stride` floats apart.
template <int Q, int KB>
__attribute__((always_inline)) inline void dotsF32(const float* const* q, const float* keys, size_t stride, int d,
                                                   float (&out)[Q][KB]) {
  dotsRows<Q, KB>(q, F32Rows{keys, stride}, d, out);
}

}  // namespace moba
