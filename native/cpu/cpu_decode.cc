// Decode attention over the paged KV cache on the CPU: one (sequence, query
// head) per work item; its K/V rows are widened to fp32 once through the
// page table and reused by the sequence's 1..8 query tokens. 'moba' gates
// over the cache with block centroids built from the cache's key sums.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "../common/dtype.h"
#include "cpu_kv.h"
#include "moba_select.h"

namespace moba {

namespace {

struct SeqView {
  int qStart, qLen, kvLen;
  const int32_t* pages;
};

// The same admission rule as the CUDA kernels: a sequence whose metadata
// could reach outside the buffers is skipped (its rows stay untouched).
bool loadSeq(const DecodeParams& p, int b, SeqView* s) {
  const int32_t* info = p.seqInfo;
  const int qs = info[b], ql = info[p.batch + b], kl = info[2 * p.batch + b];
  const int p0 = info[3 * p.batch + b], p1 = info[3 * p.batch + b + 1];
  if (ql < 1 || ql > kMaxDecodeTokens || ql > p.maxQLen || qs < 0 || qs > p.numRows - ql) return false;
  // Page indices may repeat, so a sequence longer than the pool would pass
  // the page checks; its K/V copies could then exhaust host memory.
  if (kl < ql || kl > p.maxKvLen || kl > static_cast<int64_t>(p.kv.numPages) * p.kv.pageSize) return false;
  if (p0 < 0 || p1 < p0 || p1 > p.numPageIndices) return false;
  if (static_cast<int64_t>(p1 - p0) * p.kv.pageSize < kl) return false;
  const int32_t* pages = p.pageIndices + p0;
  for (int i = 0; i < p1 - p0; ++i) {
    if (pages[i] < 0 || pages[i] >= p.kv.numPages) return false;
  }
  *s = {qs, ql, kl, pages};
  return true;
}

// Online softmax of one query row over key ranges, in log2 units.
struct Softmax {
  float max = -std::numeric_limits<float>::infinity();
  float sum = 0.f;
  std::vector<float> acc;

  void reset(int d) {
    max = -std::numeric_limits<float>::infinity();
    sum = 0.f;
    acc.assign(d, 0.f);
  }
  void attend(const float* q2, const float* k, const float* v, int d, int64_t first, int64_t last) {
    for (int64_t s = first; s < last; ++s) {
      const float x = dotF32(q2, k + s * d, d);
      if (x > max) {
        const float corr = std::exp2(max - x);
        sum *= corr;
        for (int i = 0; i < d; ++i) acc[i] *= corr;
        max = x;
      }
      const float w = x == -std::numeric_limits<float>::infinity() ? 0.f : std::exp2(x - max);
      sum += w;
      const float* vr = v + s * d;
      for (int i = 0; i < d; ++i) acc[i] += w * vr[i];
    }
  }
};

}  // namespace

Status cpuDecodeAttention(const DecodeParams& p, ThreadPool& pool) {
  const PagedKV& kv = p.kv;
  const int D = kv.headDim, S = kv.pageSize;
  const int Hq = p.numQHeads, group = Hq / kv.numKVHeads;
  const size_t es = dtypeSize(kv.dtype);
  const float scaleLog2 = p.softmaxScale * 1.4426950408889634f;
  const bool moba = p.policy == DecodePolicy::Moba;
  const int B = p.chunkSize;

  pool.parallelFor(static_cast<int64_t>(p.batch) * Hq, [&](int64_t begin, int64_t end) {
    std::vector<float> k, v, cent, q(D), q2(D), o(D);
    std::vector<ScoredBlock> scratch;
    std::vector<int32_t> blocks(moba ? p.topK : 0);
    Softmax st;
    for (int64_t item = begin; item < end; ++item) {
      const int b = static_cast<int>(item / Hq), hq = static_cast<int>(item % Hq), kvh = hq / group;
      SeqView s;
      if (!loadSeq(p, b, &s)) continue;
      k.resize(static_cast<size_t>(s.kvLen) * D);
      v.resize(static_cast<size_t>(s.kvLen) * D);
      for (int pos = 0; pos < s.kvLen; ++pos) {
        const int64_t off = s.pages[pos / S] * kv.pageStride() + kv.layerOffset() +
                            (static_cast<int64_t>(kvh) * S + pos % S) * D;
        loadRow(kv.pool, kv.dtype, static_cast<size_t>(off), D, k.data() + static_cast<size_t>(pos) * D);
        loadRow(kv.pool, kv.dtype, static_cast<size_t>(off + kv.vOffset()), D, v.data() + static_cast<size_t>(pos) * D);
      }
      if (moba) {
        // Centroid of a complete block: the sum of its key-sum runs (each
        // read at the run's last page) / chunkSize.
        const int complete = s.kvLen / B;
        const int runPages = kv.sumPages;
        const int runsPerBlock = B / (S * runPages);
        cent.assign(static_cast<size_t>(complete) * D, 0.f);
        for (int j = 0; j < complete; ++j) {
          float* c = cent.data() + static_cast<size_t>(j) * D;
          for (int r = 0; r < runsPerBlock; ++r) {
            const int last = (j * runsPerBlock + r + 1) * runPages - 1;
            const float* sums = kv.keySums + s.pages[last] * kv.sumsPageStride() +
                                kv.sumsLayerOffset() + static_cast<int64_t>(kvh) * D;
            for (int d = 0; d < D; ++d) c[d] += sums[d];
          }
          const float inv = 1.f / static_cast<float>(B);
          for (int d = 0; d < D; ++d) c[d] *= inv;
        }
      }
      for (int i = 0; i < s.qLen; ++i) {
        const int row = s.qStart + i;
        const int64_t t = s.kvLen - s.qLen + i;
        const size_t qOff = (static_cast<size_t>(row) * Hq + hq) * D;
        loadRow(p.q, kv.dtype, qOff, D, q.data());
        for (int d = 0; d < D; ++d) q2[d] = q[d] * scaleLog2;
        st.reset(D);
        if (!moba) {
          st.attend(q2.data(), k.data(), v.data(), D, 0, t + 1);
        } else {
          selectBlocks(q.data(), cent.data(), static_cast<size_t>(D), D, t, B, p.topK, scratch, blocks.data());
          for (int n = 0; n < p.topK && blocks[n] >= 0; ++n) {
            const int64_t first = static_cast<int64_t>(blocks[n]) * B;
            st.attend(q2.data(), k.data(), v.data(), D, first, std::min<int64_t>(first + B, t + 1));
          }
        }
        const float inv = st.sum > 0.f ? 1.f / st.sum : 0.f;
        for (int d = 0; d < D; ++d) o[d] = st.acc[d] * inv;
        convertFromF32(o.data(), static_cast<char*>(p.out) + qOff * es, D, kv.dtype);
      }
    }
  }, 1);
  return Status::Ok();
}

}  // namespace moba
