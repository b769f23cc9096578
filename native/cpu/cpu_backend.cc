// The CPU backend: "device memory" is aligned host memory, the stream is a
// CpuStream and ops run on a thread pool with one thread per core.
#include <sys/mman.h>
#include <sys/sysinfo.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <thread>
#include <vector>

#include "../common/backend.h"
#include "cpu_ops.h"
#include "cpu_kv.h"
#include "cpu_stream.h"
#include "thread_pool.h"

namespace moba {
namespace {

// Host memory for tensors and staging. Large blocks are 2 MiB aligned and
// asked for as huge pages: touching a fresh 4 GiB block with 4 KiB pages
// costs a million page faults (3x the time of the same bytes in huge pages).
// Free with std::free.
void* hostAlloc(size_t bytes) {
  constexpr size_t kHuge = size_t(2) << 20;
  const size_t align = bytes >= kHuge ? kHuge : 64;
  const size_t rounded = ((bytes ? bytes : 1) + align - 1) & ~(align - 1);
  void* p = std::aligned_alloc(align, rounded);
  if (p && align == kHuge) madvise(p, rounded, MADV_HUGEPAGE);  // advice only: failure changes nothing
  return p;
}

// Fills and copies of many MiB run over the pool: both the first touch of
// fresh memory (page faults) and the bandwidth grow with the cores.
// fn(begin, end) gets element ranges, each piece at least 1 MiB.
void forEachPiece(ThreadPool& pool, size_t count, size_t elemBytes, const std::function<void(size_t, size_t)>& fn) {
  const size_t perPiece = std::max<size_t>(1, (size_t(1) << 20) / elemBytes);
  const int64_t pieces = static_cast<int64_t>((count + perPiece - 1) / perPiece);
  pool.parallelFor(pieces, [&](int64_t b, int64_t e) {
    fn(static_cast<size_t>(b) * perPiece, std::min(count, static_cast<size_t>(e) * perPiece));
  }, 4);
}

template <typename T>
void fillWith(ThreadPool& pool, void* dst, size_t count, T value) {
  auto* d = static_cast<T*>(dst);
  forEachPiece(pool, count, sizeof(T), [&](size_t b, size_t e) { std::fill(d + b, d + e, value); });
}

void copyBytes(ThreadPool& pool, void* dst, const void* src, size_t bytes) {
  auto* d = static_cast<char*>(dst);
  const auto* s = static_cast<const char*>(src);
  if (d < s + bytes && s < d + bytes) {  // overlapping ranges keep memmove's order
    std::memmove(dst, src, bytes);
    return;
  }
  forEachPiece(pool, bytes, 1, [&](size_t b, size_t e) { std::memcpy(d + b, s + b, e - b); });
}

class HostStaging final : public Staging {
 public:
  HostStaging(void* data, size_t bytes) : bytes_(bytes), data_(data) {}
  ~HostStaging() override { std::free(data_); }
  void* data() override { return data_; }
  size_t size() const override { return bytes_; }

 private:
  size_t bytes_;
  void* data_;
};

// Keeps the cuSeqlens arrays alive until the queued op has run.
struct OwnedVarlen {
  std::vector<int32_t> q, k;
  explicit OwnedVarlen(Varlen& v) {
    q.assign(v.cuSeqlensQ, v.cuSeqlensQ + v.batch + 1);
    k.assign(v.cuSeqlensK, v.cuSeqlensK + v.batch + 1);
    v.cuSeqlensQ = q.data();
    v.cuSeqlensK = k.data();
  }
};

class CpuBackend final : public Backend {
 public:
  CpuBackend() : pool_(static_cast<int>(std::max(1u, std::thread::hardware_concurrency()))) {}
  ~CpuBackend() override = default;  // stream_ drains before pool_ goes (declaration order)

  const char* kind() const override { return "cpu"; }
  std::string name() const override {
    return "CPU (" + std::to_string(pool_.size()) + " threads)";
  }

  MemoryInfo memoryInfo() override {
    MemoryInfo info;
    struct sysinfo si;
    if (sysinfo(&si) == 0) {
      info.total = static_cast<uint64_t>(si.totalram) * si.mem_unit;
      info.free = static_cast<uint64_t>(si.freeram + si.bufferram) * si.mem_unit;
    }
    info.used = used_.load();
    return info;
  }

  Status allocate(size_t bytes, void** ptr) override {
    void* p = hostAlloc(bytes);
    if (!p) {
      return Status::Error(ErrorCode::Oom, "out of host memory allocating " + std::to_string(bytes) + " bytes");
    }
    used_ += bytes;
    *ptr = p;
    return Status::Ok();
  }

  void release(void* ptr, size_t bytes) override {
    stream_.enqueue([this, ptr, bytes] {
      std::free(ptr);
      used_ -= bytes;
      return Status::Ok();
    });
  }

  // nullptr when the host is out of memory (the binding reports EOOM).
  std::unique_ptr<Staging> stage(size_t bytes) override {
    void* p = hostAlloc(bytes);
    if (!p) return nullptr;
    return std::make_unique<HostStaging>(p, bytes);
  }

  Status enqueueUpload(void* dst, std::unique_ptr<Staging> staged) override {
    std::shared_ptr<Staging> s(std::move(staged));
    stream_.enqueue([this, dst, s] {
      copyBytes(pool_, dst, s->data(), s->size());
      return Status::Ok();
    });
    return Status::Ok();
  }

  Status enqueueRead(const void* src, size_t, ReadCallback done) override {
    stream_.enqueueObserver([src, done = std::move(done)](const Status& s) { done(s, src); });
    return Status::Ok();
  }

  Status enqueueFill(void* dst, size_t count, int elemBytes, uint32_t pattern) override {
    stream_.enqueue([=, this] {
      if (elemBytes == 1) {
        fillWith(pool_, dst, count, static_cast<uint8_t>(pattern));
      } else if (elemBytes == 2) {
        fillWith(pool_, dst, count, static_cast<uint16_t>(pattern));
      } else {
        fillWith(pool_, dst, count, pattern);
      }
      return Status::Ok();
    });
    return Status::Ok();
  }

  Status enqueueCopy(void* dst, const void* src, size_t bytes) override {
    stream_.enqueue([=, this] {
      copyBytes(pool_, dst, src, bytes);
      return Status::Ok();
    });
    return Status::Ok();
  }

  Status enqueueHost(HostCallback done) override {
    stream_.enqueueObserver(std::move(done));
    return Status::Ok();
  }

  Status mobaGate(const GateParams& params) override {
    auto p = std::make_shared<GateParams>(params);
    auto owned = std::make_shared<OwnedVarlen>(p->varlen);
    stream_.enqueue([this, p, owned] { return cpuMobaGate(*p, pool_); });
    return Status::Ok();
  }

  Status attention(const AttentionParams& params) override {
    auto p = std::make_shared<AttentionParams>(params);
    auto owned = std::make_shared<OwnedVarlen>(p->varlen);
    stream_.enqueue([this, p, owned] { return cpuAttention(*p, pool_); });
    return Status::Ok();
  }

  // KV cache ops: their Params hold only device (here: host) pointers, so a
  // copy of the struct is all the queued task needs.
  Status kvAppend(const KVAppendParams& params) override {
    stream_.enqueue([this, p = params] { return cpuKvAppend(p, pool_); });
    return Status::Ok();
  }

  Status kvGather(const KVGatherParams& params) override {
    stream_.enqueue([this, p = params] { return cpuKvGather(p, pool_); });
    return Status::Ok();
  }

  Status decodeAttention(const DecodeParams& params) override {
    stream_.enqueue([this, p = params] {
      if (p.append.k != nullptr) MOBA_RETURN_IF_ERROR(cpuKvAppend(p.append, pool_));
      return cpuDecodeAttention(p, pool_);
    });
    return Status::Ok();
  }

 private:
  ThreadPool pool_;
  std::atomic<uint64_t> used_{0};
  CpuStream stream_;  // declared last: destroyed first, so queued work finishes while pool_ lives
};

}  // namespace

std::unique_ptr<Backend> createCpuBackend(Status* status) {
  *status = Status::Ok();
  return std::make_unique<CpuBackend>();
}

}  // namespace moba
