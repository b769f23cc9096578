// N-API entry points of the paged KV cache ops. lib/kv-cache.ts builds the
// metadata (segments, page tables) and validates everything first; these
// re-check that every buffer is large enough for what the op may touch.
#include <algorithm>
#include <cstdint>
#include <string>

#include "args.h"
#include "device_wrap.h"
#include "errors.h"

namespace moba {
namespace {

int32_t* metaInts(const Napi::CallbackInfo& info, size_t i, const DeviceCore& c, int64_t offset, int64_t count) {
  int64_t need = (offset + count) * 4;
  BufferWrap* b = argBuffer(info, i, "meta", c, static_cast<size_t>(need));
  return static_cast<int32_t*>(b->data()) + offset;
}

// Reads (dtype, numPages, numLayers, layer, numKVHeads, pageSize, headDim, sumPages)
// from position `i` and checks the pool (argument `iPool`) and, when
// `iSums` >= 0, the key sums against them.
PagedKV argPaged(const Napi::CallbackInfo& info, size_t i, size_t iPool, int iSums, const DeviceCore& c) {
  PagedKV kv;
  DType t = argDType(info, i, "dtype");
  if (t != DType::BF16 && t != DType::F16) throwInvalid(info.Env(), "Expected bf16 or f16 for dtype");
  kv.dtype = t;
  kv.numPages = static_cast<int>(argInt(info, i + 1, "numPages", 1, (int64_t(1) << 31) - 1));
  kv.numLayers = static_cast<int>(argInt(info, i + 2, "numLayers", 1, 1 << 16));
  kv.layer = static_cast<int>(argInt(info, i + 3, "layer", 0, kv.numLayers - 1));
  kv.numKVHeads = static_cast<int>(argInt(info, i + 4, "numKVHeads", 1, 4096));
  kv.pageSize = static_cast<int>(argInt(info, i + 5, "pageSize", 1, 1 << 20));
  kv.headDim = static_cast<int>(argInt(info, i + 6, "headDim", 1, 1024));
  if (kv.headDim % 8 != 0) throwInvalid(info.Env(), "Expected a multiple of 8 for headDim");
  kv.sumPages = static_cast<int>(argInt(info, i + 7, "sumPages", 1, kv.numPages));
  // Each argument is in range, but their product may not fit 64 bits: a
  // wrapped size would pass the buffer check below.
  const unsigned __int128 poolBytes = static_cast<unsigned __int128>(kv.numPages) * kv.pageStride() * dtypeSize(t);
  const unsigned __int128 sumsBytes = static_cast<unsigned __int128>(kv.numPages) * kv.sumsPageStride() * 4;
  if (poolBytes > kMaxBufferBytes || sumsBytes > kMaxBufferBytes) {
    throwInvalid(info.Env(), "Expected a KV cache geometry of at most 2^50 bytes (numPages * numLayers * numKVHeads * "
                             "pageSize * headDim) but received a larger one");
  }
  kv.pool = argBuffer(info, iPool, "pool", c, static_cast<size_t>(poolBytes))->data();
  if (iSums >= 0) {
    kv.keySums = static_cast<float*>(
        argBuffer(info, static_cast<size_t>(iSums), "keySums", c, static_cast<size_t>(sumsBytes))->data());
  }
  return kv;
}

size_t rowBytes(int64_t rows, int heads, int dim, DType t) {
  return static_cast<size_t>(rows) * heads * dim * dtypeSize(t);
}

// The page segments of an append or a gather: meta, segOffset, numSegments,
// numRows from position `i`.
template <typename Params>
void argSegments(const Napi::CallbackInfo& info, size_t i, const DeviceCore& c, Params* p) {
  int64_t segOffset = argInt(info, i + 1, "segOffset", 0, (int64_t(1) << 31) - 1);
  p->numSegments = static_cast<int>(argInt(info, i + 2, "numSegments", 0, (int64_t(1) << 29)));
  p->numRows = static_cast<int>(argInt(info, i + 3, "numRows", 0, (int64_t(1) << 31) - 1));
  p->segments = metaInts(info, i, c, segOffset, int64_t(p->numSegments) * kSegmentInts);
}

// The contiguous side of an append or a gather (KVAppendParams,
// KVGatherParams): k, v, then the segments (argSegments) from position `i`.
// k and v must hold numRows rows of the cache's geometry (p->kv, read first);
// the segments map those rows onto pages.
template <typename Params>
void argSegmentedRows(const Napi::CallbackInfo& info, size_t i, const DeviceCore& c, Params* p) {
  argSegments(info, i + 2, c, p);
  const size_t bytes = rowBytes(p->numRows, p->kv.numKVHeads, p->kv.headDim, p->kv.dtype);
  p->k = argBuffer(info, i, "k", c, bytes)->data();
  p->v = argBuffer(info, i + 1, "v", c, bytes)->data();
}

}  // namespace

// kvAppend(pool, keySums, k, v, meta, segOffset, numSegments, numRows,
//          dtype, numPages, numLayers, layer, numKVHeads, pageSize, headDim, sumPages)
Napi::Value DeviceWrap::kvAppend(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  DeviceCore& c = core(info);
  KVAppendParams p;
  p.kv = argPaged(info, 8, 0, 1, c);
  argSegmentedRows(info, 2, c, &p);
  if (p.numSegments == 0) return env.Undefined();
  Status s = c.backend->kvAppend(p);
  if (!s.ok()) throwStatus(env, s);
  return env.Undefined();
}

// kvGather(pool, k, v, meta, segOffset, numSegments, numRows,
//          dtype, numPages, numLayers, layer, numKVHeads, pageSize, headDim, sumPages)
Napi::Value DeviceWrap::kvGather(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  DeviceCore& c = core(info);
  KVGatherParams p;
  p.kv = argPaged(info, 7, 0, -1, c);
  argSegmentedRows(info, 1, c, &p);
  if (p.numSegments == 0) return env.Undefined();
  Status s = c.backend->kvGather(p);
  if (!s.ok()) throwStatus(env, s);
  return env.Undefined();
}

// kvKeyRows(pool, keyRows, meta, segOffset, numSegments, numRows,
//           dtype, numPages, numLayers, layer, numKVHeads, pageSize, headDim, sumPages)
// The gather's segments, but each row's key offset (int64, for attention's
// keyRows) is written instead of copying K and V.
Napi::Value DeviceWrap::kvKeyRows(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  DeviceCore& c = core(info);
  KVGatherParams p;
  p.kv = argPaged(info, 6, 0, -1, c);
  argSegments(info, 2, c, &p);
  p.keyRows = static_cast<int64_t*>(argBuffer(info, 1, "keyRows", c, static_cast<size_t>(p.numRows) * 8)->data());
  if (p.numRows == 0) return env.Undefined();
  Status s = c.backend->kvGather(p);
  if (!s.ok()) throwStatus(env, s);
  return env.Undefined();
}

// decodeAttention(q, out | null, pool, keySums, meta, infoOffset, batch, numPageIndices,
//                 numRows, numQHeads, maxQLen, maxKvLen, sumKvLen, softmaxScale, policy, chunkSize, topK,
//                 dtype, numPages, numLayers, layer, numKVHeads, pageSize, headDim, sumPages
//                 [, k, v, appendMeta, segOffset, numSegments, numRows, spansBlocks])
// With k and v: the new tokens' K/V are appended in the same op (forward()),
// described as for kvAppend (its arguments 2-7); spansBlocks: whether some
// sequence's new tokens lie in two moba blocks (absent: assumed so).
Napi::Value DeviceWrap::decodeAttention(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  DeviceCore& c = core(info);
  DecodeParams p;
  p.kv = argPaged(info, 17, 2, 3, c);
  int64_t infoOffset = argInt(info, 5, "infoOffset", 0, (int64_t(1) << 31) - 1);
  p.batch = static_cast<int>(argInt(info, 6, "batch", 0, 1 << 24));
  p.numPageIndices = static_cast<int>(argInt(info, 7, "numPageIndices", 0, (int64_t(1) << 31) - 1));
  p.seqInfo = metaInts(info, 4, c, infoOffset, int64_t(4) * p.batch + 1 + p.numPageIndices);
  p.pageIndices = p.seqInfo + 4 * p.batch + 1;
  p.numRows = static_cast<int>(argInt(info, 8, "numRows", 0, (int64_t(1) << 31) - 1));
  p.numQHeads = static_cast<int>(argInt(info, 9, "numQHeads", 1, 4096));
  if (p.numQHeads % p.kv.numKVHeads != 0) {
    throwInvalid(env, "Expected numQHeads to be a multiple of numKVHeads but received " + std::to_string(p.numQHeads) +
                          " and " + std::to_string(p.kv.numKVHeads));
  }
  p.maxQLen = static_cast<int>(argInt(info, 10, "maxQLen", 1, kMaxDecodeTokens));
  p.maxKvLen = static_cast<int>(argInt(info, 11, "maxKvLen", 1, (int64_t(1) << 31) - 1));
  p.sumKvLen = argInt(info, 12, "sumKvLen", 0, int64_t(1) << 50);
  p.softmaxScale = argSoftmaxScale(info, 13);
  p.policy = static_cast<DecodePolicy>(argInt(info, 14, "policy", 0, 1));
  p.chunkSize = static_cast<int>(argInt(info, 15, "chunkSize", 0, 1 << 30));
  p.topK = static_cast<int>(argInt(info, 16, "topK", 0, kMaxTopK));
  // Key positions up to the end of the last block (or 64-key tile) stay in 32 bits.
  const int64_t lastSpan = p.policy == DecodePolicy::Moba ? std::max(p.chunkSize, 64) : 64;
  if (p.maxKvLen > INT32_MAX - lastSpan) {
    throwInvalid(env, "Expected maxKvLen at most " + std::to_string(INT32_MAX - lastSpan) + " but received " +
                          std::to_string(p.maxKvLen));
  }
  if (p.policy == DecodePolicy::Moba) {
    if (p.chunkSize < 1 || p.topK < 1) throwInvalid(env, "Expected chunkSize >= 1 and topK >= 1 for moba decode");
    const int64_t sumBlock = static_cast<int64_t>(p.kv.pageSize) * p.kv.sumPages;
    if (p.chunkSize % sumBlock != 0) {
      throwInvalid(env, "Expected a chunkSize that is a multiple of the cache's key-sum block (" +
                            std::to_string(sumBlock) + ") but received " + std::to_string(p.chunkSize));
    }
  }
  const size_t qBytes = rowBytes(p.numRows, p.numQHeads, p.kv.headDim, p.kv.dtype);
  p.q = argBuffer(info, 0, "q", c, qBytes)->data();
  // out null: the op allocates it (after every check) and returns it.
  BufferWrap* out = argOptionalBuffer(info, 1, "out", c, qBytes);
  if (info.Length() > 25 && !info[25].IsNull() && !info[25].IsUndefined()) {
    KVAppendParams& ap = p.append;
    ap.kv = p.kv;
    argSegmentedRows(info, 25, c, &ap);
    if (ap.numRows != p.numRows) {
      throwInvalid(env, "Expected the appended rows (" + std::to_string(ap.numRows) + ") to be the query rows (" +
                            std::to_string(p.numRows) + ")");
    }
    if (ap.numSegments == 0) ap.k = ap.v = nullptr;
    if (info.Length() > 31 && !info[31].IsUndefined()) p.appendSpansBlocks = argInt(info, 31, "spansBlocks", 0, 1) != 0;
  }
  if (p.batch == 0) return env.Undefined();
  Napi::Value made = env.Undefined();
  if (out) {
    p.out = out->data();
  } else {
    BufferWrap* wrap = nullptr;
    made = BufferWrap::create(env, c.shared_from_this(), qBytes, &wrap);
    p.out = wrap->data();
  }
  Status s = c.backend->decodeAttention(p);
  if (!s.ok()) throwStatus(env, s);
  return made;
}

}  // namespace moba
