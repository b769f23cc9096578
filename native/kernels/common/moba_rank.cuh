// The gate's ranking of blocks (DESIGN.md section 1), shared by the prefill
// gate and MoBA decode: higher score first, a NaN score below every number,
// ties to the lower block index. A strict total order over (score, block).
#pragma once
#include <cstdint>

namespace moba {

__device__ __forceinline__ bool ranksAbove(float sa, int ia, float sb, int ib) {
  bool an = isnan(sa), bn = isnan(sb);
  if (an != bn) return bn;
  if (!an && sa != sb) return sa > sb;
  return ia < ib;
}

// The same order as one 64-bit key of (score s, block j), for unsigned
// compares: a larger key ranks above. 0 is never a key (j < 2^31), so it
// marks "no block".
__device__ __forceinline__ uint64_t rankKey(float s, int j) {
  uint32_t u = __float_as_uint(s);
  if ((u << 1) == 0) u = 0;  // -0 ranks as +0
  uint32_t o = (u & 0x80000000u) ? ~u : (u | 0x80000000u);
  if (isnan(s)) o = 0;
  return (static_cast<uint64_t>(o) << 32) | static_cast<uint32_t>(~static_cast<uint32_t>(j));
}
__device__ __forceinline__ int keyBlock(uint64_t key) { return static_cast<int>(~static_cast<uint32_t>(key)); }
// The score of a key (NaN for the NaN keys).
__device__ __forceinline__ float keyScore(uint64_t key) {
  const uint32_t o = static_cast<uint32_t>(key >> 32);
  if (o == 0) return __int_as_float(0x7fc00000);
  return __uint_as_float((o & 0x80000000u) ? (o & 0x7fffffffu) : ~o);
}

}  // namespace moba
