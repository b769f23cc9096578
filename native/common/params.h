// One Params struct per op, shared by the CUDA kernels (native/kernels) and
// the CPU ops (native/cpu). Pointers are device pointers on the CUDA backend
// and host pointers on the CPU backend, except where a field says "host".
// Shapes are written in THD layout: sequences packed back to back.
#pragma once
#include <cstdint>

#include "dtype.h"

namespace moba {

// Varlen metadata shared by every attention-like op. The backend receives the
// host arrays; a CUDA backend copies them into its own device metadata.
struct Varlen {
  int batch = 0;
  int totalQ = 0;                       // cuSeqlensQ[batch]
  int totalK = 0;                       // cuSeqlensK[batch]
  const int32_t* cuSeqlensQ = nullptr;  // host [batch+1], monotone, starts at 0
  const int32_t* cuSeqlensK = nullptr;  // host [batch+1]; per sequence Lk >= Lq
  int maxSeqlenQ = 0;
  int maxSeqlenK = 0;
};

struct HeadShape {
  int numQHeads = 0;   // multiple of numKVHeads
  int numKVHeads = 0;
  int headDim = 0;     // 64 or 128 on CUDA; any positive value on the CPU
};

// mobaGate: the selected blocks of every query (DESIGN.md section 1).
struct GateParams {
  DType dtype = DType::BF16;  // of q and k
  const void* q = nullptr;    // [totalQ, numQHeads, headDim]
  const void* k = nullptr;    // [totalK, numKVHeads, headDim]
  int32_t* indices = nullptr; // [numQHeads, totalQ, topK], ascending, -1 padded
  Varlen varlen;
  HeadShape heads;
  int chunkSize = 0;          // B, any positive value
  int topK = 0;               // >= 1
};

// mobaAttention and flashAttention forward.
struct AttentionParams {
  DType dtype = DType::BF16;  // of q, k, v and out
  const void* q = nullptr;    // [totalQ, numQHeads, headDim]
  const void* k = nullptr;    // [totalK, numKVHeads, headDim]
  const void* v = nullptr;    // [totalK, numKVHeads, headDim]
  void* out = nullptr;        // [totalQ, numQHeads, headDim]
  float* lse = nullptr;       // [numQHeads, totalQ] natural log, or nullptr
  Varlen varlen;
  HeadShape heads;
  float softmaxScale = 0.f;   // multiplies q.k before the softmax
  bool causal = true;         // flashAttention only; MoBA is always causal
  // MoBA only: chunkSize == 0 means dense (flashAttention) semantics.
  int chunkSize = 0;
  int topK = 0;
};

}  // namespace moba
