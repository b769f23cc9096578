// CPU implementations of the ops, run on the CPU stream thread and spread
// over the thread pool. Params pointers are host memory.
#pragma once
#include "../common/params.h"
#include "../common/status.h"
#include "thread_pool.h"

namespace moba {

Status cpuMobaGate(const GateParams& p, ThreadPool& pool);
Status cpuAttention(const AttentionParams& p, ThreadPool& pool);

}  // namespace moba
