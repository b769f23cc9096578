// Error codes travel up from kernels and CPU ops as values; only the N-API
// layer turns them into JavaScript exceptions (MobaError).
#pragma once
#include <string>
#include <utility>

namespace moba {

enum class ErrorCode { Ok = 0, Inval, NoCuda, Oom, Disposed, Cuda, Capacity };

inline const char* errorCodeName(ErrorCode code) {
  switch (code) {
    case ErrorCode::Ok: return "OK";
    case ErrorCode::Inval: return "EINVAL";
    case ErrorCode::NoCuda: return "ENOCUDA";
    case ErrorCode::Oom: return "EOOM";
    case ErrorCode::Disposed: return "EDISPOSED";
    case ErrorCode::Cuda: return "ECUDA";
    case ErrorCode::Capacity: return "ECAPACITY";
  }
  return "EUNKNOWN";
}

struct Status {
  ErrorCode code = ErrorCode::Ok;
  std::string message;
  std::string cudaError;  // CUDA error name when code == Cuda

  bool ok() const { return code == ErrorCode::Ok; }
  static Status Ok() { return {}; }
  static Status Error(ErrorCode code, std::string message, std::string cudaError = {}) {
    Status s;
    s.code = code;
    s.message = std::move(message);
    s.cudaError = std::move(cudaError);
    return s;
  }
  static Status Invalid(std::string message) { return Error(ErrorCode::Inval, std::move(message)); }
};

#define MOBA_RETURN_IF_ERROR(expr)          \
  do {                                      \
    ::moba::Status _moba_status = (expr);   \
    if (!_moba_status.ok()) return _moba_status; \
  } while (0)

}  // namespace moba
