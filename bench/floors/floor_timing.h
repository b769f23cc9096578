// What the floor benchmarks (bench/floors/*.cu) share on the host: a CUDA
// call checked (a failure prints where and exits), and the time of a launch
// over back-to-back launches on the default stream.
#pragma once
#include <cuda_runtime.h>

#include <cstdio>
#include <cstdlib>

#define CHECK(x)                                                                     \
  do {                                                                               \
    cudaError_t e = (x);                                                             \
    if (e != cudaSuccess) {                                                          \
      std::printf("error: %s: %s (line %d)\n", #x, cudaGetErrorString(e), __LINE__); \
      std::exit(1);                                                                  \
    }                                                                                \
  } while (0)

// Milliseconds per launch over `iters` back-to-back launches, after `warmup`
// unmeasured ones.
template <typename Launch>
float msPerLaunch(Launch launch, int warmup, int iters) {
  cudaEvent_t e0, e1;
  CHECK(cudaEventCreate(&e0));
  CHECK(cudaEventCreate(&e1));
  for (int i = 0; i < warmup; ++i) launch();
  CHECK(cudaEventRecord(e0));
  for (int i = 0; i < iters; ++i) launch();
  CHECK(cudaEventRecord(e1));
  CHECK(cudaEventSynchronize(e1));
  float ms;
  CHECK(cudaEventElapsedTime(&ms, e0, e1));
  CHECK(cudaGetLastError());
  CHECK(cudaEventDestroy(e0));
  CHECK(cudaEventDestroy(e1));
  return ms / iters;
}
