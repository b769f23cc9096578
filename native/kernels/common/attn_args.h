// Arguments of the attention forward kernels (dense flash attention and the
// two MoBA kernels), shared by the host launchers and the device code. One
// struct for all three modes keeps the kernels' job decoding in one place.
#pragma once
#include <cstdint>

#include <cuda_runtime.h>

namespace moba {

// What one CTA computes.
//  Dense:       a tile of consecutive query rows of one (sequence, head) against
//               all its keys (causal or not).
//  MobaCurrent: the same tile against the keys of each row's own block up to
//               the row's position, then merged with the row's past-block
//               partials by log-sum-exp; writes the final output.
//  MobaPast:    a tile of gathered query-head rows that all chose one past key
//               block, against that whole block; writes normalized partials.
enum class FwdMode : int { Dense = 0, MobaCurrent = 1, MobaPast = 2 };

struct FwdArgs {
  const void* q = nullptr;    // [totalQ, numQHeads, headDim]
  const void* k = nullptr;    // [totalK, numKVHeads, headDim]
  const void* v = nullptr;    // [totalK, numKVHeads, headDim]
  void* out = nullptr;        // Dense/Current: [totalQ, numQHeads, headDim]; Past: partials [maxEntries, headDim]
  float* lse = nullptr;       // Dense/Current: [numQHeads, totalQ] or nullptr; Past: [maxEntries]
  const int32_t* cuSeqlensQ = nullptr;  // device [batch+1]
  const int32_t* cuSeqlensK = nullptr;  // device [batch+1]
  // Dense/Current: query tiles as (sequence, tile index), heaviest first;
  // CTA x takes tile x / numQHeads and head x % numQHeads.
  const int2* tiles = nullptr;
  int numTiles = 0;
  int batch = 0;
  int totalQ = 0;
  int numQHeads = 0;
  int numKVHeads = 0;
  int group = 1;              // numQHeads / numKVHeads
  float scaleLog2 = 0.f;      // softmaxScale * log2(e): scores live in log2 units
  int causal = 1;
  // MoBA
  int chunkSize = 0;
  int topK = 0;
  const int32_t* entryOf = nullptr;    // Current: [numQHeads * totalQ * (topK-1)], -1 = no such slot
  const void* partial = nullptr;       // Current: [maxEntries, headDim] normalized partial outputs
  const float* partialLse = nullptr;   // Current: [maxEntries] natural log
  const int32_t* segmentOffsets = nullptr;  // Past: [numSegments+1]
  const int32_t* entries = nullptr;         // Past: [maxEntries] query-head rows
  const int32_t* workOffsets = nullptr;     // Past: [numPairs+1] prefix sums of tiles per (block, kvHead)
  // Past: per work item two int4, {first entry, rows, keyBegin, keyEnd} and
  // {kvBase low, kvBase high, keys of the sequence, the sequence's first key
  // in the packed order} (moba_fwd.cu builds them).
  const int4* pastJobs = nullptr;
  int numPairs = 0;
  // Paged K/V (AttentionParams): key T of the packed order, KV head h, at
  // keyRows[T] + h * keyHeadStride elements past k (and v); nullptr: the
  // [totalK, numKVHeads, headDim] rows.
  const int64_t* keyRows = nullptr;
  int64_t keyHeadStride = 0;
  int64_t keyRowsMax = 0;   // larger offsets (and negative ones) read this one
};

}  // namespace moba
