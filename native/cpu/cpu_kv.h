// CPU implementations of the paged KV cache ops (append, gather, decode),
// run on the CPU stream thread. Params pointers are host memory.
#pragma once
#include "../common/params.h"
#include "../common/status.h"
#include "thread_pool.h"

namespace moba {

Status cpuKvAppend(const KVAppendParams& p, ThreadPool& pool);
Status cpuKvGather(const KVGatherParams& p, ThreadPool& pool);
Status cpuDecodeAttention(const DecodeParams& p, ThreadPool& pool);

// A segment read from metadata, or false when it would reach outside the
// pool or the rows (metadata is trusted from lib/, but never to the point
// of touching memory it does not describe).
struct Segment {
  int32_t page, slot, row, count;
  int32_t pieceSegments, carryPage;  // kvAppend's key-sum pieces (params.h)
};
bool readSegment(const int32_t* segments, int index, const PagedKV& kv, int numRows, Segment* out);

}  // namespace moba
