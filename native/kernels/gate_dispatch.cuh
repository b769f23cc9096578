// The gate launchers' choice of kernel instance by input dtype and head dim:
// one place that lists the instances the addon holds (bf16 and f16, head
// dims 64 and 128) and the errors for any other.
#pragma once
#include <string>
#include <type_traits>

#include "gate_device.cuh"

namespace moba {
namespace gate {

template <int D>
using HeadDim = std::integral_constant<int, D>;

// Calls f(T{}, HeadDim<D>{}) with T the input's element type (Bf16 or F16)
// and returns its status.
template <typename F>
Status withGateTypes(DType dtype, int headDim, F&& f) {
  auto byDim = [&](auto t) -> Status {
    switch (headDim) {
      case 64: return f(t, HeadDim<64>{});
      case 128: return f(t, HeadDim<128>{});
      default: return Status::Invalid("unsupported head_dim: " + std::to_string(headDim));
    }
  };
  if (dtype == DType::BF16) return byDim(Bf16{});
  if (dtype == DType::F16) return byDim(F16{});
  return Status::Invalid(std::string("unsupported dtype for the CUDA gate: ") + dtypeName(dtype));
}

}  // namespace gate
}  // namespace moba
