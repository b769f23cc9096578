// What the CPU attention and decode ops share: the online softmax of one
// query row, and the key ranges a tile of MoBA rows reads.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <utility>
#include <vector>

#include "../common/dtype.h"
#include "moba_select.h"

namespace moba {

// One query row over keys taken one at a time, in log2 units. Each key, with
// score x and value row v, updates the row in this order and no other:
//   if x > max:  corr = exp2(max - x); sum *= corr; acc[i] *= corr; max = x
//   w = (x == -inf ? 0 : exp2(x - max)); sum += w; acc[i] += w * v[i]
// (every product and sum rounded to float: no fused multiply-add). The
// row's result depends only on which keys it reads and in what order, never
// on how they are tiled or which other rows share a tile (chunked prefill
// equals one-shot prefill bit for bit; dense attention equals MoBA whose
// blocks cover every key).
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
};

// Several rows over one tile of keys and values (rows d floats apart): row
// rows[j] (its state st[rows[j]], its query q2 + rows[j] * d, scaled by
// softmaxScale * log2(e)) takes the tile's first counts[j] keys (at least
// one), each scored by dotF32 and taken by the update above, in key order.
// So a row's bits do not depend on which rows share the call; rows go in
// groups (four, or eight in the AVX-512 build: simd_clones.h), each key and
// value row loaded once for the group.
void attendRows(OnlineSoftmax* st, const float* q2, int d, const int32_t* rows, const int32_t* counts, int numRows,
                const float* k, const float* v);
// The same, the tile's key and value rows read where they lie (key s at
// kRows[s], value s at vRows[s]: bf16 or f16 bits by dtype, widened as they
// are loaded, the same values as dtype.h's), so a tile read once, as decode
// reads the cache, is not first copied to fp32.
void attendRowsHalf(OnlineSoftmax* st, const float* q2, int d, const int32_t* rows, const int32_t* counts, int numRows,
                    DType dtype, const uint16_t* const* kRows, const uint16_t* const* vRows);

// Whether a row's selection (ascending blocks, then -1 padding) holds `block`.
inline bool selectsBlock(const int32_t* selected, int topK, int32_t block) {
  // -1 compares as the largest unsigned value: the padding sorts after every block.
  return std::binary_search(selected, selected + topK, block,
                            [](int32_t a, int32_t b) { return static_cast<uint32_t>(a) < static_cast<uint32_t>(b); });
}

// The key ranges [first, last) of the given blocks (sorted and made unique
// here), ascending, each cut at `end`: range i is block blocks[i], empty
// (last == first) for a block at or past `end`.
inline std::vector<std::pair<int64_t, int64_t>> blockRanges(std::vector<int32_t>& blocks, int chunkSize, int64_t end) {
  std::sort(blocks.begin(), blocks.end());
  blocks.erase(std::unique(blocks.begin(), blocks.end()), blocks.end());
  std::vector<std::pair<int64_t, int64_t>> ranges;
  for (int32_t j : blocks) {
    const int64_t first = static_cast<int64_t>(j) * chunkSize;
    ranges.push_back({first, std::max(first, std::min<int64_t>(first + chunkSize, end))});
  }
  return ranges;
}

}  // namespace moba
