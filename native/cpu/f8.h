// Eight floats as one value (a GCC vector type, also Clang's): element-wise
// IEEE operations, one AVX register in an AVX2 build (simd_clones.h), two
// SSE registers in the baseline build; V16 below is one AVX-512 register.
// Every build gives the same bits, since none fuses multiply and add
// (-ffp-contract=off). A scalar operand of a binary operation is broadcast to
// every element.
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

// A vector of floats (F8, or V16 below) from memory and back.
template <typename V>
__attribute__((always_inline)) inline V loadv(const float* p) {
  V v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

template <typename V>
__attribute__((always_inline)) inline void storev(float* p, const V& v) {
  std::memcpy(p, &v, sizeof v);
}

__attribute__((always_inline)) inline F8 load8(const float* p) { return loadv<F8>(p); }

// dotF32's final sum of its eight partial sums (moba_select.h), in its order.
__attribute__((always_inline)) inline float sumTree8(const F8& p) {
  return ((p[0] + p[1]) + (p[2] + p[3])) + ((p[4] + p[5]) + (p[6] + p[7]));
}

// sumTree8 of four vectors at once, the same additions in the same order:
// each level adds neighbours, brought together by in-lane shuffles (one
// instruction each on AVX), instead of 28 scalar adds of spilled elements.
__attribute__((always_inline)) inline void sumTree8x4(const F8& a, const F8& b, const F8& c, const F8& d, float* out) {
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

// Sixteen floats: one AVX-512 register. Only the x86-64-v4 builds of the
// attention loops use it (online_softmax.cc); elsewhere it would be split
// into pairs of registers and spill.
typedef float V16 __attribute__((vector_size(64)));
typedef uint32_t U16 __attribute__((vector_size(64)));

// Two F8 side by side.
__attribute__((always_inline)) inline V16 join16(const F8& lo, const F8& hi) {
  return __builtin_shufflevector(lo, hi, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
}
__attribute__((always_inline)) inline F8 low8(const V16& v) { return __builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7); }
__attribute__((always_inline)) inline F8 high8(const V16& v) {
  return __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15);
}

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

// lanes16 of eight values at a and eight at b, in sixteen lanes.
template <bool High>
__attribute__((always_inline)) inline U16 lanes16x2(const uint16_t* a, const uint16_t* b) {
  typedef uint16_t H8 __attribute__((vector_size(16)));
  typedef uint16_t H16 __attribute__((vector_size(32)));
  typedef uint16_t H32 __attribute__((vector_size(64)));
  H8 x, y;
  std::memcpy(&x, a, sizeof x);
  std::memcpy(&y, b, sizeof y);
  const H16 h = __builtin_shufflevector(x, y, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  H32 w;
  if constexpr (High) {
    w = __builtin_shufflevector(H16{}, h, 0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23, 8, 24, 9, 25, 10,
                                26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
  } else {
    w = __builtin_shufflevector(h, H16{}, 0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23, 8, 24, 9, 25, 10,
                                26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
  }
  return (U16)w;
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
  // Eight at a, eight at b (b = a + 8: sixteen in a row).
  __attribute__((always_inline)) static V16 load2(const float* a, const float* b) {
    return join16(load8(a), load8(b));
  }
  static float at(const float* p, int i) { return p[i]; }
};

// A bf16 is the top half of its float.
struct Bf16Rows {
  const uint16_t* const* rows;
  const uint16_t* row(int s) const { return rows[s]; }
  Bf16Rows from(int s) const { return {rows + s}; }
  __attribute__((always_inline)) static F8 load(const uint16_t* p) { return (F8)lanes16<true>(p); }
  __attribute__((always_inline)) static V16 load2(const uint16_t* a, const uint16_t* b) {
    return (V16)lanes16x2<true>(a, b);
  }
  static float at(const uint16_t* p, int i) { return bf16BitsToFloat(p[i]); }
};

// f16BitsToFloat's operations on eight lanes at once.
struct F16Rows {
  const uint16_t* const* rows;
  const uint16_t* row(int s) const { return rows[s]; }
  F16Rows from(int s) const { return {rows + s}; }
  template <typename U, typename F>
  __attribute__((always_inline)) static F widen(const U& x) {
    const U o = (x & 0x7fffu) << 13;
    const U e = o & 0x0f800000u;
    const U infNan = (U)(e == 0x0f800000u);
    const U tiny = (U)(e == 0u);
    const U sub = (U)((F)(o + 0x38800000u) - bitsFloat(0x38800000u));
    const U r = ((o + 0x38000000u) & ~(infNan | tiny)) | ((o + 0x70000000u) & infNan) | (sub & tiny) |
                ((x & 0x8000u) << 16);
    return (F)r;
  }
  __attribute__((always_inline)) static F8 load(const uint16_t* p) { return widen<U8, F8>(lanes16<false>(p)); }
  __attribute__((always_inline)) static V16 load2(const uint16_t* a, const uint16_t* b) {
    return widen<U16, V16>(lanes16x2<false>(a, b));
  }
  static float at(const uint16_t* p, int i) { return f16BitsToFloat(p[i]); }
};

// L (8 or 16) consecutive elements of a row of `Rows` at p, as F8 or V16.
template <typename V, typename Rows, typename T>
__attribute__((always_inline)) inline V loadAs(const T* p) {
  if constexpr (sizeof(V) == sizeof(F8)) {
    return Rows::load(p);
  } else {
    return Rows::load2(p, p + 8);
  }
}

// The end of dotsRows: out[r][b] from part[r * KB + b], each dot product's
// tree (four at a time) and then its tail past the last multiple of 8, in
// order.
template <int Q, int KB, typename Rows>
__attribute__((always_inline)) inline void finishDots(const F8 (&part)[Q * KB], const float* const* q,
                                                      const Rows& keys, int d, float (&out)[Q][KB]) {
  constexpr int N = Q * KB;
  const int d8 = d & ~7;
  float total[N];
  int n = 0;
  for (; n + 4 <= N; n += 4) sumTree8x4(part[n], part[n + 1], part[n + 2], part[n + 3], total + n);
  for (; n < N; ++n) total[n] = sumTree8(part[n]);
  for (int b = 0; b < KB; ++b) {
    const auto* k = keys.row(b);
    for (int r = 0; r < Q; ++r) {
      float t8 = total[r * KB + b];
      for (int t = d8; t < d; ++t) t8 += q[r][t] * Rows::at(k, t);
      out[r][b] = t8;
    }
  }
}

// out[r][b] = dotF32(q[r], keys.row(b), d) for Q query rows and KB key rows,
// with its bits: Q x KB independent chains of eight partial sums (one after
// another, they wait on each other's adds), every key load serving the Q
// rows.
template <int Q, int KB, typename Rows>
__attribute__((always_inline)) inline void dotsRows(const float* const* q, const Rows& keys, int d, float (&out)[Q][KB]) {
  const int d8 = d & ~7;
  F8 part[Q * KB];
  for (int n = 0; n < Q * KB; ++n) part[n] = F8{};
  for (int i = 0; i < d8; i += 8) {
    F8 qv[Q];
    for (int r = 0; r < Q; ++r) qv[r] = load8(q[r] + i);
    for (int b = 0; b < KB; ++b) {
      const F8 kv = Rows::load(keys.row(b) + i);
      for (int r = 0; r < Q; ++r) part[r * KB + b] += qv[r] * kv;
    }
  }
  finishDots<Q, KB>(part, q, keys, d, out);
}

// dotsRows with KB even, two keys to a V16 (key 2i in its low half, 2i + 1 in
// its high half) and the query's eight floats in both halves: every lane adds
// the products dotsRows' does, in its order, so the same bits.
template <int Q, int KB, typename Rows>
__attribute__((always_inline)) inline void dotsRowsPairs(const float* const* q, const Rows& keys, int d,
                                                         float (&out)[Q][KB]) {
  static_assert(KB % 2 == 0, "keys in pairs");
  constexpr int P = KB / 2;
  const int d8 = d & ~7;
  V16 pairs[Q][P];
  for (int r = 0; r < Q; ++r)
    for (int b = 0; b < P; ++b) pairs[r][b] = V16{};
  for (int i = 0; i < d8; i += 8) {
    V16 qv[Q];
    for (int r = 0; r < Q; ++r) {
      const F8 h = load8(q[r] + i);
      qv[r] = join16(h, h);
    }
    for (int b = 0; b < P; ++b) {
      const V16 kv = Rows::load2(keys.row(2 * b) + i, keys.row(2 * b + 1) + i);
      for (int r = 0; r < Q; ++r) pairs[r][b] += qv[r] * kv;
    }
  }
  F8 part[Q * KB];
  for (int r = 0; r < Q; ++r)
    for (int b = 0; b < P; ++b) {
      part[r * KB + 2 * b] = low8(pairs[r][b]);
      part[r * KB + 2 * b + 1] = high8(pairs[r][b]);
    }
  finishDots<Q, KB>(part, q, keys, d, out);
}

// dotsRows over fp32 rows `stride` floats apart.
template <int Q, int KB>
__attribute__((always_inline)) inline void dotsF32(const float* const* q, const float* keys, size_t stride, int d,
                                                   float (&out)[Q][KB]) {
  dotsRows<Q, KB>(q, F32Rows{keys, stride}, d, out);
}

}  // namespace moba
