// What a JavaScript Device owns natively: the backend, the set of live
// buffers (freed together when the device is disposed) and the channel that
// brings completions from backend threads back to the JavaScript thread.
#pragma once
#include <napi.h>

#include <atomic>
#include <functional>
#include <memory>
#include <unordered_set>

#include "../common/backend.h"

namespace moba {

class BufferWrap;

// Produces the value a promise resolves with; runs on the JavaScript thread.
using ResultMaker = std::function<Napi::Value(Napi::Env)>;

struct DeviceCore;

struct Completion {
  Napi::Promise::Deferred deferred;
  std::shared_ptr<DeviceCore> core;  // keeps the TSFN alive until delivery
  Status status;
  ResultMaker make;
};

struct DeviceCore : std::enable_shared_from_this<DeviceCore> {
  DeviceCore(Napi::Env env, std::unique_ptr<Backend> b);
  ~DeviceCore();

  // Frees every live buffer, waits for queued work and destroys the backend.
  // Pending promises still settle.
  void shutdown();

  // Creates a promise settled by `settle`, which a backend thread calls once
  // with the outcome; `make` builds the resolved value on the JS thread.
  struct Pending {
    Napi::Promise promise;
    std::function<void(const Status&, ResultMaker)> settle;
  };
  Pending newPending(Napi::Env env);

  std::unique_ptr<Backend> backend;  // null once shut down
  std::unordered_set<BufferWrap*> buffers;
  Napi::ThreadSafeFunction tsfn;
  std::shared_ptr<std::atomic<bool>> tsfnAlive;  // false once Node has finalized tsfn
  int pendingCount = 0;  // JS thread only; the TSFN keeps the loop alive while > 0
};

}  // namespace moba
