// Host side of the CUDA gate: validation, the plan (metadata, tile order,
// workspace layout) and the launch sequence shared by mobaGate and the
// sparse attention's lists (see gate.h for the algorithm).
#include <algorithm>
#include <climits>
#include <string>

#include "gate.h"
#include "gate_internal.h"
#include "ops.h"

namespace moba {
namespace {

size_t align256(size_t n) { return CudaContext::alignUp(n, 256); }

// One query tile per (sequence, tileRows rows). Tiles are ordered by their
// last position, latest first: their rows score the most blocks, so the
// heaviest CTAs start first and the light ones fill the tail. A counting
// sort on position / 256 keeps this O(tiles).
void buildTiles(const Varlen& v, int tileRows, std::vector<int32_t>& out, size_t at, int numTiles) {
  const int buckets = v.maxSeqlenK / 256 + 1;
  std::vector<int32_t> start(buckets + 1, 0);
  auto lastPos = [&](int b, int local0) {
    int lq = v.cuSeqlensQ[b + 1] - v.cuSeqlensQ[b];
    int lk = v.cuSeqlensK[b + 1] - v.cuSeqlensK[b];
    return lk - lq + std::min(local0 + tileRows, lq) - 1;
  };
  for (int b = 0; b < v.batch; ++b) {
    int lq = v.cuSeqlensQ[b + 1] - v.cuSeqlensQ[b];
    for (int l = 0; l < lq; l += tileRows) ++start[buckets - 1 - lastPos(b, l) / 256 + 1];
  }
  for (int i = 0; i < buckets; ++i) start[i + 1] += start[i];
  for (int b = 0; b < v.batch; ++b) {
    int lq = v.cuSeqlensQ[b + 1] - v.cuSeqlensQ[b];
    for (int l = 0; l < lq; l += tileRows) {
      int slot = start[buckets - 1 - lastPos(b, l) / 256]++;
      out[at + 2 * slot] = b;
      out[at + 2 * slot + 1] = l;
    }
  }
  (void)numTiles;
}

GateArgs argsFor(const GateParams& p, const GatePlan& plan, void* ws, const int32_t* meta, int32_t* indices) {
  GateArgs a;
  char* base = static_cast<char*>(ws);
  a.q = p.q;
  a.k = p.k;
  a.keyRows = p.keyRows;
  a.keyHeadStride = p.keyHeadStride;
  a.keyRowsMax = p.keyRowsMax;
  a.keySums = p.keyRows ? p.keySums : nullptr;
  a.sumsPageStride = p.sumsPageStride;
  a.keyPageStride = p.keyPageStride;
  a.indices = indices;
  a.cuQ = meta + plan.metaQ;
  a.cuK = meta + plan.metaK;
  a.cuBlocks = meta + plan.metaBlocks;
  a.tiles = meta + plan.metaTiles;
  a.cent = reinterpret_cast<float*>(base + plan.offCent);
  a.hi = base + plan.offHi;
  a.stats = reinterpret_cast<uint32_t*>(base + plan.offStats);
  a.fallbackCount = reinterpret_cast<int32_t*>(base + plan.offFbCount);
  a.fallback = reinterpret_cast<int32_t*>(base + plan.offFb);
  a.batch = p.varlen.batch;
  a.totalQ = p.varlen.totalQ;
  a.totalK = p.varlen.totalK;
  a.totalBlocks = plan.totalBlocks;
  a.nqh = p.heads.numQHeads;
  a.nkvh = p.heads.numKVHeads;
  a.group = p.heads.numQHeads / p.heads.numKVHeads;
  a.headDim = p.heads.headDim;
  a.chunkSize = p.chunkSize;
  a.chunkDiv = FastDiv(p.chunkSize);
  a.topK = p.topK;
  a.packBits = plan.packBits;
  return a;
}

Status enqueueGate(const GateParams& p, const GatePlan& plan, CudaContext& ctx, void* ws, const int32_t* meta,
                   int32_t* indices) {
  GateArgs a = argsFor(p, plan, ws, meta, indices);
  if (p.topK == 1) return launchGateOwnBlock(a, ctx.smCount, ctx.stream);
  // Stats (atomicMax targets) and the fallback counter are adjacent: one memset.
  char* base = static_cast<char*>(ws);
  MOBA_RETURN_IF_ERROR(cudaStatus(
      cudaMemsetAsync(base + plan.offStats, 0, plan.offFb - plan.offStats, ctx.stream), "gate: clear counters"));
  const bool dependent = ctx.ccMajor >= 9;
  MOBA_RETURN_IF_ERROR(launchGateCentroids(a, p.dtype, dependent, ctx.stream));
  // makeGatePlan admits topK 2 to kMaxTopK here: register lists up to 16,
  // the large-topK kernel past that (plan.large).
  if (plan.listCap > 0) {
    MOBA_RETURN_IF_ERROR(gateUsesSm90(p.topK, plan.packBits, plan.maxBlocks, ctx)
                             ? launchGateFastSm90(a, p.dtype, plan.numTiles, dependent, ctx.stream)
                             : launchGateFast(a, p.dtype, plan.listCap, plan.numTiles, dependent, ctx.stream));
  } else if (gateUsesTwoPass(p.topK, plan.packBits, ctx)) {
    MOBA_RETURN_IF_ERROR(launchGateTwoPass(a, p.dtype, plan.numTiles, dependent, ctx.stream));
  } else {
    MOBA_RETURN_IF_ERROR(launchGateLarge(a, p.dtype, plan.numTiles, dependent, ctx.stream));
  }
  return launchGateExactRows(a, p.dtype, ctx.smCount, dependent, ctx.stream);
}

}  // namespace

Status makeGatePlan(const GateParams& p, bool withMeta, bool withLists, GatePlan* plan) {
  const Varlen& v = p.varlen;
  const HeadShape& hs = p.heads;
  if (p.dtype != DType::BF16 && p.dtype != DType::F16) {
    return Status::Invalid(std::string("Expected bf16 or f16 for dtype but received ") + dtypeName(p.dtype));
  }
  if (hs.headDim != 64 && hs.headDim != 128) {
    return Status::Invalid("unsupported head_dim: " + std::to_string(hs.headDim) + " (the CUDA gate supports 64 and 128)");
  }
  if (hs.numQHeads < 1 || hs.numKVHeads < 1 || hs.numQHeads % hs.numKVHeads != 0) {
    return Status::Invalid("Expected numQHeads to be a positive multiple of numKVHeads but received " +
                           std::to_string(hs.numQHeads) + " and " + std::to_string(hs.numKVHeads));
  }
  if (p.chunkSize < 1) return Status::Invalid("Expected a positive integer for chunkSize but received " + std::to_string(p.chunkSize));
  if (p.topK < 1) return Status::Invalid("Expected a positive integer for topK but received " + std::to_string(p.topK));
  if (p.topK > kMaxTopK) {
    return Status::Invalid("Expected topK at most " + std::to_string(kMaxTopK) + " but received " + std::to_string(p.topK));
  }
  const int64_t outCount = static_cast<int64_t>(v.totalQ) * hs.numQHeads * p.topK;
  if (outCount >= INT_MAX) {
    return Status::Invalid("Expected totalQ * numQHeads * topK below 2^31 but received " + std::to_string(outCount));
  }
  int64_t totalBlocks = 0, maxBlocks = 1;
  for (int b = 0; b < v.batch; ++b) {
    int64_t lk = v.cuSeqlensK[b + 1] - v.cuSeqlensK[b];
    const int64_t blocks = (lk + p.chunkSize - 1) / p.chunkSize;
    totalBlocks += blocks;
    maxBlocks = std::max(maxBlocks, blocks);
  }
  plan->totalBlocks = static_cast<int>(totalBlocks);
  plan->maxBlocks = static_cast<int>(maxBlocks);
  plan->packBits = 1;
  while (plan->packBits < 31 && (int64_t{1} << plan->packBits) < maxBlocks) ++plan->packBits;
  plan->listCap = gateListCap(p.topK);
  plan->large = gateUsesLarge(p.topK);
  plan->tileRows = gateTileRows(plan->listCap, plan->large);
  plan->numTiles = 0;
  if (plan->tileRows > 0) {
    for (int b = 0; b < v.batch; ++b) {
      int lq = v.cuSeqlensQ[b + 1] - v.cuSeqlensQ[b];
      plan->numTiles += (lq + plan->tileRows - 1) / plan->tileRows;
    }
  }

  if (withMeta) {
    const size_t n1 = static_cast<size_t>(v.batch) + 1;
    plan->metaQ = 0;
    plan->metaK = CudaContext::alignUp(n1, 64);
    plan->metaBlocks = plan->metaK + CudaContext::alignUp(n1, 64);
    plan->metaTiles = plan->metaBlocks + CudaContext::alignUp(n1, 64);
    plan->meta.assign(plan->metaTiles + 2 * static_cast<size_t>(plan->numTiles), 0);
    int32_t* m = plan->meta.data();
    std::copy(v.cuSeqlensQ, v.cuSeqlensQ + n1, m + plan->metaQ);
    std::copy(v.cuSeqlensK, v.cuSeqlensK + n1, m + plan->metaK);
    m[plan->metaBlocks] = 0;
    for (int b = 0; b < v.batch; ++b) {
      const int64_t lk = v.cuSeqlensK[b + 1] - v.cuSeqlensK[b];
      m[plan->metaBlocks + b + 1] = m[plan->metaBlocks + b] + static_cast<int32_t>((lk + p.chunkSize - 1) / p.chunkSize);
    }
    if (plan->numTiles > 0) buildTiles(v, plan->tileRows, plan->meta, plan->metaTiles, plan->numTiles);
  }

  const size_t centElems = static_cast<size_t>(totalBlocks) * hs.numKVHeads * hs.headDim;
  plan->offCent = 0;
  plan->offHi = align256(plan->offCent + centElems * 4);
  plan->offStats = align256(plan->offHi + centElems * 2);
  plan->offFbCount = align256(plan->offStats + static_cast<size_t>(v.batch) * hs.numKVHeads * kGateStats * 4);
  plan->offFb = align256(plan->offFbCount + 4);
  plan->gateBytes = align256(plan->offFb + (plan->listCap > 0 || plan->large ? static_cast<size_t>(v.totalQ) * hs.numQHeads * 4 : 0));
  plan->totalBytes = plan->gateBytes;

  if (withLists) {
    plan->listItems = static_cast<int64_t>(v.totalQ) * hs.numQHeads * (p.topK - 1);
    plan->numSegments = totalBlocks * hs.numQHeads;
    if (plan->numSegments >= INT_MAX) {
      return Status::Invalid("Expected fewer than 2^31 (key block, query head) pairs but received " +
                             std::to_string(plan->numSegments));
    }
    int bits = 1;
    while ((int64_t{1} << bits) <= plan->numSegments) ++bits;
    plan->endBit = bits;
    const size_t items = static_cast<size_t>(plan->listItems) * 4;
    size_t at = plan->gateBytes;
    plan->offIndices = at;
    at = align256(at + (p.indices ? 0 : static_cast<size_t>(outCount) * 4));
    plan->offKeys0 = at;
    at = align256(at + items);
    plan->offKeys1 = at;
    at = align256(at + items);
    plan->offVals0 = at;
    at = align256(at + items);
    plan->offVals1 = at;
    at = align256(at + items);
    plan->offEntryOf = at;
    at = align256(at + items);
    plan->offOffsets = at;
    at = align256(at + (static_cast<size_t>(plan->numSegments) + 1) * 4);
    plan->offCuBlocks = at;
    at = align256(at + (static_cast<size_t>(v.batch) + 1) * 4);
    plan->offTemp = at;
    plan->tempBytes = listsSortTempBytes(plan->listItems, plan->endBit);
    plan->totalBytes = align256(at + plan->tempBytes);
  }
  return Status::Ok();
}

Status gateLaunch(const GateParams& p, CudaContext& ctx) {
  if (p.varlen.totalQ == 0) return Status::Ok();
  GatePlan plan;
  MOBA_RETURN_IF_ERROR(makeGatePlan(p, true, false, &plan));
  void* ws = nullptr;
  MOBA_RETURN_IF_ERROR(ctx.scratch(plan.gateBytes, &ws));
  void* meta = nullptr;
  MOBA_RETURN_IF_ERROR(ctx.uploadMeta(plan.meta.data(), plan.meta.size() * sizeof(int32_t), &meta));
  return enqueueGate(p, plan, ctx, ws, static_cast<const int32_t*>(meta), p.indices);
}

size_t mobaListsWorkspaceBytes(const GateParams& p, Status* status) {
  GatePlan plan;
  Status s = makeGatePlan(p, false, true, &plan);
  if (status) *status = s;
  return s.ok() ? plan.totalBytes : 0;
}

Status mobaListsLaunch(const GateParams& p, CudaContext& ctx, void* workspace, MobaLists* lists) {
  GatePlan plan;
  MOBA_RETURN_IF_ERROR(makeGatePlan(p, true, true, &plan));
  char* ws = static_cast<char*>(workspace);
  int32_t* indices = p.indices ? p.indices : reinterpret_cast<int32_t*>(ws + plan.offIndices);
  ListsArgs la;
  la.cuBlocks = reinterpret_cast<int32_t*>(ws + plan.offCuBlocks);
  la.offsets = reinterpret_cast<int32_t*>(ws + plan.offOffsets);
  la.vals0 = reinterpret_cast<int32_t*>(ws + plan.offVals0);
  la.entryOf = reinterpret_cast<int32_t*>(ws + plan.offEntryOf);
  *lists = MobaLists{};
  lists->totalBlocks = plan.totalBlocks;
  lists->cuBlocks = la.cuBlocks;
  lists->numSegments = static_cast<int>(plan.numSegments);
  lists->segmentOffsets = la.offsets;
  lists->entries = la.vals0;
  lists->entryOf = la.entryOf;
  lists->maxEntries = plan.listItems;
  lists->numEntries = la.offsets + plan.numSegments;

  void* meta = nullptr;
  MOBA_RETURN_IF_ERROR(ctx.uploadMeta(plan.meta.data(), plan.meta.size() * sizeof(int32_t), &meta));
  const int32_t* m = static_cast<const int32_t*>(meta);
  if (p.varlen.totalQ > 0) MOBA_RETURN_IF_ERROR(enqueueGate(p, plan, ctx, ws, m, indices));

  la.indices = indices;
  la.cuQ = m + plan.metaQ;
  la.cuBlocksMeta = m + plan.metaBlocks;
  la.keys0 = reinterpret_cast<int32_t*>(ws + plan.offKeys0);
  la.keys1 = reinterpret_cast<int32_t*>(ws + plan.offKeys1);
  la.vals1 = reinterpret_cast<int32_t*>(ws + plan.offVals1);
  la.temp = ws + plan.offTemp;
  la.tempBytes = plan.tempBytes;
  la.batch = p.varlen.batch;
  la.totalQ = p.varlen.totalQ;
  la.nqh = p.heads.numQHeads;
  la.topK = p.topK;
  la.totalBlocks = plan.totalBlocks;
  la.items = plan.listItems;
  la.numSegments = plan.numSegments;
  la.endBit = plan.endBit;
  int32_t* entries = nullptr;
  MOBA_RETURN_IF_ERROR(launchListsBuild(la, &entries, ctx.stream));
  lists->entries = entries;
  return Status::Ok();
}

}  // namespace moba
