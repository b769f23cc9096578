// mobaGate on the CPU: centroids once, then every (query, head) scored
// against its sequence's complete past blocks in parallel.
#include <algorithm>
#include <vector>

#include "cpu_ops.h"
#include "moba_select.h"

namespace moba {

Status cpuMobaGate(const GateParams& p, ThreadPool& pool) {
  const Varlen& v = p.varlen;
  const HeadShape& h = p.heads;
  Centroids cent = computeCentroids(p.k, KeyLayout::contiguous(h), p.dtype, v, h, p.chunkSize, pool);
  std::vector<int32_t> seqOf = sequenceOfRows(v);
  const int d = h.headDim;
  const int group = h.numQHeads / h.numKVHeads;
  const size_t blockStride = static_cast<size_t>(h.numKVHeads) * d;
  // A query row's sequence, position and centroids (of its head's KV head).
  struct RowView {
    int b;
    int64_t t;
    const float* centroids;
  };
  auto viewOf = [&](int64_t row, int head) {
    const int b = seqOf[row];
    const int64_t lq = v.cuSeqlensQ[b + 1] - v.cuSeqlensQ[b];
    const int64_t lk = v.cuSeqlensK[b + 1] - v.cuSeqlensK[b];
    return RowView{b, lk - lq + (row - v.cuSeqlensQ[b]),
                   cent.data.data() + static_cast<size_t>(cent.cuBlocks[b]) * blockStride +
                       static_cast<size_t>(head / group) * d};
  };
  // Items are (two consecutive query rows, head): two rows of one sequence
  // share their centroids, which are then read once for both.
  const int64_t pairs = (v.totalQ + 1) / 2;
  pool.parallelFor(pairs * h.numQHeads, [&](int64_t begin, int64_t end) {
    std::vector<float> q0(d), q1(d);
    SelectScratch scratch;
    for (int64_t item = begin; item < end; ++item) {
      const int64_t row0 = item / h.numQHeads * 2, row1 = row0 + 1;
      const int head = static_cast<int>(item % h.numQHeads);
      auto queryOf = [&](int64_t row, std::vector<float>& q) {
        loadRow(p.q, p.dtype, (static_cast<size_t>(row) * h.numQHeads + head) * d, d, q.data());
        return q.data();
      };
      auto outOf = [&](int64_t row) { return p.indices + (static_cast<size_t>(head) * v.totalQ + row) * p.topK; };
      const RowView r0 = viewOf(row0, head);
      if (row1 >= v.totalQ || seqOf[row1] != r0.b) {
        selectBlocks(queryOf(row0, q0), r0.centroids, blockStride, d, r0.t, p.chunkSize, p.topK, scratch, outOf(row0));
        if (row1 >= v.totalQ) continue;
        const RowView r1 = viewOf(row1, head);
        selectBlocks(queryOf(row1, q1), r1.centroids, blockStride, d, r1.t, p.chunkSize, p.topK, scratch, outOf(row1));
        continue;
      }
      selectBlocksPair(queryOf(row0, q0), queryOf(row1, q1), r0.centroids, blockStride, d, r0.t, r0.t + 1,
                       p.chunkSize, p.topK, scratch, outOf(row0), outOf(row1));
    }
  }, 8);
  return Status::Ok();
}

}  // namespace moba
