// What one CTA of an attention kernel works on, decoded from its block index
// (FwdArgs and FwdMode in attn_args.h): which query rows, which keys each row
// may see, and where results go. Shared by the mma.sync and wgmma kernels so
// both compute exactly the same function.
#pragma once
#include <cstdint>

#include "attn_args.h"
#include "attn_device.cuh"
#include "../../common/key_rows.h"

namespace moba {
namespace attn {

struct Job {
  int rows = 0;          // valid query rows of the tile (<= BM)
  int head = 0;          // query head (Dense/Current)
  int qStart = 0;        // first global query row (Dense/Current)
  int tFirst = 0;        // sequence position of tile row 0 (Dense/Current)
  int e0 = 0;            // first entry (Past)
  int64_t kvBase = 0;    // element offset of (sequence start, kv head) in k and v; paged: of the kv head in a page
  int k0 = 0;            // the sequence's first key in the packed order (cuSeqlensK)
  int keyBegin = 0;      // key positions visited: [keyBegin, keyEnd)
  int keyEnd = 0;
  int lk = 0;            // keys of the sequence
};

__device__ __forceinline__ int upperBound(const int32_t* a, int n, int x) {
  // First index i in [0, n) with a[i] > x (a ascending); n when none.
  int lo = 0, hi = n;
  while (lo < hi) {
    int mid = (lo + hi) >> 1;
    if (__ldg(a + mid) > x) hi = mid;
    else lo = mid + 1;
  }
  return lo;
}

// Returns false when this CTA has nothing to do (uniform across the CTA).
template <FwdMode M, int BM>
__device__ __forceinline__ bool decodeJob(const FwdArgs& a, int cta, int headDim, Job& j) {
  if (M == FwdMode::MobaPast) {
    const int total = __ldg(a.workOffsets + a.numPairs);
    if (cta >= total) return false;
    const int4 r0 = __ldg(a.pastJobs + 2 * cta);
    const int4 r1 = __ldg(a.pastJobs + 2 * cta + 1);
    j.e0 = r0.x;
    j.rows = r0.y;
    j.keyBegin = r0.z;
    j.keyEnd = r0.w;
    j.kvBase = static_cast<int64_t>(static_cast<uint32_t>(r1.x)) | (static_cast<int64_t>(r1.y) << 32);
    j.lk = r1.z;
    j.k0 = r1.w;
    return j.rows > 0;
  } else {
    if (cta >= a.numTiles * a.numQHeads) return false;
    const int2 tile = a.tiles[cta / a.numQHeads];
    j.head = cta - (cta / a.numQHeads) * a.numQHeads;
    const int b = tile.x;
    const int q0 = __ldg(a.cuSeqlensQ + b);
    const int lq = __ldg(a.cuSeqlensQ + b + 1) - q0;
    const int k0 = __ldg(a.cuSeqlensK + b);
    j.lk = __ldg(a.cuSeqlensK + b + 1) - k0;
    j.qStart = q0 + tile.y * BM;
    j.rows = min(BM, lq - tile.y * BM);
    j.tFirst = j.lk - lq + tile.y * BM;
    j.k0 = k0;
    j.kvBase = a.keyRows ? (j.head / a.group) * a.keyHeadStride
                         : (static_cast<int64_t>(k0) * a.numKVHeads + j.head / a.group) * headDim;
    const int tLast = j.tFirst + j.rows - 1;
    if (M == FwdMode::MobaCurrent) {
      j.keyBegin = (j.tFirst / a.chunkSize) * a.chunkSize;
      j.keyEnd = tLast + 1;
    } else {
      j.keyBegin = 0;
      j.keyEnd = a.causal ? min(j.lk, tLast + 1) : j.lk;
    }
    return j.rows > 0;
  }
}

// Key window [lo, hi) of tile row i (padding rows take the last row's window).
template <FwdMode M>
__device__ __forceinline__ void rowWindow(const FwdArgs& a, const Job& j, int i, int& lo, int& hi) {
  i = min(i, j.rows - 1);
  if (M == FwdMode::MobaPast) {
    lo = j.keyBegin;
    hi = j.keyEnd;
  } else if (M == FwdMode::MobaCurrent) {
    const int t = j.tFirst + i;
    lo = (t / a.chunkSize) * a.chunkSize;
    hi = t + 1;
  } else {
    const int t = j.tFirst + i;
    lo = 0;
    hi = a.causal ? min(t + 1, j.lk) : j.lk;
  }
}

// True when the key tile [s0, s0 + BN) is not fully visible to every row.
template <FwdMode M, int BN>
__device__ __forceinline__ bool tileNeedsMask(const FwdArgs& a, const Job& j, int s0) {
  int lo0, hi0, loN, hiN;
  rowWindow<M>(a, j, 0, lo0, hi0);
  rowWindow<M>(a, j, j.rows - 1, loN, hiN);
  return s0 + BN > hi0 || s0 < loN;
}

// Element offset, past k (or v) + kvBase, of the job's key at sequence
// position t: rows kvStride apart, or where the page table puts them.
__device__ __forceinline__ int64_t keyRowOffset(const FwdArgs& a, const Job& j, int t, int64_t kvStride) {
  if (!a.keyRows) return static_cast<int64_t>(t) * kvStride;
  return clampKeyRow(__ldg(a.keyRows + j.k0 + t), a.keyRowsMax);
}

// Element offset of tile row i's query vector (valid rows only).
template <FwdMode M>
__device__ __forceinline__ int64_t qRowOffset(const FwdArgs& a, const Job& j, int i, int headDim) {
  if (M == FwdMode::MobaPast) return static_cast<int64_t>(__ldg(a.entries + j.e0 + i)) * headDim;
  return (static_cast<int64_t>(j.qStart + i) * a.numQHeads + j.head) * headDim;
}

// Element offset of tile row i's output row (partials for Past).
template <FwdMode M>
__device__ __forceinline__ int64_t outRowOffset(const FwdArgs& a, const Job& j, int i, int headDim) {
  if (M == FwdMode::MobaPast) return static_cast<int64_t>(j.e0 + i) * headDim;
  return (static_cast<int64_t>(j.qStart + i) * a.numQHeads + j.head) * headDim;
}

// Index of tile row i's lse value.
template <FwdMode M>
__device__ __forceinline__ int64_t lseIndex(const FwdArgs& a, const Job& j, int i) {
  if (M == FwdMode::MobaPast) return static_cast<int64_t>(j.e0 + i);
  return static_cast<int64_t>(j.head) * a.totalQ + j.qStart + i;
}

// The topK-1 past-block entry slots of tile row i (MobaCurrent), or nullptr.
__device__ __forceinline__ const int32_t* entrySlots(const FwdArgs& a, const Job& j, int i) {
  if (i >= j.rows || a.topK < 2) return nullptr;
  return a.entryOf + (static_cast<int64_t>(j.head) * a.totalQ + j.qStart + i) * (a.topK - 1);
}

// Copies tile rows [0, rows) of 16-byte chunks from per-row global offsets
// into a swizzled tile (zeros for rows >= valid), spread over `threads`.
template <typename T, int ROWS, int D, typename RowOffset>
__device__ __forceinline__ void loadRows(T* tile, const T* base, int valid, int tid, int threads, RowOffset rowOffset) {
  constexpr int CH = D / 8;
  const uint32_t s = smemAddr(tile);
  for (int idx = tid; idx < ROWS * CH; idx += threads) {
    const int r = idx / CH;
    const int c = idx - r * CH;
    const bool ok = r < valid;
    const T* src = ok ? base + rowOffset(r) + c * 8 : base;
    cpAsync16(s + tileOffset<ROWS>(r, c) * 2, src, ok);
  }
}

// Paged keys (FwdArgs::keyRows): loadRows with each row's offset looked up
// once per warp, all lookups in flight at once. A warp copies at most 32
// distinct rows of a tile (ROWS <= kThreads); lane l of the warp looks up the
// row its warp copies in place l (tileRowLookup), and each copy then takes
// its row's offset from that lane (loadRowsLooked). The copies are those of
// loadRows: the same (row, 16-byte chunk) per thread.
template <int ROWS, int D, int kThreads, typename RowOffset>
__device__ __forceinline__ int64_t tileRowLookup(int valid, int tid, RowOffset rowOffset) {
  constexpr int CH = D / 8, A = 32 / CH, S = kThreads / CH, kPer = ROWS * CH / kThreads;
  static_assert(32 % CH == 0 && kThreads % CH == 0 && ROWS * CH % kThreads == 0 && A * kPer <= 32,
                "a warp's rows must fit its lanes");
  const int lane = tid & 31;
  const int r = (tid >> 5) * A + lane % A + (lane / A) * S;
  return lane < A * kPer && r < valid ? rowOffset(r) : 0;
}

template <typename T, int ROWS, int D, int kThreads>
__device__ __forceinline__ void loadRowsLooked(T* tile, const T* base, int valid, int tid, int64_t looked) {
  constexpr int CH = D / 8, A = 32 / CH, S = kThreads / CH, kPer = ROWS * CH / kThreads;
  const uint32_t s = smemAddr(tile);
  const int lane = tid & 31, c = lane % CH;
  const int r0 = (tid >> 5) * A + lane / CH;
#pragma unroll 4
  for (int i = 0; i < kPer; ++i) {
    const int r = r0 + i * S;
    const int64_t off = __shfl_sync(0xffffffffu, looked, i * A + lane / CH);
    const bool ok = r < valid;
    cpAsync16(s + tileOffset<ROWS>(r, c) * 2, ok ? base + off + c * 8 : base, ok);
  }
}

// Writes the normalized output fragments of a warp's 16 rows (rows rowBase +
// lane/4 and +8 of the tile) into a swizzled staging tile.
template <typename T, int ROWS, int NO>
__device__ __forceinline__ void stageOutput(T* tile, const float (&o)[NO][4], const float (&inv)[2], int rowBase,
                                            int lane) {
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int row = rowBase + (lane >> 2) + 8 * r;
#pragma unroll
    for (int i = 0; i < NO; ++i) {
      uint32_t* dst = reinterpret_cast<uint32_t*>(tile + tileOffset<ROWS>(row, i) + 2 * (lane & 3));
      *dst = pack2<T>(o[i][2 * r] * inv[r], o[i][2 * r + 1] * inv[r]);
    }
  }
}

// Stores staged rows [rowBegin, rowBegin + count) of the tile to global
// memory with 16-byte accesses; rows >= valid are skipped.
template <typename T, int ROWS, int D, typename RowOffset>
__device__ __forceinline__ void storeRows(const T* tile, T* base, int rowBegin, int count, int valid, int tid,
                                          int threads, RowOffset rowOffset) {
  constexpr int CH = D / 8;
  for (int idx = tid; idx < count * CH; idx += threads) {
    const int r = rowBegin + idx / CH;
    const int c = idx % CH;
    if (r < valid) {
      const uint4 x = *reinterpret_cast<const uint4*>(tile + tileOffset<ROWS>(r, c));
      *reinterpret_cast<uint4*>(base + rowOffset(r) + c * 8) = x;
    }
  }
}

}  // namespace attn
}  // namespace moba
