// The CPU backend's stream: one thread runs enqueued tasks in order, so the
// CPU has the same "enqueue and return" model as a CUDA stream.
#pragma once
#include <condition_variable>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>

#include "../common/status.h"

namespace moba {

class CpuStream {
 public:
  using Task = std::function<Status()>;
  CpuStream();
  ~CpuStream();  // finishes queued tasks, then joins

  void enqueue(Task task);
  // Enqueues `done`, called with the first failure of earlier tasks (if any)
  // since the previous observer; the failure is then cleared.
  void enqueueObserver(std::function<void(const Status&)> done);

 private:
  void loop();

  std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<std::function<void()>> queue_;
  bool stopping_ = false;
  Status pendingError_;  // touched only by the stream thread
  std::thread thread_;
};

}  // namespace moba
