// Instantiations and launch of the wgmma attention kernels
// (flash_fwd_sm90.cuh; bodies compiled for sm_90a only): head dims 64 and 128, bf16 and f16, three modes.
#include "attn_launch.h"
#include "flash_fwd_sm90.cuh"

namespace moba {
namespace {

template <typename T, int D, FwdMode M>
Status launchOne(const FwdArgs& a, int grid, cudaStream_t stream) {
  constexpr int smem = attn::Sm90Tile<D>::kSmemBytes;
  auto kernel = attn::attnFwdSm90<T, D, M>;
  MOBA_RETURN_IF_ERROR(
      cudaStatus(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem), "attention (sm90) smem"));
  kernel<<<grid, attn::Sm90Tile<D>::kThreads, smem, stream>>>(a);
  return checkLaunch("attention (sm90)");
}

template <typename T, int D>
Status launchMode(const FwdArgs& a, FwdMode mode, int grid, cudaStream_t stream) {
  switch (mode) {
    case FwdMode::Dense: return launchOne<T, D, FwdMode::Dense>(a, grid, stream);
    case FwdMode::MobaCurrent: return launchOne<T, D, FwdMode::MobaCurrent>(a, grid, stream);
    case FwdMode::MobaPast: return launchOne<T, D, FwdMode::MobaPast>(a, grid, stream);
  }
  return Status::Invalid("unsupported attention mode");
}

template <typename T>
Status launchDim(const FwdArgs& a, FwdMode mode, int headDim, int grid, cudaStream_t stream) {
  switch (headDim) {
    case 64: return launchMode<T, 64>(a, mode, grid, stream);
    case 128: return launchMode<T, 128>(a, mode, grid, stream);
  }
  return Status::Invalid("unsupported head_dim: " + std::to_string(headDim) + " (CUDA attention supports 64 and 128)");
}

}  // namespace

Status launchAttnSm90(const FwdArgs& a, FwdMode mode, DType dtype, int headDim, int grid, cudaStream_t stream) {
  if (grid <= 0) return Status::Ok();
  switch (dtype) {
    case DType::BF16: return launchDim<__nv_bfloat16>(a, mode, headDim, grid, stream);
    case DType::F16: return launchDim<__half>(a, mode, headDim, grid, stream);
    default: break;
  }
  return Status::Invalid(std::string("unsupported dtype for attention: ") + dtypeName(dtype));
}

}  // namespace moba
