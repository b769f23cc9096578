#include "args.h"

#include <cmath>

#include "errors.h"

namespace moba {

// One napi call per number: napi_get_value_double answers "not a number"
// itself (every op reads about twenty of these).
namespace {
bool numberAt(const Napi::CallbackInfo& info, size_t i, double* out) {
  return napi_get_value_double(info.Env(), info[i], out) == napi_ok;
}
}  // namespace

int64_t argInt(const Napi::CallbackInfo& info, size_t i, const char* name, int64_t min, int64_t max) {
  double d = 0;
  if (!numberAt(info, i, &d)) throwInvalid(info.Env(), std::string("Expected an integer for ") + name + " but received a non-number");
  if (!std::isfinite(d) || d != std::floor(d) || d < static_cast<double>(min) || d > static_cast<double>(max)) {
    throwInvalid(info.Env(), std::string("Expected an integer in [") + std::to_string(min) + ", " + std::to_string(max) +
                                 "] for " + name + " but received " + std::to_string(d));
  }
  return static_cast<int64_t>(d);
}

double argNumber(const Napi::CallbackInfo& info, size_t i, const char* name) {
  double d = 0;
  if (!numberAt(info, i, &d)) throwInvalid(info.Env(), std::string("Expected a number for ") + name);
  return d;
}

float argSoftmaxScale(const Napi::CallbackInfo& info, size_t i) {
  const double scale = argNumber(info, i, "softmaxScale");
  if (!(std::fabs(scale) <= 2.35e38)) {
    throwInvalid(info.Env(), "Expected a number of magnitude at most 2.35e+38 for softmaxScale but received " +
                                 std::to_string(scale));
  }
  return static_cast<float>(scale);
}

bool argBool(const Napi::CallbackInfo& info, size_t i, const char* name) {
  Napi::Value v = info[i];
  if (!v.IsBoolean()) throwInvalid(info.Env(), std::string("Expected a boolean for ") + name);
  return v.As<Napi::Boolean>().Value();
}

DType argDType(const Napi::CallbackInfo& info, size_t i, const char* name) {
  int64_t code = argInt(info, i, name, 0, 3);
  return static_cast<DType>(code);
}

BufferWrap* argOptionalBuffer(const Napi::CallbackInfo& info, size_t i, const char* name, const DeviceCore& core,
                              size_t minBytes) {
  if (info[i].IsNull() || info[i].IsUndefined()) return nullptr;
  return argBuffer(info, i, name, core, minBytes);
}

BufferWrap* argBuffer(const Napi::CallbackInfo& info, size_t i, const char* name, const DeviceCore& core,
                      size_t minBytes) {
  BufferWrap* b = BufferWrap::unwrap(info[i]);
  if (!b) throwInvalid(info.Env(), std::string("Expected a native buffer for ") + name);
  if (b->freed()) throwStatus(info.Env(), Status::Error(ErrorCode::Disposed, std::string(name) + " has been disposed"));
  if (b->core().get() != &core) throwInvalid(info.Env(), std::string(name) + " belongs to another device");
  if (b->bytes() < minBytes) {
    throwInvalid(info.Env(), std::string("Expected at least ") + std::to_string(minBytes) + " bytes for " + name +
                                 " but received " + std::to_string(b->bytes()));
  }
  return b;
}

Napi::Int32Array argInt32Array(const Napi::CallbackInfo& info, size_t i, const char* name) {
  Napi::Value v = info[i];
  if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != napi_int32_array) {
    throwInvalid(info.Env(), std::string("Expected an Int32Array for ") + name);
  }
  return v.As<Napi::Int32Array>();
}

Varlen argVarlen(const Napi::CallbackInfo& info, size_t iq, size_t ik, VarlenCopy* copy) {
  Napi::Env env = info.Env();
  Napi::Int32Array qa = argInt32Array(info, iq, "cuSeqlensQ");
  Napi::Int32Array ka = argInt32Array(info, ik, "cuSeqlensK");
  if (qa.ElementLength() < 2) throwInvalid(env, "Expected at least 2 entries for cuSeqlensQ");
  if (ka.ElementLength() != qa.ElementLength()) throwInvalid(env, "Expected cuSeqlensK and cuSeqlensQ of equal length");
  if (qa.ElementLength() > (size_t(1) << 30)) throwInvalid(env, "Expected at most 2^30 entries for cuSeqlensQ");
  // Checked and used as copies: an array on a SharedArrayBuffer may change
  // under another thread between the check and the op.
  copy->q.assign(qa.Data(), qa.Data() + qa.ElementLength());
  copy->k.assign(ka.Data(), ka.Data() + ka.ElementLength());
  const std::vector<int32_t>& q = copy->q;
  const std::vector<int32_t>& k = copy->k;
  Varlen v;
  v.batch = static_cast<int>(q.size() - 1);
  v.cuSeqlensQ = q.data();
  v.cuSeqlensK = k.data();
  if (q[0] != 0 || k[0] != 0) throwInvalid(env, "Expected cuSeqlensQ[0] and cuSeqlensK[0] to be 0");
  for (int b = 0; b < v.batch; ++b) {
    if (q[b + 1] < q[b] || k[b + 1] < k[b]) throwInvalid(env, "Expected monotone cuSeqlensQ and cuSeqlensK");
    int32_t lq = q[b + 1] - q[b];
    int32_t lk = k[b + 1] - k[b];
    if (lk < lq) throwInvalid(env, "Expected each sequence to have at least as many keys as queries");
    if (lq > v.maxSeqlenQ) v.maxSeqlenQ = lq;
    if (lk > v.maxSeqlenK) v.maxSeqlenK = lk;
  }
  v.totalQ = q[v.batch];
  v.totalK = k[v.batch];
  return v;
}

void checkGateSelections(Napi::Env env, int64_t totalQ, int numQHeads, int topK) {
  const int64_t count = totalQ * numQHeads * topK;
  if (count >= INT32_MAX) {
    throwInvalid(env, "Expected totalQ * numQHeads * topK below 2^31 - 1 (gate selections) but received " +
                          std::to_string(count) + " (" + std::to_string(totalQ) + " * " + std::to_string(numQHeads) +
                          " * " + std::to_string(topK) + ")");
  }
}

}  // namespace moba
