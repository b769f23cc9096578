#include "moba_select.h"

#include <algorithm>
#include <cstring>
#include <functional>

#include "../common/dtype.h"
#include "f8.h"
#include "simd_clones.h"

namespace moba {

// Widening runs for every key and value row the CPU ops read (AVX2 where
// the CPU has it).
MOBA_CPU_CLONES
void loadRow(const void* base, DType dtype, size_t offset, size_t count, float* dst) {
  const uint16_t* src = static_cast<const uint16_t*>(base) + offset;
  if (dtype == DType::BF16) {
    for (size_t i = 0; i < count; ++i) dst[i] = bf16BitsToFloat(src[i]);
  } else if (dtype == DType::F16) {
    for (size_t i = 0; i < count; ++i) dst[i] = f16BitsToFloat(src[i]);
  } else {
    const float* f = static_cast<const float*>(base) + offset;
    std::copy(f, f + count, dst);
  }
}

std::vector<int32_t> sequenceOfRows(const Varlen& v) {
  std::vector<int32_t> seq(v.totalQ);
  for (int b = 0; b < v.batch; ++b) {
    std::fill(seq.begin() + v.cuSeqlensQ[b], seq.begin() + v.cuSeqlensQ[b + 1], b);
  }
  return seq;
}

Centroids computeCentroids(const void* k, const KeyLayout& layout, DType dtype, const Varlen& v, const HeadShape& h,
                           int chunkSize, ThreadPool& pool) {
  Centroids c;
  c.cuBlocks.resize(v.batch + 1);
  c.cuBlocks[0] = 0;
  for (int b = 0; b < v.batch; ++b) {
    int64_t lk = v.cuSeqlensK[b + 1] - v.cuSeqlensK[b];
    c.cuBlocks[b + 1] = c.cuBlocks[b] + static_cast<int32_t>((lk + chunkSize - 1) / chunkSize);
  }
  const int64_t totalBlocks = c.cuBlocks[v.batch];
  const int d = h.headDim;
  const size_t rowStride = static_cast<size_t>(h.numKVHeads) * d;
  c.data.assign(static_cast<size_t>(totalBlocks) * rowStride, 0.f);
  pool.parallelFor(totalBlocks, [&](int64_t begin, int64_t end) {
    std::vector<float> row(d);
    for (int64_t gb = begin; gb < end; ++gb) {
      int b = static_cast<int>(std::upper_bound(c.cuBlocks.begin(), c.cuBlocks.end(), static_cast<int32_t>(gb)) -
                               c.cuBlocks.begin()) - 1;
      int64_t j = gb - c.cuBlocks[b];
      int64_t seqStart = v.cuSeqlensK[b];
      int64_t lk = v.cuSeqlensK[b + 1] - seqStart;
      int64_t first = j * chunkSize;
      int64_t last = std::min<int64_t>(lk, first + chunkSize);
      float* out = c.data.data() + gb * rowStride;
      if (layout.keySums) {
        // The cache added the block's keys in the same order as the loop below.
        for (int kh = 0; kh < h.numKVHeads; ++kh) {
          const float* sum = layout.blockSum(seqStart + last - 1, kh);
          std::copy(sum, sum + d, out + static_cast<size_t>(kh) * d);
        }
      }
      for (int64_t s = layout.keySums ? last : first; s < last; ++s) {
        for (int kh = 0; kh < h.numKVHeads; ++kh) {
          loadRow(k, dtype, static_cast<size_t>(layout.offset(seqStart + s, kh)), d, row.data());
          float* acc = out + static_cast<size_t>(kh) * d;
          for (int i = 0; i < d; ++i) acc[i] += row[i];
        }
      }
      float inv = 1.f / static_cast<float>(last - first);
      for (size_t i = 0; i < rowStride; ++i) out[i] *= inv;
    }
  });
  return c;
}

namespace {

// The scores of blocks [0, n) for Q query rows (dotF32 of each row with each
// centroid, its bits), KB blocks at a time (dotsF32).
template <int Q, int KB>
__attribute__((always_inline)) inline void scoreBlocksOf(const float* const* q, const float* centroids,
                                                         size_t blockStride, int d, int n, float* const* out) {
  int j = 0;
  for (; j + KB <= n; j += KB) {
    float dots[Q][KB];
    dotsF32<Q, KB>(q, centroids + j * blockStride, blockStride, d, dots);
    for (int r = 0; r < Q; ++r)
      for (int b = 0; b < KB; ++b) out[r][j + b] = dots[r][b];
  }
  for (; j < n; ++j) {
    for (int r = 0; r < Q; ++r) out[r][j] = dotF32(q[r], centroids + j * blockStride, d);
  }
}

// One or two query rows (nq) against the same centroids.
MOBA_CPU_CLONES
void scoreBlocks(const float* const* q, int nq, const float* centroids, size_t blockStride, int d, int n,
                 float* const* out) {
  if (nq == 2) {
    scoreBlocksOf<2, 4>(q, centroids, blockStride, d, n, out);
  } else {
    scoreBlocksOf<1, 8>(q, centroids, blockStride, d, n, out);
  }
}

// A block's rank as one integer, larger first: the score's order (NaN below
// everything, -0 equal to +0), then the lower block index. A strict total
// order (blocks are distinct), so the best k are one set however they are
// found, and comparing keys costs no branches on NaN.
inline uint64_t rankKey(float score, int32_t block) {
  if (score == 0.f) score = 0.f;  // -0 ranks as +0
  uint32_t u;
  std::memcpy(&u, &score, sizeof u);
  u = (u & 0x80000000u) ? ~u : (u | 0x80000000u);
  if (std::isnan(score)) u = 0;
  return (static_cast<uint64_t>(u) << 32) | (0xffffffffu - static_cast<uint32_t>(block));
}
inline int32_t blockOfKey(uint64_t key) { return static_cast<int32_t>(0xffffffffu - static_cast<uint32_t>(key)); }

// Puts the best keep (< n) of keys [0, n) first, in any order.
inline void selectBestKeys(uint64_t* keys, int n, int keep) {
  std::nth_element(keys, keys + keep - 1, keys + n, std::greater<uint64_t>());
}

// The first block from j on that ranks above a kept block scored last,
// given that every block from j on comes after it: a score above last (a
// NaN never is), or, while last is NaN, any score that is not. n if none.
inline int32_t nextAbove(const float* scores, int32_t j, int32_t n, float last) {
  if (std::isnan(last)) {
    while (j < n && std::isnan(scores[j])) ++j;
  } else {
    while (j < n && !(scores[j] > last)) ++j;
  }
  return j;
}

// The best keep blocks of [0, n) into blocks[0, keep), in any order. Which
// way is fastest depends on n and keep (measured per row, n 16 to 2,048,
// keep 2 to 63, i.i.d. scores):
//  - by insertion into a sorted list while the scores go by, each score
//    first compared with the list's last: most scores stop there once
//    the list is full, but each entering block shifts up to keep others.
//    Fastest where n >= 4 keep^2.
//  - one selection (nth_element) over every block's key: fastest up to
//    n = 24 keep.
//  - past that, keys appended to a buffer of 2 keep only while they beat
//    the keep-th best so far, the buffer cut back to keep by a selection
//    whenever it fills.
// keys has room for max(n, 2 keep) entries.
void keepBestBlocks(const float* scores, int32_t n, int keep, uint64_t* keys, int32_t* blocks) {
  if (n >= 4 * keep * keep) {
    int m = 0;  // keys[0, m): the best so far, best first
    auto offer = [&](int32_t j) {
      const uint64_t c = rankKey(scores[j], j);
      if (m == keep && c < keys[m - 1]) return;
      int at = m < keep ? m++ : m - 1;  // full: the last drops out
      for (; at > 0 && c > keys[at - 1]; --at) keys[at] = keys[at - 1];
      keys[at] = c;
    };
    int32_t j = 0;
    for (; j < n && m < keep; ++j) offer(j);
    // The list is full and its blocks all come before j.
    while ((j = nextAbove(scores, j, n, scores[blockOfKey(keys[keep - 1])])) < n) offer(j++);
  } else if (n <= 24 * keep) {
    for (int32_t j = 0; j < n; ++j) keys[j] = rankKey(scores[j], j);
    selectBestKeys(keys, n, keep);
  } else {
    const int cap = 2 * keep;
    int m = 0;
    int32_t j = 0;
    for (; j < cap; ++j) keys[m++] = rankKey(scores[j], j);
    selectBestKeys(keys, m, keep);
    m = keep;
    // keys[keep - 1] is the keep-th best so far.
    float last = scores[blockOfKey(keys[keep - 1])];
    while ((j = nextAbove(scores, j, n, last)) < n) {
      keys[m++] = rankKey(scores[j], j);
      ++j;
      if (m == cap) {
        selectBestKeys(keys, m, keep);
        m = keep;
        last = scores[blockOfKey(keys[keep - 1])];
      }
    }
    if (m > keep) selectBestKeys(keys, m, keep);
  }
  for (int i = 0; i < keep; ++i) blocks[i] = blockOfKey(keys[i]);
}

// A row's selection from the scores of its past blocks [0, current);
// scores is not read when the row keeps every past block.
void pickBlocks(const float* scores, int32_t current, int topK, SelectScratch& scratch, int32_t* out) {
  const int keepPast = static_cast<int>(std::min<int32_t>(topK - 1, current));
  int n = 0;
  if (keepPast == current) {
    for (; n < keepPast; ++n) out[n] = n;
  } else if (keepPast > 0) {
    scratch.keys.resize(std::max<size_t>(current, 2 * static_cast<size_t>(keepPast)));
    keepBestBlocks(scores, current, keepPast, scratch.keys.data(), out);
    std::sort(out, out + keepPast);
    n = keepPast;
  }
  out[n++] = current;
  while (n < topK) out[n++] = -1;
}

// Blocks a row scores: none when it keeps no past block (topK 1) or every one.
inline int32_t blocksToScore(int32_t current, int topK) { return topK <= 1 || topK - 1 >= current ? 0 : current; }

}  // namespace

void selectBlocks(const float* q, const float* centroids, size_t blockStride, int headDim, int64_t t, int chunkSize,
                  int topK, SelectScratch& scratch, int32_t* out) {
  const int32_t current = static_cast<int32_t>(t / chunkSize);
  const int32_t scored = blocksToScore(current, topK);
  scratch.scores.resize(scored);
  float* rowScores = scratch.scores.data();
  scoreBlocks(&q, 1, centroids, blockStride, headDim, scored, &rowScores);
  pickBlocks(rowScores, current, topK, scratch, out);
}

void selectBlocksPair(const float* q0, const float* q1, const float* centroids, size_t blockStride, int headDim,
                      int64_t t0, int64_t t1, int chunkSize, int topK, SelectScratch& scratch, int32_t* out0,
                      int32_t* out1) {
  const int32_t current0 = static_cast<int32_t>(t0 / chunkSize), current1 = static_cast<int32_t>(t1 / chunkSize);
  const int32_t scored = std::max(blocksToScore(current0, topK), blocksToScore(current1, topK));
  scratch.scores.resize(2 * static_cast<size_t>(scored));
  const float* q[2] = {q0, q1};
  float* rowScores[2] = {scratch.scores.data(), scratch.scores.data() + scored};
  scoreBlocks(q, 2, centroids, blockStride, headDim, scored, rowScores);
  pickBlocks(rowScores[0], current0, topK, scratch, out0);
  pickBlocks(rowScores[1], current1, topK, scratch, out1);
}

}  // namespace moba
