#include "buffer_wrap.h"

#include "addon_data.h"
#include "errors.h"

namespace moba {

Napi::Function BufferWrap::defineClass(Napi::Env env) {
  return DefineClass(env, "NativeBuffer",
                     {
                         InstanceMethod<&BufferWrap::dispose>("dispose"),
                         // Methods, not accessors: N-API checks a method's receiver (an
                         // accessor would read any wrapped object as a BufferWrap), and
                         // disposed() is on every op's path.
                         InstanceMethod<&BufferWrap::getBytes>("bytes"),
                         InstanceMethod<&BufferWrap::getDisposed>("disposed"),
                     });
}

BufferWrap::BufferWrap(const Napi::CallbackInfo& info)
    : Napi::ObjectWrap<BufferWrap>(info), env_(info.Env()) {}

Napi::Object BufferWrap::create(Napi::Env env, std::shared_ptr<DeviceCore> core, size_t bytes, BufferWrap** wrap) {
  if (!core->backend) throwStatus(env, Status::Error(ErrorCode::Disposed, "the device has been disposed"));
  void* ptr = nullptr;
  Status s = core->backend->allocate(bytes, &ptr);
  if (!s.ok()) throwStatus(env, s);
  AddonData* addon = AddonData::get(env);
  Napi::Object obj = addon->bufferClass.New({});
  BufferWrap* self = Unwrap(obj);
  // Registered here, not in the constructor: a NativeBuffer constructed
  // from JavaScript is not one of ours.
  self->registry_ = addon->buffers;
  self->registry_->insert(self);
  self->core_ = std::move(core);
  self->ptr_ = ptr;
  self->bytes_ = bytes;
  self->core_->buffers.insert(self);
  Napi::MemoryManagement::AdjustExternalMemory(env, static_cast<int64_t>(bytes));
  if (wrap) *wrap = self;
  return obj;
}

// One napi call per argument: napi_unwrap yields whatever pointer an object
// was wrapped with (by any addon), and only the registry says whether it is
// one of ours. Objects that merely share the prototype, other wrapped objects
// and non-objects all come out as nullptr.
BufferWrap* BufferWrap::unwrap(Napi::Value value) {
  void* p = nullptr;
  if (napi_unwrap(value.Env(), value, &p) != napi_ok || p == nullptr) return nullptr;
  BufferWrap* b = static_cast<BufferWrap*>(p);
  const BufferRegistry& known = *AddonData::get(value.Env())->buffers;
  return known.count(b) != 0 ? b : nullptr;
}

BufferWrap::~BufferWrap() {
  free();
  if (registry_) registry_->erase(this);
}

void BufferWrap::free() {
  if (!ptr_ || !core_) return;
  if (core_->backend) core_->backend->release(ptr_, bytes_);
  core_->buffers.erase(this);
  Napi::MemoryManagement::AdjustExternalMemory(env_, -static_cast<int64_t>(bytes_));
  ptr_ = nullptr;
}

Napi::Value BufferWrap::dispose(const Napi::CallbackInfo& info) {
  free();
  return info.Env().Undefined();
}

Napi::Value BufferWrap::getBytes(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), static_cast<double>(bytes_));
}

Napi::Value BufferWrap::getDisposed(const Napi::CallbackInfo& info) {
  return Napi::Boolean::New(info.Env(), ptr_ == nullptr);
}

}  // namespace moba
