// Reuses small device allocations without driver calls.
//
// Every op returns a fresh output tensor, and a decode step's outputs are
// small, so cudaMallocAsync + cudaFreeAsync (about 1 us together) are a
// tenth of an op's host cost. All work of a device runs on one in-order
// stream, so a block released by the host can be handed to the next
// allocation at once: any work that still reads it was enqueued earlier and
// finishes first. Sizes are rounded up to powers of two (at most 2x waste on
// blocks of at most kMaxBlock bytes), and at most kMaxCached bytes are kept.
// Used from the JavaScript thread only.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace moba {

class SmallBufferCache {
 public:
  static constexpr size_t kMinBlock = 256;
  static constexpr size_t kMaxBlock = size_t(1) << 20;
  static constexpr size_t kMaxCached = size_t(64) << 20;

  // The block size a request of `bytes` is served with, or 0 when it is too
  // large to be cached.
  static size_t blockSize(size_t bytes) {
    if (bytes > kMaxBlock) return 0;
    size_t b = kMinBlock;
    while (b < bytes) b <<= 1;
    return b;
  }

  // A cached block of exactly `block` bytes, or nullptr.
  void* take(size_t block) {
    std::vector<void*>& list = lists_[classOf(block)];
    if (list.empty()) return nullptr;
    void* p = list.back();
    list.pop_back();
    cached_ -= block;
    return p;
  }

  // Keeps `p` (a block of `block` bytes) for reuse; false when the cache is full.
  bool give(void* p, size_t block) {
    if (cached_ + block > kMaxCached) return false;
    lists_[classOf(block)].push_back(p);
    cached_ += block;
    return true;
  }

  // Empties the cache, passing every block to `release(ptr)`.
  template <typename F>
  void drain(F&& release) {
    for (std::vector<void*>& list : lists_) {
      for (void* p : list) release(p);
      list.clear();
    }
    cached_ = 0;
  }

  size_t cachedBytes() const { return cached_; }

 private:
  static int classOf(size_t block) {
    int c = 0;
    for (size_t b = kMinBlock; b < block; b <<= 1) ++c;
    return c;
  }

  static constexpr int kClasses = 13;  // 256 B .. 1 MiB
  std::vector<void*> lists_[kClasses];
  size_t cached_ = 0;
};

}  // namespace moba
