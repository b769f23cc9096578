// The CUDA backend: one non-blocking stream per Device, stream-ordered
// allocation from the device's memory pool, pinned staging for copies, and a
// waiter thread that turns stream progress into host callbacks so the
// JavaScript thread never blocks on the GPU.
#include <cuda_runtime.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <map>
#include <mutex>
#include <thread>

#include "../common/backend.h"
#include "common/cuda_context.h"
#include "gate.h"
#include "small_buffer_cache.h"
#include "ops.h"

namespace moba {
namespace {

// Pinned host buffers, cached by size so repeated uploads/reads of similar
// sizes skip cudaHostAlloc (which costs milliseconds for large buffers).
class PinnedPool {
 public:
  ~PinnedPool() {
    for (auto& [size, ptr] : free_) cudaFreeHost(ptr);
  }
  void* take(size_t bytes, size_t* capacity) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      auto it = free_.lower_bound(bytes);
      if (it != free_.end() && it->first <= 2 * bytes + 4096) {
        *capacity = it->first;
        void* p = it->second;
        cachedBytes_ -= it->first;
        free_.erase(it);
        return p;
      }
    }
    size_t cap = bytes < 4096 ? 4096 : bytes;
    void* p = nullptr;
    if (cudaHostAlloc(&p, cap, cudaHostAllocDefault) != cudaSuccess) {
      cudaGetLastError();
      return nullptr;
    }
    *capacity = cap;
    return p;
  }
  void give(void* p, size_t capacity) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (cachedBytes_ + capacity > kMaxCached) {
      cudaFreeHost(p);
      return;
    }
    cachedBytes_ += capacity;
    free_.emplace(capacity, p);
  }

 private:
  static constexpr size_t kMaxCached = size_t(512) << 20;
  std::mutex mutex_;
  std::multimap<size_t, void*> free_;
  size_t cachedBytes_ = 0;
};

class PinnedStaging final : public Staging {
 public:
  PinnedStaging(PinnedPool& pool, void* p, size_t bytes, size_t capacity)
      : pool_(pool), p_(p), bytes_(bytes), capacity_(capacity) {}
  ~PinnedStaging() override { pool_.give(p_, capacity_); }
  void* data() override { return p_; }
  size_t size() const override { return bytes_; }

 private:
  PinnedPool& pool_;
  void* p_;
  size_t bytes_;
  size_t capacity_;
};

// Runs host callbacks once the stream passes the point where they were
// enqueued: an event per callback, polled on this thread for up to spinUs_,
// then waited on (blocking-sync events: the thread sleeps, not spins).
class Waiter {
 public:
  static constexpr int kDefaultSpinUs = 200;
  Waiter(int device) : device_(device), thread_([this] { loop(); }) {}
  ~Waiter() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stopping_ = true;
    }
    wake_.notify_one();
    thread_.join();
    for (cudaEvent_t e : spare_) cudaEventDestroy(e);
  }

  Status push(cudaStream_t stream, HostCallback fn) {
    cudaEvent_t ev = takeEvent();
    if (!ev) return cudaStatus(cudaGetLastError(), "cudaEventCreate");
    cudaError_t err = cudaEventRecord(ev, stream);
    if (err != cudaSuccess) {
      giveEvent(ev);
      return cudaStatus(err, "cudaEventRecord");
    }
    {
      std::lock_guard<std::mutex> lock(mutex_);
      queue_.push_back({ev, std::move(fn)});
    }
    wake_.notify_one();
    return Status::Ok();
  }

 private:
  struct Item {
    cudaEvent_t event;
    HostCallback fn;
  };

  cudaEvent_t takeEvent() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (!spare_.empty()) {
        cudaEvent_t e = spare_.back();
        spare_.pop_back();
        return e;
      }
    }
    cudaEvent_t e = nullptr;
    if (cudaEventCreateWithFlags(&e, cudaEventDisableTiming | cudaEventBlockingSync) != cudaSuccess) return nullptr;
    return e;
  }
  void giveEvent(cudaEvent_t e) {
    std::lock_guard<std::mutex> lock(mutex_);
    spare_.push_back(e);
  }

  void loop() {
    cudaSetDevice(device_);
    for (;;) {
      Item item;
      {
        std::unique_lock<std::mutex> lock(mutex_);
        wake_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
        if (queue_.empty()) return;
        item = std::move(queue_.front());
        queue_.pop_front();
      }
      // Poll first, block after: a blocking wait that sleeps wakes 30-45 us
      // after the GPU is done (an awaited 150 us op took 205-216 us, 175-181
      // us with the poll). The queries are 2 us apart, so that the driver
      // calls the JS thread makes meanwhile seldom meet one.
      cudaError_t done = cudaErrorNotReady;
      if (spinUs_ > 0) {
        using Clock = std::chrono::steady_clock;
        const auto until = Clock::now() + std::chrono::microseconds(spinUs_);
        for (auto next = Clock::now();; next += std::chrono::microseconds(2)) {
          while (Clock::now() < next) {
          }
          done = cudaEventQuery(item.event);
          if (done != cudaErrorNotReady || next >= until) break;
        }
      }
      if (done == cudaErrorNotReady) done = cudaEventSynchronize(item.event);
      Status s = cudaStatus(done, "queued GPU work failed");
      item.fn(s);
      item.fn = nullptr;  // drop captured staging before the next wait
      giveEvent(item.event);
    }
  }

  int device_;
  // How long the waiter polls an event before it blocks (MOBA_WAIT_SPIN_US; 0: block at once).
  int spinUs_ = [] {
    const char* v = std::getenv("MOBA_WAIT_SPIN_US");
    const long us = v ? std::strtol(v, nullptr, 10) : kDefaultSpinUs;
    return static_cast<int>(us < 0 ? 0 : us > 1000000 ? 1000000 : us);  // at most a second
  }();
  std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<Item> queue_;
  std::vector<cudaEvent_t> spare_;
  bool stopping_ = false;
  std::thread thread_;
};

class CudaBackend final : public Backend, public CudaContext {
 public:
  static std::unique_ptr<CudaBackend> create(int device, Status* status) {
    std::unique_ptr<CudaBackend> b(new CudaBackend(device));
    *status = b->init();
    if (!status->ok()) return nullptr;
    return b;
  }

  ~CudaBackend() override {
    cudaSetDevice(device_);
    cudaStreamSynchronize(stream);
    waiter_.reset();  // runs the remaining callbacks
    smallBlocks_.drain([](void* p) { cudaFree(p); });
    if (scratch_) cudaFree(scratch_);
    if (counters_) cudaFree(counters_);
    if (meta_) cudaFree(meta_);
    if (metaPinned_) cudaFreeHost(metaPinned_);
    for (auto& r : metaInFlight_) cudaEventDestroy(r.event);
    cudaStreamDestroy(stream);
  }

  const char* kind() const override { return "cuda"; }
  std::string name() const override { return prop_.name; }
  int computeCapability() const override { return prop_.major * 10 + prop_.minor; }

  MemoryInfo memoryInfo() override {
    cudaSetDevice(device_);
    MemoryInfo info;
    size_t freeB = 0, totalB = 0;
    if (cudaMemGetInfo(&freeB, &totalB) != cudaSuccess) cudaGetLastError();
    // Memory the pool holds but no tensor uses is free for our next allocations.
    uint64_t reserved = 0, inUse = 0;
    cudaMemPool_t pool;
    if (cudaDeviceGetDefaultMemPool(&pool, device_) == cudaSuccess) {
      cudaMemPoolGetAttribute(pool, cudaMemPoolAttrReservedMemCurrent, &reserved);
      cudaMemPoolGetAttribute(pool, cudaMemPoolAttrUsedMemCurrent, &inUse);
    }
    info.total = totalB;
    info.free = freeB + (reserved > inUse ? reserved - inUse : 0) + smallBlocks_.cachedBytes();
    info.used = used_.load() + scratchBytes_ + metaBytes_ + countersCount_ * 4;
    return info;
  }

  Status allocate(size_t bytes, void** ptr) override {
    cudaSetDevice(device_);
    const size_t block = SmallBufferCache::blockSize(bytes);
    if (block > 0) {
      if (void* p = smallBlocks_.take(block)) {
        *ptr = p;
        used_ += bytes;
        return Status::Ok();
      }
    }
    const size_t request = block > 0 ? block : (bytes ? bytes : 1);
    cudaError_t err = cudaMallocAsync(ptr, request, stream);
    if (err == cudaErrorMemoryAllocation && smallBlocks_.cachedBytes() > 0) {
      cudaGetLastError();
      smallBlocks_.drain([this](void* p) { cudaFreeAsync(p, stream); });
      err = cudaMallocAsync(ptr, request, stream);
    }
    if (err != cudaSuccess) {
      cudaGetLastError();  // allocation failures are not sticky; clear them
      if (err == cudaErrorMemoryAllocation) {
        return Status::Error(ErrorCode::Oom,
                             "out of GPU memory allocating " + std::to_string(bytes) + " bytes on " + prop_.name,
                             cudaGetErrorName(err));
      }
      return cudaStatus(err, "cudaMallocAsync");
    }
    used_ += bytes;
    return Status::Ok();
  }

  void release(void* ptr, size_t bytes) override {
    cudaSetDevice(device_);
    used_ -= bytes;
    const size_t block = SmallBufferCache::blockSize(bytes);
    if (block > 0 && smallBlocks_.give(ptr, block)) return;
    if (cudaFreeAsync(ptr, stream) != cudaSuccess) cudaGetLastError();
  }

  std::unique_ptr<Staging> stage(size_t bytes) override {
    size_t cap = 0;
    void* p = pinned_.take(bytes, &cap);
    if (!p) return nullptr;
    return std::make_unique<PinnedStaging>(pinned_, p, bytes, cap);
  }

  Status enqueueUpload(void* dst, std::unique_ptr<Staging> staged) override {
    cudaSetDevice(device_);
    MOBA_RETURN_IF_ERROR(cudaStatus(
        cudaMemcpyAsync(dst, staged->data(), staged->size(), cudaMemcpyHostToDevice, stream), "cudaMemcpyAsync"));
    std::shared_ptr<Staging> keep(std::move(staged));
    return waiter_->push(stream, [keep](const Status&) {});
  }

  Status enqueueRead(const void* src, size_t bytes, ReadCallback done) override {
    cudaSetDevice(device_);
    std::shared_ptr<Staging> s(stage(bytes));
    if (!s) return Status::Error(ErrorCode::Oom, "out of pinned host memory for a " + std::to_string(bytes) + "-byte read");
    MOBA_RETURN_IF_ERROR(
        cudaStatus(cudaMemcpyAsync(s->data(), src, bytes, cudaMemcpyDeviceToHost, stream), "cudaMemcpyAsync"));
    return waiter_->push(stream, [s, done = std::move(done)](const Status& st) { done(st, s->data()); });
  }

  Status enqueueFill(void* dst, size_t count, int elemBytes, uint32_t pattern) override;

  Status enqueueCopy(void* dst, const void* src, size_t bytes) override {
    cudaSetDevice(device_);
    return cudaStatus(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, stream), "cudaMemcpyAsync");
  }

  Status enqueueHost(HostCallback done) override {
    cudaSetDevice(device_);
    return waiter_->push(stream, std::move(done));
  }

  Status mobaGate(const GateParams& p) override {
    cudaSetDevice(device_);
    return gateLaunch(p, *this);
  }

  Status attention(const AttentionParams& p) override {
    cudaSetDevice(device_);
    return attentionLaunch(p, *this);
  }

  Status kvAppend(const KVAppendParams& p) override {
    cudaSetDevice(device_);
    return kvAppendLaunch(p, *this);
  }

  Status kvGather(const KVGatherParams& p) override {
    cudaSetDevice(device_);
    return kvGatherLaunch(p, *this);
  }

  Status decodeAttention(const DecodeParams& p) override {
    cudaSetDevice(device_);
    return decodeLaunch(p, *this);
  }

  // Internal (tests): the gate's CSR lists, copied out of the workspace.
  Status mobaGateLists(const GateParams& p, const GateListsOut& out) override {
    cudaSetDevice(device_);
    Status st;
    size_t bytes = mobaListsWorkspaceBytes(p, &st);
    MOBA_RETURN_IF_ERROR(st);
    void* ws = nullptr;
    MOBA_RETURN_IF_ERROR(scratch(bytes, &ws));
    MobaLists lists;
    MOBA_RETURN_IF_ERROR(mobaListsLaunch(p, *this, ws, &lists));
    const size_t items = static_cast<size_t>(lists.maxEntries) * sizeof(int32_t);
    MOBA_RETURN_IF_ERROR(enqueueCopy(out.cuBlocks, lists.cuBlocks, sizeof(int32_t) * (p.varlen.batch + 1)));
    MOBA_RETURN_IF_ERROR(
        enqueueCopy(out.segmentOffsets, lists.segmentOffsets, sizeof(int32_t) * (lists.numSegments + size_t{1})));
    if (items > 0) {
      MOBA_RETURN_IF_ERROR(enqueueCopy(out.entries, lists.entries, items));
      MOBA_RETURN_IF_ERROR(enqueueCopy(out.entryOf, lists.entryOf, items));
    }
    return Status::Ok();
  }

  // CudaContext
  Status scratch(size_t bytes, void** ptr) override {
    if (bytes > scratchBytes_) {
      if (scratch_) cudaFreeAsync(scratch_, stream);
      scratch_ = nullptr;
      scratchBytes_ = 0;
      size_t grown = alignUp(bytes + bytes / 4, size_t(1) << 20);
      MOBA_RETURN_IF_ERROR(cudaStatus(cudaMallocAsync(&scratch_, grown, stream), "workspace allocation"));
      scratchBytes_ = grown;
    }
    *ptr = scratch_;
    return Status::Ok();
  }

  Status uploadMeta(const void* host, size_t bytes, void** devicePtr) override;

  Status counters(size_t count, int32_t** ptr) override {
    if (count > countersCount_) {
      if (counters_) cudaFreeAsync(counters_, stream);
      counters_ = nullptr;
      countersCount_ = 0;
      const size_t grown = alignUp(count + count / 4, 1024);
      MOBA_RETURN_IF_ERROR(cudaStatus(cudaMallocAsync(reinterpret_cast<void**>(&counters_), grown * 4, stream),
                                      "counters allocation"));
      MOBA_RETURN_IF_ERROR(cudaStatus(cudaMemsetAsync(counters_, 0, grown * 4, stream), "counters clear"));
      countersCount_ = grown;
    }
    *ptr = counters_;
    return Status::Ok();
  }

 private:
  explicit CudaBackend(int device) : device_(device) {}

  Status init() {
    MOBA_RETURN_IF_ERROR(cudaStatus(cudaSetDevice(device_), "cudaSetDevice"));
    MOBA_RETURN_IF_ERROR(cudaStatus(cudaGetDeviceProperties(&prop_, device_), "cudaGetDeviceProperties"));
    MOBA_RETURN_IF_ERROR(cudaStatus(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "cudaStreamCreate"));
    smCount = prop_.multiProcessorCount;
    ccMajor = prop_.major;
    ccMinor = prop_.minor;
    maxSharedPerBlockOptin = prop_.sharedMemPerBlockOptin;
    cooperativeLaunch = prop_.cooperativeLaunch != 0;
    // Keep freed blocks in the pool: re-allocating tensors of the same sizes
    // every step then costs no driver calls.
    cudaMemPool_t pool;
    if (cudaDeviceGetDefaultMemPool(&pool, device_) == cudaSuccess) {
      uint64_t threshold = UINT64_MAX;
      cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &threshold);
    }
    waiter_ = std::make_unique<Waiter>(device_);
    return Status::Ok();
  }

  // Metadata travels through a pinned ring: each op's bytes are written at the
  // ring's head and copied to `meta_`; a region is rewritten only after the
  // event recorded behind its copy has completed.
  struct MetaRegion {
    size_t begin, end;
    cudaEvent_t event;
  };

  int device_;
  cudaDeviceProp prop_{};
  std::atomic<uint64_t> used_{0};
  SmallBufferCache smallBlocks_;
  PinnedPool pinned_;
  std::unique_ptr<Waiter> waiter_;
  void* scratch_ = nullptr;
  size_t scratchBytes_ = 0;
  int32_t* counters_ = nullptr;
  size_t countersCount_ = 0;
  void* meta_ = nullptr;
  size_t metaBytes_ = 0;
  char* metaPinned_ = nullptr;
  size_t metaRingBytes_ = 0;
  size_t metaHead_ = 0;
  std::deque<MetaRegion> metaInFlight_;
  std::vector<cudaEvent_t> metaSpareEvents_;
};

Status CudaBackend::uploadMeta(const void* host, size_t bytes, void** devicePtr) {
  if (bytes == 0) bytes = 1;
  if (bytes > metaBytes_) {
    if (meta_) cudaFreeAsync(meta_, stream);
    meta_ = nullptr;
    metaBytes_ = 0;
    size_t grown = alignUp(bytes * 2, 4096);
    MOBA_RETURN_IF_ERROR(cudaStatus(cudaMallocAsync(&meta_, grown, stream), "metadata allocation"));
    metaBytes_ = grown;
  }
  if (bytes * 4 > metaRingBytes_) {
    // Grow the ring: wait for copies out of the old one, then replace it.
    for (auto& r : metaInFlight_) {
      cudaEventSynchronize(r.event);
      metaSpareEvents_.push_back(r.event);
    }
    metaInFlight_.clear();
    if (metaPinned_) cudaFreeHost(metaPinned_);
    metaPinned_ = nullptr;
    metaRingBytes_ = 0;
    size_t ring = alignUp(bytes * 16 > (size_t(1) << 20) ? bytes * 16 : (size_t(1) << 20), 4096);
    MOBA_RETURN_IF_ERROR(cudaStatus(cudaHostAlloc(reinterpret_cast<void**>(&metaPinned_), ring, cudaHostAllocDefault),
                                    "pinned metadata ring"));
    metaRingBytes_ = ring;
    metaHead_ = 0;
  }
  size_t begin = metaHead_;
  if (begin + bytes > metaRingBytes_) begin = 0;
  size_t end = begin + alignUp(bytes, 64);
  // Retire finished copies; wait only for those that overlap [begin, end).
  while (!metaInFlight_.empty()) {
    MetaRegion& r = metaInFlight_.front();
    bool overlaps = r.begin < end && begin < r.end;
    if (!overlaps && cudaEventQuery(r.event) != cudaSuccess) {
      cudaGetLastError();
      break;
    }
    if (overlaps) cudaEventSynchronize(r.event);
    metaSpareEvents_.push_back(r.event);
    metaInFlight_.pop_front();
  }
  std::memcpy(metaPinned_ + begin, host, bytes);
  MOBA_RETURN_IF_ERROR(
      cudaStatus(cudaMemcpyAsync(meta_, metaPinned_ + begin, bytes, cudaMemcpyHostToDevice, stream), "metadata copy"));
  cudaEvent_t ev = nullptr;
  if (!metaSpareEvents_.empty()) {
    ev = metaSpareEvents_.back();
    metaSpareEvents_.pop_back();
  } else {
    MOBA_RETURN_IF_ERROR(cudaStatus(cudaEventCreateWithFlags(&ev, cudaEventDisableTiming), "cudaEventCreate"));
  }
  MOBA_RETURN_IF_ERROR(cudaStatus(cudaEventRecord(ev, stream), "cudaEventRecord"));
  metaInFlight_.push_back({begin, end, ev});
  metaHead_ = end;
  *devicePtr = meta_;
  return Status::Ok();
}

}  // namespace

// Fill kernels live in a .cu file; declared here to keep this file host-only.
Status fillLaunch(void* dst, size_t count, int elemBytes, uint32_t pattern, cudaStream_t stream);

Status CudaBackend::enqueueFill(void* dst, size_t count, int elemBytes, uint32_t pattern) {
  cudaSetDevice(device_);
  if (elemBytes == 1) return cudaStatus(cudaMemsetAsync(dst, static_cast<int>(pattern & 0xff), count, stream), "cudaMemsetAsync");
  return fillLaunch(dst, count, elemBytes, pattern, stream);
}

CudaProbe probeCuda() {
  CudaProbe p;
  p.compiled = true;
  p.archs = MOBA_CUDA_ARCHS;
  cudaRuntimeGetVersion(&p.runtimeVersion);
  if (cudaDriverGetVersion(&p.driverVersion) != cudaSuccess) cudaGetLastError();
  if (p.driverVersion == 0) {
    p.reason = "no NVIDIA driver found (libcuda.so.1 could not be loaded)";
    return p;
  }
  if (p.driverVersion < p.runtimeVersion) {
    p.reason = "NVIDIA driver too old: it supports CUDA " + std::to_string(p.driverVersion / 1000) + "." +
               std::to_string(p.driverVersion % 1000 / 10) + ", this build needs CUDA " +
               std::to_string(p.runtimeVersion / 1000) + "." + std::to_string(p.runtimeVersion % 1000 / 10);
    return p;
  }
  cudaError_t err = cudaGetDeviceCount(&p.deviceCount);
  if (err != cudaSuccess) {
    cudaGetLastError();
    p.deviceCount = 0;
    p.reason = err == cudaErrorNoDevice ? "no CUDA device found"
                                       : std::string("CUDA initialisation failed: ") + cudaGetErrorName(err) + " (" +
                                             cudaGetErrorString(err) + ")";
    return p;
  }
  if (p.deviceCount == 0) {
    p.reason = "no CUDA device found";
    return p;
  }
  p.usable = true;
  return p;
}

std::unique_ptr<Backend> createCudaBackend(int deviceIndex, Status* status) {
  CudaProbe probe = probeCuda();
  if (!probe.usable) {
    *status = Status::Error(ErrorCode::NoCuda, "CUDA is not available: " + probe.reason);
    return nullptr;
  }
  if (deviceIndex < 0 || deviceIndex >= probe.deviceCount) {
    *status = Status::Invalid("Expected a device index in [0, " + std::to_string(probe.deviceCount - 1) +
                              "] for index but received " + std::to_string(deviceIndex));
    return nullptr;
  }
  return CudaBackend::create(deviceIndex, status);
}

}  // namespace moba
