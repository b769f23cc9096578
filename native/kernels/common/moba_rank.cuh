// The gate's ranking of blocks (DESIGN.md section 1), shared by the prefill
// gate and MoBA decode: higher score first, a NaN score below every number,
// ties to the lower block index. A strict total order over (score, block).
#pragma once

namespace moba {

__device__ __forceinline__ bool ranksAbove(float sa, int ia, float sb, int ib) {
  bool an = isnan(sa), bn = isnan(sb);
  if (an != bn) return bn;
  if (!an && sa != sb) return sa > sb;
  return ia < ib;
}

}  // namespace moba
