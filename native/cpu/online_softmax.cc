#include "online_softmax.h"

#include "simd_clones.h"

namespace moba {

namespace {

// R rows over the tile's first n keys.
template <int R>
inline void attendGroup(OnlineSoftmax* st, const float* q2, int d, const int32_t* rows, const float* k, const float* v,
                        int n) {
  for (int s = 0; s < n; ++s) {
    const float* kr = k + static_cast<size_t>(s) * d;
    const float* vr = v + static_cast<size_t>(s) * d;
    float x[R];
    for (int j = 0; j < R; ++j) x[j] = dotF32(q2 + static_cast<size_t>(rows[j]) * d, kr, d);
    for (int j = 0; j < R; ++j) st[rows[j]].step(x[j], vr, d);
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
    attendGroup<4>(st, q2, d, rows + j, k, v, common);
    for (int i = j; i < j + 4; ++i) {
      const size_t skip = static_cast<size_t>(common) * d;
      if (counts[i] > common) attendGroup<1>(st, q2, d, rows + i, k + skip, v + skip, counts[i] - common);
    }
  }
  for (; j < numRows; ++j) attendGroup<1>(st, q2, d, rows + j, k, v, counts[j]);
}

}  // namespace moba
