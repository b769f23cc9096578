// Hot CPU loops built for several instruction sets, the build chosen at load
// time by ifunc (glibc on x86-64 Linux):
// - MOBA_CPU_CLONES: one body built twice, baseline (SSE2) and AVX2;
// - MOBA_CPU_VERSIONS: a function defined once per set (target attributes:
//   x86-64-v4, i.e. AVX-512, then AVX2, then the default), where the wider
//   registers change how the loop is blocked, not what it computes.
// Products and sums are never fused (-ffp-contract=off, CMakeLists.txt; AVX2
// alone brings no fused multiply-add), so every build rounds every product
// and sum alike: the same bits on every machine.
#pragma once

#include <cstddef>  // defines __GLIBC__ where glibc is the C library

#if defined(__x86_64__) && defined(__linux__) && defined(__GLIBC__) && defined(__GNUC__)
#define MOBA_CPU_CLONES __attribute__((target_clones("avx2", "default")))
#define MOBA_CPU_VERSIONS 1
#else
#define MOBA_CPU_CLONES
#define MOBA_CPU_VERSIONS 0
#endif
