// Hopper synchronization helpers: shared-memory mbarriers (with cp.async and
// bulk-copy arrivals), named barriers between warpgroups, register
// reallocation and the generic-to-async proxy fence that wgmma's and the copy
// engine's shared-memory accesses need.
#pragma once
#include <cstdint>

namespace moba {
namespace attn {

__device__ __forceinline__ void mbarInit(uint32_t bar, int count) {
  asm volatile("mbarrier.init.shared.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
}
__device__ __forceinline__ void mbarArrive(uint32_t bar) {
  asm volatile("mbarrier.arrive.shared.b64 _, [%0];\n" ::"r"(bar) : "memory");
}
// Arrives once this thread's earlier cp.async copies have landed (the
// barrier's count includes this arrival: .noinc).
__device__ __forceinline__ void mbarArriveCpAsync(uint32_t bar) {
  asm volatile("cp.async.mbarrier.arrive.noinc.shared.b64 [%0];\n" ::"r"(bar) : "memory");
}
// Makes mbarrier initialization visible to the copy engine (bulk copies).
__device__ __forceinline__ void mbarInitFence() { asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory"); }
// Posts `bytes` of expected bulk-copy traffic with this thread's arrival.
__device__ __forceinline__ void mbarArriveExpectTx(uint32_t bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes) : "memory");
}
// A bulk copy of `bytes` (a multiple of 16) from global to shared memory that
// completes its bytes on `bar`.
__device__ __forceinline__ void bulkCopyToShared(uint32_t dst, const void* src, uint32_t bytes, uint32_t bar) {
  asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];\n" ::"r"(dst),
               "l"(src), "r"(bytes), "r"(bar)
               : "memory");
}
// A tensor copy (TMA) of the 2D box at (c0, c1) of the tensor map `map` (a
// __grid_constant__ parameter) to shared memory, completing its bytes on `bar`.
__device__ __forceinline__ void tmaLoad2d(uint32_t dst, const void* map, int c0, int c1, uint32_t bar) {
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3}], [%4];\n" ::"r"(dst),
      "l"(map), "r"(c0), "r"(c1), "r"(bar)
      : "memory");
}
__device__ __forceinline__ void mbarWait(uint32_t bar, uint32_t parity) {
  uint32_t done;
  do {
    asm volatile(
        "{\n.reg .pred p;\nmbarrier.try_wait.parity.shared.b64 p, [%1], %2;\nselp.u32 %0, 1, 0, p;\n}\n"
        : "=r"(done)
        : "r"(bar), "r"(parity)
        : "memory");
  } while (!done);
}

__device__ __forceinline__ void namedBarSync(int id, int threads) {
  asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}
__device__ __forceinline__ void namedBarArrive(int id, int threads) {
  asm volatile("bar.arrive %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}

__device__ __forceinline__ void fenceProxyAsync() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }

// Thread-block clusters (sm_90): the cluster barrier in its split form
// (arrive, then wait; every thread of every CTA of the cluster takes part)
// and access to the shared memory of the cluster's other CTAs. Empty below
// sm_90, where no cluster is launched.
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
#define MOBA_CLUSTER_ASM(...) asm volatile(__VA_ARGS__)
#else
#define MOBA_CLUSTER_ASM(...) ((void)0)
#endif
__device__ __forceinline__ void clusterArriveRelaxed() { MOBA_CLUSTER_ASM("barrier.cluster.arrive.relaxed.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void clusterArrive() { MOBA_CLUSTER_ASM("barrier.cluster.arrive.release.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void clusterWait() { MOBA_CLUSTER_ASM("barrier.cluster.wait.acquire.aligned;\n" ::: "memory"); }
// The address of shared-memory address `addr` of this CTA in CTA `rank` of the cluster.
__device__ __forceinline__ uint32_t clusterMap(uint32_t addr, uint32_t rank) {
  uint32_t out = addr;
  MOBA_CLUSTER_ASM("mapa.shared::cluster.u32 %0, %1, %2;\n" : "=r"(out) : "r"(addr), "r"(rank));
  return out;
}
// An asynchronous store to another CTA's shared memory that completes its 8
// bytes on that CTA's mbarrier `bar` (a cluster address too).
__device__ __forceinline__ void clusterStoreAsync(uint32_t addr, uint64_t v, uint32_t bar) {
  MOBA_CLUSTER_ASM("st.async.shared::cluster.mbarrier::complete_tx::bytes.b64 [%0], %1, [%2];\n" ::"r"(addr), "l"(v), "r"(bar)
                   : "memory");
}
__device__ __forceinline__ float clusterLoad(uint32_t addr) {
  float v = 0.f;
  MOBA_CLUSTER_ASM("ld.shared::cluster.f32 %0, [%1];\n" : "=f"(v) : "r"(addr) : "memory");
  return v;
}
__device__ __forceinline__ float4 clusterLoad4(uint32_t addr) {
  float4 v = make_float4(0.f, 0.f, 0.f, 0.f);
  MOBA_CLUSTER_ASM("ld.shared::cluster.v4.f32 {%0, %1, %2, %3}, [%4];\n"
                   : "=f"(v.x), "=f"(v.y), "=f"(v.z), "=f"(v.w)
                   : "r"(addr)
                   : "memory");
  return v;
}
#undef MOBA_CLUSTER_ASM

template <int N>
__device__ __forceinline__ void setMaxRegsInc() {
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(N));
}
template <int N>
__device__ __forceinline__ void setMaxRegsDec() {
  asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(N));
}

}  // namespace attn
}  // namespace moba
