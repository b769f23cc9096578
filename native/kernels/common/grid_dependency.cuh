// Programmatic dependent launch (sm_90 and later; no-ops elsewhere and when
// a grid was launched in plain stream order). A grid launched with the
// programmatic-serialization attribute may start once every CTA of the grid
// before it has called allowDependentGrid() or exited; it must call
// waitForPrimaryGrid() before it touches anything that grid may write, and
// every CTA must call it before exiting, so that it never completes ahead of
// the grids before it.
#pragma once

namespace moba {

// Waits until the grid before this one has completed and its writes are visible.
__device__ __forceinline__ void waitForPrimaryGrid() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;\n" ::: "memory");
#endif
}

// Lets the next grid in the stream, if launched programmatically, start now.
__device__ __forceinline__ void allowDependentGrid() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
#endif
}

}  // namespace moba
