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

#include <cstring>

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

// out[r][b] = dotF32(q[r], keys + b * stride, d) for Q query rows and KB key
// rows, with its bits: Q x KB independent chains of eight partial sums (one
// after another, they wait on each other's adds), every key load serving the
// Q rows.
template <int Q, int KB>
__attribute__((always_inline)) inline void dotsF32(const float* const* q, const float* keys, size_t stride, int d,
                                                   float (&out)[Q][KB]) {
  const int d8 = d & ~7;
  F8 part[Q][KB];
  for (int r = 0; r < Q; ++r)
    for (int b = 0; b < KB; ++b) part[r][b] = F8{};
  for (int i = 0; i < d8; i += 8) {
    F8 qv[Q];
    for (int r = 0; r < Q; ++r) qv[r] = load8(q[r] + i);
    for (int b = 0; b < KB; ++b) {
      const F8 kv = load8(keys + b * stride + i);
      for (int r = 0; r < Q; ++r) part[r][b] += qv[r] * kv;
    }
  }
  for (int b = 0; b < KB; ++b) {
    const float* k = keys + b * stride;
    for (int r = 0; r < Q; ++r) {
      float total = sumTree8(part[r][b]);
      for (int t = d8; t < d; ++t) total += q[r][t] * k[t];
      out[r][b] = total;
    }
  }
}

}  // namespace moba
