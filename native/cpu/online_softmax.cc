#include "online_softmax.h"

#include <vector>

#include "f8.h"
#include "simd_clones.h"

namespace moba {

namespace {

// Keys per pass of attendGroup: its scores and weights live on the stack.
constexpr int kPassKeys = 64;

// Step 3 of attendGroup for columns [c0, c0 + C x lanes of V): the rows'
// accumulators held in registers while every key of the pass is added,
// rescaled first where the update rescales.
template <typename V, int R, int C, typename Rows>
__attribute__((always_inline)) inline void addValues(OnlineSoftmax* st, const int32_t* rows, const Rows& vp, int np,
                                                     int c0, const float (&w)[kPassKeys][R],
                                                     const bool (&rescale)[kPassKeys][R],
                                                     const float (&corr)[kPassKeys][R]) {
  constexpr int L = sizeof(V) / sizeof(float);
  V a[R][C];
  for (int j = 0; j < R; ++j)
    for (int c = 0; c < C; ++c) a[j][c] = loadv<V>(st[rows[j]].acc + c0 + L * c);
  for (int s = 0; s < np; ++s) {
    V vr[C];
    for (int c = 0; c < C; ++c) vr[c] = loadAs<V, Rows>(vp.row(s) + c0 + L * c);
    for (int j = 0; j < R; ++j) {
      // A scalar operand is broadcast to every element.
      if (rescale[s][j]) {
        for (int c = 0; c < C; ++c) a[j][c] *= corr[s][j];
      }
      for (int c = 0; c < C; ++c) a[j][c] += w[s][j] * vr[c];
    }
  }
  for (int j = 0; j < R; ++j)
    for (int c = 0; c < C; ++c) storev(st[rows[j]].acc + c0 + L * c, a[j][c]);
}

// R rows over the first n keys of a tile, with exactly the operations of
// OnlineSoftmax's update on each key in order (dotF32 for the score), so the
// bits are the update's; only the loops are reordered:
//   1. every score of the pass, KB keys at a time, so that R x KB dot
//      products (each with dotF32's eight partial sums, in its order) are
//      independent chains instead of one chain after another;
//   2. each row's maximum, rescale factors and weights, key by key;
//   3. the accumulators C x 8 floats at a time (Wide: C x 16 first, and the
//      keys of step 1 in pairs), held in registers while every key of the
//      pass is added (rescaled first where the update is), instead of loaded
//      and stored once per key.
// Always inlined: a call would run the baseline build of it from the AVX2
// and AVX-512 bodies below.
template <int R, int KB, int C, bool Wide, typename Rows>
__attribute__((always_inline)) inline void attendGroup(OnlineSoftmax* st, const float* q2, int d, const int32_t* rows,
                                                       const Rows& k, const Rows& v, int n) {
  const float* q[R];
  for (int j = 0; j < R; ++j) q[j] = q2 + static_cast<size_t>(rows[j]) * d;
  float x[kPassKeys][R], w[kPassKeys][R], corr[kPassKeys][R];
  bool rescale[kPassKeys][R];
  for (int s0 = 0; s0 < n; s0 += kPassKeys) {
    const int np = std::min(kPassKeys, n - s0);
    const Rows kp = k.from(s0), vp = v.from(s0);
    // 1. Scores.
    int s = 0;
    for (; s + KB <= np; s += KB) {
      float dots[R][KB];
      if constexpr (Wide) {
        dotsRowsPairs<R, KB>(q, kp.from(s), d, dots);
      } else {
        dotsRows<R, KB>(q, kp.from(s), d, dots);
      }
      for (int b = 0; b < KB; ++b)
        for (int j = 0; j < R; ++j) x[s + b][j] = dots[j][b];
    }
    for (; s < np; ++s) {
      float dots[R][1];
      dotsRows<R, 1>(q, kp.from(s), d, dots);
      for (int j = 0; j < R; ++j) x[s][j] = dots[j][0];
    }
    // 2. Maxima, rescale factors, weights and sums, in the update's order.
    for (int j = 0; j < R; ++j) {
      // In locals: stores to w and corr could otherwise alias the state.
      float mx = st[rows[j]].max, sum = st[rows[j]].sum;
      for (s = 0; s < np; ++s) {
        const float xs = x[s][j];
        rescale[s][j] = xs > mx;
        if (rescale[s][j]) {
          corr[s][j] = std::exp2(mx - xs);
          sum *= corr[s][j];
          mx = xs;
        }
        w[s][j] = xs == -std::numeric_limits<float>::infinity() ? 0.f : std::exp2(xs - mx);
        sum += w[s][j];
      }
      st[rows[j]].max = mx;
      st[rows[j]].sum = sum;
    }
    // 3. Accumulators (Wide: 16 x C floats at a time first).
    int c0 = 0;
    if constexpr (Wide) {
      for (; c0 + 16 * C <= d; c0 += 16 * C) addValues<V16, R, C>(st, rows, vp, np, c0, w, rescale, corr);
    }
    for (; c0 + 8 * C <= d; c0 += 8 * C) addValues<F8, R, C>(st, rows, vp, np, c0, w, rescale, corr);
    for (int c = c0; c < d; ++c) {  // head dims that are not a multiple of 8 * C
      for (int j = 0; j < R; ++j) {
        float acc = st[rows[j]].acc[c];
        for (s = 0; s < np; ++s) {
          if (rescale[s][j]) acc *= corr[s][j];
          acc += w[s][j] * Rows::at(vp.row(s), c);
        }
        st[rows[j]].acc[c] = acc;
      }
    }
  }
}

// Rows [j, numRows) in groups of G that take their common keys together,
// then each row's own rest (causal rows of the current block see fewer
// keys); returns where the groups ended.
template <int G, bool Wide, typename Rows>
__attribute__((always_inline)) inline int attendGroupsOf(OnlineSoftmax* st, const float* q2, int d, const int32_t* rows,
                                                         const int32_t* counts, int numRows, int j, const Rows& k,
                                                         const Rows& v) {
  for (; j + G <= numRows; j += G) {
    int common = counts[j];
    for (int i = j + 1; i < j + G; ++i) common = std::min(common, counts[i]);
    common = std::max(common, 0);
    attendGroup<G, 2, 2, Wide>(st, q2, d, rows + j, k, v, common);
    for (int i = j; i < j + G; ++i) {
      if (counts[i] > common) {
        attendGroup<1, 8, 8, Wide>(st, q2, d, rows + i, k.from(common), v.from(common), counts[i] - common);
      }
    }
  }
  return j;
}

// Eight rows to a group where 16-float registers make room for them (32 of
// them), else four; a row's bits do not depend on its group.
template <bool Wide, typename Rows>
__attribute__((always_inline)) inline void attendRowsOf(OnlineSoftmax* st, const float* q2, int d, const int32_t* rows,
                                                        const int32_t* counts, int numRows, const Rows& k, const Rows& v) {
  int j = 0;
  if constexpr (Wide) j = attendGroupsOf<8, Wide>(st, q2, d, rows, counts, numRows, j, k, v);
  j = attendGroupsOf<4, Wide>(st, q2, d, rows, counts, numRows, j, k, v);
  for (; j < numRows; ++j) attendGroup<1, 8, 8, Wide>(st, q2, d, rows + j, k, v, counts[j]);
}

template <bool Wide>
__attribute__((always_inline)) inline void attendRowsF32(OnlineSoftmax* st, const float* q2, int d, const int32_t* rows,
                                                         const int32_t* counts, int numRows, const float* k,
                                                         const float* v) {
  const size_t stride = static_cast<size_t>(d);
  attendRowsOf<Wide>(st, q2, d, rows, counts, numRows, F32Rows{k, stride}, F32Rows{v, stride});
}

template <bool Wide>
__attribute__((always_inline)) inline void attendRowsHalfOf(OnlineSoftmax* st, const float* q2, int d,
                                                            const int32_t* rows, const int32_t* counts, int numRows,
                                                            DType dtype, const uint16_t* const* kRows,
                                                            const uint16_t* const* vRows) {
  if (dtype == DType::BF16) {
    attendRowsOf<Wide>(st, q2, d, rows, counts, numRows, Bf16Rows{kRows}, Bf16Rows{vRows});
  } else {
    attendRowsOf<Wide>(st, q2, d, rows, counts, numRows, F16Rows{kRows}, F16Rows{vRows});
  }
}

// The baseline (SSE2) build's: the tile's rows widened to fp32 first, then
// the fp32 loop. SSE2 has no cheap way to widen eight lanes inside the loop
// (GCC splits the 16-bit shuffles of 8-float vectors into scalar moves),
// which made the loop 1.7x slower than widening once per call.
__attribute__((always_inline)) inline void attendRowsHalfStaged(OnlineSoftmax* st, const float* q2, int d,
                                                                const int32_t* rows, const int32_t* counts,
                                                                int numRows, DType dtype,
                                                                const uint16_t* const* kRows,
                                                                const uint16_t* const* vRows) {
  int n = 0;
  for (int j = 0; j < numRows; ++j) n = std::max(n, counts[j]);
  thread_local std::vector<float> kf, vf;
  kf.resize(static_cast<size_t>(n) * d);
  vf.resize(kf.size());
  for (int s = 0; s < n; ++s) {
    float* k = kf.data() + static_cast<size_t>(s) * d;
    float* v = vf.data() + static_cast<size_t>(s) * d;
    if (dtype == DType::BF16) {
      for (int i = 0; i < d; ++i) k[i] = bf16BitsToFloat(kRows[s][i]);
      for (int i = 0; i < d; ++i) v[i] = bf16BitsToFloat(vRows[s][i]);
    } else {
      for (int i = 0; i < d; ++i) k[i] = f16BitsToFloat(kRows[s][i]);
      for (int i = 0; i < d; ++i) v[i] = f16BitsToFloat(vRows[s][i]);
    }
  }
  attendRowsF32<false>(st, q2, d, rows, counts, numRows, kf.data(), vf.data());
}

}  // namespace

// One body per instruction set where the toolchain picks one at load time
// (simd_clones.h): the AVX-512 one holds the accumulators and key pairs in
// 16-float registers, the others in 8-float ones. The same operations on
// every element in the same order, so the same bits on every machine. The
// versions are called from this file only: a call from a file that sees
// just the declaration would bind to the default body.
#define MOBA_ATTEND_ROWS(attrs, wide, staged)                                                                         \
  attrs void attendRowsIn(OnlineSoftmax* st, const float* q2, int d, const int32_t* rows, const int32_t* counts,     \
                          int numRows, const float* k, const float* v) {                                             \
    attendRowsF32<wide>(st, q2, d, rows, counts, numRows, k, v);                                                     \
  }                                                                                                                  \
  attrs void attendRowsHalfIn(OnlineSoftmax* st, const float* q2, int d, const int32_t* rows, const int32_t* counts, \
                              int numRows, DType dtype, const uint16_t* const* kRows,                                \
                              const uint16_t* const* vRows) {                                                        \
    if (staged) {                                                                                                    \
      attendRowsHalfStaged(st, q2, d, rows, counts, numRows, dtype, kRows, vRows);                                   \
    } else {                                                                                                         \
      attendRowsHalfOf<wide>(st, q2, d, rows, counts, numRows, dtype, kRows, vRows);                                 \
    }                                                                                                                \
  }

namespace {
#if MOBA_CPU_VERSIONS
MOBA_ATTEND_ROWS(__attribute__((target("arch=x86-64-v4"))), true, false)
MOBA_ATTEND_ROWS(__attribute__((target("avx2"))), false, false)
MOBA_ATTEND_ROWS(__attribute__((target("default"))), false, true)
#else
// One body. MOBA_CPU_WIDE_ONLY makes it the 16-float one (test/cpu-builds.test.ts
// builds it so, for x86-64-v4, to hold it to the others' bits); x86-64
// builds without AVX2 stage their 16-bit rows as the default body does.
#ifndef MOBA_CPU_WIDE_ONLY
#define MOBA_CPU_WIDE_ONLY false
#endif
#if defined(__x86_64__) && !defined(__AVX2__)
MOBA_ATTEND_ROWS(, MOBA_CPU_WIDE_ONLY, true)
#else
MOBA_ATTEND_ROWS(, MOBA_CPU_WIDE_ONLY, false)
#endif
#endif
}  // namespace

void attendRows(OnlineSoftmax* st, const float* q2, int d, const int32_t* rows, const int32_t* counts, int numRows,
                const float* k, const float* v) {
  attendRowsIn(st, q2, d, rows, counts, numRows, k, v);
}

void attendRowsHalf(OnlineSoftmax* st, const float* q2, int d, const int32_t* rows, const int32_t* counts, int numRows,
                    DType dtype, const uint16_t* const* kRows, const uint16_t* const* vRows) {
  attendRowsHalfIn(st, q2, d, rows, counts, numRows, dtype, kRows, vRows);
}

}  // namespace moba
