// The floor of one batch-1 moba (512, 3) decode step at 128K on this GPU:
// the step's structure with no attention math at all. 8 KV heads, each with a
// union of 9 blocks of 512 keys (18.9 MB of K and V in pages of 16), a new
// union each step (16 in turn, more than L2 holds). A step waits for the grid
// ahead of it (programmatic launch, as the decode kernels do), reads its
// union, looks up the union's pages, streams them into shared memory by bulk
// copies, and writes a value per CTA. Variants add what a real step cannot do
// without: the gate's hand-off between the CTAs of a KV head (each CTA scores
// a share of the blocks, every CTA needs all scores) and the split-KV merge
// (each CTA holds a partial of the head's output). One variant is optimistic
// beyond any real step: it reads its key sums, its union and the union's
// pages before it waits, leaving only the hand-off, the stream and the merge
// after the wait. Prints one line per variant: microseconds per step over
// 600 back-to-back steps, best and worst of 5 rounds.
//
// The PTX wrappers are the kernels' own (native/kernels/common/). Build and
// run from the project root (bench/decode-floor.js does both):
//   nvcc -O3 -std=c++17 -gencode=arch=compute_90a,code=sm_90a -I native/kernels \
//        -o decode_step bench/floors/decode_step.cu && ./decode_step
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#include "common/grid_dependency.cuh"
#include "common/ptx.cuh"
#include "common/sm90_sync.cuh"
#include "floor_timing.h"

using namespace moba;
using moba::ptx::smemAddr;

constexpr int kHeads = 8, kDim = 128, kPage = 16, kBlock = 512, kBlocks = 256, kUnion = 9, kUnions = 16;
constexpr int kPages = kBlocks * kBlock / kPage;          // pages of the 128K sequence
constexpr int kHeadPageBytes = kPage * kDim * 2;          // K (or V) of one page and head: 4 KB
constexpr int kPageBytes = kHeads * kHeadPageBytes * 2;   // a page: K then V of every head
constexpr int kUnionPages = kUnion * kBlock / kPage;      // pages per head in the union: 288
constexpr int kShareValues = 64;                          // values each CTA hands to every other (gate)
constexpr int kPartial = 512;                             // floats of a CTA's partial output (4 heads x 128)

enum Variant : int {
  kStream,              // no gate, no merge
  kGlobalExchange,      // gate hand-off through global memory (arrival counter, spin)
  kGlobalExchangeMerge, // + merge by the last CTA of the head to arrive
  kClusterExchange,     // gate hand-off through distributed shared memory, cluster barrier
  kClusterExchangeMerge,// + merge into cluster rank 0 through distributed shared memory
  kClusterMerge,        // merge only (no gate)
  kWholeHeadSums,       // no hand-off: every CTA reads its head's 256 key sums, + cluster merge
  kAsyncExchange,       // hand-off by st.async on the receivers' mbarriers
  kAsyncExchangeMerge,  // + merge by st.async into rank 0 (only rank 0 waits)
  kAheadOfWait,         // kAsyncExchangeMerge with the key-sum share, the union and its pages
                        // read before the wait: optimistic (a real union depends on the query)
};

__host__ __device__ constexpr bool inCluster(Variant v) { return v != kStream && v != kGlobalExchange && v != kGlobalExchangeMerge; }
// Shared memory beyond the ring only where a variant uses it: it decides how
// many CTAs fit on an SM, and so how early the next step's CTAs are resident.
__host__ __device__ constexpr bool handsOffInCluster(Variant v) { return v == kClusterExchange || v == kClusterExchangeMerge || v == kAsyncExchange || v == kAsyncExchangeMerge || v == kAheadOfWait; }
__host__ __device__ constexpr bool mergesInCluster(Variant v) { return v == kClusterExchangeMerge || v == kClusterMerge || v == kWholeHeadSums || v == kAsyncExchangeMerge || v == kAheadOfWait; }

struct Args {
  const uint8_t* pool;   // [kPages][K heads | V heads][kPage][kDim] bf16
  const int* pageTable;  // [kPages] the sequence's pages
  const int* unions;     // [kUnions][kHeads][kUnion] block indices
  const float* sums;     // [kHeads][kBlocks][kDim] key sums
  float* out;            // [grid] one value per CTA
  float* merged;         // [kHeads][kPartial]
  int step;              // selects the union; numbers the hand-off counters
  int slots;             // CTAs per head
  int stages;            // pages in flight per CTA
};

__device__ int gArrivals[kHeads];
__device__ int gMergeArrivals[kHeads];
__device__ float gShares[kHeads][32][kShareValues];
__device__ float gPartials[kHeads][32][kPartial];

// What the kernels' headers (common/) lack: this CTA's rank in its cluster,
// and 4-byte stores into another CTA's shared memory, plain and asynchronous.
namespace remote {
__device__ __forceinline__ uint32_t clusterRank() {
  uint32_t r;
  asm volatile("mov.u32 %0, %%cluster_ctarank;" : "=r"(r));
  return r;
}
__device__ __forceinline__ void store(uint32_t addr, float v) {
  asm volatile("st.shared::cluster.f32 [%0], %1;" ::"r"(addr), "f"(v) : "memory");
}
__device__ __forceinline__ void storeAsync(uint32_t addr, float v, uint32_t bar) {
  asm volatile("st.async.shared::cluster.mbarrier::complete_tx::bytes.b32 [%0], %1, [%2];" ::"r"(addr),
               "r"(__float_as_uint(v)), "r"(bar)
               : "memory");
}
}  // namespace remote

__device__ __forceinline__ void clusterSync() {
  attn::clusterArrive();
  attn::clusterWait();
}

// A CTA's share of its head's key sums (kBlocks / slots blocks), reduced to
// one number per thread pair. The loads are unrolled so that all of them are
// in flight at once: a loop with a run-time bound issued them one round trip
// at a time, 3.5 us more per step at 16 CTAs per head.
__device__ __forceinline__ float scoreShare(const Args& a, int h, int slot) {
  constexpr int kMaxLoads = kBlocks / 8 * kDim / 128;  // 8 CTAs per head or more, 128 threads
  const int count = (kBlocks / a.slots) * kDim;
  const float* mine = a.sums + (static_cast<size_t>(h) * kBlocks + slot * (kBlocks / a.slots)) * kDim;
  float part[kMaxLoads];
#pragma unroll
  for (int i = 0; i < kMaxLoads; ++i) {
    const int e = threadIdx.x + i * 128;
    part[i] = e < count ? __ldcg(mine + e) : 0.f;
  }
  float v = 0.f;
#pragma unroll
  for (int i = 0; i < kMaxLoads; ++i) v += part[i];
  return v + __shfl_xor_sync(~0u, v, 1);
}

template <Variant kV>
__global__ void __launch_bounds__(128) stepKernel(Args a) {
  extern __shared__ __align__(128) uint8_t ring[];                               // [stages][K | V]
  float* shares = reinterpret_cast<float*>(ring + a.stages * 2 * kHeadPageBytes); // [slots][kShareValues]
  float* partials = shares + (handsOffInCluster(kV) ? a.slots * kShareValues : 0); // [slots][kPartial]
  __shared__ uint64_t bars[34];  // [stages] ring, then the hand-off's and the merge's
  __shared__ int pages[64];
  __shared__ int isLast;
  uint64_t* shareBar = &bars[32];
  uint64_t* mergeBar = &bars[33];
  const int tid = threadIdx.x;
  const int h = blockIdx.x / a.slots, slot = blockIdx.x % a.slots;

  if (tid == 0) {
    for (int s = 0; s < a.stages; ++s) attn::mbarInit(smemAddr(&bars[s]), 1);
    attn::mbarInit(smemAddr(shareBar), 1);
    attn::mbarInit(smemAddr(mergeBar), 1);
  }
  attn::mbarInitFence();
  __syncthreads();
  if constexpr (inCluster(kV)) clusterSync();  // every CTA of the cluster has started

  // The union (a dependent load), then its pages (another).
  const int* blocks = a.unions + (static_cast<size_t>(a.step % kUnions) * kHeads + h) * kUnion;
  const int per = (kUnionPages + a.slots - 1) / a.slots;
  const int first = slot * per, n = max(0, min(kUnionPages, first + per) - first);
  auto lookUpPages = [&] {
    if (tid < n) {
      const int c = first + tid;
      pages[tid] = __ldcg(a.pageTable + __ldcg(blocks + c / (kBlock / kPage)) * (kBlock / kPage) + c % (kBlock / kPage));
    }
    __syncthreads();
  };
  float early = 0.f;
  if constexpr (kV == kAheadOfWait) {
    early = scoreShare(a, h, slot);
    lookUpPages();
  }
  waitForPrimaryGrid();

  float acc = 0.f;
  if constexpr (kV == kGlobalExchange || kV == kGlobalExchangeMerge) {
    const float v = scoreShare(a, h, slot);
    if (tid < kShareValues) __stcg(&gShares[h][slot][tid], v);
    __syncthreads();
    if (tid == 0) {
      __threadfence();
      atomicAdd(&gArrivals[h], 1);
      const int all = (a.step + 1) * a.slots;  // the counter grows by `slots` each step
      while (atomicAdd(&gArrivals[h], 0) < all) {
      }
      __threadfence();
    }
    __syncthreads();
    for (int i = tid; i < a.slots * kShareValues; i += 128) acc += __ldcg(&gShares[h][i / kShareValues][i % kShareValues]);
  } else if constexpr (kV == kClusterExchange || kV == kClusterExchangeMerge) {
    const float v = scoreShare(a, h, slot);
    if (tid < kShareValues)
      for (int r = 0; r < a.slots; ++r) remote::store(attn::clusterMap(smemAddr(&shares[slot * kShareValues + tid]), r), v);
    clusterSync();
    acc += shares[(tid % a.slots) * kShareValues + tid / a.slots % kShareValues];
  } else if constexpr (kV == kAsyncExchange || kV == kAsyncExchangeMerge || kV == kAheadOfWait) {
    if (tid == 0) attn::mbarArriveExpectTx(smemAddr(shareBar), a.slots * kShareValues * 4);
    const float v = kV == kAheadOfWait ? early : scoreShare(a, h, slot);
    if (tid < kShareValues)
      for (int r = 0; r < a.slots; ++r)
        remote::storeAsync(attn::clusterMap(smemAddr(&shares[slot * kShareValues + tid]), r), v,
                              attn::clusterMap(smemAddr(shareBar), r));
    attn::mbarWait(smemAddr(shareBar), 0);
    acc += shares[(tid % a.slots) * kShareValues + tid / a.slots % kShareValues];
  } else if constexpr (kV == kWholeHeadSums) {
    const float4* all = reinterpret_cast<const float4*>(a.sums + static_cast<size_t>(h) * kBlocks * kDim);
    float4 t = make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll 8
    for (int i = tid; i < kBlocks * kDim / 4; i += 128) {
      const float4 w = __ldcg(all + i);
      t.x += w.x, t.y += w.y, t.z += w.z, t.w += w.w;
    }
    acc += t.x + t.y + t.z + t.w;
  }

  if constexpr (kV != kAheadOfWait) lookUpPages();
  auto fetch = [&](int i) {
    const int s = i % a.stages;
    uint8_t* dst = ring + s * 2 * kHeadPageBytes;
    const uint8_t* src = a.pool + static_cast<size_t>(pages[i]) * kPageBytes + h * kHeadPageBytes;
    const uint32_t bar = smemAddr(&bars[s]);
    attn::mbarArriveExpectTx(bar, 2 * kHeadPageBytes);
    attn::bulkCopyToShared(smemAddr(dst), src, kHeadPageBytes, bar);
    attn::bulkCopyToShared(smemAddr(dst + kHeadPageBytes), src + kHeads * kHeadPageBytes, kHeadPageBytes, bar);
  };
  if (tid == 0)
    for (int i = 0; i < min(n, a.stages); ++i) fetch(i);
  for (int i = 0; i < n; ++i) {
    const int s = i % a.stages;
    attn::mbarWait(smemAddr(&bars[s]), (i / a.stages) & 1);
    const float4* p = reinterpret_cast<const float4*>(ring + s * 2 * kHeadPageBytes);
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      const float4 w = p[tid + 128 * k];
      acc += w.x + w.y + w.z + w.w;
    }
    __syncthreads();  // the stage is free
    if (tid == 0 && i + a.stages < n) fetch(i + a.stages);
  }
  allowDependentGrid();

  // Rank 0, once every CTA's partial is in its shared memory.
  auto addPartials = [&] {
    for (int i = tid; i < kPartial; i += 128) {
      float t = 0.f;
      for (int r = 0; r < a.slots; ++r) t += partials[r * kPartial + i];
      a.merged[h * kPartial + i] = t;
    }
  };
  if constexpr (kV == kClusterExchangeMerge || kV == kClusterMerge || kV == kWholeHeadSums) {
    const uint32_t dst = attn::clusterMap(smemAddr(&partials[slot * kPartial]), 0);
    for (int i = tid; i < kPartial; i += 128) remote::store(dst + i * 4, acc + i);
    clusterSync();
    if (remote::clusterRank() == 0) {
      addPartials();
    }
  } else if constexpr (kV == kAsyncExchangeMerge || kV == kAheadOfWait) {
    const bool root = remote::clusterRank() == 0;
    if (root && tid == 0) attn::mbarArriveExpectTx(smemAddr(mergeBar), a.slots * kPartial * 4);
    const uint32_t dst = attn::clusterMap(smemAddr(&partials[slot * kPartial]), 0);
    const uint32_t bar = attn::clusterMap(smemAddr(mergeBar), 0);
    for (int i = tid; i < kPartial; i += 128) remote::storeAsync(dst + i * 4, acc + i, bar);
    if (root) {
      attn::mbarWait(smemAddr(mergeBar), 0);
      addPartials();
    }
  } else if constexpr (kV == kGlobalExchangeMerge) {
    for (int i = tid; i < kPartial; i += 128) __stcg(&gPartials[h][slot][i], acc + i);
    __syncthreads();
    if (tid == 0) {
      __threadfence();
      isLast = atomicAdd(&gMergeArrivals[h], 1) == (a.step + 1) * a.slots - 1;
      __threadfence();
    }
    __syncthreads();
    if (isLast) {
      for (int i = tid; i < kPartial; i += 128) {
        float p[32];  // every CTA's partial in flight at once (unrolled, as in scoreShare)
#pragma unroll
        for (int r = 0; r < 32; ++r) p[r] = r < a.slots ? __ldcg(&gPartials[h][r][i]) : 0.f;
        float t = 0.f;
#pragma unroll
        for (int r = 0; r < 32; ++r) t += p[r];
        a.merged[h * kPartial + i] = t;
      }
    }
  } else {
    if constexpr (inCluster(kV)) clusterSync();  // no CTA leaves while others may write to it
    if (tid == 0) a.out[blockIdx.x] = acc;
  }
}

__global__ void emptyKernel(float* out) {
  waitForPrimaryGrid();
  allowDependentGrid();
  if (threadIdx.x == 0) out[blockIdx.x] = 1.f;
}

using Kernel = void (*)(Args);
Kernel kernelOf(Variant v) {
  switch (v) {
    case kStream: return stepKernel<kStream>;
    case kGlobalExchange: return stepKernel<kGlobalExchange>;
    case kGlobalExchangeMerge: return stepKernel<kGlobalExchangeMerge>;
    case kClusterExchange: return stepKernel<kClusterExchange>;
    case kClusterExchangeMerge: return stepKernel<kClusterExchangeMerge>;
    case kClusterMerge: return stepKernel<kClusterMerge>;
    case kWholeHeadSums: return stepKernel<kWholeHeadSums>;
    case kAsyncExchange: return stepKernel<kAsyncExchange>;
    case kAsyncExchangeMerge: return stepKernel<kAsyncExchangeMerge>;
    case kAheadOfWait: return stepKernel<kAheadOfWait>;
  }
  return nullptr;
}

template <typename Launch>
void report(const char* name, Launch launch, double bytes) {
  float best = 1e30f, worst = 0.f;
  for (int r = 0; r < 5; ++r) {
    const float us = 1000.f * msPerLaunch(launch, 50, 600);
    best = std::min(best, us);
    worst = std::max(worst, us);
  }
  std::printf("%-62s | %6.2f | %6.2f | %5.2f\n", name, best, worst, bytes > 0 ? bytes / best / 1e6 : 0.0);
}

int main() {
  std::mt19937 rng(7);
  uint8_t* pool;
  CHECK(cudaMalloc(&pool, static_cast<size_t>(kPages) * kPageBytes));
  CHECK(cudaMemset(pool, 1, static_cast<size_t>(kPages) * kPageBytes));
  std::vector<int> pageTable(kPages);
  for (int i = 0; i < kPages; ++i) pageTable[i] = i;
  std::shuffle(pageTable.begin(), pageTable.end(), rng);
  std::vector<int> unions(kUnions * kHeads * kUnion);
  for (int u = 0; u < kUnions; ++u)
    for (int h = 0; h < kHeads; ++h) {
      std::vector<int> b(kBlocks);
      for (int i = 0; i < kBlocks; ++i) b[i] = i;
      std::shuffle(b.begin(), b.end(), rng);
      std::sort(b.begin(), b.begin() + kUnion);
      std::copy(b.begin(), b.begin() + kUnion, unions.begin() + (u * kHeads + h) * kUnion);
    }
  int *dPageTable, *dUnions;
  float *dOut, *dMerged, *dSums;
  CHECK(cudaMalloc(&dPageTable, kPages * 4));
  CHECK(cudaMemcpy(dPageTable, pageTable.data(), kPages * 4, cudaMemcpyHostToDevice));
  CHECK(cudaMalloc(&dUnions, unions.size() * 4));
  CHECK(cudaMemcpy(dUnions, unions.data(), unions.size() * 4, cudaMemcpyHostToDevice));
  CHECK(cudaMalloc(&dOut, 4096 * 4));
  CHECK(cudaMalloc(&dMerged, kHeads * kPartial * 4));
  CHECK(cudaMalloc(&dSums, kHeads * kBlocks * kDim * 4));
  CHECK(cudaMemset(dSums, 0, kHeads * kBlocks * kDim * 4));
  const double bytes = double(kHeads) * kUnionPages * 2 * kHeadPageBytes;
  cudaDeviceProp prop;
  CHECK(cudaGetDeviceProperties(&prop, 0));
  std::printf("device: %s, %d SMs; union %.2f MB per step\n", prop.name, prop.multiProcessorCount, bytes / 1e6);
  std::printf("%-62s | %6s | %6s | %5s\n", "variant", "best", "worst", "TB/s");

  auto empty = [&](const char* name, int ctas, bool programmatic, int cluster) {
    CHECK(cudaFuncSetAttribute(emptyKernel, cudaFuncAttributeNonPortableClusterSizeAllowed, 1));
    report(name, [&] {
      cudaLaunchConfig_t cfg = {};
      cfg.gridDim = dim3(ctas);
      cfg.blockDim = dim3(128);
      cudaLaunchAttribute at[2];
      int na = 0;
      if (programmatic) {
        at[na].id = cudaLaunchAttributeProgrammaticStreamSerialization;
        at[na++].val.programmaticStreamSerializationAllowed = 1;
      }
      if (cluster) {
        at[na].id = cudaLaunchAttributeClusterDimension;
        at[na++].val.clusterDim = {static_cast<unsigned>(cluster), 1, 1};
      }
      cfg.attrs = at;
      cfg.numAttrs = na;
      CHECK(cudaLaunchKernelEx(&cfg, emptyKernel, dOut));
    }, 0);
  };
  empty("empty grid, 1 CTA, stream order", 1, false, 0);
  empty("empty grid, 1 CTA, programmatic", 1, true, 0);
  empty("empty grid, 128 CTAs, stream order", 128, false, 0);
  empty("empty grid, 128 CTAs, programmatic", 128, true, 0);
  empty("empty grid, 128 CTAs in clusters of 16, programmatic", 128, true, 16);

  auto step = [&](const char* name, Variant v, int slots, int stages, bool programmatic) {
    const Kernel k = kernelOf(v);
    const int smemBytes = stages * 2 * kHeadPageBytes + (handsOffInCluster(v) ? slots * kShareValues * 4 : 0) +
                          (mergesInCluster(v) ? slots * kPartial * 4 : 0);
    CHECK(cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, smemBytes));
    CHECK(cudaFuncSetAttribute(k, cudaFuncAttributeNonPortableClusterSizeAllowed, 1));
    const int zeros[kHeads] = {};
    CHECK(cudaMemcpyToSymbol(gArrivals, zeros, sizeof(zeros)));
    CHECK(cudaMemcpyToSymbol(gMergeArrivals, zeros, sizeof(zeros)));
    Args a{pool, dPageTable, dUnions, dSums, dOut, dMerged, 0, slots, stages};
    report(name, [&] {
      cudaLaunchConfig_t cfg = {};
      cfg.gridDim = dim3(kHeads * slots);
      cfg.blockDim = dim3(128);
      cfg.dynamicSmemBytes = smemBytes;
      cudaLaunchAttribute at[2];
      int na = 0;
      if (programmatic) {
        at[na].id = cudaLaunchAttributeProgrammaticStreamSerialization;
        at[na++].val.programmaticStreamSerializationAllowed = 1;
      }
      if (inCluster(v)) {
        at[na].id = cudaLaunchAttributeClusterDimension;
        at[na++].val.clusterDim = {static_cast<unsigned>(slots), 1, 1};
      }
      cfg.attrs = at;
      cfg.numAttrs = na;
      CHECK(cudaLaunchKernelEx(&cfg, k, a));
      ++a.step;
    }, bytes);
  };
  step("stream, 16 CTAs per head, 18 pages in flight (the whole share)", kStream, 16, 18, true);
  step("stream, 16 CTAs per head, 8 pages in flight", kStream, 16, 8, true);
  step("stream, 16 CTAs per head, 4 pages in flight", kStream, 16, 4, true);
  step("stream, 16 CTAs per head, 8 pages in flight, stream order", kStream, 16, 8, false);
  step("stream, 32 CTAs per head, 4 pages in flight", kStream, 32, 4, true);
  step("stream, 8 CTAs per head, 12 pages in flight", kStream, 8, 12, true);
  step("global hand-off + stream, 16 per head", kGlobalExchange, 16, 8, true);
  step("global hand-off + stream + last-CTA merge, 16 per head", kGlobalExchangeMerge, 16, 8, true);
  step("cluster of 16: hand-off + stream", kClusterExchange, 16, 8, true);
  step("cluster of 16: hand-off + stream + merge", kClusterExchangeMerge, 16, 8, true);
  step("cluster of 16: hand-off + stream + merge, 4 pages in flight", kClusterExchangeMerge, 16, 4, true);
  step("cluster of 16: stream + merge (no gate)", kClusterMerge, 16, 8, true);
  step("cluster of 16: whole head's key sums per CTA + stream + merge", kWholeHeadSums, 16, 8, true);
  step("cluster of 16: st.async hand-off + stream", kAsyncExchange, 16, 8, true);
  step("cluster of 16: st.async hand-off + stream + st.async merge", kAsyncExchangeMerge, 16, 8, true);
  step("the same, 4 pages in flight", kAsyncExchangeMerge, 16, 4, true);
  step("the same, sums, union and pages read before the wait", kAheadOfWait, 16, 4, true);
  step("the same, 8 pages in flight", kAheadOfWait, 16, 8, true);
  step("cluster of 8: hand-off + stream + merge", kClusterExchangeMerge, 8, 12, true);
  step("cluster of 8: hand-off + stream + merge, 4 pages in flight", kClusterExchangeMerge, 8, 4, true);
  return 0;
}
