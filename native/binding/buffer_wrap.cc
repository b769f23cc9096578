#include "buffer_wrap.h"

#include "addon_data.h"
#include "errors.h"

namespace moba {
namespace {
// Marks the objects create() made: a cheaper check than instanceof on every
// op argument, and one that a NativeBuffer constructed from JavaScript (or
// any other wrapped object) cannot pass.
constexpr napi_type_tag kBufferTag = {0x6d6f62612d637564ull, 0x61206275666665ull};
}  // namespace

Napi::Function BufferWrap::defineClass(Napi::Env env) {
  return DefineClass(env, "NativeBuffer",
                     {
                         InstanceMethod<&BufferWrap::dispose>("dispose"),
                         InstanceAccessor<&BufferWrap::getBytes>("bytes"),
                         InstanceAccessor<&BufferWrap::getDisposed>("disposed"),
                     });
}

BufferWrap::BufferWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<BufferWrap>(info), env_(info.Env()) {}

Napi::Object BufferWrap::create(Napi::Env env, std::shared_ptr<DeviceCore> core, size_t bytes) {
  if (!core->backend) throwStatus(env, Status::Error(ErrorCode::Disposed, "the device has been disposed"));
  void* ptr = nullptr;
  Status s = core->backend->allocate(bytes, &ptr);
  if (!s.ok()) throwStatus(env, s);
  Napi::Object obj = AddonData::get(env)->bufferClass.New({});
  BufferWrap* self = Unwrap(obj);
  self->core_ = std::move(core);
  self->ptr_ = ptr;
  self->bytes_ = bytes;
  self->core_->buffers.insert(self);
  obj.TypeTag(&kBufferTag);
  Napi::MemoryManagement::AdjustExternalMemory(env, static_cast<int64_t>(bytes));
  return obj;
}

BufferWrap* BufferWrap::unwrap(Napi::Value value) {
  if (!value.IsObject()) return nullptr;
  Napi::Object obj = value.As<Napi::Object>();
  if (!obj.CheckTypeTag(&kBufferTag)) return nullptr;
  return Unwrap(obj);
}

BufferWrap::~BufferWrap() { free(); }

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
