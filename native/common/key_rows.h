// The one rule for reading K/V through a page table's key offsets (chunked
// prefill over the KV cache), shared by the CUDA kernels and the CPU backend.
#pragma once

#include <cstdint>

#ifdef __CUDACC__
#define MOBA_HOST_DEVICE __host__ __device__
#else
#define MOBA_HOST_DEVICE
#endif

namespace moba {

// An offset past the pool's last row, or a negative one (read as unsigned it
// is larger than any row), reads the last row: a bad table cannot reach
// outside the pool, and every backend reads the same row for it.
MOBA_HOST_DEVICE inline int64_t clampKeyRow(int64_t offset, int64_t keyRowsMax) {
  const uint64_t o = static_cast<uint64_t>(offset), m = static_cast<uint64_t>(keyRowsMax);
  return static_cast<int64_t>(o < m ? o : m);
}

}  // namespace moba

#undef MOBA_HOST_DEVICE
