// Paged KV cache writes and reads on the CPU: append copies new rows into
// their pages and keeps the fp32 key sums of each key-sum block; gather
// copies a sequence's pages back into contiguous rows, or writes where each
// row lies in them (keyRows, for attention over the pages).
#include <algorithm>
#include <cstring>
#include <vector>

#include "../common/dtype.h"
#include "cpu_kv.h"
#include "moba_select.h"

namespace moba {

bool readSegment(const int32_t* segments, int index, const PagedKV& kv, int numRows, Segment* out) {
  const int32_t* s = segments + static_cast<int64_t>(index) * kSegmentInts;
  Segment g{s[0], s[1], s[2], s[3], s[4], s[5]};
  if (g.page < 0 || g.page >= kv.numPages) return false;
  if (g.count < 0 || g.slot < 0 || g.slot > kv.pageSize - g.count) return false;
  if (g.row < 0 || g.row > numRows - g.count) return false;
  *out = g;
  return true;
}

namespace {

// Element offset of (page, head, slot) in the pool for the op's layer (K side).
int64_t slotOffset(const PagedKV& kv, int64_t page, int head, int slot) {
  return page * kv.pageStride() + kv.layerOffset() +
         (static_cast<int64_t>(head) * kv.pageSize + slot) * kv.headDim;
}

// The key sums of one piece (params.h) for KV head h: one worker adds its
// tokens in position order, from the value the piece continues, and stores
// the running sum into each of its pages; the CUDA kernel does the same.
// run, key: D floats of the worker's scratch.
void sumPiece(const KVAppendParams& p, int first, int h, float* run, float* key) {
  const PagedKV& kv = p.kv;
  const int H = kv.numKVHeads, D = kv.headDim;
  Segment g;
  if (!readSegment(p.segments, first, kv, p.numRows, &g)) return;
  auto sumsOf = [&](int64_t page) {
    return kv.keySums + page * kv.sumsPageStride() + kv.sumsLayerOffset() + static_cast<int64_t>(h) * D;
  };
  if (g.slot > 0) {
    std::copy(sumsOf(g.page), sumsOf(g.page) + D, run);
  } else if (g.carryPage >= 0 && g.carryPage < kv.numPages) {
    std::copy(sumsOf(g.carryPage), sumsOf(g.carryPage) + D, run);
  } else {
    std::fill(run, run + D, 0.f);
  }
  // As on CUDA: a piece spans at most sumPages segments and ends where the next begins.
  const int n = std::min({g.pieceSegments, kv.sumPages, p.numSegments - first});
  for (int e = 0; e < n; ++e) {
    if (e > 0 && (!readSegment(p.segments, first + e, kv, p.numRows, &g) || g.slot != 0 || g.pieceSegments != 0)) return;
    for (int i = 0; i < g.count; ++i) {
      loadRow(p.k, kv.dtype, (static_cast<size_t>(g.row + i) * H + h) * D, D, key);
      for (int d = 0; d < D; ++d) run[d] += key[d];
    }
    std::copy(run, run + D, sumsOf(g.page));
  }
}

}  // namespace

namespace {

// Copies every segment's rows between its page and the contiguous
// [numRows, numKVHeads, headDim] K/V (into the pages for append, out of them
// for gather), one (segment, KV head) per work item; then after(index, h)
// runs on the item's worker.
// Bytes: const char* for append, char* for gather.
template <bool kToPages, class Bytes, class After>
void copySegments(const PagedKV& kv, const int32_t* segments, int numSegments, int numRows, Bytes k, Bytes v,
                  ThreadPool& pool, int64_t grain, After after) {
  const int H = kv.numKVHeads, D = kv.headDim;
  const size_t es = dtypeSize(kv.dtype);
  const size_t rowBytes = static_cast<size_t>(D) * es;
  pool.parallelFor(static_cast<int64_t>(numSegments) * H, [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      Segment g;
      const int index = static_cast<int>(item / H);
      if (!readSegment(segments, index, kv, numRows, &g)) continue;
      const int h = static_cast<int>(item % H);
      char* kPage = static_cast<char*>(kv.pool) + slotOffset(kv, g.page, h, g.slot) * es;
      char* vPage = kPage + kv.vOffset() * es;
      for (int i = 0; i < g.count; ++i) {
        const size_t row = (static_cast<size_t>(g.row + i) * H + h) * rowBytes;
        if constexpr (kToPages) {
          std::memcpy(kPage + i * rowBytes, k + row, rowBytes);
          std::memcpy(vPage + i * rowBytes, v + row, rowBytes);
        } else {
          std::memcpy(k + row, kPage + i * rowBytes, rowBytes);
          std::memcpy(v + row, vPage + i * rowBytes, rowBytes);
        }
      }
      after(index, h, g);
    }
  }, grain);
}

}  // namespace

Status cpuKvAppend(const KVAppendParams& p, ThreadPool& pool) {
  const int D = p.kv.headDim;
  copySegments<true>(p.kv, p.segments, p.numSegments, p.numRows, static_cast<const char*>(p.k),
                     static_cast<const char*>(p.v), pool, 1, [&](int index, int h, const Segment& g) {
                       // Sums come from the rows, not the pages: no order against the copies.
                       if (g.pieceSegments == 0) return;
                       thread_local std::vector<float> run, key;  // the worker's scratch
                       run.resize(D);
                       key.resize(D);
                       sumPiece(p, index, h, run.data(), key.data());
                     });
  return Status::Ok();
}

Status cpuKvGather(const KVGatherParams& p, ThreadPool& pool) {
  if (p.keyRows) {
    std::fill(p.keyRows, p.keyRows + p.numRows, int64_t{0});
    for (int index = 0; index < p.numSegments; ++index) {
      Segment g;
      if (!readSegment(p.segments, index, p.kv, p.numRows, &g)) continue;
      for (int i = 0; i < g.count; ++i) p.keyRows[g.row + i] = slotOffset(p.kv, g.page, 0, g.slot + i) - p.kv.layerOffset();
    }
    return Status::Ok();
  }
  copySegments<false>(p.kv, p.segments, p.numSegments, p.numRows, static_cast<char*>(p.k), static_cast<char*>(p.v),
                      pool, 4, [](int, int, const Segment&) {});
  return Status::Ok();
}

}  // namespace moba
