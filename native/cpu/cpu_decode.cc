// Decode attention over the paged KV cache on the CPU. One (sequence, KV
// head) is the unit: its rows (1..8 new tokens x the query heads of the KV
// head) share each tile of keys, read in its pages through the page table,
// and a long sequence is split into slices of keys whose partial softmax
// results are merged. 'moba' gates over the cache with block centroids built from the
// cache's key sums.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "../common/dtype.h"
#include "cpu_kv.h"
#include "moba_select.h"
#include "online_softmax.h"

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

// Asks for the cache lines of `count` elements of `size` bytes at element
// `offset` of base.
inline void prefetchRow(const void* base, size_t offset, int count, size_t size) {
  const char* p = static_cast<const char*>(base) + offset * size;
  for (size_t b = 0; b < count * size; b += 64) __builtin_prefetch(p + b);
}

// Keys are taken a tile at a time, and one tile serves every query row of its
// KV head.
constexpr int kTileKeys = 64;
// A (sequence, KV head) is split into slices of at least this many keys when
// there are fewer items than threads; the slices' partial results are merged.
constexpr int64_t kMinSliceKeys = 2048;
// Partial results of all slices together stay under this many bytes.
constexpr size_t kMaxPartialBytes = size_t(256) << 20;

// One (sequence, KV head): its rows (new tokens x query heads of the group)
// and the key ranges they read, ascending.
struct Item {
  int b = 0, kvh = 0;
  SeqView s{};
  std::vector<std::pair<int64_t, int64_t>> ranges;  // [first, end) key positions
  int64_t keys = 0;                                 // total length of the ranges
  int numSlices = 0;
  std::vector<int32_t> selected;                    // moba: [rows, topK] blocks, ascending, -1 padded
};

// Decodes sequences [bBegin, bEnd) of the batch.
void decodeSequences(const DecodeParams& p, ThreadPool& pool, int bBegin, int bEnd) {
  const PagedKV& kv = p.kv;
  const int D = kv.headDim, S = kv.pageSize;
  const int Hq = p.numQHeads, group = Hq / kv.numKVHeads;
  const size_t es = dtypeSize(kv.dtype);
  const float scaleLog2 = p.softmaxScale * 1.4426950408889634f;
  const bool moba = p.policy == DecodePolicy::Moba;
  const int B = p.chunkSize;

  // Live items, in (sequence, KV head) order.
  std::vector<Item> items;
  for (int b = bBegin; b < bEnd; ++b) {
    SeqView s;
    if (!loadSeq(p, b, &s)) continue;
    for (int kvh = 0; kvh < kv.numKVHeads; ++kvh) {
      Item it;
      it.b = b;
      it.kvh = kvh;
      it.s = s;
      items.push_back(std::move(it));
    }
  }
  if (items.empty()) return;
  auto rowsOf = [&](const Item& it) { return it.s.qLen * group; };
  // Row r of an item: token i = r / group, query head kvh * group + r % group.
  auto qOffset = [&](const Item& it, int r) {
    return (static_cast<size_t>(it.s.qStart + r / group) * Hq + it.kvh * group + r % group) * D;
  };
  auto positionOf = [&](const Item& it, int r) { return static_cast<int64_t>(it.s.kvLen) - it.s.qLen + r / group; };
  auto keyRow = [&](const Item& it, int64_t pos, int64_t extra) {
    return static_cast<size_t>(it.s.pages[pos / S] * kv.pageStride() + kv.layerOffset() +
                               (static_cast<int64_t>(it.kvh) * S + pos % S) * D + extra);
  };

  // Moba: each row's blocks, from centroids built out of the cache's key
  // sums (a complete block's centroid: the sum of its key-sum runs, each read
  // at the run's last page, / chunkSize); then the ranges the item reads.
  pool.parallelFor(static_cast<int64_t>(items.size()), [&](int64_t begin, int64_t end) {
    std::vector<float> cent, q(D);
    SelectScratch scratch;
    for (int64_t n = begin; n < end; ++n) {
      Item& it = items[n];
      const int rows = rowsOf(it);
      if (!moba) {
        it.ranges.push_back({0, it.s.kvLen});
        it.keys = it.s.kvLen;
        continue;
      }
      const int complete = it.s.kvLen / B;
      const int runPages = kv.sumPages;
      const int runsPerBlock = B / (S * runPages);
      cent.assign(static_cast<size_t>(complete) * D, 0.f);
      for (int j = 0; j < complete; ++j) {
        float* c = cent.data() + static_cast<size_t>(j) * D;
        for (int r = 0; r < runsPerBlock; ++r) {
          const int last = (j * runsPerBlock + r + 1) * runPages - 1;
          const float* sums = kv.keySums + it.s.pages[last] * kv.sumsPageStride() + kv.sumsLayerOffset() +
                              static_cast<int64_t>(it.kvh) * D;
          for (int d = 0; d < D; ++d) c[d] += sums[d];
        }
        const float inv = 1.f / static_cast<float>(B);
        for (int d = 0; d < D; ++d) c[d] *= inv;
      }
      it.selected.assign(static_cast<size_t>(rows) * p.topK, -1);
      std::vector<int32_t> blocks;
      for (int r = 0; r < rows; ++r) {
        loadRow(p.q, kv.dtype, qOffset(it, r), D, q.data());
        int32_t* sel = it.selected.data() + static_cast<size_t>(r) * p.topK;
        selectBlocks(q.data(), cent.data(), static_cast<size_t>(D), D, positionOf(it, r), B, p.topK, scratch, sel);
        for (int m = 0; m < p.topK && sel[m] >= 0; ++m) blocks.push_back(sel[m]);
      }
      it.ranges = blockRanges(blocks, B, it.s.kvLen);
      for (const auto& [first, last] : it.ranges) it.keys += last - first;
    }
  });

  // Slices: a sequence's keys are cut into numSlices shares, the same for all
  // its KV heads, enough for every thread when the sequences are few, within
  // the memory for partial results. A task is one share of one sequence for
  // all its KV heads, so that it walks the cache page by page (every KV head
  // of a page, then the next page: two streams the prefetchers follow)
  // instead of one KV head's rows at a page stride.
  size_t rowsTotal = 0;
  for (const Item& it : items) rowsTotal += static_cast<size_t>(rowsOf(it));
  std::vector<int> seqFirst{0};  // the items of sequence g: [seqFirst[g], seqFirst[g + 1])
  for (size_t n = 1; n < items.size(); ++n) {
    if (items[n].b != items[n - 1].b) seqFirst.push_back(static_cast<int>(n));
  }
  seqFirst.push_back(static_cast<int>(items.size()));
  const int64_t numSeqs = static_cast<int64_t>(seqFirst.size()) - 1;
  const int64_t want = (2 * static_cast<int64_t>(pool.size()) + numSeqs - 1) / numSeqs;
  const int64_t byMemory = std::max<int64_t>(
      1, static_cast<int64_t>(kMaxPartialBytes / (rowsTotal * (static_cast<size_t>(D) + 2) * sizeof(float))));
  // When a sequence's keys give fewer slices than wanted (moba reads a few
  // blocks), its KV heads are split over several tasks as well.
  struct Task {
    int first, end;  // items [first, end) of one sequence
    int index;       // their slice
  };
  std::vector<Task> tasks;
  for (int64_t g = 0; g < numSeqs; ++g) {
    const int first = seqFirst[g], count = seqFirst[g + 1] - first;
    int64_t keys = 0;
    for (int n = first; n < first + count; ++n) keys = std::max(keys, items[n].keys);
    const int64_t byKeys = std::max<int64_t>(1, keys / kMinSliceKeys);
    const int slices = static_cast<int>(std::max<int64_t>(1, std::min({want, byKeys, byMemory})));
    const int parts = static_cast<int>(std::min<int64_t>(count, (want + slices - 1) / slices));
    for (int n = first; n < first + count; ++n) items[n].numSlices = slices;
    for (int i = 0; i < slices; ++i) {
      for (int part = 0; part < parts; ++part) {
        tasks.push_back({first + count * part / parts, first + count * (part + 1) / parts, i});
      }
    }
  }
  std::vector<size_t> rowBase(items.size());  // first partial row of each item's slice 0
  size_t partialRows = 0;
  for (size_t n = 0; n < items.size(); ++n) {
    rowBase[n] = partialRows;
    partialRows += static_cast<size_t>(items[n].numSlices) * rowsOf(items[n]);
  }
  std::vector<float> partAcc(partialRows * D), partMax(partialRows), partSum(partialRows);

  // An item's walk through its share [from, to) of its keys (counted over
  // its ranges): the range it is in and the next tile's first position.
  struct Walk {
    int64_t from = 0, to = 0;
    size_t range = 0;
    int64_t at = 0;          // keys of the ranges before `range`
    int64_t p0 = 0, hi = 0;  // next tile from p0, the share's end in this range
  };
  // Moves w to its first tile at or after its current place (p0 == hi: done).
  auto settle = [](const Item& it, Walk& w) {
    while (w.range < it.ranges.size()) {
      const auto [first, last] = it.ranges[w.range];
      const int64_t lo = std::max(first, first + (w.from - w.at));
      w.hi = std::min(last, first + (w.to - w.at));
      w.p0 = std::max(w.p0, lo);
      if (w.p0 < w.hi) return;
      w.at += last - first;
      ++w.range;
      w.p0 = 0;
    }
    w.p0 = w.hi = 0;
  };

  // Each task: its KV heads' share of the sequence's keys, a tile of each in
  // turn, into every row's partial softmax.
  pool.parallelFor(static_cast<int64_t>(tasks.size()), [&](int64_t begin, int64_t end) {
    // The tile's rows are read where they lie in the pages (attendRowsHalf).
    const uint16_t* pool16 = static_cast<const uint16_t*>(kv.pool);
    const uint16_t* kRows[kTileKeys];
    const uint16_t* vRows[kTileKeys];
    std::vector<float> q2;
    std::vector<OnlineSoftmax> st;
    std::vector<Walk> walks;
    std::vector<int> rowOf;  // each item's first row in q2 and st
    std::vector<int32_t> tileRows, tileCounts;
    for (int64_t t = begin; t < end; ++t) {
      const int n0 = tasks[t].first, n1 = tasks[t].end;
      const int slice = tasks[t].index;
      rowOf.assign(1, 0);
      for (int n = n0; n < n1; ++n) rowOf.push_back(rowOf.back() + rowsOf(items[n]));
      q2.resize(static_cast<size_t>(rowOf.back()) * D);
      st.resize(rowOf.back());
      walks.assign(n1 - n0, Walk{});
      for (int n = n0; n < n1; ++n) {
        const Item& it = items[n];
        const size_t base = rowBase[n] + static_cast<size_t>(slice) * rowsOf(it);
        for (int r = 0; r < rowsOf(it); ++r) {
          float* q = q2.data() + static_cast<size_t>(rowOf[n - n0] + r) * D;
          loadRow(p.q, kv.dtype, qOffset(it, r), D, q);
          for (int d = 0; d < D; ++d) q[d] *= scaleLog2;
          st[rowOf[n - n0] + r].reset(partAcc.data() + (base + r) * D, D);
        }
        Walk& w = walks[n - n0];
        w.from = it.keys * slice / it.numSlices;
        w.to = it.keys * (slice + 1) / it.numSlices;
        settle(it, w);
      }
      for (bool more = true; more;) {
        more = false;
        for (int n = n0; n < n1; ++n) {
          const Item& it = items[n];
          Walk& w = walks[n - n0];
          if (w.p0 >= w.hi) continue;
          const int64_t p0 = w.p0;
          const int keys = static_cast<int>(std::min<int64_t>(kTileKeys, w.hi - p0));
          // The rows of the tile two turns ahead (the item after next) are
          // asked for now, so that they come from memory while this tile and
          // the next are attended: decode reads every key once, from memory.
          {
            const int m = n0 + (n - n0 + 2) % (n1 - n0);
            const Walk& ahead = walks[m - n0];
            for (int64_t i = ahead.p0; i < std::min(ahead.hi, ahead.p0 + kTileKeys); ++i) {
              prefetchRow(kv.pool, keyRow(items[m], i, 0), D, es);
              prefetchRow(kv.pool, keyRow(items[m], i, kv.vOffset()), D, es);
            }
          }
          for (int i = 0; i < keys; ++i) {
            kRows[i] = pool16 + keyRow(it, p0 + i, 0);
            vRows[i] = pool16 + keyRow(it, p0 + i, kv.vOffset());
          }
          const int32_t block = moba ? static_cast<int32_t>(p0 / B) : 0;
          tileRows.clear();
          tileCounts.clear();
          for (int r = 0; r < rowsOf(it); ++r) {
            if (moba && !selectsBlock(it.selected.data() + static_cast<size_t>(r) * p.topK, p.topK, block)) continue;
            // Causal: row r sees positions up to its own.
            const int n2 = static_cast<int>(std::min<int64_t>(keys, positionOf(it, r) + 1 - p0));
            if (n2 > 0) {
              tileRows.push_back(rowOf[n - n0] + r);
              tileCounts.push_back(n2);
            }
          }
          attendRowsHalf(st.data(), q2.data(), D, tileRows.data(), tileCounts.data(),
                         static_cast<int>(tileRows.size()), kv.dtype, kRows, vRows);
          w.p0 += keys;
          settle(it, w);
          more = true;
        }
      }
      for (int n = n0; n < n1; ++n) {
        const size_t base = rowBase[n] + static_cast<size_t>(slice) * rowsOf(items[n]);
        for (int r = 0; r < rowsOf(items[n]); ++r) {
          partMax[base + r] = st[rowOf[n - n0] + r].max;
          partSum[base + r] = st[rowOf[n - n0] + r].sum;
        }
      }
    }
  }, 1);

  // Each row: its slices merged in order, normalized, written in the output dtype.
  pool.parallelFor(static_cast<int64_t>(rowsTotal), [&](int64_t begin, int64_t end) {
    std::vector<float> o(D);
    size_t n = 0, first = 0;  // the item of row `begin`, and its first row's global index
    for (int64_t g = begin; g < end; ++g) {
      while (g >= static_cast<int64_t>(first + rowsOf(items[n]))) first += rowsOf(items[n++]);
      const Item& it = items[n];
      const int rows = rowsOf(it), r = static_cast<int>(g - first);
      float m = -std::numeric_limits<float>::infinity();
      for (int i = 0; i < it.numSlices; ++i) m = std::max(m, partMax[rowBase[n] + static_cast<size_t>(i) * rows + r]);
      float sum = 0.f;
      std::fill(o.begin(), o.end(), 0.f);
      for (int i = 0; i < it.numSlices; ++i) {
        const size_t at = rowBase[n] + static_cast<size_t>(i) * rows + r;
        // A slice with no key for this row (max -inf) weighs nothing.
        const float w = partMax[at] == -std::numeric_limits<float>::infinity() ? 0.f : std::exp2(partMax[at] - m);
        sum += w * partSum[at];
        const float* acc = partAcc.data() + at * D;
        for (int d = 0; d < D; ++d) o[d] += w * acc[d];
      }
      const float inv = sum > 0.f ? 1.f / sum : 0.f;
      for (int d = 0; d < D; ++d) o[d] *= inv;
      convertFromF32(o.data(), static_cast<char*>(p.out) + qOffset(it, r) * es, D, kv.dtype);
    }
  });
}

}  // namespace

Status cpuDecodeAttention(const DecodeParams& p, ThreadPool& pool) {
  // Sequences in groups of at most about 2^16 (sequence, KV head) items, so
  // that the per-item state stays small for any batch.
  const int perGroup = std::max(1, 65536 / p.kv.numKVHeads);
  for (int b = 0; b < p.batch; b += perGroup) decodeSequences(p, pool, b, std::min(p.batch, b + perGroup));
  return Status::Ok();
}

}  // namespace moba
