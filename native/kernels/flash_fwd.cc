// Dense flash attention on CUDA (host side): query tiles, one metadata
// upload, and the choice between the wgmma (Hopper) and mma.sync kernels.
#include <algorithm>
#include <climits>
#include <cstring>
#include <numeric>
#include <string>

#include "attn_launch.h"
#include "common/env_switch.h"

namespace moba {

namespace {

void buildQueryTiles(const Varlen& v, std::vector<int2>& tiles) {
  tiles.clear();
  std::vector<int> order(v.batch);
  std::vector<int> count(v.batch);
  for (int b = 0; b < v.batch; ++b) {
    const int lq = v.cuSeqlensQ[b + 1] - v.cuSeqlensQ[b];
    count[b] = (lq + kAttnTileRows - 1) / kAttnTileRows;
  }
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int x, int y) { return count[x] > count[y]; });
  const int maxTiles = v.batch > 0 ? count[order[0]] : 0;
  // Tile m of every sequence that has one, from the last m down: a causal
  // tile's work grows with m, so the heavy CTAs start first.
  for (int m = maxTiles - 1; m >= 0; --m) {
    for (int i = 0; i < v.batch && count[order[i]] > m; ++i) tiles.push_back(make_int2(order[i], m));
  }
}

// Packs host arrays into one block for a single ctx.uploadMeta().
class MetaPack {
 public:
  template <typename T>
  size_t add(const T* data, size_t count) {
    size_t off = CudaContext::alignUp(bytes_.size(), 16);
    bytes_.resize(off + count * sizeof(T));
    if (count) std::memcpy(bytes_.data() + off, data, count * sizeof(T));
    return off;
  }
  Status upload(CudaContext& ctx, const uint8_t** base) {
    void* p = nullptr;
    MOBA_RETURN_IF_ERROR(ctx.uploadMeta(bytes_.data(), bytes_.size(), &p));
    *base = static_cast<const uint8_t*>(p);
    return Status::Ok();
  }

 private:
  std::vector<uint8_t> bytes_;
};

}  // namespace

Status uploadQueryTiles(const Varlen& v, CudaContext& ctx, QueryTiles* out) {
  thread_local std::vector<int2> tiles;
  buildQueryTiles(v, tiles);
  MetaPack pack;
  const size_t offQ = pack.add(v.cuSeqlensQ, v.batch + 1);
  const size_t offK = pack.add(v.cuSeqlensK, v.batch + 1);
  const size_t offT = pack.add(tiles.data(), tiles.size());
  const uint8_t* meta = nullptr;
  MOBA_RETURN_IF_ERROR(pack.upload(ctx, &meta));
  out->cuQ = reinterpret_cast<const int32_t*>(meta + offQ);
  out->cuK = reinterpret_cast<const int32_t*>(meta + offK);
  out->tiles = reinterpret_cast<const int2*>(meta + offT);
  out->numTiles = static_cast<int>(tiles.size());
  return Status::Ok();
}

FwdArgs baseArgs(const AttentionParams& p, const QueryTiles& qt) {
  FwdArgs a;
  a.q = p.q;
  a.k = p.k;
  a.v = p.v;
  a.out = p.out;
  a.lse = p.lse;
  a.cuSeqlensQ = qt.cuQ;
  a.cuSeqlensK = qt.cuK;
  a.tiles = qt.tiles;
  a.numTiles = qt.numTiles;
  a.batch = p.varlen.batch;
  a.totalQ = p.varlen.totalQ;
  a.numQHeads = p.heads.numQHeads;
  a.numKVHeads = p.heads.numKVHeads;
  a.group = p.heads.numQHeads / p.heads.numKVHeads;
  a.scaleLog2 = p.softmaxScale * 1.4426950408889634f;
  a.causal = p.causal ? 1 : 0;
  a.chunkSize = p.chunkSize;
  a.topK = p.topK;
  a.keyRows = p.keyRows;
  a.keyHeadStride = p.keyHeadStride;
  a.keyRowsMax = p.keyRowsMax;
  return a;
}

namespace {

bool forceSm80() {
  static const bool force = envIs("MOBA_ATTN_KERNEL", "sm80");
  return force;
}

bool useSm90(const CudaContext& ctx) { return runsSm90a(ctx) && !forceSm80(); }

}  // namespace

Status launchAttn(const FwdArgs& a, FwdMode mode, DType dtype, int headDim, int grid, const CudaContext& ctx) {
  // The wgmma kernels are persistent: one CTA per SM walks the work items.
  if (useSm90(ctx)) return launchAttnSm90(a, mode, dtype, headDim, std::min(grid, std::max(1, ctx.smCount)), ctx.stream);
  return launchAttnSm80(a, mode, dtype, headDim, grid, ctx.stream);
}

Status flashAttentionLaunch(const AttentionParams& p, CudaContext& ctx) {
  QueryTiles qt;
  MOBA_RETURN_IF_ERROR(uploadQueryTiles(p.varlen, ctx, &qt));
  FwdArgs a = baseArgs(p, qt);
  a.chunkSize = 0;
  a.topK = 0;
  const int64_t grid = static_cast<int64_t>(qt.numTiles) * p.heads.numQHeads;
  if (grid > INT_MAX) return Status::Invalid("flashAttention: problem too large for one launch");
  return launchAttn(a, FwdMode::Dense, p.dtype, p.heads.headDim, static_cast<int>(grid), ctx);
}

}  // namespace moba
