#include "errors.h"

#include "addon_data.h"

namespace moba {

void setErrorClass(Napi::Env env, Napi::Function ctor) { AddonData::get(env)->errorClass = Napi::Persistent(ctor); }

Napi::Error makeError(Napi::Env env, const Status& status) {
  Napi::FunctionReference& ctor = AddonData::get(env)->errorClass;
  Napi::String code = Napi::String::New(env, errorCodeName(status.code));
  Napi::String message = Napi::String::New(env, status.message);
  if (!ctor.IsEmpty()) {
    Napi::Object options = Napi::Object::New(env);
    if (!status.cudaError.empty()) options.Set("cudaError", status.cudaError);
    Napi::Object err = ctor.New({code, message, options});
    return Napi::Error(env, err);
  }
  Napi::Error err = Napi::Error::New(env, status.message);
  err.Set("code", code);
  return err;
}

void throwStatus(Napi::Env env, const Status& status) { throw makeError(env, status); }

void throwInvalid(Napi::Env env, const std::string& message) { throwStatus(env, Status::Invalid(message)); }

}  // namespace moba
