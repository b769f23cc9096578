#include "ops.h"
namespace moba {
Status gateLaunch(const GateParams&, CudaContext&) {
  return Status::Error(ErrorCode::Inval, "mobaGate is not available on CUDA in this build");
}
}  // namespace moba
