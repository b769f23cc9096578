#include "device_core.h"

#include <memory>
#include <vector>

#include "buffer_wrap.h"
#include "errors.h"

namespace moba {

DeviceCore::DeviceCore(Napi::Env env, std::unique_ptr<Backend> b)
    : backend(std::move(b)), tsfnAlive(std::make_shared<std::atomic<bool>>(true)) {
  // The finalizer runs just before Node frees the TSFN: after our Release(),
  // or at environment teardown, when Node closes every TSFN itself.
  tsfn = Napi::ThreadSafeFunction::New(env, Napi::Function(), "moba-cuda completion", 0, 1,
                                       [alive = tsfnAlive](Napi::Env) { alive->store(false); });
  tsfn.Unref(env);
}

DeviceCore::~DeviceCore() {
  backend.reset();
  // At teardown a device may be collected after Node has already freed its
  // TSFN (another device's TSFN finalizer can run the collection); releasing
  // it then would touch freed memory and abort the process.
  if (tsfnAlive->load()) tsfn.Release();
}

void DeviceCore::shutdown() {
  std::vector<BufferWrap*> live(buffers.begin(), buffers.end());
  for (BufferWrap* b : live) b->free();
  buffers.clear();
  backend.reset();  // drains the stream; its callbacks post to the TSFN
}

DeviceCore::Pending DeviceCore::newPending(Napi::Env env) {
  auto* completion = new Completion{Napi::Promise::Deferred::New(env), shared_from_this(), Status::Ok(), nullptr};
  if (pendingCount++ == 0) tsfn.Ref(env);
  Napi::Promise promise = completion->deferred.Promise();
  Napi::ThreadSafeFunction channel = tsfn;
  auto settle = [completion, channel](const Status& status, ResultMaker make) mutable {
    completion->status = status;
    completion->make = std::move(make);
    napi_status st = channel.BlockingCall(completion, [](Napi::Env env, Napi::Function, Completion* raw) {
      std::unique_ptr<Completion> c(raw);
      DeviceCore& core = *c->core;
      const bool last = --core.pendingCount == 0;
      // A terminated worker's environment can still run this while it tears
      // down, when no JavaScript may run: every call below then fails and
      // throws. Nothing can observe the promise any more, so that is
      // swallowed; letting it out of this callback would abort the process.
      try {
        Napi::HandleScope scope(env);
        if (last) core.tsfn.Unref(env);
        if (!c->status.ok()) {
          c->deferred.Reject(makeError(env, c->status).Value());
        } else {
          try {
            c->deferred.Resolve(c->make ? c->make(env) : env.Undefined());
          } catch (const Napi::Error& e) {
            c->deferred.Reject(e.Value());
          }
        }
      } catch (...) {
      }
    });
    // On failure the environment is tearing down: the completion is leaked on
    // purpose, since dropping its core reference here could destroy the
    // backend from one of its own threads.
    (void)st;
  };
  return {promise, settle};
}

}  // namespace moba
