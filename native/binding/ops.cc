// N-API entry points of the ops: read positional arguments (lib/native.ts
// documents their order), re-check shapes against buffer sizes, enqueue.
#include <cstdint>

#include "args.h"
#include "device_wrap.h"
#include "errors.h"

namespace moba {
namespace {

HeadShape argHeads(const Napi::CallbackInfo& info, size_t i) {
  HeadShape h;
  h.numQHeads = static_cast<int>(argInt(info, i, "numQHeads", 1, 4096));
  h.numKVHeads = static_cast<int>(argInt(info, i + 1, "numKVHeads", 1, 4096));
  h.headDim = static_cast<int>(argInt(info, i + 2, "headDim", 1, 1024));
  if (h.numQHeads % h.numKVHeads != 0) {
    throwInvalid(info.Env(), "Expected numQHeads to be a multiple of numKVHeads but received " +
                                 std::to_string(h.numQHeads) + " and " + std::to_string(h.numKVHeads));
  }
  return h;
}

DType argFloatDType(const Napi::CallbackInfo& info, size_t i) {
  DType t = argDType(info, i, "dtype");
  if (t != DType::BF16 && t != DType::F16) throwInvalid(info.Env(), "Expected bf16 or f16 for dtype");
  return t;
}

size_t rows(int64_t tokens, int heads, int dim, DType t) {
  return static_cast<size_t>(tokens) * heads * dim * dtypeSize(t);
}

}  // namespace

// mobaGate(q, k, out, cuSeqlensQ, cuSeqlensK, dtype, numQHeads, numKVHeads, headDim, chunkSize, topK)
Napi::Value DeviceWrap::mobaGate(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  DeviceCore& c = core(info);
  GateParams p;
  VarlenCopy seqlens;
  p.varlen = argVarlen(info, 3, 4, &seqlens);
  p.dtype = argFloatDType(info, 5);
  p.heads = argHeads(info, 6);
  p.chunkSize = static_cast<int>(argInt(info, 9, "chunkSize", 1, 1 << 30));
  p.topK = static_cast<int>(argInt(info, 10, "topK", 1, kMaxTopK));
  const Varlen& v = p.varlen;
  checkGateSelections(env, v.totalQ, p.heads.numQHeads, p.topK);
  p.q = argBuffer(info, 0, "q", c, rows(v.totalQ, p.heads.numQHeads, p.heads.headDim, p.dtype))->data();
  p.k = argBuffer(info, 1, "k", c, rows(v.totalK, p.heads.numKVHeads, p.heads.headDim, p.dtype))->data();
  size_t outBytes = static_cast<size_t>(v.totalQ) * p.heads.numQHeads * p.topK * 4;
  p.indices = static_cast<int32_t*>(argBuffer(info, 2, "out", c, outBytes)->data());
  if (v.totalQ == 0) return env.Undefined();
  Status s = c.backend->mobaGate(p);
  if (!s.ok()) throwStatus(env, s);
  return env.Undefined();
}

// attention(q, k, v, out, lse | null, cuSeqlensQ, cuSeqlensK, dtype, numQHeads, numKVHeads, headDim,
//           softmaxScale, causal, chunkSize, topK [, keyRows, numPages, numLayers, layer, pageSize
//           [, keySums]]);
// chunkSize 0 = dense attention. With keyRows (int64 [totalK], from kvKeyRows)
// the keys and values are read from the KV cache's pages: k and v are then
// both the pool, of that geometry (numKVHeads and headDim as above). keySums:
// the cache's key sums, given only when it keeps one per block of chunkSize
// tokens (the MoBA gate then takes its centroids from them).
Napi::Value DeviceWrap::attention(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  DeviceCore& c = core(info);
  AttentionParams p;
  VarlenCopy seqlens;
  p.varlen = argVarlen(info, 5, 6, &seqlens);
  p.dtype = argFloatDType(info, 7);
  p.heads = argHeads(info, 8);
  p.softmaxScale = argSoftmaxScale(info, 11);
  p.causal = argBool(info, 12, "causal");
  p.chunkSize = static_cast<int>(argInt(info, 13, "chunkSize", 0, 1 << 30));
  p.topK = static_cast<int>(argInt(info, 14, "topK", 0, kMaxTopK));
  if (p.chunkSize > 0 && p.topK < 1) throwInvalid(env, "Expected topK >= 1 for MoBA attention");
  const Varlen& v = p.varlen;
  const HeadShape& h = p.heads;
  if (p.chunkSize > 0) checkGateSelections(env, v.totalQ, h.numQHeads, p.topK);
  p.q = argBuffer(info, 0, "q", c, rows(v.totalQ, h.numQHeads, h.headDim, p.dtype))->data();
  if (info.Length() > 15 && !info[15].IsUndefined() && !info[15].IsNull()) {
    PagedKV kv;
    kv.dtype = p.dtype;
    kv.numPages = static_cast<int>(argInt(info, 16, "numPages", 1, (int64_t(1) << 31) - 1));
    kv.numLayers = static_cast<int>(argInt(info, 17, "numLayers", 1, 1 << 16));
    kv.layer = static_cast<int>(argInt(info, 18, "layer", 0, kv.numLayers - 1));
    kv.pageSize = static_cast<int>(argInt(info, 19, "pageSize", 1, 1 << 20));
    kv.numKVHeads = h.numKVHeads;
    kv.headDim = h.headDim;
    const unsigned __int128 poolElems = static_cast<unsigned __int128>(kv.numPages) * kv.pageStride();
    if (poolElems * dtypeSize(p.dtype) > kMaxBufferBytes) {
      throwInvalid(env, "Expected a KV cache geometry of at most 2^50 bytes but received a larger one");
    }
    char* pool = static_cast<char*>(argBuffer(info, 1, "k", c, static_cast<size_t>(poolElems) * dtypeSize(p.dtype))->data());
    p.k = pool + kv.layerOffset() * dtypeSize(p.dtype);
    p.v = pool + (kv.layerOffset() + kv.vOffset()) * dtypeSize(p.dtype);
    p.keyRows = static_cast<const int64_t*>(argBuffer(info, 15, "keyRows", c, static_cast<size_t>(v.totalK) * 8)->data());
    p.keyHeadStride = static_cast<int64_t>(kv.pageSize) * kv.headDim;
    // The last key row of the pool, counted from the layer's K of page 0.
    p.keyRowsMax = (static_cast<int64_t>(kv.numPages) - 1) * kv.pageStride() + (static_cast<int64_t>(kv.pageSize) - 1) * kv.headDim;
    BufferWrap* sums = argOptionalBuffer(info, 20, "keySums", c, static_cast<size_t>(kv.numPages) * kv.sumsPageStride() * 4);
    if (sums && p.chunkSize > 0) {
      p.keySums = static_cast<const float*>(sums->data()) + kv.sumsLayerOffset();
      p.sumsPageStride = kv.sumsPageStride();
      p.keyPageStride = kv.pageStride();
    }
  } else {
    p.k = argBuffer(info, 1, "k", c, rows(v.totalK, h.numKVHeads, h.headDim, p.dtype))->data();
    p.v = argBuffer(info, 2, "v", c, rows(v.totalK, h.numKVHeads, h.headDim, p.dtype))->data();
  }
  p.out = argBuffer(info, 3, "out", c, rows(v.totalQ, h.numQHeads, h.headDim, p.dtype))->data();
  BufferWrap* lse = argOptionalBuffer(info, 4, "lse", c, static_cast<size_t>(v.totalQ) * h.numQHeads * 4);
  p.lse = lse ? static_cast<float*>(lse->data()) : nullptr;
  if (v.totalQ == 0) return env.Undefined();
  Status s = c.backend->attention(p);
  if (!s.ok()) throwStatus(env, s);
  return env.Undefined();
}

}  // namespace moba
