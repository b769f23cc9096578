// The rows the fast gates hand back (a.fallback, count on the device): each
// is scored exactly against all its past blocks and its best keep blocks are
// written. The fast kernels certify all but a few rows
// in a hundred thousand (a thread's list whose last entry reaches the band,
// scores that are not finite), so here a whole CTA takes one row: its 32
// groups of 8 lanes score 32 blocks at a time, lane e of a group summing dims
// e, e + 8, ... as exactDot's partial sum e, so each score is bit-identical
// to the CPU backend's. One warp per row, as for every row, took 0.30 ms for
// the few hundred rows of a random (128, 8) gate at 128K: the longest row's
// thousand blocks in one warp's dependent loads.
#include <climits>
#include <string>

#include "common/cuda_context.h"
#include "common/dependent_launch.h"
#include "common/grid_dependency.cuh"
#include "gate_device.cuh"
#include "gate_dispatch.cuh"
#include "gate_internal.h"

namespace moba {
namespace {

using namespace gate;

constexpr unsigned kFull = 0xffffffffu;
constexpr int kGroups = 32;            // one block each per step; also the lists merged by one warp's lanes
constexpr int kThreads = kGroups * 8;  // eight lanes per block score

template <typename T, int D>
__global__ void __launch_bounds__(kThreads) exactRowsKernel(GateArgs a) {
  waitForPrimaryGrid();  // the fallback list and its count come from the kernel before
  extern __shared__ __align__(16) uint8_t smem[];
  const int keep = a.topK - 1;
  float* ls = reinterpret_cast<float*>(smem);              // [keep][kGroups], best first
  int* li = reinterpret_cast<int*>(ls + keep * kGroups);  // [keep][kGroups]
  int* counts = li + keep * kGroups;                       // [kGroups]
  int* sel = counts + kGroups;                             // [keep], padded to a multiple of 4
  const int tid = threadIdx.x, g = tid >> 3, e = tid & 7, lane = tid & 31;
  const int items = *a.fallbackCount;
  const size_t cStride = static_cast<size_t>(a.nkvh) * D;
  for (int w = blockIdx.x; w < items; w += gridDim.x) {  // CTA-uniform
    const int item = a.fallback[w];
    const int h = item / a.totalQ, row = item % a.totalQ;
    const RowPlace place = placeOfRow(a, row);
    const int b = place.b, c = place.c;
    int32_t* out = a.indices + static_cast<size_t>(item) * a.topK;
    if (c <= keep) {
      writeAllPast(out, c, a.topK, tid, kThreads);
      continue;
    }
    const uint16_t* qrow = static_cast<const uint16_t*>(a.q) + (static_cast<size_t>(row) * a.nqh + h) * D;
    float qv[D / 8];
#pragma unroll
    for (int ch = 0; ch < D / 8; ++ch) qv[ch] = T::toFloat(qrow[ch * 8 + e]);
    const float* cent = a.cent + (static_cast<size_t>(a.cuBlocks[b]) * a.nkvh + h / a.group) * D + e;
    int cnt = 0;  // entries in the group's list (kept by its lane e == 0)
    // The group's next block is loaded while this one is scored and
    // inserted; each step otherwise waited for its loads in full (a random
    // (128, 8) gate at 128K: 73 -> 42 us for its few hundred rows).
    float next[D / 8];
    auto loadBlock = [&](int j) {
      const float* cp = cent + static_cast<size_t>(j < c ? j : 0) * cStride;
#pragma unroll
      for (int ch = 0; ch < D / 8; ++ch) next[ch] = __ldg(cp + ch * 8);
    };
    loadBlock(g);
    // Steps are warp-uniform: the shuffles need every lane of the warp.
    for (int j0 = 0; j0 < c; j0 += kGroups) {
      const int j = j0 + g;
      float cv[D / 8];
#pragma unroll
      for (int ch = 0; ch < D / 8; ++ch) cv[ch] = next[ch];
      if (j0 + kGroups < c) loadBlock(j + kGroups);
      float s = 0.f;
#pragma unroll
      for (int ch = 0; ch < D / 8; ++ch) s = __fadd_rn(s, __fmul_rn(qv[ch], cv[ch]));
      s = __fadd_rn(s, __shfl_xor_sync(kFull, s, 1));
      s = __fadd_rn(s, __shfl_xor_sync(kFull, s, 2));
      s = __fadd_rn(s, __shfl_xor_sync(kFull, s, 4));
      if (e == 0 && j < c &&
          (cnt < keep || ranksAbove(s, j, ls[(cnt - 1) * kGroups + g], li[(cnt - 1) * kGroups + g]))) {
        int p = cnt < keep ? cnt : keep - 1;
        while (p > 0 && ranksAbove(s, j, ls[(p - 1) * kGroups + g], li[(p - 1) * kGroups + g])) {
          ls[p * kGroups + g] = ls[(p - 1) * kGroups + g];
          li[p * kGroups + g] = li[(p - 1) * kGroups + g];
          --p;
        }
        ls[p * kGroups + g] = s;
        li[p * kGroups + g] = j;
        if (cnt < keep) ++cnt;
      }
    }
    if (e == 0) counts[g] = cnt;
    __syncthreads();
    if (tid < 32) {
      // The 32 group lists into the row's best keep: lane l holds list l's
      // next entry, and each round the best of them (a shuffle tournament)
      // is taken and its list advances.
      const int n = counts[lane];
      int ptr = 0;
      for (int r = 0; r < keep; ++r) {
        float s = ptr < n ? ls[ptr * kGroups + lane] : __int_as_float(0x7fc00000);
        int i = ptr < n ? li[ptr * kGroups + lane] : INT_MAX;
#pragma unroll
        for (int off = 16; off > 0; off >>= 1) {
          const float s2 = __shfl_xor_sync(kFull, s, off);
          const int i2 = __shfl_xor_sync(kFull, i, off);
          if (ranksAbove(s2, i2, s, i)) {
            s = s2;
            i = i2;
          }
        }
        if (ptr < n && li[ptr * kGroups + lane] == i) ++ptr;
        if (lane == 0) sel[r] = i;
      }
      __syncwarp();
      for (int x = lane; x < keep; x += 32) {  // ascending: rank among distinct block indices
        const int v = sel[x];
        int rank = 0;
        for (int y = 0; y < keep; ++y) rank += sel[y] < v;
        out[rank] = v;
      }
      for (int m = keep + lane; m < a.topK; m += 32) out[m] = m == keep ? c : -1;
    }
    __syncthreads();  // the lists are rewritten by the next row
  }
}

template <typename T, int D>
Status launchTyped(const GateArgs& a, int smCount, bool dependent, cudaStream_t stream) {
  const size_t keep = static_cast<size_t>(a.topK - 1);
  // sel is read four at a time, and the compiler merges the tail's reads
  // past keep (compute-sanitizer memcheck: 12 bytes read at sel[0] with
  // keep 2): it gets room for a multiple of four.
  const size_t smem = keep * kGroups * 8 + kGroups * 4 + (keep + 3) / 4 * 4 * 4;
  auto kernel = exactRowsKernel<T, D>;
  if (smem > 48 * 1024) {
    MOBA_RETURN_IF_ERROR(cudaStatus(
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)),
        "gate exact rows smem limit"));
  }
  // Rows are few; two CTAs per SM start them all at once in the usual case.
  const unsigned grid = static_cast<unsigned>(smCount * 2);
  return cudaStatus(launchInOrder(kernel, dim3(grid), dim3(kThreads), smem, stream, dependent, a), "gate exact rows");
}

}  // namespace

Status launchGateExactRows(const GateArgs& a, DType dtype, int smCount, bool dependent, cudaStream_t stream) {
  if (a.totalQ == 0 || a.topK < 2) return Status::Ok();
  if (smCount < 1) smCount = 1;
  return withGateTypes(dtype, a.headDim, [&](auto t, auto d) {
    return launchTyped<decltype(t), decltype(d)::value>(a, smCount, dependent, stream);
  });
}

}  // namespace moba
