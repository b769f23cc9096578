// Argument readers for the N-API methods. lib/ validates everything with
// friendly messages first; these are the cheap re-checks that keep a direct
// caller of the native surface from crashing the process.
#pragma once
#include <napi.h>

#include <cstdint>
#include <string>
#include <vector>

#include "../common/dtype.h"
#include "../common/params.h"
#include "buffer_wrap.h"
#include "device_core.h"

namespace moba {

// The largest device buffer the addon allocates (lib/ says so in its messages).
constexpr int64_t kMaxBufferBytes = int64_t(1) << 50;

int64_t argInt(const Napi::CallbackInfo& info, size_t i, const char* name, int64_t min, int64_t max);
double argNumber(const Napi::CallbackInfo& info, size_t i, const char* name);
// A softmax scale that stays finite as a float (lib/validate.ts: at most 2.35e38 in magnitude).
float argSoftmaxScale(const Napi::CallbackInfo& info, size_t i);
bool argBool(const Napi::CallbackInfo& info, size_t i, const char* name);
DType argDType(const Napi::CallbackInfo& info, size_t i, const char* name);
// A live buffer of `core` holding at least `minBytes`.
BufferWrap* argBuffer(const Napi::CallbackInfo& info, size_t i, const char* name, const DeviceCore& core,
                      size_t minBytes);
// Like argBuffer, but null/undefined gives nullptr.
BufferWrap* argOptionalBuffer(const Napi::CallbackInfo& info, size_t i, const char* name, const DeviceCore& core,
                              size_t minBytes);
Napi::Int32Array argInt32Array(const Napi::CallbackInfo& info, size_t i, const char* name);

// Reads cuSeqlensQ/K (Int32Array [batch+1]) and checks the invariants the
// kernels rely on: start at 0, monotone, per sequence Lk >= Lq.
// The host copies a Varlen points into; they must outlive the op's launch.
struct VarlenCopy {
  std::vector<int32_t> q, k;
};
Varlen argVarlen(const Napi::CallbackInfo& info, size_t iq, size_t ik, VarlenCopy* copy);

// The gate's selections (query rows x query heads x topK) are indexed in 32
// bits on every backend: its output and the sparse attention's lists. The
// same limit as lib/validate.ts, with the same message.
void checkGateSelections(Napi::Env env, int64_t totalQ, int numQHeads, int topK);

}  // namespace moba
