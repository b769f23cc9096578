// Instantiations and launch of the wgmma attention kernels (flash_fwd_sm90.cuh;
// bodies compiled for sm_90a only).
#include "attn_dispatch.cuh"
#include "flash_fwd_sm90.cuh"

namespace moba {
namespace {

struct Sm90Family {
  static constexpr const char* kName = "attention (sm90)";
  template <int D>
  using Tile = attn::Sm90Tile<D>;
  template <typename T, int D, FwdMode M>
  static auto kernel() {
    return &attn::attnFwdSm90<T, D, M>;
  }
};

}  // namespace

Status launchAttnSm90(const FwdArgs& a, FwdMode mode, DType dtype, int headDim, int grid, cudaStream_t stream) {
  return attn_dispatch::launch<Sm90Family>(a, mode, dtype, headDim, grid, stream);
}

}  // namespace moba
