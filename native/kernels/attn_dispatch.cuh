// Dispatch of one attention kernel family over (dtype, head dim, mode). Each
// architecture's .cu file instantiates it with a Family that names its
// kernel template and tile: head dims 64 and 128, bf16 and f16, three modes.
//
//   struct Family {
//     static constexpr const char* kName;                        // for errors
//     template <int D> using Tile = ...;                         // kThreads, kSmemBytes
//     template <typename T, int D, FwdMode M> static auto kernel();  // the __global__ function
//   };
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <string>

#include "attn_launch.h"

namespace moba {
namespace attn_dispatch {

template <class F, typename T, int D, FwdMode M>
Status one(const FwdArgs& a, int grid, cudaStream_t stream) {
  using Tile = typename F::template Tile<D>;
  auto kernel = F::template kernel<T, D, M>();
  MOBA_RETURN_IF_ERROR(cudaStatus(
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, Tile::kSmemBytes), F::kName));
  kernel<<<grid, Tile::kThreads, Tile::kSmemBytes, stream>>>(a);
  return checkLaunch(F::kName);
}

template <class F, typename T, int D>
Status byMode(const FwdArgs& a, FwdMode mode, int grid, cudaStream_t stream) {
  switch (mode) {
    case FwdMode::Dense: return one<F, T, D, FwdMode::Dense>(a, grid, stream);
    case FwdMode::MobaCurrent: return one<F, T, D, FwdMode::MobaCurrent>(a, grid, stream);
    case FwdMode::MobaPast: return one<F, T, D, FwdMode::MobaPast>(a, grid, stream);
  }
  return Status::Invalid("unsupported attention mode");
}

template <class F, typename T>
Status byHeadDim(const FwdArgs& a, FwdMode mode, int headDim, int grid, cudaStream_t stream) {
  switch (headDim) {
    case 64: return byMode<F, T, 64>(a, mode, grid, stream);
    case 128: return byMode<F, T, 128>(a, mode, grid, stream);
  }
  return Status::Invalid("unsupported head_dim: " + std::to_string(headDim) + " (CUDA attention supports 64 and 128)");
}

template <class F>
Status launch(const FwdArgs& a, FwdMode mode, DType dtype, int headDim, int grid, cudaStream_t stream) {
  if (grid <= 0) return Status::Ok();
  switch (dtype) {
    case DType::BF16: return byHeadDim<F, __nv_bfloat16>(a, mode, headDim, grid, stream);
    case DType::F16: return byHeadDim<F, __half>(a, mode, headDim, grid, stream);
    default: break;
  }
  return Status::Invalid(std::string("unsupported dtype for attention: ") + dtypeName(dtype));
}

}  // namespace attn_dispatch
}  // namespace moba
