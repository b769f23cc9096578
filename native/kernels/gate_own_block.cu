// topK 1: every query keeps its own block and nothing else, so the gate
// scores nothing; one thread writes each (head, row) item.
#include "common/cuda_context.h"
#include "gate_device.cuh"
#include "gate_internal.h"

namespace moba {
namespace {

using namespace gate;

constexpr int kThreads = 256;

__global__ void __launch_bounds__(kThreads) ownBlockKernel(GateArgs a) {
  const int64_t items = static_cast<int64_t>(a.nqh) * a.totalQ;
  for (int64_t w = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; w < items;
       w += static_cast<int64_t>(gridDim.x) * kThreads) {
    a.indices[w] = placeOfRow(a, static_cast<int>(w % a.totalQ)).c;
  }
}

}  // namespace

Status launchGateOwnBlock(const GateArgs& a, int smCount, cudaStream_t stream) {
  const int64_t items = static_cast<int64_t>(a.nqh) * a.totalQ;
  if (items == 0) return Status::Ok();
  int64_t grid = (items + kThreads - 1) / kThreads;
  const int64_t cap = static_cast<int64_t>(smCount < 1 ? 1 : smCount) * 8;
  if (grid > cap) grid = cap;
  ownBlockKernel<<<static_cast<unsigned>(grid), kThreads, 0, stream>>>(a);
  return checkLaunch("gate own block");
}

}  // namespace moba
