# Generates native/kernels/common/wgmma_ops.cuh: the wgmma wrappers spell out
# 32 or 64 accumulator registers per instruction, too many to write by hand.
# Usage: python3 scripts/gen-wgmma-ops.py
out = []
out.append('''// wgmma (sm_90a) wrappers: m64nNk16 with fp32 accumulators in the m16n8
// fragment layout (d[i][0..3] = 8-column chunk i), A from shared memory
// (descriptor) or from registers, B from shared memory. Generated operand
// lists (scripts/gen-wgmma-ops.py writes this file); only compiled for sm_90a
// (callers guard with __CUDA_ARCH_FEAT_SM90_ALL).
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

namespace moba {
namespace attn {

__device__ __forceinline__ void wgmmaFence() { asm volatile("wgmma.fence.sync.aligned;\\n" ::: "memory"); }
__device__ __forceinline__ void wgmmaCommit() { asm volatile("wgmma.commit_group.sync.aligned;\\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void wgmmaWait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\\n" ::"n"(N) : "memory");
}

// Shared-memory matrix descriptor, 128-byte swizzle (tiles 1024-byte aligned).
__device__ __forceinline__ uint64_t wgmmaDesc(uint32_t addr, uint32_t lbo, uint32_t sbo) {
  return static_cast<uint64_t>((addr & 0x3FFFF) >> 4) | (static_cast<uint64_t>((lbo & 0x3FFFF) >> 4) << 16) |
         (static_cast<uint64_t>((sbo & 0x3FFFF) >> 4) << 32) | (uint64_t(1) << 62);
}

template <typename T> struct WgmmaType;
template <> struct WgmmaType<__nv_bfloat16> { static constexpr bool kBf16 = true; };
template <> struct WgmmaType<__half> { static constexpr bool kBf16 = false; };
''')
def regs(n):
    return ",".join("%%%d" % i for i in range(n))
for N in (64, 128):
    nd = N // 2
    douts = ", ".join('"+f"(d[%d][%d])' % (i // 4, i % 4) for i in range(nd))
    for kind in ("SS", "RS"):
        for ty in ("bf16", "f16"):
            if kind == "SS":
                args = "%%%d, %%%d, p, 1, 1, 0, %%%d" % (nd, nd + 1, nd + 3)
                setp = "setp.ne.b32 p, %%%d, 0;" % (nd + 2)
                ins = '"l"(descA), "l"(descB), "r"(scaleD), "n"(TransB)'
            else:
                args = "{%%%d,%%%d,%%%d,%%%d}, %%%d, p, 1, 1, %%%d" % (nd, nd + 1, nd + 2, nd + 3, nd + 4, nd + 6)
                setp = "setp.ne.b32 p, %%%d, 0;" % (nd + 5)
                ins = '"r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(descB), "r"(scaleD), "n"(TransB)'
            out.append('''__device__ __forceinline__ void wgmma%s_n%d_%s_impl(float (&d)[%d][4], %s, uint64_t descB, int scaleD, std::integral_constant<int, 0>) {}
''' % (kind, N, ty, N // 8, "uint64_t descA" if kind == "SS" else "const uint32_t (&a)[4]") if False else "")
            sig_a = "uint64_t descA" if kind == "SS" else "const uint32_t (&a)[4]"
            out.append('''template <int TransB>
__device__ __forceinline__ void wgmma%s_n%d_%s(float (&d)[%d][4], %s, uint64_t descB, int scaleD) {
  asm volatile(
      "{\\n.reg .pred p;\\n%s\\n"
      "wgmma.mma_async.sync.aligned.m64n%dk16.f32.%s.%s {%s}, %s;\\n}\\n"
      : %s
      : %s);
}
''' % (kind, N, ty, N // 8, sig_a, setp, N, ty, ty, regs(nd), args, douts, ins))
    for kind in ("SS", "RS"):
        sig_a = "uint64_t descA" if kind == "SS" else "const uint32_t (&a)[4]"
        aname = "descA" if kind == "SS" else "a"
        out.append('''template <typename T, int TransB>
__device__ __forceinline__ void wgmma%s(float (&d)[%d][4], %s, uint64_t descB, int scaleD) {
  if constexpr (WgmmaType<T>::kBf16) wgmma%s_n%d_bf16<TransB>(d, %s, descB, scaleD);
  else wgmma%s_n%d_f16<TransB>(d, %s, descB, scaleD);
}
''' % (kind, N // 8, sig_a, kind, N, aname, kind, N, aname))
out.append('''}  // namespace attn
}  // namespace moba
''')
import os
open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "native", "kernels", "common", "wgmma_ops.cuh"), "w").write("".join(out))
