// What the one-warpgroup wgmma gate CTAs (gate_topk_sm90.cu,
// gate_topk_two_pass.cu) share, whatever way they choose a row's blocks:
// where a thread stands among the CTA's 64 query rows, the copies of
// centroid tiles into wgmma's layout, one tile's product, and the end of
// each row (exact re-scoring of contested blocks, then the owner's output).
#pragma once
#include <cuda_fp16.h>

#include "common/attn_device.cuh"
#include "common/cuda_context.h"
#include "common/dependent_launch.h"
#include "common/grid_dependency.cuh"
#include "common/sm90_sync.cuh"
#include "common/wgmma_ops.cuh"
#include "gate_device.cuh"
#include "gate_select.cuh"

namespace moba {
namespace gate {

// A thread's place in a CTA of 64 rows of one sequence and query head (a
// plan tile, or part blockIdx.x % parts of one). The warp's 16 rows start
// at r16; this thread's fragment rows are r16 + g and r16 + g + 8 (rowA,
// rowB; g = lane / 4), and at the end lane tq < 2 of the quad owns row
// half tq & 1 (ownRow).
struct Sm90Place {
  RowTile tile;
  int lane, warp, tq;
  int keepMax;    // past blocks a row keeps (topK - 1)
  int numCTiles;  // centroid tiles of the CTA's last row; 0 when no row has more than keepMax
  int r16, rowA, rowB, half, ownRow;
  bool owner;
  int pOwn;  // past blocks of ownRow (0 past the tile's rows)
  size_t qRowStride;
  const uint16_t* qBase;  // the CTA's first q row, this head
};
template <int D, int kRows, int kBN>
__device__ __forceinline__ Sm90Place sm90PlaceOf(const GateArgs& a, int parts) {
  Sm90Place p;
  p.tile = rowTileOf(a, kRows, parts);
  const int tid = threadIdx.x;
  p.lane = tid & 31;
  p.warp = tid >> 5;
  p.tq = p.lane & 3;
  p.keepMax = a.topK - 1;
  p.numCTiles = p.tile.pLast > p.keepMax ? (p.tile.pLast + kBN - 1) / kBN : 0;
  p.r16 = p.warp * 16;
  p.rowA = p.r16 + (p.lane >> 2);
  p.rowB = p.rowA + 8;
  p.half = p.tq & 1;
  p.ownRow = p.half ? p.rowB : p.rowA;
  p.owner = p.tq < 2;
  p.pOwn = p.ownRow < p.tile.nRows ? a.chunkDiv(p.tile.pos0 + p.ownRow) : 0;
  p.qRowStride = static_cast<size_t>(a.nqh) * D;
  p.qBase = static_cast<const uint16_t*>(a.q) + static_cast<size_t>(p.tile.row0) * p.qRowStride +
            static_cast<size_t>(p.tile.h) * D;
  return p;
}

// Past blocks of the thread's two rows (0 past the tile: every column
// masked), and the fewest and most of its warp's rows (consecutive
// positions, so its first and last).
struct Sm90Past {
  int cA, cB, cWarpMin, cWarpMax;
};
__device__ __forceinline__ Sm90Past sm90PastOf(const GateArgs& a, const Sm90Place& p) {
  const RowTile& t = p.tile;
  Sm90Past s;
  s.cA = p.rowA < t.nRows ? a.chunkDiv(t.pos0 + p.rowA) : 0;
  s.cB = p.rowB < t.nRows ? a.chunkDiv(t.pos0 + p.rowB) : 0;
  const int warpLast = min(p.r16 + 15, t.nRows - 1);
  s.cWarpMin = p.r16 < t.nRows ? a.chunkDiv(t.pos0 + p.r16) : 0;
  s.cWarpMax = p.r16 < t.nRows ? a.chunkDiv(t.pos0 + warpLast) : 0;
  return s;
}

// The CTA's q rows as wgmma's register A operand: scaled fp16
// (loadRowFragments, scaleRowOperand), with each row's squared norm and
// magnitude bits. Its loads are issued before the wait for the grids before
// this one (they write the centroid operand and its statistics), and
// afterWait (the first tile copies) runs right after that wait, so both
// are in flight while the operand is built.
template <typename T, int D, typename AfterWait>
__device__ __forceinline__ void loadQOperand(const Sm90Place& p, uint32_t (&qa)[D / 16][4], float (&q2)[2],
                                             uint32_t (&nonzero)[2], AfterWait&& afterWait) {
  loadRowFragments<D>(qa, p.qBase, p.qRowStride, p.r16, p.tile.nRows, p.lane);
  waitForPrimaryGrid();
  afterWait();
  scaleRowOperand<T, D>(qa, 0, q2[0], nonzero[0]);
  scaleRowOperand<T, D>(qa, 1, q2[1], nonzero[1]);
}

// The statistics of the CTA's (sequence, KV head) (GateArgs::stats).
__device__ __forceinline__ const uint32_t* statsOf(const GateArgs& a, const Sm90Place& p) {
  return a.stats + (static_cast<size_t>(p.tile.b) * a.nkvh + p.tile.kvh) * kGateStats;
}

// Copies of kBN-centroid tiles of the fp16 operand into shared memory in
// wgmma's 128-byte-swizzled K-major layout: each thread copies the same
// 16-byte chunk of every kLoadStep-th row of a tile (the row's dims
// [64 hf, 64 hf + 64) at byte hf * kBN * 128 + row * 128, chunks XOR-ed
// with row % 8; kLoadStep is a multiple of 8, so the swizzle is fixed per
// thread). Rows at or past the CTA's last row's own block are zero.
template <int D, int kThreads, int kBN>
struct Sm90TileCopy {
  static constexpr int kChunks = D / 8;
  static constexpr int kLoadStep = kThreads / kChunks;
  static_assert(kLoadStep % 8 == 0 && kBN % kLoadStep == 0, "tile rows per copy step");
  const uint16_t* hiBase;  // block 0 of the sequence, this KV head
  size_t hiStride;         // between blocks
  const uint16_t* first;   // this thread's first row of tile 0
  uint32_t dst;            // its chunk in a stage
  int ldRow;

  __device__ __forceinline__ Sm90TileCopy(const GateArgs& a, const RowTile& t, uint32_t stages) {
    const int tid = threadIdx.x;
    hiStride = static_cast<size_t>(a.nkvh) * D;
    hiBase = static_cast<const uint16_t*>(a.hi) + (static_cast<size_t>(a.cuBlocks[t.b]) * a.nkvh + t.kvh) * D;
    ldRow = tid / kChunks;
    const int ldCh = tid % kChunks;
    dst = stages + (ldCh >> 3) * (kBN * 128) + ldRow * 128 + (((ldCh & 7) ^ (ldRow & 7)) * 16);
    first = hiBase + static_cast<size_t>(ldRow) * hiStride + ldCh * 8;
  }
  // The tile whose rows for this thread start at src, with rowsLeft rows
  // (from this thread's first) still below the last row's own block, into
  // the stage at byte offset stageOff.
  __device__ __forceinline__ void copy(const uint16_t* src, int rowsLeft, uint32_t stageOff) const {
    const size_t stepElems = kLoadStep * hiStride;
#pragma unroll
    for (int it = 0; it < kBN / kLoadStep; ++it, src += stepElems) {
      const bool valid = it * kLoadStep < rowsLeft;
      ptx::cpAsync16(dst + stageOff + it * kLoadStep * 128, valid ? src : hiBase, valid);
    }
  }
};

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
// One m64nkBN product of the q operand (registers) with the tile in the
// stage at stageAddr, issued and committed. The descriptor's address field
// (bytes / 16, 14 bits) holds any address in the stages, so each k-step
// adds its offset to the stage's descriptor.
template <int D, int kBN>
__device__ __forceinline__ void issueTileProduct(float (&acc)[8][4], uint32_t (&qa)[D / 16][4], uint32_t stageAddr) {
  const uint64_t stDesc = attn::wgmmaDesc(stageAddr, 16, 1024);
  attn::wgmmaFence();
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk) {
    const uint64_t desc = stDesc + static_cast<uint64_t>(((kk >> 2) * (kBN * 128) + (kk & 3) * 32) >> 4);
    attn::wgmmaRS<__half, 0>(acc, qa[kk], desc, kk > 0 ? 1 : 0);
  }
  attn::wgmmaCommit();
}
template <int D>
__device__ __forceinline__ void awaitTileProduct(float (&acc)[8][4], uint32_t (&qa)[D / 16][4]) {
  attn::wgmmaWait<0>();
  attn::fenceRegs(acc);
  attn::fenceRegs(qa);
}
#endif

// The end of every row of the CTA (all threads): the blocks still contested
// are re-scored exactly, a warp at a time; then each owner ranks its row's
// band and writes the row (finishRow). rowState: band size, -1 (exact
// kernel) or kRowWritten; rowCertain: the band's certain prefix; bands of
// KB entries per row; queues of kQueueLen codes (int or uint16_t) per warp;
// rows keep at most kMaxKeep blocks.
template <typename T, int D, int KB, int kQueueLen, int kMaxKeep, typename Code>
__device__ __forceinline__ void finishCtaRows(const GateArgs& a, const Sm90Place& p, const int* rowState,
                                              const int* rowCertain, Code* queues, float* bandS, int* bandI) {
  const RowTile& t = p.tile;
  const int c = p.pOwn;
  const int state = p.owner && p.ownRow < t.nRows && c > p.keepMax ? rowState[p.ownRow] : -1;
  int nb = 0, nc = 0;
  if (state >= 0) {
    nb = state;
    nc = nb > p.keepMax ? rowCertain[p.ownRow] : p.keepMax;
  }
  const int need = max(nb - nc, 0);  // entries [nc, nb) of the row get exact scores
  rescoreContested<T, D, KB, D / 8>(
      need, nc, p.ownRow, queues + p.warp * kQueueLen,
      [&] { return a.cent + (static_cast<size_t>(a.cuBlocks[t.b]) * a.nkvh + t.kvh) * D; },
      static_cast<size_t>(a.nkvh) * D, p.qBase, p.qRowStride, bandI, bandS, p.lane);
  if (p.owner && p.ownRow < t.nRows)
    finishRow<kMaxKeep>(a, t.h, t.row0 + p.ownRow, c, p.keepMax, state, bandS + p.ownRow * KB, bandI + p.ownRow * KB, nc, nb);
}

// Launches a gate scores kernel with its dynamic shared memory.
template <typename Kernel>
Status launchScoresKernel(Kernel kernel, dim3 grid, int threads, int smemBytes, const GateArgs& a, bool dependent,
                          cudaStream_t stream, const char* what) {
  MOBA_RETURN_IF_ERROR(cudaStatus(
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smemBytes), "gate smem limit"));
  return cudaStatus(launchInOrder(kernel, grid, dim3(threads), smemBytes, stream, dependent, a), what);
}

}  // namespace gate
}  // namespace moba
