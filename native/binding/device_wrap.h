// The native half of a JavaScript Device: memory, copies, synchronization
// and the ops, all forwarded to the backend behind DeviceCore.
#pragma once
#include <napi.h>

#include <memory>

#include "device_core.h"

namespace moba {

class DeviceWrap : public Napi::ObjectWrap<DeviceWrap> {
 public:
  static Napi::Function defineClass(Napi::Env env);
  explicit DeviceWrap(const Napi::CallbackInfo& info);
  ~DeviceWrap() override;

  // Ops live in ops.cc.
  Napi::Value mobaGate(const Napi::CallbackInfo& info);
  Napi::Value attention(const Napi::CallbackInfo& info);
  // Internal (tests of the CUDA gate's lists); ops_gate_lists.cc.
  Napi::Value mobaGateLists(const Napi::CallbackInfo& info);
  // Paged KV cache ops live in ops_kv.cc.
  Napi::Value kvAppend(const Napi::CallbackInfo& info);
  Napi::Value kvGather(const Napi::CallbackInfo& info);
  Napi::Value kvKeyRows(const Napi::CallbackInfo& info);
  Napi::Value decodeAttention(const Napi::CallbackInfo& info);

 private:
  DeviceCore& core(const Napi::CallbackInfo& info);  // throws EDISPOSED after dispose()

  Napi::Value getKind(const Napi::CallbackInfo& info);
  Napi::Value getName(const Napi::CallbackInfo& info);
  Napi::Value getComputeCapability(const Napi::CallbackInfo& info);
  Napi::Value memoryInfo(const Napi::CallbackInfo& info);
  Napi::Value alloc(const Napi::CallbackInfo& info);
  Napi::Value write(const Napi::CallbackInfo& info);
  Napi::Value read(const Napi::CallbackInfo& info);
  Napi::Value fill(const Napi::CallbackInfo& info);
  Napi::Value copy(const Napi::CallbackInfo& info);
  Napi::Value synchronize(const Napi::CallbackInfo& info);
  Napi::Value dispose(const Napi::CallbackInfo& info);

  std::shared_ptr<DeviceCore> core_;
  std::string kind_;
  std::string name_;
  int cc_ = -1;
};

}  // namespace moba
