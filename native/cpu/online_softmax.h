// The online softmax of one query row, which the CPU attention and decode
// ops share, and the decode op's view of a tile of MoBA rows' selections.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <utility>
#include <vector>

#include "moba_select.h"

namespace moba {

// One query row over keys taken one at a time, in log2 units. The row's
// result depends only on which keys it reads and in what order, never on how
// they are tiled or which other rows share a tile (chunked prefill equals
// one-shot prefill bit for bit; dense attention equals MoBA whose blocks cover
// every key).
struct OnlineSoftmax {
  float max = -std::numeric_limits<float>::infinity();
  float sum = 0.f;
  float* acc = nullptr;  // [d]

  void reset(float* accumulator, int d) {
    max = -std::numeric_limits<float>::infinity();
    sum = 0.f;
    acc = accumulator;
    std::fill(acc, acc + d, 0.f);
  }

  // One key: its score x (log2 units) and its value row.
  void step(float x, const float* vr, int d) {
    if (x > max) {
      const float corr = std::exp2(max - x);
      sum *= corr;
      for (int i = 0; i < d; ++i) acc[i] *= corr;
      max = x;
    }
    const float w = x == -std::numeric_limits<float>::infinity() ? 0.f : std::exp2(x - max);
    sum += w;
    for (int i = 0; i < d; ++i) acc[i] += w * vr[i];
  }

  // n consecutive keys and values, rows `stride` floats apart; q2 is the
  // query scaled by softmaxScale * log2(e).
  void attend(const float* q2, const float* k, const float* v, size_t stride, int d, int n) {
    for (int s = 0; s < n; ++s) step(dotF32(q2, k + s * stride, d), v + s * stride, d);
  }
};

// Several rows over one tile of keys and values (rows d floats apart): row
// rows[j] (its state st[rows[j]], its query q2 + rows[j] * d) takes the
// tile's first counts[j] keys (at least one). Each row's operations are attend()'s, in the
// same order, so its bits do not depend on which rows share the call; rows go
// four at a time, each key and value row loaded once for the four (AVX2 where
// the CPU has it: simd_clones.h).
void attendRows(OnlineSoftmax* st, const float* q2, int d, const int32_t* rows, const int32_t* counts, int numRows,
                const float* k, const float* v);

// Whether a row's selection (ascending blocks, then -1 padding) holds `block`.
inline bool selectsBlock(const int32_t* selected, int topK, int32_t block) {
  // -1 compares as the largest unsigned value: the padding sorts after every block.
  return std::binary_search(selected, selected + topK, block,
                            [](int32_t a, int32_t b) { return static_cast<uint32_t>(a) < static_cast<uint32_t>(b); });
}

// The key ranges [first, last) of the given blocks (sorted and made unique
// here), ascending, each cut at `end`; empty ones left out.
inline std::vector<std::pair<int64_t, int64_t>> blockRanges(std::vector<int32_t>& blocks, int chunkSize, int64_t end) {
  std::sort(blocks.begin(), blocks.end());
  blocks.erase(std::unique(blocks.begin(), blocks.end()), blocks.end());
  std::vector<std::pair<int64_t, int64_t>> ranges;
  for (int32_t j : blocks) {
    const int64_t first = static_cast<int64_t>(j) * chunkSize;
    const int64_t last = std::min<int64_t>(first + chunkSize, end);
    if (first < last) ranges.push_back({first, last});
  }
  return ranges;
}

}  // namespace moba
