#include "ops.h"
namespace moba {
Status attentionLaunch(const AttentionParams&, CudaContext&) {
  return Status::Error(ErrorCode::Inval, "attention is not available on CUDA in this build");
}
}  // namespace moba
