// Attention forward on the CPU (dense causal/non-causal and MoBA). K and V
// are widened to fp32 once. A work item is a tile of consecutive query
// positions of one sequence with every query head of one KV head: its rows
// walk the keys they may read a tile at a time, so each tile of K and V is
// loaded once for all of them (a key tile stays in cache while up to
// kQueryTile x group rows use it), with an online softmax per row whose
// arithmetic is the same as one row walking its keys alone.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "../common/dtype.h"
#include "../common/key_rows.h"
#include "cpu_ops.h"
#include "moba_select.h"
#include "online_softmax.h"

namespace moba {

namespace {

constexpr int kQueryTile = 16;  // query positions per item (times the KV head's query heads)
constexpr int kKeyTile = 64;    // keys per tile

std::vector<float> widen(const void* x, DType dtype, size_t count, ThreadPool& pool) {
  std::vector<float> out(count);
  pool.parallelFor(static_cast<int64_t>(count), [&](int64_t b, int64_t e) {
    loadRow(x, dtype, static_cast<size_t>(b), static_cast<size_t>(e - b), out.data() + b);
  }, 1 << 16);
  return out;
}

// Paged keys (chunked prefill over the KV cache): the K (or V) rows of every
// key in [totalK, numKVHeads, headDim] order, gathered from the pages as
// keyRows places them; the rest of the op reads them as contiguous rows.
std::vector<uint16_t> gatherPaged(const void* base, const AttentionParams& p, ThreadPool& pool) {
  const int d = p.heads.headDim, hk = p.heads.numKVHeads;
  const int64_t totalK = p.varlen.totalK;
  std::vector<uint16_t> rows(static_cast<size_t>(totalK) * hk * d);
  const uint16_t* src = static_cast<const uint16_t*>(base);
  pool.parallelFor(totalK, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t row = clampKeyRow(p.keyRows[t], p.keyRowsMax);
      for (int h = 0; h < hk; ++h) {
        std::copy_n(src + row + h * p.keyHeadStride, d, rows.data() + (static_cast<size_t>(t) * hk + h) * d);
      }
    }
  }, 256);
  return rows;
}

// A query tile: sequence b, KV head kvh, query positions [row0, row0 + rows / group) of the batch.
struct Tile {
  int b, kvh;
  int64_t row0;
  int positions;
};

}  // namespace

Status cpuAttention(const AttentionParams& p, ThreadPool& pool) {
  const Varlen& vl = p.varlen;
  const HeadShape& h = p.heads;
  const int d = h.headDim;
  const int group = h.numQHeads / h.numKVHeads;
  const size_t kvStride = static_cast<size_t>(h.numKVHeads) * d;
  const size_t kvCount = static_cast<size_t>(vl.totalK) * kvStride;
  std::vector<uint16_t> kPaged, vPaged;
  if (p.keyRows) {
    kPaged = gatherPaged(p.k, p, pool);
    vPaged = gatherPaged(p.v, p, pool);
  }
  const void* kRows = p.keyRows ? static_cast<const void*>(kPaged.data()) : p.k;
  const void* vRows = p.keyRows ? static_cast<const void*>(vPaged.data()) : p.v;
  std::vector<float> k = widen(kRows, p.dtype, kvCount, pool);
  std::vector<float> v = widen(vRows, p.dtype, kvCount, pool);
  const bool moba = p.chunkSize > 0;
  Centroids cent;
  if (moba) cent = computeCentroids(kRows, p.dtype, vl, h, p.chunkSize, pool);
  // Scores are kept in log2 units: exp2 of (scale * log2 e) * q.k.
  const float scaleLog2 = p.softmaxScale * 1.4426950408889634f;

  std::vector<Tile> tiles;
  for (int b = 0; b < vl.batch; ++b) {
    const int64_t q0 = vl.cuSeqlensQ[b], lq = vl.cuSeqlensQ[b + 1] - q0;
    for (int64_t r = 0; r < lq; r += kQueryTile) {
      for (int kvh = 0; kvh < h.numKVHeads; ++kvh) {
        tiles.push_back({b, kvh, q0 + r, static_cast<int>(std::min<int64_t>(kQueryTile, lq - r))});
      }
    }
  }

  pool.parallelFor(static_cast<int64_t>(tiles.size()), [&](int64_t begin, int64_t end) {
    std::vector<float> q(d), q2, acc, o(d);
    std::vector<OnlineSoftmax> st;
    std::vector<int64_t> pos;
    std::vector<int32_t> sel, blocks;
    std::vector<ScoredBlock> scratch;
    for (int64_t n = begin; n < end; ++n) {
      const Tile& tile = tiles[n];
      const int b = tile.b;
      const int64_t lq = vl.cuSeqlensQ[b + 1] - vl.cuSeqlensQ[b];
      const int64_t lk = vl.cuSeqlensK[b + 1] - vl.cuSeqlensK[b];
      const int rows = tile.positions * group;  // row r: position r / group, head kvh * group + r % group
      q2.resize(static_cast<size_t>(rows) * d);
      acc.resize(static_cast<size_t>(rows) * d);
      st.resize(rows);
      pos.resize(rows);
      const size_t kvHeadOff = static_cast<size_t>(vl.cuSeqlensK[b]) * kvStride + static_cast<size_t>(tile.kvh) * d;
      const float* ks = k.data() + kvHeadOff;
      const float* vs = v.data() + kvHeadOff;
      auto qOffset = [&](int r) {
        return (static_cast<size_t>(tile.row0 + r / group) * h.numQHeads + tile.kvh * group + r % group) * d;
      };
      if (moba) sel.assign(static_cast<size_t>(rows) * p.topK, -1);
      blocks.clear();
      int64_t lastPos = 0;
      for (int r = 0; r < rows; ++r) {
        st[r].reset(acc.data() + static_cast<size_t>(r) * d, d);
        pos[r] = lk - lq + (tile.row0 - vl.cuSeqlensQ[b]) + r / group;
        lastPos = std::max(lastPos, pos[r]);
        loadRow(p.q, p.dtype, qOffset(r), d, q.data());
        float* qs = q2.data() + static_cast<size_t>(r) * d;
        for (int i = 0; i < d; ++i) qs[i] = q[i] * scaleLog2;
        if (moba) {
          const float* c = cent.data.data() + static_cast<size_t>(cent.cuBlocks[b]) * kvStride +
                           static_cast<size_t>(tile.kvh) * d;
          int32_t* mine = sel.data() + static_cast<size_t>(r) * p.topK;
          selectBlocks(q.data(), c, kvStride, d, pos[r], p.chunkSize, p.topK, scratch, mine);
          for (int m = 0; m < p.topK && mine[m] >= 0; ++m) blocks.push_back(mine[m]);
        }
      }
      // The key ranges the tile's rows read, ascending: every key (dense), or
      // the union of the rows' blocks (MoBA; a range never spans two blocks).
      const int64_t keyEnd = p.causal || moba ? std::min(lk, lastPos + 1) : lk;
      const std::vector<std::pair<int64_t, int64_t>> ranges =
          moba ? blockRanges(blocks, p.chunkSize, keyEnd) : std::vector<std::pair<int64_t, int64_t>>{{0, keyEnd}};
      for (const auto& [first, last] : ranges) {
        const int32_t block = moba ? static_cast<int32_t>(first / p.chunkSize) : 0;
        for (int64_t p0 = first; p0 < last; p0 += kKeyTile) {
          const int n1 = static_cast<int>(std::min<int64_t>(kKeyTile, last - p0));
          const float* kt = ks + p0 * kvStride;
          const float* vt = vs + p0 * kvStride;
          for (int r = 0; r < rows; ++r) {
            if (moba && !selectsBlock(sel.data() + static_cast<size_t>(r) * p.topK, p.topK, block)) continue;
            // Causal (and MoBA): row r sees positions up to its own.
            const int n2 = p.causal || moba ? static_cast<int>(std::min<int64_t>(n1, pos[r] + 1 - p0)) : n1;
            if (n2 > 0) st[r].attend(q2.data() + static_cast<size_t>(r) * d, kt, vt, kvStride, d, n2);
          }
        }
      }
      for (int r = 0; r < rows; ++r) {
        const float inv = st[r].sum > 0.f ? 1.f / st[r].sum : 0.f;
        for (int i = 0; i < d; ++i) o[i] = st[r].acc[i] * inv;
        convertFromF32(o.data(), static_cast<char*>(p.out) + qOffset(r) * dtypeSize(p.dtype), d, p.dtype);
        if (p.lse) {
          // No key: -inf; a NaN score (the row's output is NaN too): NaN.
          const float lse = st[r].sum > 0.f ? (st[r].max + std::log2(st[r].sum)) * 0.6931471805599453f
                            : st[r].sum == 0.f ? -std::numeric_limits<float>::infinity()
                                               : st[r].sum;
          p.lse[static_cast<size_t>(tile.kvh * group + r % group) * vl.totalQ + tile.row0 + r / group] = lse;
        }
      }
    }
  }, 1);
  return Status::Ok();
}

}  // namespace moba
