// Shared between the gate's files (gating.cu, gate_centroids.cu,
// gate_topk.cu, gate_lists.cu): the kernels' argument block, the host plan
// (metadata and workspace layout) and the launchers. Not part of any API.
#pragma once
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <vector>

#include "../common/params.h"
#include "../common/status.h"
#include "common/fast_div.h"

namespace moba {

class CudaContext;

// Everything the gate kernels read and write, passed by value.
struct GateArgs {
  const void* q = nullptr;           // [totalQ, nqh, headDim] bf16/f16
  const void* k = nullptr;           // [totalK, nkvh, headDim], or paged (keyRows, as GateParams)
  const int64_t* keyRows = nullptr;  // device [totalK], or nullptr
  int64_t keyHeadStride = 0;
  int64_t keyRowsMax = 0;
  const float* keySums = nullptr;    // paged keys with one sum per block (GateParams)
  int64_t sumsPageStride = 0, keyPageStride = 0;
  int32_t* indices = nullptr;        // [nqh, totalQ, topK] output
  const int32_t* cuQ = nullptr;      // device [batch+1]
  const int32_t* cuK = nullptr;      // device [batch+1]
  const int32_t* cuBlocks = nullptr; // device [batch+1] prefix sums of ceil(Lk / chunkSize)
  const int32_t* tiles = nullptr;    // device [numTiles][2]: (sequence, first row within it)
  float* cent = nullptr;             // [totalBlocks, nkvh, headDim] fp32 centroids
  void* hi = nullptr;                // [totalBlocks, nkvh, headDim] fp16 centroids, scaled, dims permuted (tensor-core operand)
  // [batch, nkvh, kGateStats] as float bits (atomicMax on non-negative
  // floats), in the scaled units of the fp16 operand (gate_centroids.cu):
  // [kStatBound] max over blocks of the bound on |tensor-core score - exact
  // score| per unit of ||q||, [kStatNorm] max over blocks of the centroid's
  // L2 norm, [kStatMaxAbs] the largest centroid magnitude (unscaled).
  uint32_t* stats = nullptr;
  int32_t* fallbackCount = nullptr;  // [1] rows the fast or large-topK kernel hands to the exact kernel
  int32_t* fallback = nullptr;       // [nqh * totalQ] items h * totalQ + row
  int batch = 0, totalQ = 0, totalK = 0, totalBlocks = 0;
  int nqh = 0, nkvh = 0, group = 1, headDim = 0, chunkSize = 0, topK = 0;
  // Bits that hold any block index of a sequence (gate_topk.cu, packed lists).
  int packBits = 1;
  FastDiv chunkDiv;  // division by chunkSize
};
// Packed lists up to this many index bits (4096 blocks per sequence):
// beyond, the packing error (2^(bits - 23) of a score's magnitude) would
// widen the band well past the fp16 operands' own bound (gate_topk.cu).
constexpr int kGateMaxPackBits = 12;

constexpr int kGateStats = 4;
constexpr int kStatBound = 0, kStatNorm = 1, kStatMaxAbs = 2;

// Fast-path variants by the number of past blocks kept per query (topK - 1):
// the per-row list holds them plus room for near-ties (the band), at least
// four more: with fp16 operands the band rarely holds more than one extra
// block, and a row whose band overflows takes the exact kernel.
inline int gateListCap(int topK) {
  int keep = topK - 1;
  if (keep == 0) return 0;  // nothing to score: the exact kernel writes the current block
  if (keep <= 3) return 8;
  if (keep <= 7) return 12;
  if (keep <= 15) return 20;
  return 0;  // no register lists: gate_topk_large.cu
}
// Past blocks kept per row (topK - 1) that gate_topk_large.cu handles: its
// per-row heaps in shared memory hold up to this many, every topK the API
// takes (kMaxTopK).
constexpr int kGateLargeMaxKeep = kMaxTopK - 1;
inline bool gateUsesLarge(int topK) { return topK - 1 > 15 && topK - 1 <= kGateLargeMaxKeep; }
// Rows per plan tile of gate_topk_large.cu (its CTAs take a tile or half of one).
constexpr int kGateLargeTileRows = 64;
inline int gateTileRows(int listCap, bool large) { return listCap > 0 ? 128 : large ? kGateLargeTileRows : 0; }

struct GatePlan {
  int totalBlocks = 0;
  int maxBlocks = 1;  // blocks of the longest sequence (keys)
  int packBits = 1;  // bits that hold any block index of a sequence (GateArgs::packBits)
  int listCap = 0;   // 0: no fast path
  bool large = false;  // gate_topk_large.cu selects every row (gateUsesLarge)
  int tileRows = 0;
  int numTiles = 0;
  // Metadata uploaded once: cuQ, cuK, cuBlocks, tiles (int32, offsets in elements).
  std::vector<int32_t> meta;
  size_t metaQ = 0, metaK = 0, metaBlocks = 0, metaTiles = 0;
  // Gate workspace (bytes from the workspace base).
  size_t offCent = 0, offHi = 0, offStats = 0, offFbCount = 0, offFb = 0, gateBytes = 0;
  // Lists workspace (bytes from the workspace base, after the gate's part).
  int64_t listItems = 0;  // nqh * totalQ * (topK - 1)
  int64_t numSegments = 0;
  int endBit = 0;
  size_t offIndices = 0, offKeys0 = 0, offKeys1 = 0, offVals0 = 0, offVals1 = 0, offEntryOf = 0;
  size_t offOffsets = 0, offCuBlocks = 0, offTemp = 0, tempBytes = 0, totalBytes = 0;
};

// Validates p for CUDA and fills the plan; `withMeta` builds the metadata
// (tile list) too, `withLists` lays out the lists' part of the workspace.
Status makeGatePlan(const GateParams& p, bool withMeta, bool withLists, GatePlan* plan);

// dependent: each launch after the first may start while the one before it
// finishes (programmatic dependent launch, sm_90 and later); the kernels wait
// for it before they read its results.
Status launchGateCentroids(const GateArgs& a, DType dtype, bool dependent, cudaStream_t stream);
Status launchGateFast(const GateArgs& a, DType dtype, int listCap, int numTiles, bool dependent, cudaStream_t stream);
// The fast path on wgmma (gate_topk_sm90.cu): topK 2 to 8 with packed lists,
// and topK 9 to 12 up to a number of blocks per sequence (maxBlocks) that
// falls with topK (4,096 blocks at topK 9, 256 at topK 12), on
// compute capability 9.0 devices when the addon holds sm_90a code, unless
// MOBA_GATE_KERNEL=sm80 keeps launchGateFast's mma.sync kernel. Same tiles,
// same results.
bool gateUsesSm90(int topK, int packBits, int maxBlocks, const CudaContext& ctx);
Status launchGateFastSm90(const GateArgs& a, DType dtype, int numTiles, bool dependent, cudaStream_t stream);
// topK 17 to 64 in two passes over the centroid tiles (gate_topk_two_pass.cu),
// on compute capability 9.0 devices when the addon holds sm_90a code and
// packBits allows packed entries, unless MOBA_GATE_KERNEL=sm80 keeps
// launchGateLarge. The same tiles as launchGateLarge, the same results.
bool gateUsesTwoPass(int topK, int packBits, const CudaContext& ctx);
Status launchGateTwoPass(const GateArgs& a, DType dtype, int numTiles, bool dependent, cudaStream_t stream);
// Every row by gate_topk_large.cu (plan.large); numTiles tiles of kGateLargeTileRows rows.
// Rows it cannot certify go to a.fallback for the exact kernel.
Status launchGateLarge(const GateArgs& a, DType dtype, int numTiles, bool dependent, cudaStream_t stream);
// topK 1: every (head, row) item keeps its own block (gate_own_block.cu);
// needs only the metadata, so it follows any op in plain stream order.
Status launchGateOwnBlock(const GateArgs& a, int smCount, cudaStream_t stream);
// The items of a.fallback (count on the device) by one CTA each (gate_exact_rows.cu).
Status launchGateExactRows(const GateArgs& a, DType dtype, int smCount, bool dependent, cudaStream_t stream);

// Lists (gate_lists.cu).
size_t listsSortTempBytes(int64_t items, int endBit);
struct ListsArgs {
  const int32_t* indices = nullptr;  // [nqh, totalQ, topK]
  const int32_t* cuQ = nullptr;      // device [batch+1]
  const int32_t* cuBlocksMeta = nullptr;  // device [batch+1] (metadata copy)
  int32_t* cuBlocks = nullptr;       // workspace copy the lists point at
  int32_t* keys0 = nullptr;
  int32_t* keys1 = nullptr;
  int32_t* vals0 = nullptr;
  int32_t* vals1 = nullptr;
  int32_t* entryOf = nullptr;        // [nqh * totalQ * (topK-1)]
  int32_t* offsets = nullptr;        // [numSegments + 1]
  void* temp = nullptr;
  size_t tempBytes = 0;
  int batch = 0, totalQ = 0, nqh = 0, topK = 0, totalBlocks = 0;
  int64_t items = 0, numSegments = 0;
  int endBit = 0;
};
// Builds the lists; *entries receives the buffer holding the sorted entries.
Status launchListsBuild(const ListsArgs& a, int32_t** entries, cudaStream_t stream);

}  // namespace moba
