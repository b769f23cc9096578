// Division by a divisor fixed for a launch but known only at run time (head
// group, block and page sizes, CTAs per item), as a multiply-high, an add and
// a shift: a 32-bit `/` by a run-time value is about 25 dependent
// instructions, and the decode kernels' one-time phases, one warp per
// scheduler, wait on every one of them.
#pragma once
#include <cstdint>

namespace moba {

struct FastDiv {
  uint32_t mul = 1, shift = 0;  // the divisor 1

  FastDiv() = default;
  // divisor in [1, 2^31): shift = ceil(log2(divisor)), mul = floor(2^32 (2^shift - divisor) / divisor) + 1.
  explicit FastDiv(int divisor) {
    const uint64_t d = static_cast<uint64_t>(divisor > 0 ? divisor : 1);
    while ((uint64_t{1} << shift) < d) ++shift;
    mul = static_cast<uint32_t>(((uint64_t{1} << 32) * ((uint64_t{1} << shift) - d)) / d + 1);
  }

#ifdef __CUDACC__
  // n / divisor for n in [0, 2^31).
  __device__ __forceinline__ int operator()(int n) const {
    const uint32_t u = static_cast<uint32_t>(n);
    return static_cast<int>((__umulhi(u, mul) + u) >> shift);
  }
#endif
};

}  // namespace moba
