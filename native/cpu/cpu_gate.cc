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
  pool.parallelFor(static_cast<int64_t>(v.totalQ) * h.numQHeads, [&](int64_t begin, int64_t end) {
    std::vector<float> q(d);
    SelectScratch scratch;
    for (int64_t item = begin; item < end; ++item) {
      int64_t row = item / h.numQHeads;
      int head = static_cast<int>(item % h.numQHeads);
      int b = seqOf[row];
      int64_t lq = v.cuSeqlensQ[b + 1] - v.cuSeqlensQ[b];
      int64_t lk = v.cuSeqlensK[b + 1] - v.cuSeqlensK[b];
      int64_t t = lk - lq + (row - v.cuSeqlensQ[b]);
      loadRow(p.q, p.dtype, (static_cast<size_t>(row) * h.numQHeads + head) * d, d, q.data());
      const float* c = cent.data.data() + static_cast<size_t>(cent.cuBlocks[b]) * blockStride +
                       static_cast<size_t>(head / group) * d;
      int32_t* out = p.indices + (static_cast<size_t>(head) * v.totalQ + row) * p.topK;
      selectBlocks(q.data(), c, blockStride, d, t, p.chunkSize, p.topK, scratch, out);
    }
  }, 16);
  return Status::Ok();
}

}  // namespace moba
