// Addon entry: exports the NativeDevice class and build/CUDA facts, and
// shuts every device down when the environment goes away.
#include <napi.h>

#include "../common/backend.h"
#include "addon_data.h"
#include "buffer_wrap.h"
#include "device_wrap.h"
#include "errors.h"

#ifndef MOBA_VERSION
#define MOBA_VERSION "0.0.0"
#endif

namespace moba {
namespace {

Napi::Value setErrorClassJs(const Napi::CallbackInfo& info) {
  if (!info[0].IsFunction()) throw Napi::TypeError::New(info.Env(), "Expected the MobaError class");
  setErrorClass(info.Env(), info[0].As<Napi::Function>());
  return info.Env().Undefined();
}

Napi::Value probeCudaJs(const Napi::CallbackInfo& info) {
  CudaProbe p = probeCuda();
  Napi::Object o = Napi::Object::New(info.Env());
  o.Set("compiled", p.compiled);
  o.Set("usable", p.usable);
  o.Set("deviceCount", p.deviceCount);
  o.Set("driverVersion", p.driverVersion);
  o.Set("runtimeVersion", p.runtimeVersion);
  o.Set("reason", p.reason);
  o.Set("archs", p.archs);
  return o;
}

void shutdownAll(void* data) {
  auto* addon = static_cast<AddonData*>(data);
  for (auto& weak : addon->devices) {
    if (auto core = weak.lock()) core->shutdown();
  }
}

Napi::Object init(Napi::Env env, Napi::Object exports) {
  auto* data = new AddonData();
  env.SetInstanceData(data);
  data->bufferClass = Napi::Persistent(BufferWrap::defineClass(env));
  exports.Set("NativeDevice", DeviceWrap::defineClass(env));
  exports.Set("setErrorClass", Napi::Function::New<setErrorClassJs>(env));
  exports.Set("probeCuda", Napi::Function::New<probeCudaJs>(env));
  exports.Set("version", MOBA_VERSION);
  napi_add_env_cleanup_hook(env, shutdownAll, data);
  return exports;
}

}  // namespace
}  // namespace moba

static Napi::Object initAddon(Napi::Env env, Napi::Object exports) { return moba::init(env, exports); }

NODE_API_MODULE(moba_cuda, initAddon)
