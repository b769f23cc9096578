#include "moba_select.h"

#include <algorithm>

#include "../common/dtype.h"
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

void selectBlocks(const float* q, const float* centroids, size_t blockStride, int headDim, int64_t t, int chunkSize,
                  int topK, std::vector<ScoredBlock>& scratch, int32_t* out) {
  const int32_t current = static_cast<int32_t>(t / chunkSize);
  const int keepPast = std::min<int64_t>(topK - 1, current);
  scratch.clear();
  if (keepPast > 0) {
    for (int32_t j = 0; j < current; ++j) {
      scratch.push_back({dotF32(q, centroids + j * blockStride, headDim), j});
    }
    // Higher score first; NaN below everything; ties to the lower block index.
    auto better = [](const ScoredBlock& a, const ScoredBlock& b) {
      bool an = std::isnan(a.score), bn = std::isnan(b.score);
      if (an != bn) return bn;
      if (!an && a.score != b.score) return a.score > b.score;
      return a.block < b.block;
    };
    std::partial_sort(scratch.begin(), scratch.begin() + keepPast, scratch.end(), better);
    std::sort(scratch.begin(), scratch.begin() + keepPast,
              [](const ScoredBlock& a, const ScoredBlock& b) { return a.block < b.block; });
  }
  int n = 0;
  for (int i = 0; i < keepPast; ++i) out[n++] = scratch[i].block;
  out[n++] = current;
  while (n < topK) out[n++] = -1;
}

}  // namespace moba
