// The gate's output for the sparse attention kernels (all device memory, in
// the op's scratch): for every (key block, query head), the query rows that
// chose that block as a *past* block, so attention can gather them into dense
// tiles against one block of K/V. The query's own (current) block is not in
// the lists: the causal diagonal kernel handles it and merges the partials.
#pragma once
#include <cstddef>
#include <cstdint>

namespace moba {

struct MobaLists {
  // Blocks are numbered globally: block j of sequence b is cuBlocks[b] + j.
  int totalBlocks = 0;
  const int32_t* cuBlocks = nullptr;  // [batch+1] prefix sums of ceil(Lk_b / chunkSize)
  // Segment s = globalBlock * numQHeads + h, so the query heads sharing one KV
  // head are adjacent: (block, kvHead) owns segments
  // [(gb * numKVHeads + kvh) * group, (gb * numKVHeads + kvh + 1) * group).
  int numSegments = 0;                // totalBlocks * numQHeads
  const int32_t* segmentOffsets = nullptr;  // [numSegments + 1] prefix sums into entries
  // entries[e] = row * numQHeads + h (a "query-head row": row of q viewed as
  // [totalQ * numQHeads, headDim]), ascending within a segment.
  const int32_t* entries = nullptr;   // [maxEntries]
  // entryOf[(h * totalQ + row) * (topK - 1) + slot] = e for the slot-th
  // selected past block of that query (ascending block order), -1 when the
  // query has fewer than slot + 1 past blocks.
  const int32_t* entryOf = nullptr;   // [numQHeads * totalQ * (topK - 1)]
  int64_t maxEntries = 0;             // totalQ * numQHeads * (topK - 1), an upper bound
  const int32_t* numEntries = nullptr;  // [1] device: the actual count (== segmentOffsets[numSegments])
};

}  // namespace moba
