#include "moba_select.h"

#include <algorithm>

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

// Higher score first; NaN below everything; ties to the lower block index.
// A strict total order (blocks are distinct), so the best k are one set
// however they are found.
inline bool better(const ScoredBlock& a, const ScoredBlock& b) {
  const bool an = std::isnan(a.score), bn = std::isnan(b.score);
  if (an != bn) return bn;
  if (!an && a.score != b.score) return a.score > b.score;
  return a.block < b.block;
}

// Lists up to this long are kept by insertion while the scores go by;
// longer ones by partial_sort.
constexpr int kInsertionKeep = 32;

// The best `keep` (<= kInsertionKeep) of blocks [0, n), best first, into best.
void keepBest(const float* scores, int32_t n, int keep, ScoredBlock* best) {
  int m = 0;
  auto offer = [&](int32_t j) {
    const ScoredBlock c{scores[j], j};
    if (m == keep && !better(c, best[m - 1])) return;
    int at = m < keep ? m++ : m - 1;  // full: the last drops out
    for (; at > 0 && better(c, best[at - 1]); --at) best[at] = best[at - 1];
    best[at] = c;
  };
  int32_t j = 0;
  for (; j < n && m < keep; ++j) offer(j);
  // The list is full and its blocks are all before j: a block enters only
  // with a score above the last one's (a NaN never does), or, while the last
  // one's is NaN, with any score that is not.
  while (j < n) {
    const float last = best[keep - 1].score;
    if (std::isnan(last)) {
      for (; j < n && std::isnan(scores[j]); ++j) {
      }
    } else {
      for (; j < n && !(scores[j] > last); ++j) {
      }
    }
    if (j < n) offer(j++);
  }
}

// A row's selection from the scores of its past blocks [0, current).
void pickBlocks(const float* scores, int32_t current, int topK, SelectScratch& scratch, int32_t* out) {
  const int keepPast = static_cast<int>(std::min<int32_t>(topK - 1, current));
  int n = 0;
  if (keepPast > 0) {
    ScoredBlock few[kInsertionKeep];
    ScoredBlock* best = few;
    if (keepPast <= kInsertionKeep) {
      keepBest(scores, current, keepPast, few);
    } else {
      scratch.ranked.resize(current);
      for (int32_t j = 0; j < current; ++j) scratch.ranked[j] = {scores[j], j};
      std::partial_sort(scratch.ranked.begin(), scratch.ranked.begin() + keepPast, scratch.ranked.end(), better);
      best = scratch.ranked.data();
    }
    std::sort(best, best + keepPast, [](const ScoredBlock& a, const ScoredBlock& b) { return a.block < b.block; });
    for (int i = 0; i < keepPast; ++i) out[n++] = best[i].block;
  }
  out[n++] = current;
  while (n < topK) out[n++] = -1;
}

}  // namespace

void selectBlocks(const float* q, const float* centroids, size_t blockStride, int headDim, int64_t t, int chunkSize,
                  int topK, SelectScratch& scratch, int32_t* out) {
  const int32_t current = static_cast<int32_t>(t / chunkSize);
  const int32_t scored = topK > 1 ? current : 0;
  scratch.scores.resize(scored);
  float* rowScores = scratch.scores.data();
  scoreBlocks(&q, 1, centroids, blockStride, headDim, scored, &rowScores);
  pickBlocks(rowScores, current, topK, scratch, out);
}

void selectBlocksPair(const float* q0, const float* q1, const float* centroids, size_t blockStride, int headDim,
                      int64_t t0, int64_t t1, int chunkSize, int topK, SelectScratch& scratch, int32_t* out0,
                      int32_t* out1) {
  const int32_t current0 = static_cast<int32_t>(t0 / chunkSize), current1 = static_cast<int32_t>(t1 / chunkSize);
  const int32_t scored = topK > 1 ? std::max(current0, current1) : 0;
  scratch.scores.resize(2 * static_cast<size_t>(scored));
  const float* q[2] = {q0, q1};
  float* rowScores[2] = {scratch.scores.data(), scratch.scores.data() + scored};
  scoreBlocks(q, 2, centroids, blockStride, headDim, scored, rowScores);
  pickBlocks(rowScores[0], current0, topK, scratch, out0);
  pickBlocks(rowScores[1], current1, topK, scratch, out1);
}

}  // namespace moba
