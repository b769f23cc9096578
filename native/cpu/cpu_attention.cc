// Attention forward on the CPU (dense causal/non-causal and MoBA). A work
// item is a tile of consecutive query positions of one sequence with every
// query head of one KV head: its rows walk the keys they may read a tile at a
// time, so each tile of K and V is widened to fp32 once for all the rows that
// read it (in place in the KV cache's pages for a chunked prefill), with an
// online softmax per row whose arithmetic is the same as one row walking its
// keys alone.
//
// Dense rows read every key tile, so tiles of 64 rows reuse each key tile
// enough (16 rows spent a quarter of the op widening). A MoBA row reads only
// its topK blocks: with 16 positions per tile, a block's key tile served
// about topK x rows / blocks of them (2 rows at 32K in blocks of 512), and the
// op streamed K and V from memory once per row.
// MoBA tiles are therefore large (up to kMobaTileRows rows), and each block
// goes, in ascending order, to the list of rows that selected it.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "../common/dtype.h"
#include "cpu_ops.h"
#include "moba_select.h"
#include "online_softmax.h"

namespace moba {

namespace {

constexpr int kQueryTile = 16;       // query positions per item at least (times the KV head's query heads)
constexpr int kDenseTileRows = 64;   // dense: rows per item (64 positions with one query head per KV head)
constexpr int kMobaTileRows = 1024;  // MoBA: rows per item at most (their accumulators: 512 KB at head dim 128)
constexpr int kKeyTile = 64;         // keys per tile

// Query positions per item: for dense rows kDenseTileRows rows' worth (at
// least kQueryTile), so that each key tile widened serves enough rows; for
// MoBA as many as kMobaTileRows rows allow, halved while there would be fewer
// than four items per thread.
int tilePositions(bool moba, int group, int64_t totalQ, int numKVHeads, int threads) {
  if (!moba) return std::max(kQueryTile, kDenseTileRows / group);
  int positions = std::max(kQueryTile, kMobaTileRows / group);
  auto items = [&](int n) { return static_cast<int64_t>(numKVHeads) * ((totalQ + n - 1) / n); };
  while (positions > kQueryTile && items(positions) < 4 * static_cast<int64_t>(threads)) positions /= 2;
  return std::max(positions, kQueryTile);
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
  const KeyLayout keys = KeyLayout::of(p);
  const bool moba = p.chunkSize > 0;
  Centroids cent;
  if (moba) cent = computeCentroids(p.k, keys, p.dtype, vl, h, p.chunkSize, pool);
  // Scores are kept in log2 units: exp2 of (scale * log2 e) * q.k.
  const float scaleLog2 = p.softmaxScale * 1.4426950408889634f;

  const int positions = tilePositions(moba, group, vl.totalQ, h.numKVHeads, pool.size());
  std::vector<Tile> tiles;
  for (int b = 0; b < vl.batch; ++b) {
    const int64_t q0 = vl.cuSeqlensQ[b], lq = vl.cuSeqlensQ[b + 1] - q0;
    for (int64_t r = 0; r < lq; r += positions) {
      for (int kvh = 0; kvh < h.numKVHeads; ++kvh) {
        tiles.push_back({b, kvh, q0 + r, static_cast<int>(std::min<int64_t>(positions, lq - r))});
      }
    }
  }

  pool.parallelFor(static_cast<int64_t>(tiles.size()), [&](int64_t begin, int64_t end) {
    std::vector<float> q(d), q2, acc, o(d), kt(static_cast<size_t>(kKeyTile) * d), vt(kt.size());
    std::vector<OnlineSoftmax> st;
    std::vector<int64_t> pos;
    std::vector<int32_t> sel, blocks, rowsOfBlock, firstRow, nextRow, tileRows, tileCounts;
    SelectScratch scratch;
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
      const int64_t key0 = vl.cuSeqlensK[b];
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
          const size_t blockStride = static_cast<size_t>(h.numKVHeads) * d;
          const float* c = cent.data.data() + static_cast<size_t>(cent.cuBlocks[b]) * blockStride +
                           static_cast<size_t>(tile.kvh) * d;
          int32_t* mine = sel.data() + static_cast<size_t>(r) * p.topK;
          selectBlocks(q.data(), c, blockStride, d, pos[r], p.chunkSize, p.topK, scratch, mine);
          for (int m = 0; m < p.topK && mine[m] >= 0; ++m) blocks.push_back(mine[m]);
        }
      }
      // The key ranges the tile's rows read, ascending: every key (dense), or
      // the union of the rows' blocks (MoBA; a range never spans two blocks).
      const int64_t keyEnd = p.causal || moba ? std::min(lk, lastPos + 1) : lk;
      const std::vector<std::pair<int64_t, int64_t>> ranges =
          moba ? blockRanges(blocks, p.chunkSize, keyEnd) : std::vector<std::pair<int64_t, int64_t>>{{0, keyEnd}};
      if (moba) {
        // Range i is block blocks[i]; its rows are rowsOfBlock[firstRow[i],
        // firstRow[i + 1]), ascending.
        firstRow.assign(ranges.size() + 1, 0);
        auto rangeOf = [&](int32_t block) {
          return std::lower_bound(blocks.begin(), blocks.end(), block) - blocks.begin();
        };
        for (int r = 0; r < rows; ++r) {
          const int32_t* mine = sel.data() + static_cast<size_t>(r) * p.topK;
          for (int m = 0; m < p.topK && mine[m] >= 0; ++m) ++firstRow[rangeOf(mine[m]) + 1];
        }
        for (size_t i = 0; i < ranges.size(); ++i) firstRow[i + 1] += firstRow[i];
        rowsOfBlock.resize(firstRow.back());
        nextRow.assign(firstRow.begin(), firstRow.end() - 1);
        for (int r = 0; r < rows; ++r) {
          const int32_t* mine = sel.data() + static_cast<size_t>(r) * p.topK;
          for (int m = 0; m < p.topK && mine[m] >= 0; ++m) rowsOfBlock[nextRow[rangeOf(mine[m])]++] = r;
        }
      }
      for (size_t i = 0; i < ranges.size(); ++i) {
        const auto [first, last] = ranges[i];
        const int r0 = moba ? firstRow[i] : 0, r1 = moba ? firstRow[i + 1] : rows;
        for (int64_t p0 = first; p0 < last; p0 += kKeyTile) {
          const int n1 = static_cast<int>(std::min<int64_t>(kKeyTile, last - p0));
          // The key tile in fp32, once for all the rows that read it.
          for (int s = 0; s < n1; ++s) {
            const size_t at = static_cast<size_t>(keys.offset(key0 + p0 + s, tile.kvh));
            loadRow(p.k, p.dtype, at, d, kt.data() + static_cast<size_t>(s) * d);
            loadRow(p.v, p.dtype, at, d, vt.data() + static_cast<size_t>(s) * d);
          }
          tileRows.clear();
          tileCounts.clear();
          for (int j = r0; j < r1; ++j) {
            const int r = moba ? rowsOfBlock[j] : j;
            // Causal (and MoBA): row r sees positions up to its own.
            const int n2 = p.causal || moba ? static_cast<int>(std::min<int64_t>(n1, pos[r] + 1 - p0)) : n1;
            if (n2 > 0) {
              tileRows.push_back(r);
              tileCounts.push_back(n2);
            }
          }
          attendRows(st.data(), q2.data(), d, tileRows.data(), tileCounts.data(), static_cast<int>(tileRows.size()),
                     kt.data(), vt.data());
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
