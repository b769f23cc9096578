#include "device_wrap.h"

#include <algorithm>
#include <cstring>

#include "addon_data.h"
#include "args.h"
#include "buffer_wrap.h"
#include "errors.h"

namespace moba {

Napi::Function DeviceWrap::defineClass(Napi::Env env) {
  return DefineClass(env, "NativeDevice",
                     {
                         InstanceAccessor<&DeviceWrap::getKind>("kind"),
                         InstanceAccessor<&DeviceWrap::getName>("name"),
                         InstanceAccessor<&DeviceWrap::getComputeCapability>("computeCapability"),
                         InstanceMethod<&DeviceWrap::memoryInfo>("memoryInfo"),
                         InstanceMethod<&DeviceWrap::alloc>("alloc"),
                         InstanceMethod<&DeviceWrap::write>("write"),
                         InstanceMethod<&DeviceWrap::read>("read"),
                         InstanceMethod<&DeviceWrap::fill>("fill"),
                         InstanceMethod<&DeviceWrap::copy>("copy"),
                         InstanceMethod<&DeviceWrap::synchronize>("synchronize"),
                         InstanceMethod<&DeviceWrap::dispose>("dispose"),
                         InstanceMethod<&DeviceWrap::mobaGate>("mobaGate"),
                         InstanceMethod<&DeviceWrap::attention>("attention"),
                         InstanceMethod<&DeviceWrap::mobaGateLists>("mobaGateLists"),
                         InstanceMethod<&DeviceWrap::kvAppend>("kvAppend"),
                         InstanceMethod<&DeviceWrap::kvGather>("kvGather"),
                         InstanceMethod<&DeviceWrap::kvKeyRows>("kvKeyRows"),
                         InstanceMethod<&DeviceWrap::decodeAttention>("decodeAttention"),
                     });
}

namespace {
// Accessors, unlike methods, get no receiver check from N-API: a getter
// called on another class's object would read it as a DeviceWrap. The
// constructor tags what it makes; the accessors check the tag first.
constexpr napi_type_tag kDeviceTag = {0x6d6f6261c0de0001ULL, 0x4e6174697665446bULL};

void checkReceiver(const Napi::CallbackInfo& info) {
  bool ok = false;
  if (napi_check_object_type_tag(info.Env(), info.This(), &kDeviceTag, &ok) != napi_ok || !ok) {
    throwInvalid(info.Env(), "Expected a NativeDevice as the receiver");
  }
}
}  // namespace

// new NativeDevice(kind: 'cpu' | 'cuda', index: number)
DeviceWrap::DeviceWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<DeviceWrap>(info) {
  Napi::Env env = info.Env();
  NAPI_THROW_IF_FAILED_VOID(env, napi_type_tag_object(env, info.This(), &kDeviceTag));
  if (!info[0].IsString()) throwInvalid(env, "Expected \"cpu\" or \"cuda\" for backend");
  std::string kind = info[0].As<Napi::String>().Utf8Value();
  int index = static_cast<int>(argInt(info, 1, "index", 0, 1 << 20));
  Status s;
  std::unique_ptr<Backend> backend;
  if (kind == "cpu") {
    backend = createCpuBackend(&s);
  } else if (kind == "cuda") {
    backend = createCudaBackend(index, &s);
  } else {
    throwInvalid(env, "Expected \"cpu\" or \"cuda\" for backend but received \"" + kind + "\"");
  }
  if (!s.ok()) throwStatus(env, s);
  kind_ = backend->kind();
  name_ = backend->name();
  cc_ = backend->computeCapability();
  core_ = std::make_shared<DeviceCore>(env, std::move(backend));
  // Entries of devices already gone are dropped here: each would otherwise
  // keep its device's allocation (make_shared) for the life of the process.
  auto& devices = AddonData::get(env)->devices;
  devices.erase(std::remove_if(devices.begin(), devices.end(), [](const std::weak_ptr<DeviceCore>& w) { return w.expired(); }),
                devices.end());
  devices.push_back(core_);
}

DeviceWrap::~DeviceWrap() {
  // Buffers may outlive their JavaScript Device object; they keep the core.
}

DeviceCore& DeviceWrap::core(const Napi::CallbackInfo& info) {
  if (!core_ || !core_->backend) {
    throwStatus(info.Env(), Status::Error(ErrorCode::Disposed, "the device has been disposed"));
  }
  return *core_;
}

Napi::Value DeviceWrap::getKind(const Napi::CallbackInfo& info) {
  checkReceiver(info);
  return Napi::String::New(info.Env(), kind_);
}
Napi::Value DeviceWrap::getName(const Napi::CallbackInfo& info) {
  checkReceiver(info);
  return Napi::String::New(info.Env(), name_);
}
Napi::Value DeviceWrap::getComputeCapability(const Napi::CallbackInfo& info) {
  checkReceiver(info);
  if (cc_ < 0) return info.Env().Null();
  return Napi::String::New(info.Env(), std::to_string(cc_ / 10) + "." + std::to_string(cc_ % 10));
}

Napi::Value DeviceWrap::memoryInfo(const Napi::CallbackInfo& info) {
  MemoryInfo m = core(info).backend->memoryInfo();
  Napi::Object o = Napi::Object::New(info.Env());
  o.Set("free", static_cast<double>(m.free));
  o.Set("total", static_cast<double>(m.total));
  o.Set("used", static_cast<double>(m.used));
  return o;
}

// alloc(bytes) -> NativeBuffer
Napi::Value DeviceWrap::alloc(const Napi::CallbackInfo& info) {
  DeviceCore& c = core(info);
  int64_t bytes = argInt(info, 0, "bytes", 0, kMaxBufferBytes);
  return BufferWrap::create(info.Env(), c.shared_from_this(), static_cast<size_t>(bytes));
}

// write(buffer, data: Float32Array | Float64Array | Int32Array | Uint16Array, dtype)
// Converts to dtype on this thread (into staging) and enqueues the copy.
Napi::Value DeviceWrap::write(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  DeviceCore& c = core(info);
  if (!info[1].IsTypedArray()) throwInvalid(env, "Expected a typed array for data");
  Napi::TypedArray data = info[1].As<Napi::TypedArray>();
  DType dtype = argDType(info, 2, "dtype");
  size_t count = data.ElementLength();
  size_t bytes = count * dtypeSize(dtype);
  BufferWrap* buf = argBuffer(info, 0, "buffer", c, bytes);
  napi_typedarray_type type = data.TypedArrayType();
  bool isFloat = dtype != DType::I32;
  bool ok = (isFloat && (type == napi_float32_array || type == napi_float64_array)) ||
            (dtype == DType::I32 && type == napi_int32_array) ||
            ((dtype == DType::BF16 || dtype == DType::F16) && type == napi_uint16_array);
  if (!ok) throwInvalid(env, std::string("Expected data matching dtype ") + dtypeName(dtype));
  if (count == 0) return env.Undefined();
  std::unique_ptr<Staging> staged = c.backend->stage(bytes);
  if (!staged) throwStatus(env, Status::Error(ErrorCode::Oom, "out of host memory staging an upload"));
  // The element pointer straight from the typed array: it may sit on a
  // SharedArrayBuffer, which has no ArrayBuffer data to ask.
  void* elements = nullptr;
  if (napi_get_typedarray_info(env, data, nullptr, nullptr, &elements, nullptr, nullptr) != napi_ok || !elements) {
    throwInvalid(env, "Expected a typed array with readable data for data");
  }
  const uint8_t* src = static_cast<const uint8_t*>(elements);
  if (type == napi_float32_array) {
    convertFromF32(reinterpret_cast<const float*>(src), staged->data(), count, dtype);
  } else if (type == napi_float64_array) {
    convertFromF64(reinterpret_cast<const double*>(src), staged->data(), count, dtype);
  } else {
    std::memcpy(staged->data(), src, bytes);
  }
  Status s = c.backend->enqueueUpload(buf->data(), std::move(staged));
  if (!s.ok()) throwStatus(env, s);
  return env.Undefined();
}

// read(buffer, dtype, count) -> Promise<Float32Array | Int32Array>
// bf16 and f16 widen to float32 exactly, off the JavaScript thread.
Napi::Value DeviceWrap::read(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  DeviceCore& c = core(info);
  DType dtype = argDType(info, 1, "dtype");
  int64_t count = argInt(info, 2, "count", 0, int64_t(1) << 48);
  BufferWrap* buf = argBuffer(info, 0, "buffer", c, static_cast<size_t>(count) * dtypeSize(dtype));
  DeviceCore::Pending pending = c.newPending(env);
  size_t n = static_cast<size_t>(count);
  auto settle = pending.settle;
  Status s = c.backend->enqueueRead(buf->data(), n * dtypeSize(dtype), [settle, n, dtype](const Status& st, const void* data) mutable {
    if (!st.ok()) {
      settle(st, nullptr);
      return;
    }
    void* out = std::malloc(n ? n * 4 : 4);
    if (!out) {
      settle(Status::Error(ErrorCode::Oom, "out of host memory reading a tensor"), nullptr);
      return;
    }
    convertToF32(data, static_cast<float*>(out), n, dtype);
    bool isInt = dtype == DType::I32;
    settle(Status::Ok(), [out, n, isInt](Napi::Env env) -> Napi::Value {
      Napi::ArrayBuffer ab = Napi::ArrayBuffer::New(env, out, n * 4, [](Napi::Env, void* p) { std::free(p); });
      if (isInt) return Napi::Int32Array::New(env, n, ab, 0);
      return Napi::Float32Array::New(env, n, ab, 0);
    });
  });
  if (!s.ok()) {
    pending.settle(s, nullptr);
  }
  return pending.promise;
}

// fill(buffer, count, elemBytes, pattern)
Napi::Value DeviceWrap::fill(const Napi::CallbackInfo& info) {
  DeviceCore& c = core(info);
  int64_t elemBytes = argInt(info, 2, "elemBytes", 1, 4);
  if (elemBytes == 3) throwInvalid(info.Env(), "Expected 1, 2 or 4 for elemBytes");
  int64_t count = argInt(info, 1, "count", 0, int64_t(1) << 48);
  BufferWrap* buf = argBuffer(info, 0, "buffer", c, static_cast<size_t>(count * elemBytes));
  uint32_t pattern = static_cast<uint32_t>(argInt(info, 3, "pattern", 0, 0xffffffffll));
  if (count == 0) return info.Env().Undefined();
  Status s = c.backend->enqueueFill(buf->data(), static_cast<size_t>(count), static_cast<int>(elemBytes), pattern);
  if (!s.ok()) throwStatus(info.Env(), s);
  return info.Env().Undefined();
}

// copy(dst, dstOffsetBytes, src, srcOffsetBytes, bytes)
Napi::Value DeviceWrap::copy(const Napi::CallbackInfo& info) {
  DeviceCore& c = core(info);
  int64_t dstOff = argInt(info, 1, "dstOffset", 0, int64_t(1) << 50);
  int64_t srcOff = argInt(info, 3, "srcOffset", 0, int64_t(1) << 50);
  int64_t bytes = argInt(info, 4, "bytes", 0, int64_t(1) << 50);
  BufferWrap* dst = argBuffer(info, 0, "dst", c, static_cast<size_t>(dstOff + bytes));
  BufferWrap* src = argBuffer(info, 2, "src", c, static_cast<size_t>(srcOff + bytes));
  if (bytes == 0) return info.Env().Undefined();
  Status s = c.backend->enqueueCopy(static_cast<char*>(dst->data()) + dstOff,
                                    static_cast<const char*>(src->data()) + srcOff, static_cast<size_t>(bytes));
  if (!s.ok()) throwStatus(info.Env(), s);
  return info.Env().Undefined();
}

Napi::Value DeviceWrap::synchronize(const Napi::CallbackInfo& info) {
  DeviceCore& c = core(info);
  DeviceCore::Pending pending = c.newPending(info.Env());
  auto settle = pending.settle;
  Status s = c.backend->enqueueHost([settle](const Status& st) mutable { settle(st, nullptr); });
  if (!s.ok()) pending.settle(s, nullptr);
  return pending.promise;
}

Napi::Value DeviceWrap::dispose(const Napi::CallbackInfo& info) {
  if (core_) core_->shutdown();
  return info.Env().Undefined();
}

}  // namespace moba
