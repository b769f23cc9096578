// Fills a buffer with a repeated 16- or 32-bit pattern (poisoning outputs in
// tests, zeroing caches): cudaMemset only repeats bytes.
#include <cuda_runtime.h>

#include <cstdint>

#include "common/cuda_context.h"

namespace moba {
namespace {

template <typename T>
__global__ void fillKernel(T* __restrict__ dst, size_t count, T value) {
  size_t stride = static_cast<size_t>(gridDim.x) * blockDim.x;
  for (size_t i = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < count; i += stride) dst[i] = value;
}

}  // namespace

Status fillLaunch(void* dst, size_t count, int elemBytes, uint32_t pattern, cudaStream_t stream) {
  if (count == 0) return Status::Ok();
  constexpr int kThreads = 256;
  size_t blocks = (count + kThreads - 1) / kThreads;
  int grid = static_cast<int>(blocks < 4096 ? blocks : 4096);
  if (elemBytes == 2) {
    fillKernel<uint16_t><<<grid, kThreads, 0, stream>>>(static_cast<uint16_t*>(dst), count, static_cast<uint16_t>(pattern));
  } else {
    fillKernel<uint32_t><<<grid, kThreads, 0, stream>>>(static_cast<uint32_t*>(dst), count, pattern);
  }
  return checkLaunch("fill");
}

}  // namespace moba
