// The K/V stream of one decode warp: a private ring of kStages shared-memory
// stages, each holding the K and V rows of 16 consecutive keys.
//
// Every warp of a decode CTA streams its own keys through its own ring, so
// no CTA-wide barrier sits between a tile landing and its use: a warp waits
// only for its own copies. Lane l fetches one row: K of key l (l < 16) or V
// of key l - 16; one key's row is headDim contiguous elements of a page
// (pages are "HND"), whatever the page size.
//   sm_90: one bulk copy (cp.async.bulk) per row, completing on the stage's
//          mbarrier: one instruction per lane per tile, no register staging.
//   older: the row as 16-byte cp.async copies, one commit group per stage.
// Rows are padded by 16 bytes so that the 8 rows one ldmatrix phase reads
// fall in 8 different bank groups (bulk copies cannot swizzle).
//
// sm_90 with a tensor map of the pool (pages of a multiple of 16 tokens, and
// tiles that start at a multiple of 16): the tile's 16 K rows and 16 V rows
// are each one rectangle of the pool, so lane 0 fetches the tile with
// 2 * D / 64 tensor copies (TMA) instead of 32 row copies issued one lane at
// a time. Their layout is unpadded and 128-byte swizzled: 64-column subtiles
// of 16 rows x 128 bytes, the 16-byte chunk c of row r at chunk c ^ (r % 8).
#pragma once
#include <cstdint>

#include "common/ptx.cuh"
#include "common/sm90_sync.cuh"

namespace moba {
namespace decode {

constexpr int kWarpKeys = 16;  // keys per warp tile (one m16n8k16 k-step of P.V)

template <int D>
struct RowLayout {
  static constexpr int kRowHalves = D + 8;                         // padded row
  static constexpr int kStageHalves = 2 * kWarpKeys * kRowHalves;  // K rows, then V rows
  static constexpr int kRowBytes = D * 2;
  // The tensor-map layout.
  static constexpr int kTmaSubtileHalves = kWarpKeys * 64;           // 16 rows x 64 columns
  static constexpr int kTmaStageHalves = 2 * kWarpKeys * D;          // K subtiles, then V subtiles
  static constexpr uint32_t kTmaTileBytes = 2 * kWarpKeys * D * 2;  // K and V of one tile
};

// Where 16-byte chunk c (dims [8c, 8c + 8)) of row `row` of a K or V tile
// lives, in either layout (T: uint16_t or const uint16_t).
template <int D, bool kTma, class T>
__device__ __forceinline__ T* tileChunk(T* base, int row, int c) {
  using L = RowLayout<D>;
  return kTma ? base + (c >> 3) * L::kTmaSubtileHalves + row * 64 + (((c & 7) ^ (row & 7)) << 3)
             : base + row * L::kRowHalves + c * 8;
}

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
#define MOBA_DECODE_BULK 1
#else
#define MOBA_DECODE_BULK 0
#endif

// One warp's ring. `stages` points at kStages * kStageHalves halves; `bars` at
// kStages mbarriers (used on sm_90 only). kTma: the tensor-map layout (else
// padded rows).
template <int D, int kStages, bool kTma>
struct WarpRing {
  using L = RowLayout<D>;
  static constexpr int kStageHalves = kTma ? L::kTmaStageHalves : L::kStageHalves;
  uint16_t* stages;
  uint64_t* bars;
  const uint16_t* anyValid;  // a readable global address for zero-size cp.async (older archs)

  __device__ __forceinline__ uint16_t* kMut(int stage) const { return stages + stage * kStageHalves; }
  __device__ __forceinline__ uint16_t* vMut(int stage) const {
    return kMut(stage) + (kTma ? kWarpKeys * D : kWarpKeys * L::kRowHalves);
  }
  __device__ __forceinline__ const uint16_t* k(int stage) const { return kMut(stage); }
  __device__ __forceinline__ const uint16_t* v(int stage) const { return vMut(stage); }

  // Lane 0 of the warp, once, before the CTA barrier that precedes any use.
  __device__ __forceinline__ void init() {
#if MOBA_DECODE_BULK
#pragma unroll
    for (int s = 0; s < kStages; ++s) attn::mbarInit(ptx::smemAddr(bars + s), 1);
    attn::mbarInitFence();
#endif
  }

  // Every lane of the warp: fetch this lane's row (src, or zeros when src is
  // null: keys past the end never bring in NaN/Inf that a 0 weight would keep).
  __device__ __forceinline__ void issue(int stage, const uint16_t* src, int lane) {
    uint16_t* dst = kMut(stage) + lane * L::kRowHalves;  // lane 16 starts the V rows
#if MOBA_DECODE_BULK
    const uint32_t bar = ptx::smemAddr(bars + stage);
    const uint32_t copying = __ballot_sync(0xffffffffu, src != nullptr);
    if (lane == 0) attn::mbarArriveExpectTx(bar, __popc(copying) * L::kRowBytes);
    __syncwarp();  // the expected bytes are posted before any copy can complete
    if (src != nullptr) {
      attn::bulkCopyToShared(ptx::smemAddr(dst), src, L::kRowBytes, bar);
    } else {
#pragma unroll
      for (int c = 0; c < D / 8; ++c) reinterpret_cast<uint4*>(dst)[c] = make_uint4(0, 0, 0, 0);
      attn::fenceProxyAsync();
    }
#else
#pragma unroll
    for (int c = 0; c < D / 8; ++c) ptx::cpAsync16(ptx::smemAddr(dst + c * 8), src != nullptr ? src + c * 8 : anyValid, src != nullptr);
    ptx::cpAsyncCommit();
#endif
  }

#if MOBA_DECODE_BULK
  // Lane 0 fetches the whole tile by tensor copies: K rows from pool row
  // kRow, V rows from vRow (rows of D elements). valid (lane 0's): false for
  // a page outside the pool, whose tile reads as zeros.
  __device__ __forceinline__ void issueTile(int stage, const void* map, bool valid, int kRow, int vRow, int lane) {
    const uint32_t bar = ptx::smemAddr(bars + stage);
    valid = __shfl_sync(0xffffffffu, valid, 0);
    if (lane == 0) {
      attn::mbarArriveExpectTx(bar, valid ? L::kTmaTileBytes : 0u);
      if (valid) {
#pragma unroll
        for (int s = 0; s < D / 64; ++s) {
          attn::tmaLoad2d(ptx::smemAddr(kMut(stage) + s * L::kTmaSubtileHalves), map, s * 64, kRow, bar);
          attn::tmaLoad2d(ptx::smemAddr(vMut(stage) + s * L::kTmaSubtileHalves), map, s * 64, vRow, bar);
        }
      }
    }
    if (!valid) {
      uint4* z = reinterpret_cast<uint4*>(kMut(stage));
      for (int i = lane; i < L::kTmaStageHalves / 8; i += 32) z[i] = make_uint4(0, 0, 0, 0);
      attn::fenceProxyAsync();
    }
  }

  // After the wait: V rows [first, 16) of a tensor-copied tile (keys past the
  // end, holding whatever the page held) become zeros, so that a 0 weight
  // cannot meet a NaN or Inf there. The next tensor copy into the stage comes
  // after this warp's proxy fence.
  __device__ __forceinline__ void zeroTailV(int stage, int first, int lane) {
    constexpr int kChunksPerRow = D / 8;
    for (int i = first * kChunksPerRow + lane; i < kWarpKeys * kChunksPerRow; i += 32) {
      const int row = i / kChunksPerRow, c = i - row * kChunksPerRow;
      *reinterpret_cast<uint4*>(tileChunk<D, true>(vMut(stage), row, c)) = make_uint4(0, 0, 0, 0);
    }
    attn::fenceProxyAsync();
    __syncwarp();
  }
#endif

  // Older archs: the first kStages tiles and then every iteration commit one
  // group each, issued or not, so that "all but the newest kStages - 1
  // groups" is always the tile being waited for.
  __device__ __forceinline__ void skip() {
#if !MOBA_DECODE_BULK
    ptx::cpAsyncCommit();
#endif
  }

  // Tile number `it` of this warp (in stage it % kStages) has landed for every lane.
  __device__ __forceinline__ void wait(int it) {
#if MOBA_DECODE_BULK
    attn::mbarWait(ptx::smemAddr(bars + it % kStages), (it / kStages) & 1);
#else
    ptx::cpAsyncWait<kStages - 1>();
#endif
    __syncwarp();
  }

  __device__ __forceinline__ void drain() {
#if !MOBA_DECODE_BULK
    ptx::cpAsyncWait<0>();
#endif
  }
};

}  // namespace decode
}  // namespace moba
