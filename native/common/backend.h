// The one C++ interface both backends implement, so the N-API layer has no
// per-backend code. Every method is called from the JavaScript thread; work is
// enqueued on the backend's single in-order stream and runs later.
#pragma once
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "params.h"
#include "status.h"

namespace moba {

struct MemoryInfo {
  uint64_t free = 0;   // bytes the backend could still allocate
  uint64_t total = 0;  // bytes of the device (system RAM on the CPU)
  uint64_t used = 0;   // bytes currently held by this Device's tensors and workspace
};

// Host memory a backend hands out for staging copies (pinned on CUDA).
// Released back to the backend by its destructor.
class Staging {
 public:
  virtual ~Staging() = default;
  virtual void* data() = 0;
  virtual size_t size() const = 0;
};

// Called on a backend thread (never the JavaScript thread) once all work
// enqueued before it has finished. `status` reports a failure of that work;
// `data` points at the bytes read back (for read callbacks) and is valid only
// during the call.
using HostCallback = std::function<void(const Status& status)>;
using ReadCallback = std::function<void(const Status& status, const void* data)>;

class Backend {
 public:
  virtual ~Backend() = default;

  virtual const char* kind() const = 0;  // "cuda" or "cpu"
  virtual std::string name() const = 0;
  virtual int computeCapability() const { return -1; }  // major*10+minor, -1 on the CPU
  virtual MemoryInfo memoryInfo() = 0;

  // Stream-ordered memory: allocation is usable by work enqueued after it;
  // release takes effect after all work enqueued before it.
  virtual Status allocate(size_t bytes, void** ptr) = 0;
  virtual void release(void* ptr, size_t bytes) = 0;

  // Upload: the caller fills a staging buffer, then enqueues its copy to `dst`.
  virtual std::unique_ptr<Staging> stage(size_t bytes) = 0;
  virtual Status enqueueUpload(void* dst, std::unique_ptr<Staging> staged) = 0;
  // Reads `bytes` at `src` once prior work is done and hands them to `done`.
  virtual Status enqueueRead(const void* src, size_t bytes, ReadCallback done) = 0;
  // Sets `count` elements of `elemBytes` (1, 2 or 4) at `dst` to `pattern`.
  virtual Status enqueueFill(void* dst, size_t count, int elemBytes, uint32_t pattern) = 0;
  virtual Status enqueueCopy(void* dst, const void* src, size_t bytes) = 0;
  // Runs `done` once all work enqueued so far has finished.
  virtual Status enqueueHost(HostCallback done) = 0;

  // Ops (DESIGN.md section 1). Arguments were validated by the callers above.
  virtual Status mobaGate(const GateParams& p) = 0;
  virtual Status attention(const AttentionParams& p) = 0;
  // Paged KV cache ops (lib/kv-cache.ts).
  virtual Status kvAppend(const KVAppendParams& p) = 0;
  virtual Status kvGather(const KVGatherParams& p) = 0;
  virtual Status decodeAttention(const DecodeParams& p) = 0;

  // Internal, for tests of the CUDA gate: runs the gate's CSR list builder
  // (native/kernels/common/moba_lists.h) and copies its arrays into `out`
  // (device buffers sized by the caller). Only the CUDA backend has lists.
  struct GateListsOut {
    int32_t* cuBlocks = nullptr;        // [batch+1]
    int32_t* segmentOffsets = nullptr;  // [totalBlocks * numQHeads + 1]
    int32_t* entries = nullptr;         // [numQHeads * totalQ * (topK-1)], valid up to segmentOffsets[last]
    int32_t* entryOf = nullptr;         // [numQHeads * totalQ * (topK-1)]
  };
  virtual Status mobaGateLists(const GateParams&, const GateListsOut&) {
    return Status::Invalid("mobaGateLists (internal) is only available on the CUDA backend");
  }
};

std::unique_ptr<Backend> createCpuBackend(Status* status);
// Fails with ENOCUDA (and the reason) when this build has no CUDA or no usable device.
std::unique_ptr<Backend> createCudaBackend(int deviceIndex, Status* status);

// Facts about the CUDA installation, for `moba-cuda info` and ENOCUDA messages.
struct CudaProbe {
  bool compiled = false;     // built with nvcc
  bool usable = false;
  int deviceCount = 0;
  int driverVersion = 0;     // e.g. 13000; 0 when no driver is installed
  int runtimeVersion = 0;
  std::string reason;        // why CUDA is unusable, empty when usable
  std::string archs;         // GPU architectures compiled into the binary
};
CudaProbe probeCuda();

}  // namespace moba
