// Internal interface between the attention host code (flash_fwd.cc,
// moba_fwd.cu) and the kernel instantiations (flash_fwd_sm80.cu,
// flash_fwd_sm90.cu).
#pragma once
#include <cuda_runtime.h>

#include <cstdint>
#include <vector>

#include "../common/dtype.h"
#include "../common/params.h"
#include "../common/status.h"
#include "common/attn_args.h"
#include "common/cuda_context.h"
#include "common/moba_lists.h"

namespace moba {

// Query rows per CTA of every attention kernel (both architectures).
constexpr int kAttnTileRows = 128;

// mma.sync kernels, any sm_80+ GPU.
Status launchAttnSm80(const FwdArgs& a, FwdMode mode, DType dtype, int headDim, int grid, cudaStream_t stream);
// wgmma kernels, sm_90a builds on compute capability 9.0 only.
Status launchAttnSm90(const FwdArgs& a, FwdMode mode, DType dtype, int headDim, int grid, cudaStream_t stream);

// Runs one attention kernel over `grid` work items on the best path for the
// device: wgmma on Hopper when this binary carries sm_90a code (persistent,
// at most one CTA per SM), mma.sync elsewhere (one CTA per item).
// MOBA_ATTN_KERNEL=sm80 forces the mma.sync path (for testing it on Hopper).
Status launchAttn(const FwdArgs& a, FwdMode mode, DType dtype, int headDim, int grid, const CudaContext& ctx);

// Device copies of cuSeqlensQ/K and of the query tiles: kAttnTileRows rows
// per sequence as (sequence, tile) pairs, longest sequences' last tiles first
// (they carry the most causal work).
struct QueryTiles {
  const int32_t* cuQ = nullptr;
  const int32_t* cuK = nullptr;
  const int2* tiles = nullptr;
  int numTiles = 0;
};
// Builds the tiles and ships all three arrays in one ctx.uploadMeta(), so
// call it after any other upload of the same op (the gate's, see gate.h).
Status uploadQueryTiles(const Varlen& v, CudaContext& ctx, QueryTiles* out);

// Fills the fields every mode shares from the op's params and its tiles.
FwdArgs baseArgs(const AttentionParams& p, const QueryTiles& qt);

// Dense flash attention (flash_fwd.cc).
Status flashAttentionLaunch(const AttentionParams& p, CudaContext& ctx);

// MoBA attention given the gate's lists (moba_fwd.cu): past-block partials,
// then the causal current block merged with them. `workspace` holds
// mobaAttendWorkspaceBytes(p, lists.maxEntries, numPairs) bytes.
size_t mobaAttendWorkspaceBytes(const AttentionParams& p, int64_t maxEntries, int numPairs);
Status mobaAttendLaunch(const AttentionParams& p, const MobaLists& lists, const QueryTiles& qt, void* workspace,
                        CudaContext& ctx);

}  // namespace moba
