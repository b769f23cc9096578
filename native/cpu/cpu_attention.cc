// Attention forward on the CPU (dense causal/non-causal and MoBA): one
// (query row, head) per work item, K and V widened to fp32 once, an online
// softmax over the allowed key ranges.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "../common/dtype.h"
#include "cpu_ops.h"
#include "moba_select.h"

namespace moba {

namespace {

std::vector<float> widen(const void* x, DType dtype, size_t count, ThreadPool& pool) {
  std::vector<float> out(count);
  pool.parallelFor(static_cast<int64_t>(count), [&](int64_t b, int64_t e) {
    loadRow(x, dtype, static_cast<size_t>(b), static_cast<size_t>(e - b), out.data() + b);
  }, 1 << 16);
  return out;
}

// Running softmax state of one query row over key ranges, in log2 units.
struct RowState {
  float max = -std::numeric_limits<float>::infinity();
  float sum = 0.f;
  std::vector<float> acc;
};

void attendRange(const float* q2, const float* k, const float* v, size_t kvStride, int d, int64_t first,
                 int64_t last, RowState& st) {
  for (int64_t s = first; s < last; ++s) {
    float x = dotF32(q2, k + s * kvStride, d);
    if (x > st.max) {
      float corr = std::exp2(st.max - x);
      st.sum *= corr;
      for (int i = 0; i < d; ++i) st.acc[i] *= corr;
      st.max = x;
    }
    float w = x == -std::numeric_limits<float>::infinity() ? 0.f : std::exp2(x - st.max);
    st.sum += w;
    const float* vr = v + s * kvStride;
    for (int i = 0; i < d; ++i) st.acc[i] += w * vr[i];
  }
}

}  // namespace

Status cpuAttention(const AttentionParams& p, ThreadPool& pool) {
  const Varlen& vl = p.varlen;
  const HeadShape& h = p.heads;
  const int d = h.headDim;
  const int group = h.numQHeads / h.numKVHeads;
  const size_t kvStride = static_cast<size_t>(h.numKVHeads) * d;
  const size_t kvCount = static_cast<size_t>(vl.totalK) * kvStride;
  std::vector<float> k = widen(p.k, p.dtype, kvCount, pool);
  std::vector<float> v = widen(p.v, p.dtype, kvCount, pool);
  const bool moba = p.chunkSize > 0;
  Centroids cent;
  if (moba) cent = computeCentroids(p.k, p.dtype, vl, h, p.chunkSize, pool);
  std::vector<int32_t> seqOf = sequenceOfRows(vl);
  // Scores are kept in log2 units: exp2 of (scale * log2 e) * q.k.
  const float scaleLog2 = p.softmaxScale * 1.4426950408889634f;

  pool.parallelFor(static_cast<int64_t>(vl.totalQ) * h.numQHeads, [&](int64_t begin, int64_t end) {
    std::vector<float> q(d), q2(d);
    std::vector<ScoredBlock> scratch;
    std::vector<int32_t> blocks(moba ? p.topK : 0);
    RowState st;
    st.acc.resize(d);
    for (int64_t item = begin; item < end; ++item) {
      int64_t row = item / h.numQHeads;
      int head = static_cast<int>(item % h.numQHeads);
      int b = seqOf[row];
      int64_t lq = vl.cuSeqlensQ[b + 1] - vl.cuSeqlensQ[b];
      int64_t lk = vl.cuSeqlensK[b + 1] - vl.cuSeqlensK[b];
      int64_t t = lk - lq + (row - vl.cuSeqlensQ[b]);
      size_t qOff = (static_cast<size_t>(row) * h.numQHeads + head) * d;
      loadRow(p.q, p.dtype, qOff, d, q.data());
      for (int i = 0; i < d; ++i) q2[i] = q[i] * scaleLog2;
      const size_t kvHeadOff = static_cast<size_t>(vl.cuSeqlensK[b]) * kvStride + static_cast<size_t>(head / group) * d;
      const float* ks = k.data() + kvHeadOff;
      const float* vs = v.data() + kvHeadOff;
      st.max = -std::numeric_limits<float>::infinity();
      st.sum = 0.f;
      std::fill(st.acc.begin(), st.acc.end(), 0.f);
      if (!moba) {
        attendRange(q2.data(), ks, vs, kvStride, d, 0, p.causal ? t + 1 : lk, st);
      } else {
        const float* c = cent.data.data() + static_cast<size_t>(cent.cuBlocks[b]) * kvStride +
                         static_cast<size_t>(head / group) * d;
        selectBlocks(q.data(), c, kvStride, d, t, p.chunkSize, p.topK, scratch, blocks.data());
        for (int i = 0; i < p.topK && blocks[i] >= 0; ++i) {
          int64_t first = static_cast<int64_t>(blocks[i]) * p.chunkSize;
          int64_t last = std::min<int64_t>(first + p.chunkSize, t + 1);
          attendRange(q2.data(), ks, vs, kvStride, d, first, last, st);
        }
      }
      float inv = st.sum > 0.f ? 1.f / st.sum : 0.f;
      std::vector<float>& o = q;  // reuse as the fp32 output row
      for (int i = 0; i < d; ++i) o[i] = st.acc[i] * inv;
      void* outRow = static_cast<char*>(p.out) + qOff * dtypeSize(p.dtype);
      convertFromF32(o.data(), outRow, d, p.dtype);
      if (p.lse) {
        // No key: -inf; a NaN score (the row's output is NaN too): NaN.
        float lse = st.sum > 0.f ? (st.max + std::log2(st.sum)) * 0.6931471805599453f
                    : st.sum == 0.f ? -std::numeric_limits<float>::infinity()
                                    : st.sum;
        p.lse[static_cast<size_t>(head) * vl.totalQ + row] = lse;
      }
    }
  }, 4);
  return Status::Ok();
}

}  // namespace moba
