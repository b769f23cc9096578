// Turns Status values into JavaScript MobaError exceptions. The MobaError
// class is handed over by lib/native.ts at load time, so native errors are
// the same class users catch everywhere else.
#pragma once
#include <napi.h>

#include "../common/status.h"

namespace moba {

void setErrorClass(Napi::Env env, Napi::Function ctor);
Napi::Error makeError(Napi::Env env, const Status& status);
[[noreturn]] void throwStatus(Napi::Env env, const Status& status);
[[noreturn]] void throwInvalid(Napi::Env env, const std::string& message);

}  // namespace moba
