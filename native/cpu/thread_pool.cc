#include "thread_pool.h"

#include <algorithm>
#include <cstdlib>

namespace moba {

ThreadPool::ThreadPool(int threads) {
  int extra = std::max(0, threads - 1);
  workers_.reserve(extra);
  for (int i = 0; i < extra; ++i) workers_.emplace_back([this] { workerLoop(); });
  std::unique_lock<std::mutex> lock(mutex_);
  done_.wait(lock, [&] { return readyWorkers_ == extra; });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
  }
  wake_.notify_all();
  for (auto& t : workers_) t.join();
}

void ThreadPool::runChunks() {
  for (;;) {
    int64_t begin = next_.fetch_add(chunk_, std::memory_order_relaxed);
    if (begin >= jobSize_) return;
    try {
      (*job_)(begin, std::min(jobSize_, begin + chunk_));
    } catch (...) {
      std::lock_guard<std::mutex> lock(mutex_);
      if (!error_) error_ = std::current_exception();
      next_.store(jobSize_, std::memory_order_relaxed);  // no new chunks
      return;
    }
  }
}

void ThreadPool::workerLoop() {
  // A thread's first allocation gives it a malloc arena of its own, which
  // reserves 64 MiB of address space (glibc). Taken here, when the pool
  // starts, not in the middle of the first op it runs, where it could be
  // refused under an address-space limit (an op out of memory that needs
  // a few bytes).
  void* volatile first = std::malloc(64);
  std::free(first);
  {
    std::lock_guard<std::mutex> lock(mutex_);
    ++readyWorkers_;
  }
  done_.notify_all();
  uint64_t seen = 0;
  for (;;) {
    {
      std::unique_lock<std::mutex> lock(mutex_);
      wake_.wait(lock, [&] { return stopping_ || generation_ != seen; });
      if (stopping_) return;
      seen = generation_;
    }
    runChunks();
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (--busyWorkers_ == 0) done_.notify_one();
    }
  }
}

void ThreadPool::parallelFor(int64_t n, const std::function<void(int64_t, int64_t)>& fn, int64_t grain) {
  if (n <= 0) return;
  grain = std::max<int64_t>(1, grain);
  // Several chunks per thread balance uneven work (causal rows, ragged batches).
  int64_t chunk = std::max(grain, n / (static_cast<int64_t>(size()) * 8));
  if (workers_.empty() || n <= chunk) {
    fn(0, n);
    return;
  }
  {
    std::lock_guard<std::mutex> lock(mutex_);
    error_ = nullptr;
    job_ = &fn;
    jobSize_ = n;
    chunk_ = chunk;
    next_.store(0, std::memory_order_relaxed);
    busyWorkers_ = static_cast<int>(workers_.size());
    ++generation_;
  }
  wake_.notify_all();
  runChunks();
  std::unique_lock<std::mutex> lock(mutex_);
  done_.wait(lock, [&] { return busyWorkers_ == 0; });
  job_ = nullptr;
  if (error_) {
    std::exception_ptr e = error_;
    error_ = nullptr;
    lock.unlock();
    std::rethrow_exception(e);
  }
}

}  // namespace moba
