// A block of device memory owned by one JavaScript Tensor. Freed by
// dispose(), by its device's dispose(), or by garbage collection; the memory
// is reported to V8 so the collector feels its weight.
#pragma once
#include <napi.h>

#include <memory>

#include "addon_data.h"
#include "device_core.h"

namespace moba {

class BufferWrap : public Napi::ObjectWrap<BufferWrap> {
 public:
  static Napi::Function defineClass(Napi::Env env);
  // Allocates `bytes` on `core`'s backend; throws EOOM etc. on failure.
  // wrap (optional): receives the new object's BufferWrap.
  static Napi::Object create(Napi::Env env, std::shared_ptr<DeviceCore> core, size_t bytes, BufferWrap** wrap = nullptr);
  static BufferWrap* unwrap(Napi::Value value);

  explicit BufferWrap(const Napi::CallbackInfo& info);
  ~BufferWrap() override;

  void free();  // idempotent; stream-ordered release
  bool freed() const { return ptr_ == nullptr; }
  void* data() const { return ptr_; }
  size_t bytes() const { return bytes_; }
  const std::shared_ptr<DeviceCore>& core() const { return core_; }

 private:
  Napi::Value dispose(const Napi::CallbackInfo& info);
  Napi::Value getBytes(const Napi::CallbackInfo& info);
  Napi::Value getDisposed(const Napi::CallbackInfo& info);

  std::shared_ptr<DeviceCore> core_;
  std::shared_ptr<BufferRegistry> registry_;
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
  Napi::Env env_;
};

}  // namespace moba
