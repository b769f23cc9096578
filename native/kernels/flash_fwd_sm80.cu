// Instantiations and launch of the mma.sync attention kernels (flash_fwd_sm80.cuh).
#include "attn_dispatch.cuh"
#include "flash_fwd_sm80.cuh"

namespace moba {
namespace {

struct Sm80Family {
  static constexpr const char* kName = "attention (sm80)";
  template <int D>
  using Tile = attn::Sm80Tile<D>;
  template <typename T, int D, FwdMode M>
  static auto kernel() {
    return &attn::attnFwdSm80<T, D, M>;
  }
};

}  // namespace

Status launchAttnSm80(const FwdArgs& a, FwdMode mode, DType dtype, int headDim, int grid, cudaStream_t stream) {
  return attn_dispatch::launch<Sm80Family>(a, mode, dtype, headDim, grid, stream);
}

}  // namespace moba
