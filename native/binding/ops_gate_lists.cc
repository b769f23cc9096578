// Internal N-API method for tests of the CUDA gate: the CSR lists the sparse
// attention consumes (native/kernels/common/moba_lists.h) are never part of
// the public API, so this copies them into caller-given buffers.
#include "args.h"
#include "device_wrap.h"
#include "errors.h"

namespace moba {

// mobaGateLists(q, k, out, cuSeqlensQ, cuSeqlensK, dtype, numQHeads, numKVHeads, headDim, chunkSize, topK,
//               cuBlocksOut, segmentOffsetsOut, entriesOut, entryOfOut)
Napi::Value DeviceWrap::mobaGateLists(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  DeviceCore& c = core(info);
  GateParams p;
  VarlenCopy seqlens;
  p.varlen = argVarlen(info, 3, 4, &seqlens);
  p.dtype = argDType(info, 5, "dtype");
  if (p.dtype != DType::BF16 && p.dtype != DType::F16) throwInvalid(env, "Expected bf16 or f16 for dtype");
  p.heads.numQHeads = static_cast<int>(argInt(info, 6, "numQHeads", 1, 4096));
  p.heads.numKVHeads = static_cast<int>(argInt(info, 7, "numKVHeads", 1, 4096));
  p.heads.headDim = static_cast<int>(argInt(info, 8, "headDim", 1, 1024));
  if (p.heads.numQHeads % p.heads.numKVHeads != 0) {
    throwInvalid(env, "Expected numQHeads to be a multiple of numKVHeads");
  }
  p.chunkSize = static_cast<int>(argInt(info, 9, "chunkSize", 1, 1 << 30));
  p.topK = static_cast<int>(argInt(info, 10, "topK", 1, kMaxTopK));
  const Varlen& v = p.varlen;
  const HeadShape& h = p.heads;
  checkGateSelections(env, v.totalQ, h.numQHeads, p.topK);
  const size_t es = dtypeSize(p.dtype);
  p.q = argBuffer(info, 0, "q", c, static_cast<size_t>(v.totalQ) * h.numQHeads * h.headDim * es)->data();
  p.k = argBuffer(info, 1, "k", c, static_cast<size_t>(v.totalK) * h.numKVHeads * h.headDim * es)->data();
  const size_t rowsHeads = static_cast<size_t>(v.totalQ) * h.numQHeads;
  p.indices = static_cast<int32_t*>(argBuffer(info, 2, "out", c, rowsHeads * p.topK * 4)->data());
  int64_t totalBlocks = 0;
  for (int b = 0; b < v.batch; ++b) {
    totalBlocks += (static_cast<int64_t>(v.cuSeqlensK[b + 1]) - v.cuSeqlensK[b] + p.chunkSize - 1) / p.chunkSize;
  }
  Backend::GateListsOut out;
  out.cuBlocks = static_cast<int32_t*>(argBuffer(info, 11, "cuBlocksOut", c, (v.batch + 1) * size_t{4})->data());
  out.segmentOffsets = static_cast<int32_t*>(
      argBuffer(info, 12, "segmentOffsetsOut", c, (static_cast<size_t>(totalBlocks) * h.numQHeads + 1) * 4)->data());
  const size_t items = rowsHeads * (p.topK - 1) * 4;
  out.entries = static_cast<int32_t*>(argBuffer(info, 13, "entriesOut", c, items)->data());
  out.entryOf = static_cast<int32_t*>(argBuffer(info, 14, "entryOfOut", c, items)->data());
  Status s = c.backend->mobaGateLists(p, out);
  if (!s.ok()) throwStatus(env, s);
  return env.Undefined();
}

}  // namespace moba
