// Block centroids for the gate, in two passes.
//  1. centroidKernel streams K once. Each thread owns eight dims of one
//     (block, KV head) and sums the block's keys in key order in fp32, then
//     multiplies by the rounded reciprocal of the count: the same operations
//     in the same order as the CPU backend, so centroids match it bit for
//     bit. It also records, per (sequence, KV head), the largest centroid
//     magnitude.
//  2. operandKernel turns the fp32 centroids into the tensor cores' operand:
//     fp16 scaled by a power of two so that the largest magnitude of the
//     (sequence, KV head) lands in [2^14, 2^15). Whatever the input dtype,
//     fp16 keeps 11 significant bits (bf16 keeps 8), so a score strays 8x
//     less from the exact one and fewer blocks need exact re-scoring; the
//     scale keeps tiny and huge keys inside fp16's range. Its dims are in
//     the scores kernel's load order (operandPairSlots). It records the
//     bound on how far a tensor-core score can stray (see gate_topk.cu).
#include "gate_device.cuh"
#include "gate_dispatch.cuh"
#include "gate_internal.h"
#include "common/cuda_context.h"
#include "common/dependent_launch.h"
#include "common/grid_dependency.cuh"
#include "../common/key_rows.h"

namespace moba {
namespace {

using namespace gate;

constexpr int kThreads = 128;
// Relative error allowed for the tensor cores' fp32 accumulation of 16-bit
// products (and the exact score's own rounding), per unit of ||q||*||c||.
// Truncating accumulation over eight k16 steps stays below 2^-16; 2^-14
// leaves a margin.
constexpr double kAccumulationBound = 1.0 / 16384.0;

__device__ __forceinline__ uint32_t boundBits(double x) {
  float f = __double2float_ru(x);
  if (!(f <= 3.0e38f)) f = __int_as_float(0x7f800000);  // NaN and overflow become +Inf
  return __float_as_uint(f);
}

// The lanes that hold one (block, KV head): kChunks consecutive lanes.
template <int kChunks>
__device__ __forceinline__ unsigned headLanes() {
  const int lane = threadIdx.x & 31;
  return (kChunks == 32 ? 0xffffffffu : ((1u << kChunks) - 1u)) << (lane & ~(kChunks - 1));
}

// Keys a thread has in flight while it adds: kBatch to 2 kBatch. Few long
// blocks give few threads, each with a long chain of ordered adds, so the
// pass is latency-bound unless each thread has more loads in flight.
constexpr int kBatchShort = 8, kBatchLong = 16;
constexpr int kLongBlock = 1024;  // keys per block from which kBatchLong is used

template <typename T, int D, int kBatch>
__global__ void __launch_bounds__(kThreads) centroidKernel(GateArgs a) {
  // The operand kernel may be placed once every CTA here has started (it
  // waits for this grid's end before it reads anything).
  allowDependentGrid();
  constexpr int kChunks = D / 8;  // 16-byte chunks per head row
  const int chunk = blockIdx.y * kThreads + threadIdx.x;
  // Whole groups of kChunks lanes leave together (kThreads is a multiple of kChunks).
  if (chunk >= a.nkvh * kChunks) return;
  const int gb = blockIdx.x;
  const int b = sequenceOf(a.cuBlocks, a.batch, gb);
  const int j = gb - a.cuBlocks[b];
  const int lk = a.cuK[b + 1] - a.cuK[b];
  const int first = j * a.chunkSize;
  const int n = min(lk - first, a.chunkSize);
  const int kvh = chunk / kChunks;
  const int c8 = chunk % kChunks;
  const size_t rowStride = static_cast<size_t>(a.nkvh) * D;
  // Paged keys: row offsets from the page table, the KV head within a page.
  const int64_t* keyRows = a.keyRows ? a.keyRows + a.cuK[b] + first : nullptr;
  const uint16_t* src = static_cast<const uint16_t*>(a.k) + c8 * 8 +
                        (keyRows ? kvh * a.keyHeadStride
                                 : static_cast<int64_t>(a.cuK[b] + first) * rowStride + static_cast<size_t>(kvh) * D);

  float acc[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
  if (a.keySums) {
    // The cache's sum of the block, kept at the page of its last key: the
    // same additions, in the same order, as the pass below.
    const int64_t off = clampKeyRow(__ldg(keyRows + n - 1), a.keyRowsMax);
    const float4* sum = reinterpret_cast<const float4*>(a.keySums + (off / a.keyPageStride) * a.sumsPageStride +
                                                        static_cast<int64_t>(kvh) * D + c8 * 8);
    const float4 s0 = __ldg(sum), s1 = __ldg(sum + 1);
    acc[0] = s0.x, acc[1] = s0.y, acc[2] = s0.z, acc[3] = s0.w;
    acc[4] = s1.x, acc[5] = s1.y, acc[6] = s1.z, acc[7] = s1.w;
  }
  auto add = [&](const uint4& v) {
    const uint16_t* h = reinterpret_cast<const uint16_t*>(&v);
#pragma unroll
    for (int e = 0; e < 8; ++e) acc[e] = __fadd_rn(acc[e], T::toFloat(h[e]));
  };
  auto rowOff = [&](int row) {
    return keyRows ? clampKeyRow(__ldg(keyRows + row), a.keyRowsMax) : static_cast<int64_t>(row) * rowStride;
  };
  auto loadAt = [&](int64_t off) { return __ldg(reinterpret_cast<const uint4*>(src + off)); };
  auto load = [&](int row) { return loadAt(rowOff(row)); };
  // Long blocks are latency-bound: batches of kBatch keys, the next batch's
  // loads issued before the current batch's (ordered) adds. Paged keys look
  // their rows up one batch further ahead, so that a batch's loads do not
  // wait on its lookups.
  int s = a.keySums ? n : 0;
  if (!a.keySums && n >= kBatch) {
    uint4 cur[kBatch];
    int64_t ahead[kBatch];  // offsets of the batch after `cur`
#pragma unroll
    for (int u = 0; u < kBatch; ++u) cur[u] = load(u);
#pragma unroll
    for (int u = 0; u < kBatch; ++u) ahead[u] = kBatch + u < n ? rowOff(kBatch + u) : 0;
    for (; s + 2 * kBatch <= n; s += kBatch) {
      uint4 next[kBatch];
#pragma unroll
      for (int u = 0; u < kBatch; ++u) next[u] = loadAt(ahead[u]);
#pragma unroll
      for (int u = 0; u < kBatch; ++u) ahead[u] = s + 2 * kBatch + u < n ? rowOff(s + 2 * kBatch + u) : 0;
#pragma unroll
      for (int u = 0; u < kBatch; ++u) add(cur[u]);
#pragma unroll
      for (int u = 0; u < kBatch; ++u) cur[u] = next[u];
    }
#pragma unroll
    for (int u = 0; u < kBatch; ++u) add(cur[u]);
    s += kBatch;
  }
  for (; s < n; ++s) add(load(s));

  const float inv = __fdiv_rn(1.f, static_cast<float>(n));
  float c[8];
  float amax = 0.f;
  bool finite = true;
#pragma unroll
  for (int e = 0; e < 8; ++e) {
    c[e] = __fmul_rn(acc[e], inv);
    finite = finite && isfinite(c[e]);
    amax = fmaxf(amax, fabsf(c[e]));
  }
  const size_t out = (static_cast<size_t>(gb) * a.nkvh + kvh) * D + c8 * 8;
  float4* cOut = reinterpret_cast<float4*>(a.cent + out);
  cOut[0] = make_float4(c[0], c[1], c[2], c[3]);
  cOut[1] = make_float4(c[4], c[5], c[6], c[7]);
  // A non-finite centroid makes the maximum +Inf: the whole (sequence, KV
  // head) then has no usable bound and its rows take the exact kernel.
  if (!finite) amax = __int_as_float(0x7f800000);
  const unsigned groupMask = headLanes<kChunks>();
#pragma unroll
  for (int off = kChunks / 2; off > 0; off >>= 1) amax = fmaxf(amax, __shfl_xor_sync(groupMask, amax, off));
  if (c8 == 0) atomicMax(a.stats + (static_cast<size_t>(b) * a.nkvh + kvh) * kGateStats + kStatMaxAbs, __float_as_uint(amax));
}

// Scaled fp16 operand and error bound; one thread per 8 dims of a (block, KV head).
template <int D>
__global__ void __launch_bounds__(kThreads) operandKernel(GateArgs a) {
  waitForPrimaryGrid();  // the centroids and their largest magnitude
  allowDependentGrid();  // the scores kernel starts with q, which it needs nothing here for
  constexpr int kChunks = D / 8;
  const int chunk = blockIdx.y * kThreads + threadIdx.x;
  if (chunk >= a.nkvh * kChunks) return;
  const int gb = blockIdx.x;
  const int b = sequenceOf(a.cuBlocks, a.batch, gb);
  const int kvh = chunk / kChunks;
  const int c8 = chunk % kChunks;
  uint32_t* st = a.stats + (static_cast<size_t>(b) * a.nkvh + kvh) * kGateStats;
  const int scaleExp = operandScaleExp(__uint_as_float(st[kStatMaxAbs]));
  const double scale = ldexp(1.0, scaleExp);
  const size_t at = (static_cast<size_t>(gb) * a.nkvh + kvh) * D + c8 * 8;
  const float4 c0 = *reinterpret_cast<const float4*>(a.cent + at);
  const float4 c1 = *reinterpret_cast<const float4*>(a.cent + at + 4);
  const float c[8] = {c0.x, c0.y, c0.z, c0.w, c1.x, c1.y, c1.z, c1.w};
  uint16_t h[8];
  double r2 = 0, c2 = 0, h2 = 0;
#pragma unroll
  for (int e = 0; e < 8; ++e) {
    const double cs = static_cast<double>(c[e]) * scale;  // exact
    // Subnormal operands are never handed to the tensor cores (they might
    // flush them); the dropped value lands in the residual, so in the bound.
    const float keepNormal = fabs(cs) < F16::kMinNormal ? 0.f : static_cast<float>(cs);
    h[e] = F16::fromFloat(keepNormal);
    const double hf = F16::toFloat(h[e]);
    const double r = cs - hf;
    r2 += r * r;
    c2 += cs * cs;
    h2 += hf * hf;
  }
  // In the scores kernel's dim order (operandPairSlots).
  int slot[4];
  operandPairSlots<D>(c8, slot);
  uint32_t* row = reinterpret_cast<uint32_t*>(static_cast<uint16_t*>(a.hi) + (at - c8 * 8));
#pragma unroll
  for (int p = 0; p < 4; ++p) row[slot[p]] = h[2 * p] | (static_cast<uint32_t>(h[2 * p + 1]) << 16);

  // Norms over the head's D dims: the kChunks lanes of this (block, head).
  const unsigned groupMask = headLanes<kChunks>();
#pragma unroll
  for (int off = kChunks / 2; off > 0; off >>= 1) {
    r2 += __shfl_xor_sync(groupMask, r2, off);
    c2 += __shfl_xor_sync(groupMask, c2, off);
    h2 += __shfl_xor_sync(groupMask, h2, off);
  }
  if (c8 == 0) {
    const double norm = sqrt(fmax(c2, h2));
    atomicMax(st + kStatBound, boundBits(sqrt(r2) + kAccumulationBound * norm));
    atomicMax(st + kStatNorm, boundBits(norm));
  }
}

template <typename T, int D>
Status launchDim(const GateArgs& a, bool dependent, cudaStream_t stream) {
  const int chunks = a.nkvh * (D / 8);
  dim3 grid(static_cast<unsigned>(a.totalBlocks), static_cast<unsigned>((chunks + kThreads - 1) / kThreads));
  // The centroids follow a memset in plain stream order.
  auto centroids = a.chunkSize >= kLongBlock ? centroidKernel<T, D, kBatchLong> : centroidKernel<T, D, kBatchShort>;
  MOBA_RETURN_IF_ERROR(
      cudaStatus(launchInOrder(centroids, grid, dim3(kThreads), 0, stream, false, a), "gate centroids"));
  return cudaStatus(launchInOrder(operandKernel<D>, grid, dim3(kThreads), 0, stream, dependent, a), "gate operand");
}

}  // namespace

Status launchGateCentroids(const GateArgs& a, DType dtype, bool dependent, cudaStream_t stream) {
  if (a.totalBlocks == 0) return Status::Ok();
  return withGateTypes(dtype, a.headDim, [&](auto t, auto d) {
    return launchDim<decltype(t), decltype(d)::value>(a, dependent, stream);
  });
}

}  // namespace moba
