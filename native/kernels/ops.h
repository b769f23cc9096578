// Host entry points of the CUDA ops, one per Params struct. Each enqueues its
// kernels on ctx.stream and returns a Status; none throws or synchronizes.
#pragma once
#include "../common/params.h"
#include "common/cuda_context.h"

namespace moba {

Status gateLaunch(const GateParams& p, CudaContext& ctx);
Status attentionLaunch(const AttentionParams& p, CudaContext& ctx);
Status kvAppendLaunch(const KVAppendParams& p, CudaContext& ctx);
Status kvGatherLaunch(const KVGatherParams& p, CudaContext& ctx);
Status decodeLaunch(const DecodeParams& p, CudaContext& ctx);

}  // namespace moba
