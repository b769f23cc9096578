// What a kernel launch needs from the CUDA backend: the stream, device facts,
// reusable scratch memory and a way to ship small host metadata (cuSeqlens,
// plans) to the device. Implemented by the backend, used by every op.
#pragma once
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>

#include "../../common/status.h"

namespace moba {

class CudaContext {
 public:
  virtual ~CudaContext() = default;
  cudaStream_t stream = nullptr;
  int smCount = 0;
  int ccMajor = 0;
  int ccMinor = 0;
  size_t maxSharedPerBlockOptin = 0;  // bytes, after cudaFuncSetAttribute
  bool cooperativeLaunch = false;     // the device runs cooperative launches (all CTAs resident at once)

  // Device scratch of at least `bytes`, valid for work enqueued until the next
  // call of scratch() (later ops reuse it; the stream keeps them ordered).
  virtual Status scratch(size_t bytes, void** ptr) = 0;
  // Copies `bytes` of host memory to device memory valid for this op's
  // kernels (until the next uploadMeta of a later op). The host memory may be
  // reused as soon as this returns.
  virtual Status uploadMeta(const void* host, size_t bytes, void** devicePtr) = 0;
  // At least `count` int32 counters, zero when an op's kernels start: every
  // op that counts arrivals in them leaves them at zero again (kernels of
  // later ops touch them only after the grid before has completed). Owned
  // here, not passed in, so that no caller can hand the kernels a buffer
  // whose counts never reach their targets.
  virtual Status counters(size_t count, int32_t** ptr) = 0;
  // Several metadata arrays in one copy: offsets into the returned block are
  // the caller's choice (use alignUp to 256).
  static size_t alignUp(size_t n, size_t a = 256) { return (n + a - 1) / a * a; }
};

#ifndef MOBA_CUDA_ARCHS
#define MOBA_CUDA_ARCHS ""
#endif

// Whether the wgmma kernels can run: they exist as machine code only in
// sm_90a builds, and only a compute capability 9.0 device runs sm_90a code.
inline bool runsSm90a(const CudaContext& ctx) {
  static const bool built = std::strstr(MOBA_CUDA_ARCHS, "90a") != nullptr;
  return built && ctx.ccMajor == 9 && ctx.ccMinor == 0;
}

// Turns a CUDA error into the package's Status (ECUDA, or EOOM for allocation).
// A failed runtime call also leaves its error as the thread's last error;
// it is cleared here, or the next op's checkLaunch would report it as its own.
inline Status cudaStatus(cudaError_t err, const char* what) {
  if (err == cudaSuccess) return Status::Ok();
  cudaGetLastError();
  std::string msg = std::string(what) + ": " + cudaGetErrorString(err);
  if (err == cudaErrorMemoryAllocation) return Status::Error(ErrorCode::Oom, msg, cudaGetErrorName(err));
  return Status::Error(ErrorCode::Cuda, msg, cudaGetErrorName(err));
}

// After a launch: reports configuration errors at once (asynchronous faults
// surface later, through the stream's completion callbacks).
inline Status checkLaunch(const char* kernel) { return cudaStatus(cudaGetLastError(), kernel); }

}  // namespace moba
