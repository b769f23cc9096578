// MoBA block selection on the CPU, shared by the gate op and the attention
// op: block centroids and the per-query top-k over complete past blocks.
#pragma once
#include <cmath>
#include <cstdint>
#include <vector>

#include "../common/key_rows.h"
#include "../common/params.h"
#include "thread_pool.h"

namespace moba {

// Where key T (the packed order of cuSeqlensK) of KV head kh starts, in
// elements of K (or V): contiguous [totalK, numKVHeads, headDim] rows, or
// pages through per-key offsets (chunked prefill over the KV cache).
struct KeyLayout {
  int64_t rowStride = 0;  // contiguous: numKVHeads * headDim
  int headDim = 0;
  const int64_t* keyRows = nullptr;  // paged: each key's offset (see AttentionParams)
  int64_t keyHeadStride = 0;
  int64_t keyRowsMax = 0;
  const float* keySums = nullptr;  // paged, one key sum per block: the cache's sums (see AttentionParams)
  int64_t sumsPageStride = 0;
  int64_t keyPageStride = 0;

  static KeyLayout contiguous(const HeadShape& h) {
    KeyLayout l;
    l.rowStride = static_cast<int64_t>(h.numKVHeads) * h.headDim;
    l.headDim = h.headDim;
    return l;
  }
  static KeyLayout of(const AttentionParams& p) {
    KeyLayout l = contiguous(p.heads);
    l.keyRows = p.keyRows;
    l.keyHeadStride = p.keyHeadStride;
    l.keyRowsMax = p.keyRowsMax;
    if (p.keyRows) {
      l.keySums = p.keySums;
      l.sumsPageStride = p.sumsPageStride;
      l.keyPageStride = p.keyPageStride;
    }
    return l;
  }
  int64_t offset(int64_t key, int kh) const {
    return keyRows ? clampKeyRow(keyRows[key], keyRowsMax) + kh * keyHeadStride
                   : key * rowStride + static_cast<int64_t>(kh) * headDim;
  }
  // With keySums: the cache's sum of the block whose last key is lastKey,
  // kept at that key's page.
  const float* blockSum(int64_t lastKey, int kh) const {
    const int64_t page = clampKeyRow(keyRows[lastKey], keyRowsMax) / keyPageStride;
    return keySums + page * sumsPageStride + static_cast<int64_t>(kh) * headDim;
  }
};

// Centroids of every block of every sequence, fp32 [totalBlocks, numKVHeads, headDim].
struct Centroids {
  std::vector<float> data;
  std::vector<int32_t> cuBlocks;  // [batch+1] prefix sums of ceil(Lk / chunkSize)
};

Centroids computeCentroids(const void* k, const KeyLayout& layout, DType dtype, const Varlen& v, const HeadShape& h,
                           int chunkSize, ThreadPool& pool);

// Selects the blocks of query position `t` (head `h`) into `out[0..topK)`:
// ascending, -1 padded. `q` is the query row in fp32, `centroids` points at
// block 0 of the sequence for this query's KV head (stride between blocks:
// `blockStride` floats). `scratch` is reused between calls.
struct SelectScratch {
  std::vector<float> scores;    // every past block's score
  std::vector<uint64_t> keys;   // blocks ranked as integers (keepBestBlocks)
};
void selectBlocks(const float* q, const float* centroids, size_t blockStride, int headDim, int64_t t, int chunkSize,
                  int topK, SelectScratch& scratch, int32_t* out);
// Two query rows (positions t0 and t1) over the same centroids: the
// selections selectBlocks gives each, with every centroid read once for both.
void selectBlocksPair(const float* q0, const float* q1, const float* centroids, size_t blockStride, int headDim,
                      int64_t t0, int64_t t1, int chunkSize, int topK, SelectScratch& scratch, int32_t* out0,
                      int32_t* out1);

// Sequence index of every query row, so parallel chunks can start anywhere.
std::vector<int32_t> sequenceOfRows(const Varlen& v);

// Widens `count` elements of a bf16/f16 row to fp32.
void loadRow(const void* base, DType dtype, size_t offset, size_t count, float* dst);

inline float dotF32(const float* a, const float* b, int n) {
  // Eight independent partial sums let the compiler vectorize without -ffast-math.
  float s[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int i = 0;
  for (; i + 8 <= n; i += 8) {
    for (int j = 0; j < 8; ++j) s[j] += a[i + j] * b[i + j];
  }
  float total = ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
  for (; i < n; ++i) total += a[i] * b[i];
  return total;
}

}  // namespace moba
