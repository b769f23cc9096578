// Internal interface between the attention host code (flash_fwd.cc,
// moba_fwd.cu) and the kernel instantiations (flash_fwd_sm80.cu,
// flash_fwd_sm90.cu).
#pragma once
#include <cuda_runtime.h>

#include <cstdint>
#include <cstring>
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

// Query tiles of kAttnTileRows rows per sequence as (sequence, tile) pairs,
// longest sequences' last tiles first (they carry the most causal work).
void buildQueryTiles(const Varlen& v, std::vector<int2>& tiles);

// Packs host metadata arrays into one block for a single ctx.uploadMeta().
class MetaPack {
 public:
  template <typename T>
  size_t add(const T* data, size_t count) {
    size_t off = CudaContext::alignUp(bytes_.size(), 16);
    bytes_.resize(off + count * sizeof(T));
    if (count) std::memcpy(bytes_.data() + off, data, count * sizeof(T));
    return off;
  }
  Status upload(CudaContext& ctx, const uint8_t** base) {
    void* p = nullptr;
    MOBA_RETURN_IF_ERROR(ctx.uploadMeta(bytes_.data(), bytes_.size(), &p));
    *base = static_cast<const uint8_t*>(p);
    return Status::Ok();
  }

 private:
  std::vector<uint8_t> bytes_;
};

// Fills the fields every mode shares from the op's params; device pointers
// to cuSeqlens and tiles come from the op's metadata upload.
FwdArgs baseArgs(const AttentionParams& p, const int32_t* cuQ, const int32_t* cuK, const int2* tiles, int numTiles);

// Dense flash attention (flash_fwd.cc).
Status flashAttentionLaunch(const AttentionParams& p, CudaContext& ctx);

// MoBA attention given the gate's lists (moba_fwd.cu): past-block partials,
// then the causal current block merged with them. `workspace` holds
// mobaAttendWorkspaceBytes(p, lists.maxEntries, numPairs) bytes; cuQ, cuK,
// tiles are device metadata as for the dense path.
size_t mobaAttendWorkspaceBytes(const AttentionParams& p, int64_t maxEntries, int numPairs);
Status mobaAttendLaunch(const AttentionParams& p, const MobaLists& lists, const int32_t* cuQ, const int32_t* cuK,
                        const int2* tiles, int numTiles, void* workspace, CudaContext& ctx);

}  // namespace moba
