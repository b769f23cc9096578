// Gate scores and top-(k-1) selection for large topK (17..256), with rows
// tiled so that they share every centroid they read, and a heap per row
// in shared memory.
//
// Why a kernel of its own. The fast kernel (gate_topk.cu) keeps each row's
// candidates in registers, at most 24 of them; past topK 16 every row used
// to go to the exact kernel, one warp per row re-reading every past
// centroid from L2 (about 0.6 s for the standard shape at 128K tokens, and
// 7 s for (32, 256)).
//
// Scores. A CTA owns 64 consecutive query rows of one sequence and one
// query head (32 where the heaps of 64 rows would leave room for one CTA
// per SM only; see kSortOutHalf). Their q (converted to fp32, exact) stays in shared memory;
// centroid tiles of 64 blocks (fp32, gate_centroids.cu) pass through it
// once per CTA, the next one loaded while the current one's scores are
// being selected. Each thread computes a 4 x 4 patch of scores with fused
// multiply-adds: not the CPU backend's summation order, but within a known
// distance of it. Both orders sum D rounded products, so each is within
// gamma_D * sum_i |q_i c_i| of the exact dot product (gamma_D = D u / (1 - D
// u), u = 2^-24), and the two scores of a block differ by at most
//   eps = 2 gamma_D ||q||_1 max|c| (+ a term for underflow),
// with max|c| the largest centroid element of the (sequence, KV head)
// (gate_centroids.cu).
//
// Selection. A score and its block index become one 64-bit key that orders
// exactly as ranksAbove (the score first, NaN lowest, -0 equal to +0, then
// the lower block index), so one unsigned compare ranks two blocks. Each
// row keeps its best keep + kExtraSlots keys so far in a 4-ary min-heap in
// shared memory (the root is the worst kept one), owned by one thread. The
// first tile's first blocks fill the heap as they come and are heapified
// bottom-up; after that, per tile, the owner first lists the columns that
// can enter (at least its root's score) branch-free, then inserts them one
// per loop trip, so a warp runs as many trips as its busiest row has
// candidates, not one per score.
//
// Certification. At the end the heap holds the row's best blocks by these
// scores, and its root bounds every block outside it. Blocks more than
// 2 eps below the keep-th best are out in the CPU's order as well, blocks
// more than 2 eps above it are in. The rest, the zone around the keep-th
// (on random data, a near-tie in about one row in six), are re-scored in
// the CPU's order (exactDotBy) and ranked exactly. A row goes to the
// exact kernel's list when its zone may reach past the heap (more than
// kExtraSlots near-ties below the keep-th), holds more than kZoneMax
// blocks, or its q or centroids are non-finite or huge.
#include <climits>
#include <cstdint>

#include "gate_device.cuh"
#include "gate_dispatch.cuh"
#include "gate_internal.h"
#include "common/cuda_context.h"
#include "common/dependent_launch.h"
#include "common/grid_dependency.cuh"

namespace moba {
namespace {

using namespace gate;

// Heap slots past keep: blocks just below the keep-th stay known, so a
// near-tie at the boundary is settled here rather than by the exact kernel.
constexpr int kExtraSlots = 4;
// Blocks within 2 eps of a row's keep-th that it re-scores exactly; more
// (many near-ties) send the row to the exact kernel.
constexpr int kZoneMax = 16;
// How a CTA writes its rows' blocks in ascending order, and what it may use:
//  - kRankOut: each (row, slot) counts the row's smaller blocks, keep^2
//    compares per row; cheap up to keep 63, and the fewest registers;
//  - kSortOut: a warp sorts each row (writeAscending), for keep up to 128,
//    still two CTAs per SM while the heaps leave room for them;
//  - kSortOutHalf: the same for any keep, in CTAs of 32 rows (half of a
//    plan tile each), whose heaps leave room for two CTAs per SM up to the
//    largest keep; each centroid tile then serves 32 rows instead of 64.
constexpr int kRankOut = 0, kSortOut = 1, kSortOutHalf = 2;
constexpr int rowsPerCta(int out) { return out == kSortOutHalf ? kGateLargeTileRows / 2 : kGateLargeTileRows; }
constexpr int kRankOutMaxKeep = 63;
// Row verdicts after certification.
constexpr int kNothing = 0, kCertain = 1, kContested = 2;

template <int D, int kRowsPerCta>
struct LargeCfg {
  static constexpr int kRows = kRowsPerCta;  // query rows per CTA
  static constexpr int kBN = 64;             // centroids per tile
  static constexpr int kThreads = (kRows / 4) * (kBN / 4);  // one 4 x 4 patch of scores each
  static constexpr int kQBytes = D * kRows * 4;
  static constexpr int kCBytes = D * kBN * 4;
  // After a tile's scores are done its centroid space holds the scores
  // ([block][row], 4 bytes) and each row's candidate columns ([slot][row], 1 byte).
  static constexpr int kSBytes = kBN * kRows * 4;
  static constexpr int kColBytes = kBN * kRows;
  static constexpr int kTileBytes = kCBytes > kSBytes + kColBytes ? kCBytes : kSBytes + kColBytes;
  static constexpr int kLoadSteps = kBN * D / 4 / kThreads;  // float4 of a centroid tile per thread
  // The heaps take keep + kExtraSlots slots per row, so shared memory grows
  // with topK: two CTAs per SM while it stays under kTwoPerSm.
  static constexpr size_t smemBytes(int keep) {
    return kQBytes + kTileBytes + static_cast<size_t>(keep + kExtraSlots) * kRows * 8;
  }
  static_assert(kBN / 4 == 16, "a patch's blocks are tid & 15, its rows tid >> 4");
  static_assert(kZoneMax * kRows * 12 <= kTileBytes, "zones fit in the tiles' space");
  // Two CTAs per SM: 228 KB of shared memory per SM, less 1 KB reserved and
  // the static arrays (rowVerdict, zCount) per CTA.
  static constexpr size_t kTwoPerSm = 114 * 1024 - 1024 - kRows * 8;
  static_assert(kRows == 32 || smemBytes(kRankOutMaxKeep) <= kTwoPerSm, "two CTAs per SM up to kRankOutMaxKeep");
  static_assert(kRows == 64 || smemBytes(kGateLargeMaxKeep) <= kTwoPerSm, "two CTAs per SM up to the largest keep");
};

// Tiles are stored dim-major ([d][row], [d][block]) so that a patch reads
// four rows or four blocks of one dim as one float4; the score tile is
// [block][row] so that each owner reads its row's column. Columns are XOR-
// swizzled in groups of four (a float4 stays whole) so that the transposing
// stores spread over the banks.
__device__ __forceinline__ int qCol(int d, int r) { return r ^ (((d >> 3) & 7) << 2); }
__device__ __forceinline__ int cCol(int d, int j) { return j ^ (((d >> 2) & 3) << 3); }
__device__ __forceinline__ int sCol(int j, int r) { return r ^ (((j >> 2) & 7) << 2); }

// 4-ary min-heap of 64-bit keys, slot s of this row at h[s * rows]: the four
// children of a slot are loaded at once, so a sift costs one shared-memory
// round trip per level (three levels for 64 slots). Sifting down from slot i
// returns the key that ends up at slot i (the new root when i = 0).
template <int kRows>
__device__ __forceinline__ uint64_t heapSiftDown(uint64_t* h, int size, uint64_t k, int i = 0) {
  uint64_t atStart = k;
  for (bool first = true;; first = false) {
    const int c0 = 4 * i + 1;
    if (c0 >= size) break;
    uint64_t ck[4];
#pragma unroll
    for (int e = 0; e < 4; ++e) ck[e] = c0 + e < size ? h[(c0 + e) * kRows] : ~uint64_t{0};
    int m = 0;
    uint64_t mk = ck[0];
#pragma unroll
    for (int e = 1; e < 4; ++e) {
      m = ck[e] < mk ? e : m;
      mk = ck[e] < mk ? ck[e] : mk;
    }
    if (mk > k) break;
    h[i * kRows] = mk;
    if (first) atStart = mk;
    i = c0 + m;
  }
  h[i * kRows] = k;
  return atStart;
}
template <int kRows>
__device__ __forceinline__ void heapSiftUp(uint64_t* h, int i, uint64_t k) {
  while (i > 0) {
    const int parent = (i - 1) >> 2;
    const uint64_t pk = h[parent * kRows];
    if (pk < k) break;
    h[i * kRows] = pk;
    i = parent;
  }
  h[i * kRows] = k;
}

// Writes the blocks of a row's first keep heap slots to out[0, keep) in
// ascending order, by a bitonic sort across the warp: lane l holds sort
// positions l E .. l E + E - 1 (keep <= 32 E), so the cost grows as
// keep log^2 keep over 32 lanes, not as keep^2 per row.
template <int E, int kRows>
__device__ __forceinline__ void writeAscending(const uint64_t* heapRow, int keep, int32_t* out, int lane) {
  constexpr int kLogN = 5 + (E >= 2) + (E >= 4) + (E >= 8);
  int x[E];
#pragma unroll
  for (int e = 0; e < E; ++e) {
    const int i = lane * E + e;
    x[e] = i < keep ? keyBlock(heapRow[i * kRows]) : INT_MAX;
  }
#pragma unroll
  for (int ks = 1; ks <= kLogN; ++ks) {
#pragma unroll
    for (int js = ks - 1; js >= 0; --js) {
      const int j = 1 << js;
      if (j < E) {
#pragma unroll
        for (int e = 0; e < E; ++e) {
          if (e & j) continue;
          const bool up = (((lane * E + e) >> ks) & 1) == 0;
          const int lo = x[e], hi = x[e | j];
          const bool swap = up ? lo > hi : lo < hi;
          x[e] = swap ? hi : lo;
          x[e | j] = swap ? lo : hi;
        }
      } else {
#pragma unroll
        for (int e = 0; e < E; ++e) {
          const int i = lane * E + e;
          const int y = __shfl_xor_sync(0xffffffffu, x[e], j / E);
          const bool up = ((i >> ks) & 1) == 0, lower = (i & j) == 0;
          x[e] = lower == up ? min(x[e], y) : max(x[e], y);
        }
      }
    }
  }
#pragma unroll
  for (int e = 0; e < E; ++e) {
    const int i = lane * E + e;
    if (i < keep) out[i] = x[e];
  }
}

template <typename T, int D, int kOut>
__global__ void __launch_bounds__(LargeCfg<D, rowsPerCta(kOut)>::kThreads, 2) largeKernel(GateArgs a) {
  using C = LargeCfg<D, rowsPerCta(kOut)>;
  constexpr int kRows = C::kRows, kBN = C::kBN;
  extern __shared__ __align__(16) uint8_t smem[];
  float* qT = reinterpret_cast<float*>(smem);                               // [D][kRows]
  float* cT = reinterpret_cast<float*>(smem + C::kQBytes);                  // [D][kBN]
  float* sT = reinterpret_cast<float*>(smem + C::kQBytes);                  // [kBN][kRows], over cT
  uint8_t* cols = smem + C::kQBytes + C::kSBytes;                           // [kBN][kRows], over cT
  uint64_t* heap = reinterpret_cast<uint64_t*>(smem + C::kQBytes + C::kTileBytes);  // [slot][kRows]
  __shared__ int rowVerdict[kRows];  // kNothing, kCertain or kContested

  const int tid = threadIdx.x;
  const RowTile tile = rowTileOf(a, kRows, kGateLargeTileRows / kRows);
  if (tile.nRows <= 0) {
    waitForPrimaryGrid();  // no CTA ends before the grids it depends on
    return;
  }
  const int b = tile.b, h = tile.h, kvh = tile.kvh;
  const int nRows = tile.nRows, row0 = tile.row0, pos0 = tile.pos0, pLast = tile.pLast;
  const int B = a.chunkSize;
  const int keep = a.topK - 1;
  const int cap = keep + kExtraSlots;
  const bool scoring = pLast > keep;

  // The q rows, exact in fp32 (before the wait: q is the op's input).
  if (scoring) {
    const size_t qRowStride = static_cast<size_t>(a.nqh) * D;
    const uint16_t* qBase = static_cast<const uint16_t*>(a.q) + static_cast<size_t>(row0) * qRowStride +
                            static_cast<size_t>(h) * D;
#pragma unroll
    for (int it = 0; it < kRows * D / 8 / C::kThreads; ++it) {
      const int idx = it * C::kThreads + tid;
      const int r = idx / (D / 8), ch = idx % (D / 8);
      const uint4 w = r < nRows ? __ldg(reinterpret_cast<const uint4*>(qBase + static_cast<size_t>(r) * qRowStride) + ch)
                                : make_uint4(0u, 0u, 0u, 0u);
      const uint32_t part[4] = {w.x, w.y, w.z, w.w};
#pragma unroll
      for (int e = 0; e < 8; ++e) {
        const int d = 8 * ch + e;
        qT[d * kRows + qCol(d, r)] = T::toFloat(static_cast<uint16_t>(part[e >> 1] >> (16 * (e & 1))));
      }
    }
  }
  waitForPrimaryGrid();  // the centroids and their statistics come from the grids before this one

  const int ownRow = tid;  // threads 0..kRows-1 own one row each
  const bool owner = ownRow < kRows;
  const int ownC = owner && ownRow < nRows ? (pos0 + ownRow) / B : 0;
  const bool selects = ownC > keep;
  uint64_t* ownHeap = heap + (owner ? ownRow : 0);
  int heapSize = 0;
  uint64_t root = 0;  // the heap's worst key once full; 0 (any block enters) before

  // Centroid j of this (sequence, KV head) at cBase + j * cStride.
  const size_t cStride = static_cast<size_t>(a.nkvh) * D;
  const float* cBase = a.cent + (static_cast<size_t>(a.cuBlocks[b]) * a.nkvh + kvh) * D;
  if (scoring) {
    const int ty = tid >> 4, tx = tid & 15;  // patch: rows 4 ty.., blocks 4 tx.. of the tile
    // Each warp reads 8 blocks x 16 dims per step: 64 contiguous bytes per
    // block. Blocks past pLast read as zero.
    float4 next[C::kLoadSteps];
    // Block and first dim of this thread's float4 at load step `it`.
    auto slotOf = [&](int it, int& j, int& d) {
      const int idx = it * C::kThreads + tid;
      const int ln = idx & 31, step = idx >> 5;
      j = 8 * (step & 7) + (ln >> 2);
      d = 16 * (step >> 3) + 4 * (ln & 3);
    };
    auto loadTile = [&](int j0) {
#pragma unroll
      for (int it = 0; it < C::kLoadSteps; ++it) {
        int j, d;
        slotOf(it, j, d);
        next[it] = j0 + j < pLast ? __ldg(reinterpret_cast<const float4*>(cBase + static_cast<size_t>(j0 + j) * cStride + d))
                                  : make_float4(0.f, 0.f, 0.f, 0.f);
      }
    };
    auto storeTile = [&]() {
#pragma unroll
      for (int it = 0; it < C::kLoadSteps; ++it) {
        int j, d;
        slotOf(it, j, d);
        cT[(d + 0) * kBN + cCol(d + 0, j)] = next[it].x;
        cT[(d + 1) * kBN + cCol(d + 1, j)] = next[it].y;
        cT[(d + 2) * kBN + cCol(d + 2, j)] = next[it].z;
        cT[(d + 3) * kBN + cCol(d + 3, j)] = next[it].w;
      }
    };
    loadTile(0);
    storeTile();
    __syncthreads();

    for (int j0 = 0; j0 < pLast; j0 += kBN) {
      float acc[4][4];
#pragma unroll
      for (int x = 0; x < 4; ++x)
#pragma unroll
        for (int y = 0; y < 4; ++y) acc[x][y] = 0.f;
#pragma unroll 16
      for (int d = 0; d < D; ++d) {
        const float4 qv = *reinterpret_cast<const float4*>(qT + d * kRows + qCol(d, 4 * ty));
        const float4 cv = *reinterpret_cast<const float4*>(cT + d * kBN + cCol(d, 4 * tx));
        const float qa[4] = {qv.x, qv.y, qv.z, qv.w}, ca[4] = {cv.x, cv.y, cv.z, cv.w};
#pragma unroll
        for (int x = 0; x < 4; ++x)
#pragma unroll
          for (int y = 0; y < 4; ++y) acc[x][y] = fmaf(qa[x], ca[y], acc[x][y]);
      }
      __syncthreads();  // every thread is done with cT: the scores go over it
#pragma unroll
      for (int y = 0; y < 4; ++y)
#pragma unroll
        for (int x = 0; x < 4; ++x) sT[(4 * tx + y) * kRows + sCol(4 * tx + y, 4 * ty + x)] = acc[x][y];
      __syncthreads();

      const bool more = j0 + kBN < pLast;
      if (more) loadTile(j0 + kBN);  // lands while the owners select
      if (owner) {
        // The columns that can enter (valid, and not below the root's score
        // when the tile began; NaN passes), then one insertion per trip.
        const int tEnd = selects ? min(kBN, ownC - j0) : 0;
        int tBegin = 0;
        if (j0 == 0 && selects) {
          // The first tile: its first cap blocks fill the heap as they come,
          // heapified bottom-up (Floyd); the rest of the tile enters below.
          tBegin = min(tEnd, cap);
          for (int t = 0; t < tBegin; ++t) ownHeap[t * kRows] = rankKey(sT[t * kRows + sCol(t, ownRow)], t);
          for (int i = (tBegin - 2) >> 2; i >= 0; --i) heapSiftDown<kRows>(ownHeap, tBegin, ownHeap[i * kRows], i);
          heapSize = tBegin;
          if (heapSize == cap) root = ownHeap[0];
        }
        const float rootScore = keyScore(root);  // NaN while the heap fills: every column passes
        int count = 0;
#pragma unroll 8
        for (int t = 0; t < kBN; ++t) {
          const float s = sT[t * kRows + sCol(t, ownRow)];
          cols[count * kRows + ownRow] = static_cast<uint8_t>(t);
          count += t >= tBegin && t < tEnd && !(s < rootScore);
        }
        const int trips = __reduce_max_sync(0xffffffffu, count);
        for (int i = 0; i < trips; ++i) {
          if (i >= count) continue;
          const int t = cols[i * kRows + ownRow];
          const uint64_t k = rankKey(sT[t * kRows + sCol(t, ownRow)], j0 + t);
          if (k <= root) continue;
          if (heapSize < cap) {
            heapSiftUp<kRows>(ownHeap, heapSize++, k);
            if (heapSize == cap) root = ownHeap[0];
          } else {
            root = heapSiftDown<kRows>(ownHeap, cap, k);
          }
        }
      }
      __syncthreads();  // the scores' space takes the next centroid tile
      if (more) {
        storeTile();
        __syncthreads();
      }
    }
  }

  // Certification (see the file comment), then the output: ascending block
  // indices. Rows with at most keep past blocks keep them all.
  int* zBlock = reinterpret_cast<int*>(smem + C::kQBytes);      // [kZoneMax][kRows], over the tiles' space
  int* zSlot = zBlock + kZoneMax * kRows;                        // heap slot of a zone entry from the top keep, else -1
  float* zExact = reinterpret_cast<float*>(zSlot + kZoneMax * kRows);
  __shared__ int zCount[kRows];
  if (owner) {
    int verdict = kNothing;
    zCount[ownRow] = 0;
    if (ownRow < nRows) {
      int32_t* out = a.indices + (static_cast<size_t>(h) * a.totalQ + row0 + ownRow) * a.topK;
      if (!selects) {
        writeAllPast(out, ownC, a.topK, 0, 1);
      } else {
        float l1 = 0.f;
        for (int d = 0; d < D; ++d) l1 += fabsf(qT[d * kRows + qCol(d, ownRow)]);
        const float maxAbs = __uint_as_float(a.stats[(static_cast<size_t>(b) * a.nkvh + kvh) * kGateStats + kStatMaxAbs]);
        const float mass = l1 * (1.f + 1.f / 1024) * maxAbs;  // >= sum_i |q_i c_i| (fp32 rounding of l1 included)
        constexpr float kGamma2 = 2.f * D * 5.9604645e-8f * (1.f + 1.f / 1024);  // 2 gamma_D, rounded up
        const float eps2 = 2.02f * (kGamma2 * mass + 4.f * D * 1.1754944e-38f);  // 2 eps (+ what flushing subnormals may lose), rounded up
        // Heapsort's pops: the heapSize - keep worst go to the slots past
        // keep, the largest of them at slot keep; the root is then the keep-th.
        for (int m = heapSize; m > keep; --m) {
          const uint64_t top = ownHeap[0];
          heapSiftDown<kRows>(ownHeap, m - 1, ownHeap[(m - 1) * kRows]);
          ownHeap[(m - 1) * kRows] = top;
        }
        const float kth = keyScore(ownHeap[0]);
        const float low = kth - eps2, high = kth + eps2;
        // Blocks the heap dropped scored at most its worst; they must be below the band.
        const bool dropped = ownC > heapSize;
        bool ok = mass <= 1e30f && !(dropped && !(keyScore(ownHeap[(heapSize - 1) * kRows]) < low));
        int zone = 0;
        if (ok && !(keyScore(ownHeap[keep * kRows]) < low)) {
          // Contested: the zone is every kept block within 2 eps of the
          // keep-th (above: from the top keep; below: popped ones).
          for (int sl = 0; sl < heapSize && ok; ++sl) {
            const float sc = keyScore(ownHeap[sl * kRows]);
            if (sl < keep ? sc > high : sc < low) continue;
            if (zone == kZoneMax) {
              ok = false;
              break;
            }
            zBlock[zone * kRows + ownRow] = keyBlock(ownHeap[sl * kRows]);
            zSlot[zone * kRows + ownRow] = sl < keep ? sl : -1;
            ++zone;
          }
        }
        if (!ok) {
          a.fallback[atomicAdd(a.fallbackCount, 1)] = h * a.totalQ + row0 + ownRow;
        } else {
          verdict = zone > 0 ? kContested : kCertain;
          zCount[ownRow] = zone;
          writeRowTail(out, keep, ownC, a.topK);
        }
      }
    }
    rowVerdict[ownRow] = verdict;
  }
  __syncthreads();
  if (!scoring) return;

  // The zones' blocks, scored exactly as the CPU backend does.
  for (int item = tid; item < kRows * kZoneMax; item += C::kThreads) {
    const int r = item % kRows, e = item / kRows;
    if (e >= zCount[r]) continue;
    const int j = zBlock[e * kRows + r];
    zExact[e * kRows + r] = exactDotBy<D>([=](int d) { return qT[d * kRows + qCol(d, r)]; }, cBase + static_cast<size_t>(j) * cStride);
  }
  __syncthreads();
  if (owner && rowVerdict[ownRow] == kContested) {
    // The zone ranked exactly: as many of its blocks win as it took from the
    // top keep, and each winner from below takes the slot of a loser from above.
    const int zone = zCount[ownRow];
    auto exactRank = [&](int e) {
      const uint64_t ke = rankKey(zExact[e * kRows + ownRow], zBlock[e * kRows + ownRow]);
      int rank = 0;
      for (int f = 0; f < zone; ++f) rank += rankKey(zExact[f * kRows + ownRow], zBlock[f * kRows + ownRow]) > ke;
      return rank;
    };
    int above = 0;
    for (int e = 0; e < zone; ++e) above += zSlot[e * kRows + ownRow] >= 0;
    int loser = 0;
    for (int e = 0; e < zone; ++e) {
      if (zSlot[e * kRows + ownRow] >= 0 || exactRank(e) >= above) continue;
      while (zSlot[loser * kRows + ownRow] < 0 || exactRank(loser) < above) ++loser;
      ownHeap[zSlot[loser * kRows + ownRow] * kRows] = rankKey(0.f, zBlock[e * kRows + ownRow]);
      ++loser;
    }
  }
  __syncthreads();
  // Each resolved row's top keep, ascending (see kRankOut).
  if constexpr (kOut != kRankOut) {
    const int warp = tid >> 5, lane = tid & 31;
    for (int r = warp; r < kRows; r += C::kThreads / 32) {
      if (rowVerdict[r] == kNothing) continue;
      int32_t* out = a.indices + (static_cast<size_t>(h) * a.totalQ + row0 + r) * a.topK;
      // kSortOut has keep <= 128 by dispatch: naming it keeps the 8-per-lane sort out of its registers.
      if (kOut == kSortOut || keep <= 128) writeAscending<4, kRows>(heap + r, keep, out, lane);
      else writeAscending<8, kRows>(heap + r, keep, out, lane);
    }
  } else {
    for (int item = tid; item < kRows * keep; item += C::kThreads) {
      const int r = item / keep, e = item % keep;
      if (rowVerdict[r] == kNothing) continue;
      const int j = keyBlock(heap[e * kRows + r]);
      int rank = 0;
      for (int f = 0; f < keep; ++f) rank += keyBlock(heap[f * kRows + r]) < j;
      a.indices[(static_cast<size_t>(h) * a.totalQ + row0 + r) * a.topK + rank] = j;
    }
  }
}

template <typename T, int D, int kOut>
Status launchLargeAs(const GateArgs& a, int numTiles, bool dependent, cudaStream_t stream) {
  using C = LargeCfg<D, rowsPerCta(kOut)>;
  auto kernel = largeKernel<T, D, kOut>;
  const size_t smem = C::smemBytes(a.topK - 1);
  MOBA_RETURN_IF_ERROR(cudaStatus(
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)), "gate smem limit"));
  dim3 grid(static_cast<unsigned>(numTiles * (kGateLargeTileRows / C::kRows)), static_cast<unsigned>(a.nqh));
  return cudaStatus(launchInOrder(kernel, grid, dim3(C::kThreads), smem, stream, dependent, a), "gate large topK");
}

template <typename T, int D>
Status launchLargeTyped(const GateArgs& a, int numTiles, bool dependent, cudaStream_t stream) {
  const int keep = a.topK - 1;
  if (keep <= kRankOutMaxKeep) return launchLargeAs<T, D, kRankOut>(a, numTiles, dependent, stream);
  using Full = LargeCfg<D, kGateLargeTileRows>;
  if (keep <= 128 && Full::smemBytes(keep) <= Full::kTwoPerSm) return launchLargeAs<T, D, kSortOut>(a, numTiles, dependent, stream);
  return launchLargeAs<T, D, kSortOutHalf>(a, numTiles, dependent, stream);
}

}  // namespace

Status launchGateLarge(const GateArgs& a, DType dtype, int numTiles, bool dependent, cudaStream_t stream) {
  if (numTiles == 0) return Status::Ok();
  if (a.topK - 1 > kGateLargeMaxKeep) return Status::Invalid("gate large topK: topK above the heap size");
  return withGateTypes(dtype, a.headDim, [&](auto t, auto d) {
    return launchLargeTyped<decltype(t), decltype(d)::value>(a, numTiles, dependent, stream);
  });
}

}  // namespace moba
