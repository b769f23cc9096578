// Host side of programmatic dependent launch (see grid_dependency.cuh): a
// kernel launched in stream order, or, when `dependent`, allowed to start
// while the grid before it in the stream finishes. The kernel must then call
// waitForPrimaryGrid() in every CTA before it reads what that grid writes.
#pragma once
#include <cuda_runtime.h>

#include <utility>

namespace moba {

// Appends the programmatic-serialization attribute at attr[n] and counts it.
inline void addDependentLaunch(cudaLaunchAttribute* attr, unsigned& n) {
  attr[n].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[n++].val.programmaticStreamSerializationAllowed = 1;
}

template <typename... KernelArgs, typename... Args>
cudaError_t launchInOrder(void (*kernel)(KernelArgs...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
                          bool dependent, Args&&... args) {
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = stream;
  cudaLaunchAttribute attr[1];
  unsigned n = 0;
  if (dependent) addDependentLaunch(attr, n);
  cfg.attrs = attr;
  cfg.numAttrs = n;
  return cudaLaunchKernelEx(&cfg, kernel, std::forward<Args>(args)...);
}

}  // namespace moba
