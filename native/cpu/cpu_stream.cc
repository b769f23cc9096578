#include "cpu_stream.h"

namespace moba {

CpuStream::CpuStream() : thread_([this] { loop(); }) {}

CpuStream::~CpuStream() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
  }
  wake_.notify_one();
  thread_.join();
}

void CpuStream::enqueue(Task task) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    queue_.emplace_back([this, task = std::move(task)] {
      Status s;
      try {
        s = task();
      } catch (const std::bad_alloc&) {
        s = Status::Error(ErrorCode::Oom, "out of host memory while running a CPU op");
      } catch (const std::exception& e) {
        s = Status::Error(ErrorCode::Inval, e.what());
      }
      if (!s.ok() && pendingError_.ok()) pendingError_ = s;
    });
  }
  wake_.notify_one();
}

void CpuStream::enqueueObserver(std::function<void(const Status&)> done) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    queue_.emplace_back([this, done = std::move(done)] {
      Status s = pendingError_;
      pendingError_ = Status::Ok();
      done(s);
    });
  }
  wake_.notify_one();
}

void CpuStream::loop() {
  for (;;) {
    std::function<void()> next;
    {
      std::unique_lock<std::mutex> lock(mutex_);
      wake_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
      if (queue_.empty()) return;  // stopping and drained
      next = std::move(queue_.front());
      queue_.pop_front();
    }
    next();
  }
}

}  // namespace moba
