// Linked instead of native/kernels when the addon is built without nvcc.
#include "../common/backend.h"

namespace moba {

CudaProbe probeCuda() {
  CudaProbe p;
  p.compiled = false;
  p.reason = "this build of moba-cuda has no CUDA support (nvcc was not found when it was built; "
             "install the CUDA toolkit and run `npm run build:native`)";
  return p;
}

std::unique_ptr<Backend> createCudaBackend(int, Status* status) {
  *status = Status::Error(ErrorCode::NoCuda, "CUDA is not available: " + probeCuda().reason);
  return nullptr;
}

}  // namespace moba
