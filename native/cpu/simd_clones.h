// Hot CPU loops built twice, baseline (SSE2) and AVX2, the clone chosen at
// load time by ifunc (glibc on x86-64 Linux). AVX2 alone brings no fused
// multiply-add, so both clones round every product and sum alike: the same
// bits on every machine.
#pragma once

#include <cstddef>  // defines __GLIBC__ where glibc is the C library

#if defined(__x86_64__) && defined(__linux__) && defined(__GLIBC__) && defined(__GNUC__)
#define MOBA_CPU_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define MOBA_CPU_CLONES
#endif
