#include "online_softmax.h"

#include "f8.h"
#include "simd_clones.h"

namespace moba {

namespace {

// Keys per pass of attendGroup: its scores and weights live on the stack.
constexpr int kPassKeys = 64;

// R rows over the first n keys of a tile, with exactly the operations of
// OnlineSoftmax's update on each key in order (dotF32 for the score), so the
// bits are the update's; only the loops are reordered:
//   1. every score of the pass, KB keys at a time, so that R x KB dot
//      products (each with dotF32's eight partial sums, in its order) are
//      independent chains instead of one chain after another;
//   2. each row's maximum, rescale factors and weights, key by key;
//   3. the accumulators C x 8 floats at a time, held in registers while
//      every key of the pass is added (rescaled first where the update is),
//      instead of loaded and stored once per key.
// Always inlined: a call would run the baseline build of it from the AVX2
// clone of attendRows.
template <int R, int KB, int C>
__attribute__((always_inline)) inline void attendGroup(OnlineSoftmax* st, const float* q2, int d, const int32_t* rows,
                                                       const float* k, const float* v, int n) {
  const float* q[R];
  for (int j = 0; j < R; ++j) q[j] = q2 + static_cast<size_t>(rows[j]) * d;
  float x[kPassKeys][R], w[kPassKeys][R], corr[kPassKeys][R];
  bool rescale[kPassKeys][R];
  for (int s0 = 0; s0 < n; s0 += kPassKeys) {
    const int np = std::min(kPassKeys, n - s0);
    const float* kp = k + static_cast<size_t>(s0) * d;
    const float* vp = v + static_cast<size_t>(s0) * d;
    // 1. Scores.
    int s = 0;
    for (; s + KB <= np; s += KB) {
      float dots[R][KB];
      dotsF32<R, KB>(q, kp + static_cast<size_t>(s) * d, static_cast<size_t>(d), d, dots);
      for (int b = 0; b < KB; ++b)
        for (int j = 0; j < R; ++j) x[s + b][j] = dots[j][b];
    }
    for (; s < np; ++s) {
      for (int j = 0; j < R; ++j) x[s][j] = dotF32(q[j], kp + static_cast<size_t>(s) * d, d);
    }
    // 2. Maxima, rescale factors, weights and sums, in the update's order.
    for (int j = 0; j < R; ++j) {
      OnlineSoftmax& o = st[rows[j]];
      for (s = 0; s < np; ++s) {
        const float xs = x[s][j];
        rescale[s][j] = xs > o.max;
        if (rescale[s][j]) {
          corr[s][j] = std::exp2(o.max - xs);
          o.sum *= corr[s][j];
          o.max = xs;
        }
        w[s][j] = xs == -std::numeric_limits<float>::infinity() ? 0.f : std::exp2(xs - o.max);
        o.sum += w[s][j];
      }
    }
    // 3. Accumulators.
    int c0 = 0;
    for (; c0 + 8 * C <= d; c0 += 8 * C) {
      F8 a[R][C];
      for (int j = 0; j < R; ++j)
        for (int c = 0; c < C; ++c) a[j][c] = load8(st[rows[j]].acc + c0 + 8 * c);
      for (s = 0; s < np; ++s) {
        F8 vr[C];
        for (int c = 0; c < C; ++c) vr[c] = load8(vp + static_cast<size_t>(s) * d + c0 + 8 * c);
        for (int j = 0; j < R; ++j) {
          // A scalar operand is broadcast to every element.
          if (rescale[s][j]) {
            for (int c = 0; c < C; ++c) a[j][c] *= corr[s][j];
          }
          for (int c = 0; c < C; ++c) a[j][c] += w[s][j] * vr[c];
        }
      }
      for (int j = 0; j < R; ++j)
        for (int c = 0; c < C; ++c) store8(st[rows[j]].acc + c0 + 8 * c, a[j][c]);
    }
    for (int c = c0; c < d; ++c) {  // head dims that are not a multiple of 8 * C
      for (int j = 0; j < R; ++j) {
        float acc = st[rows[j]].acc[c];
        for (s = 0; s < np; ++s) {
          if (rescale[s][j]) acc *= corr[s][j];
          acc += w[s][j] * vp[static_cast<size_t>(s) * d + c];
        }
        st[rows[j]].acc[c] = acc;
      }
    }
  }
}

}  // namespace

MOBA_CPU_CLONES
void attendRows(OnlineSoftmax* st, const float* q2, int d, const int32_t* rows, const int32_t* counts, int numRows,
                const float* k, const float* v) {
  int j = 0;
  for (; j + 4 <= numRows; j += 4) {
    // The keys all four take together, then each row's own rest (causal
    // rows of the current block see fewer keys).
    const int common = std::max(0, std::min(std::min(counts[j], counts[j + 1]), std::min(counts[j + 2], counts[j + 3])));
    attendGroup<4, 2, 2>(st, q2, d, rows + j, k, v, common);
    for (int i = j; i < j + 4; ++i) {
      const size_t skip = static_cast<size_t>(common) * d;
      if (counts[i] > common) attendGroup<1, 8, 8>(st, q2, d, rows + i, k + skip, v + skip, counts[i] - common);
    }
  }
  for (; j < numRows; ++j) attendGroup<1, 8, 8>(st, q2, d, rows + j, k, v, counts[j]);
}

}  // namespace moba
