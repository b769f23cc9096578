// Decode attention over the paged KV cache (DESIGN.md section 1, decode).
//
// Bytes decide decode: every step reads the K/V of the whole context. One CTA
// owns one (sequence, KV head, row tile, slot): the row tile holds all query
// heads of that KV head for the sequence's 1..8 new tokens (GQA: K/V are read
// once for the group). Each of its 4 warps streams its own 16-key tiles
// through its own ring of shared-memory stages (decode_stream.cuh: one bulk
// copy per K or V row on sm_90, cp.async elsewhere) and keeps its own online
// softmax, so no CTA-wide barrier sits in the loop; the warps are merged once
// at the end. Two CTAs per SM, each warp with three tiles in flight.
// Flash-decoding: when (sequences x KV heads) cannot fill the GPU, the keys
// are split over `numSlots` CTAs whose normalized partial outputs and
// log-sum-exps are merged by the last CTA of the group to finish (a counter
// per group, reset by that CTA), so a step is one launch.
//
// 'moba' adds the gate over the cache: each row's top-(k-1) past blocks by
// the dot product of its query with the blocks' mean keys (from the cache's
// block key sums), plus its current block; the attention CTAs read only the
// union of the rows' blocks, each masked to the rows that picked it. Moba
// tiles come by tensor copies on sm_90 (pages and blocks of multiples of 16
// keys); there the CTAs of a split item form one thread-block cluster, which
// trades candidates and partial outputs through shared memory instead of
// global memory and a counter. The attention CTAs of an item gate
// themselves (fusedGate, one launch) when their scratch fits and, without a
// cluster, when the step's CTAs all fit on the GPU at once (a cooperative
// launch): each scores a share of the blocks and publishes its rows' best,
// then every one merges them into the same selection. Otherwise gateKernel
// selects for them, after scoresKernel has added up the runs of each block
// when a block spans several. The gates live in decode_gate.cuh, what both
// sides share in decode_common.cuh.
#include <cudaTypedefs.h>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "common/dependent_launch.h"
#include "common/env_switch.h"
#include "decode_common.cuh"
#include "decode_gate.cuh"
#include "decode_stream.cuh"
#include "ops.h"

namespace moba {
namespace {

// Split-KV in a cluster (the item's numSlots CTAs): once every CTA's
// normalized partial and row log-sum-exps are in its shared memory (`partO`,
// `lse`: the same offsets in every CTA), CTA `slot` merges its share of the
// tile's (row, 4 columns) elements, reading the other CTAs' shared memory,
// and writes them out. Each element takes a group of G lanes (G the power of
// two >= numSlots), one slot per lane: every slot's values are read at once
// and combined by shuffles, so the merge, which ends the step, is a few
// dozen instructions deep instead of a loop over the slots in one thread.
// Then it waits until every CTA is done reading its own, so that none exits
// while another still reads from it. (Inlined: as a call it made the moba
// step 0.2-2.4 us slower.)
template <int D, bool kBf16>
__device__ __forceinline__ void clusterMerge(const DecodeArgs& a, SeqView s, int h, int slot, int row0, int rowsHere,
                                          const float* partO, const float* lse) {
  attn::clusterArrive();  // release: this CTA's partial is written
  attn::clusterWait();    // acquire: every CTA's is
  const int elems = rowsHere * (D / 4);
  const int per = a.bySlots(elems + a.numSlots - 1);
  const int eBegin = slot * per;
  const int eCount = max(min(elems, eBegin + per) - eBegin, 0);
  static_assert(kMaxCluster <= 32, "a slot per lane of a group within one warp");
  const int logG = a.numSlots > 1 ? 32 - __clz(a.numSlots - 1) : 0;
  const int G = 1 << logG;
  const int u = threadIdx.x & (G - 1);  // the slot this lane reads
  for (int base = 0; base < eCount; base += kThreads >> logG) {  // uniform: the shuffles need every lane
    const int e = base + (static_cast<int>(threadIdx.x) >> logG);
    const bool live = e < eCount && u < a.numSlots;
    const int lr = (eBegin + e) / (D / 4), d = (eBegin + e - lr * (D / 4)) * 4;
    float l = -INFINITY;
    float4 v = make_float4(0.f, 0.f, 0.f, 0.f);
    if (live) {
      l = attn::clusterLoad(attn::clusterMap(smemAddr(lse + lr), u));
      v = attn::clusterLoad4(attn::clusterMap(smemAddr(partO + lr * D + d), u));
    }
    float mx = l;
    for (int off = G >> 1; off > 0; off >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, off));
    const float f = live ? lseWeight(l, mx) : 0.f;
    float sum = f;
    float4 o = make_float4(f * v.x, f * v.y, f * v.z, f * v.w);
    for (int off = G >> 1; off > 0; off >>= 1) {
      sum += __shfl_xor_sync(0xffffffffu, sum, off);
      o.x += __shfl_xor_sync(0xffffffffu, o.x, off);
      o.y += __shfl_xor_sync(0xffffffffu, o.y, off);
      o.z += __shfl_xor_sync(0xffffffffu, o.z, off);
      o.w += __shfl_xor_sync(0xffffffffu, o.w, off);
    }
    if (live && u == 0) {
      storeRow4<kBf16>(a.out + globalRowOf(a, s, h, row0 + lr) * D + d, o, sum > 0.f ? 1.f / sum : 0.f);
    }
  }
  // Only this CTA's reads have to be over (their values are used above): no
  // release, which would also wait for the output stores.
  attn::clusterArriveRelaxed();
  attn::clusterWait();
}

// forward() in one op: the CTA of slot 0 and row tile 0 writes the item's
// new tokens (KV head h of sequence s) into their pages and adds them to the
// key sums exactly as kvAppend does (per dimension, in position order, from
// the page's own sum, or the run's previous page when the token starts a
// page, or zero when it starts a run). Nothing in this grid reads what it
// writes: a warp whose tile holds new tokens overwrites their rows in shared
// memory with the op's rows once the tile lands, and a moba gate reads only
// the sums of blocks before the rows' own (the host appends first when new
// tokens could complete a block that a later row scores).
template <int D, bool kBf16>
__device__ __noinline__ void appendNewTokens(const DecodeArgs& a, const SeqView& s, int h) {
  constexpr int CPR = D / 8;
  const int newFrom = s.kvLen - s.qLen;
  const int64_t rowStride = static_cast<int64_t>(a.numKVHeads) * D;
  uint16_t* pool = const_cast<uint16_t*>(a.kv) + static_cast<int64_t>(h) * a.pageSize * D;
  for (int e = threadIdx.x; e < s.qLen * 2 * CPR; e += kThreads) {
    const int i = e / (2 * CPR), rest = e - i * 2 * CPR;
    const bool isV = rest >= CPR;
    const int c = isV ? rest - CPR : rest;
    const int pos = newFrom + i, pi = pos / a.pageSize;
    const int page = s.pages[pi];
    if (page < 0 || page >= a.numPages) continue;
    const uint16_t* src = (isV ? a.newV : a.newK) + (s.qStart + i) * rowStride + h * D + c * 8;
    uint16_t* dst = pool + page * a.pageStride + static_cast<int64_t>(pos - pi * a.pageSize) * D + (isV ? a.vOffset : 0) + c * 8;
    *reinterpret_cast<uint4*>(dst) = *reinterpret_cast<const uint4*>(src);
  }
  float* sums = const_cast<float*>(a.sums) + h * D;
  for (int d = threadIdx.x; d < D; d += kThreads) {
    float sum = 0.f;
    for (int i = 0; i < s.qLen; ++i) {
      const int pos = newFrom + i, pi = pos / a.pageSize, slotInPage = pos - pi * a.pageSize;
      const int page = s.pages[pi];
      const bool pageOk = page >= 0 && page < a.numPages;
      if (i == 0 && slotInPage > 0) {
        sum = pageOk ? sums[page * a.sumsPageStride + d] : 0.f;
      } else if (slotInPage == 0) {
        if (pi % a.sumPages == 0) {
          sum = 0.f;  // a new run
        } else if (i == 0) {
          const int prev = s.pages[pi - 1];  // the run's previous page (later tokens go on from it)
          sum = prev >= 0 && prev < a.numPages ? sums[prev * a.sumsPageStride + d] : 0.f;
        }
      }
      sum += widen<kBf16>(a.newK[(s.qStart + i) * rowStride + h * D + d]);
      if (pageOk && (i == s.qLen - 1 || slotInPage == a.pageSize - 1)) sums[page * a.sumsPageStride + d] = sum;
    }
  }
}

// forward(), in the tile loop: rows [r0, r1) of a landed warp tile (K in kStage,
// V in vStage, either layout) become the op's new K/V rows firstRow + r0, ...
// of KV head h. Out of line: it runs for a sequence's last tile or two, and
// inlined it changed the register allocation of the whole loop.
template <int D, bool kTma>
__device__ __noinline__ void patchNewRows(const DecodeArgs& a, uint16_t* kStage, uint16_t* vStage, int r0, int r1,
                                          int firstRow, int h) {
  constexpr int CPR = D / 8;
  const int lane = threadIdx.x & 31;
  for (int r = r0; r < r1; ++r) {
    const int64_t row = (static_cast<int64_t>(firstRow) + r) * a.numKVHeads * D + h * D;
    for (int i = lane; i < 2 * CPR; i += 32) {
      const bool isV = i >= CPR;
      const int c = isV ? i - CPR : i;
      const uint4 x = *reinterpret_cast<const uint4*>((isV ? a.newV : a.newK) + row + c * 8);
      *reinterpret_cast<uint4*>(decode::tileChunk<D, kTma>(isV ? vStage : kStage, r, c)) = x;
    }
  }
#if MOBA_DECODE_BULK
  attn::fenceProxyAsync();  // before the next bulk copy into the stage
#endif
  __syncwarp();
}

// One CTA per (slot, KV head x row tile, sequence). M: 16-row MMA tiles per CTA.
// The CTA's keys come as a share of 16-key warp tiles; its warps take every
// kWarps-th of them in turn, and each streams its own through its own ring
// (decode_stream.cuh) with its own online softmax; the warps meet only at the
// start (query rows, moba selection) and once at the end (the merge).
// kTma: K/V tiles by tensor copies (sm_90; every tile 16 keys of one page).
// kRuns (with kTma): the fused gate adds up blocks of several key-sum runs,
// in an instance of its own, so that the adder's registers and code do not
// shape the kernel of the other steps.
template <int D, int M, bool kBf16, bool kTma, bool kRuns>
__global__ void __launch_bounds__(kThreads, kCtasPerSm) decodeKernel(const __grid_constant__ DecodeArgs a) {
#if !MOBA_DECODE_BULK
  if constexpr (kTma) return;  // never launched: tensor copies are sm_90 only
#endif
  constexpr int RT = 16 * M;                 // rows per CTA
  constexpr int CPR = D / 8;                 // 16-byte chunks per row
  constexpr int KSTEPS = D / 16;             // k-steps of q.k
  constexpr int NT = D / 8;                  // n-tiles of the output
  constexpr int kWarps = kThreads / 32;
  using L = decode::RowLayout<D>;
  constexpr int RH = L::kRowHalves;
  using Ring = decode::WarpRing<D, kStages, kTma>;

  extern __shared__ __align__(16) unsigned char smem[];
  uint64_t* bars = reinterpret_cast<uint64_t*>(smem);                       // [kWarps][kStages]
  uint16_t* Qs = reinterpret_cast<uint16_t*>(smem + kBarBytes);             // [RT][RH]
  // The rings start at a multiple of 1024 bytes with tensor copies (the
  // swizzle pattern follows address bits 7-9); the host leaves room for it.
  uint16_t* rings = Qs + RT * RH;                                           // [kWarps][kStages][stage]
  if (kTma) rings += ((1024u - (smemAddr(rings) & 1023u)) & 1023u) / 2;
  unsigned char* region = reinterpret_cast<unsigned char*>(rings);          // rings, then the warps' merge
  int32_t* unionList = reinterpret_cast<int32_t*>(region + a.regionBytes);  // [unionCap]
  uint32_t* unionRows = reinterpret_cast<uint32_t*>(unionList + a.unionCap);
  __shared__ int unionSize;
  __shared__ int isLast;

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int slot = blockIdx.x;
  const int h = a.byRowTiles(blockIdx.y), rt = blockIdx.y - h * a.rowTiles;
  const int b = blockIdx.z;
  SeqView s;
  const bool live = loadSeq(a, b, &s) && rt * RT < s.qLen * a.group;
  // Launched programmatically (sm_90), this grid may start while the kernel
  // before it still runs: before it waits it reads only the plan's metadata
  // and page table, which no kernel writes (the fused gate looks up its first
  // key sums' pages there and prefetches the sums into L2: 1 x 128K moba
  // step 16.9-17.0 -> 16.5-16.6 us). The query rows, the cache and the
  // workspace wait for that kernel, except behind gateKernel, which was
  // itself launched in plain stream order (the query rows then go out first;
  // the selection waits). Every CTA waits once, so that this grid never
  // completes ahead of it.
  const bool gateKernelBefore = a.moba && !a.fusedGate;
  const bool sumPagesKnown = !kRuns && a.moba && a.fusedGate && live && fusedGateEarlyPages<D>(a, s, h, slot, region);
  if (!gateKernelBefore || !live) waitForPrimaryGrid();
  if (!live) return;
  const bool cluster = kTma && a.cluster;
  const int R = s.qLen * a.group;
  const int row0 = rt * RT;
  const int rowsHere = min(RT, R - row0);
  const int item = (b * a.numKVHeads + h) * a.rowTiles + rt;
  const uint16_t* kvHead = a.kv + static_cast<int64_t>(h) * a.pageSize * D;
  // forward(): positions from here on are this op's new tokens, read from its rows.
  const int newFrom = a.newK != nullptr ? s.kvLen - s.qLen : INT_MAX;

  // Query rows: local row r is (token i, head g) with r + row0 = i * group + g.
  // cp.async (rows past the tile zero-filled), so that the first page and
  // key-sum lookups go out behind them rather than after them.
  for (int c = tid; c < RT * CPR; c += kThreads) {
    const int r = c / CPR, ch = c - r * CPR;
    const uint16_t* src = a.q;
    if (r < rowsHere) src = a.q + globalRowOf(a, s, h, row0 + r) * D + ch * 8;
    ptx::cpAsync16(smemAddr(Qs + r * RH + ch * 8), src, r < rowsHere);
  }
  ptx::cpAsyncCommit();
  Ring ring{rings + warp * kStages * Ring::kStageHalves, bars + warp * kStages, a.kv};
  if (lane == 0) ring.init();
  // Causal limit of the rows this thread holds in the MMA layout (-1: padding row).
  int tRow[M][2];
#pragma unroll
  for (int m = 0; m < M; ++m) {
#pragma unroll
    for (int hh = 0; hh < 2; ++hh) {
      const int lr = m * 16 + (lane >> 2) + hh * 8;
      tRow[m][hh] = lr < rowsHere ? rowPosition(a, s, row0 + lr) : -1;
    }
  }

  int numWarpTiles, wtBegin;
  bool gateCounted = false;  // this CTA already counted itself in counters[item] (fused gate)
  if (a.moba) {
    if (a.fusedGate) {
      gateCounted = fusedGate<D, kBf16, kTma, kRuns>(a, s, h, item, slot, row0, rowsHere, Qs, region,
                                                     bars + kWarps * kStages, unionList, unionRows, &unionSize,
                                                     sumPagesKnown);
    } else {
      // The item's selection, written by gateKernel.
      waitForPrimaryGrid();
      // Size, blocks and row masks in one round trip: entries past the size
      // are read too (never used) rather than waiting for the size first.
      const int32_t* selected = selectionOf(a, item);
      if (tid == 0) unionSize = min(max(__ldcg(selected), 0), a.unionCap);
      for (int u = tid; u < a.unionCap; u += kThreads) {
        unionList[u] = __ldcg(selected + 1 + u);
        unionRows[u] = static_cast<uint32_t>(__ldcg(selected + 1 + a.unionCap + u));
      }
    }
    __syncthreads();
    // The union's warp tiles in equal shares (72 virtual tiles over 16 CTAs:
    // 18 warp tiles each, where whole virtual tiles gave 14 CTAs 20 and one
    // none, and two CTAs that share an SM carried 40 instead of 36).
    const int nWarpTiles = unionSize * a.tilesPerBlock * kWarps;
    const int split = a.bySlots(nWarpTiles + a.numSlots - 1);
    wtBegin = slot * split;
    numWarpTiles = max(0, min(nWarpTiles, wtBegin + split) - wtBegin);
  } else {
    wtBegin = numWarpTiles = 0;  // full policy: the warps' feed below decides
  }
  // Q, the union and its row masks and the barriers are visible to all.
  ptx::cpAsyncWait<0>();
  __syncthreads();

  // The warp's keys come as warp tiles of 16: full policy, tile t holds keys
  // [16t, 16t + 16); moba, tile vt * kWarps + q is quarter q of virtual tile
  // vt (kTile keys) of the union.
  struct KeyRange {
    int p0, end;    // first key; keys at positions >= end are masked
    uint32_t rows;  // bit r: local row r attends to these keys
  };
  auto rangeOf = [&](int t) {
    KeyRange r;
    if (a.moba) {
      const int vt = t / kWarps, quarter = t - vt * kWarps;
      const int u = a.byTilesPerBlock(vt), w = vt - u * a.tilesPerBlock;
      // In 64 bits, clamped to the sequence: a block's end may pass 2^31.
      const int j = unionList[u];
      const int64_t first = static_cast<int64_t>(max(j, 0)) * a.chunkSize;
      const int64_t end = j >= 0 ? min(first + a.chunkSize, static_cast<int64_t>(s.kvLen)) : 0;
      r.p0 = static_cast<int>(min(first + w * kTile + quarter * decode::kWarpKeys, end));
      r.end = static_cast<int>(end);
      r.rows = unionRows[u];
    } else {
      r.p0 = t * decode::kWarpKeys;
      r.end = s.kvLen;
      r.rows = 0xffffffffu;
    }
    return r;
  };
  // Which tiles this warp takes: every kWarps-th tile of the CTA's range, so
  // the 4 warps stream neighbouring keys. Full decode splits each sequence's
  // tiles into numSlots contiguous shares. The split is static on purpose:
  // which CTA sums which keys must not depend on timing, or the result would
  // change in the last bit from run to run (tests require the same bits for
  // any page placement); a run-time hand-out of the last 15% of the tiles
  // gained 0-2% at batch 1 and broke that.
  int feedNext, feedEnd;
  if (a.moba) {
    feedNext = wtBegin + warp;
    feedEnd = wtBegin + numWarpTiles;
  } else {
    const int nWarpTiles = (s.kvLen + decode::kWarpKeys - 1) / decode::kWarpKeys;
    const int share = a.bySlots(nWarpTiles + a.numSlots - 1);
    feedNext = slot * share + warp;
    feedEnd = min(nWarpTiles, (slot + 1) * share);
  }
  auto take = [&]() -> int {  // the warp's next tile, -1 when none is left
    if (feedNext >= feedEnd) return -1;
    const int t = feedNext;
    feedNext += kWarps;
    return t;
  };
  // Where this lane's row of tile t lives: its page (-1: no row to fetch) and
  // the row's element offset inside the page. The page index is a dependent
  // global load, so it is asked for one tile ahead of its use.
  const int myKey = lane & (decode::kWarpKeys - 1);
  struct RowRef {
    int page;
    int inPage;
  };
  auto lookup = [&](int t) {
    RowRef r{-1, 0};
    if (t >= 0) {
      const KeyRange kr = rangeOf(t);
      const int pos = kr.p0 + myKey;
      if (pos < kr.end) {
        // A plain division on purpose: with a FastDiv here, full decode
        // streamed 5% slower at 1 x 128K with pages of 16 (the loop 57
        // instructions shorter; measured in two device runs; not understood).
        const int pi = pos / a.pageSize;
        r.page = s.pages[pi];
        r.inPage = pos - pi * a.pageSize;
      }
    }
    return r;
  };
  auto source = [&](RowRef r) -> const uint16_t* {
    // A page index outside the pool (corrupt metadata) reads nothing: zeros.
    if (r.page < 0 || r.page >= a.numPages) return nullptr;
    return kvHead + r.page * a.pageStride + static_cast<int64_t>(r.inPage) * D + (lane >= 16 ? a.vOffset : 0);
  };
  // Fetch tile r (this lane's row of it) into `stage`: by tensor copies
  // (lane 0's row is the tile's first key), or one row per lane.
  auto issue = [&](int stage, RowRef r) {
#if MOBA_DECODE_BULK
    if constexpr (kTma) {
      const int kRow = a.kvRow0 + r.page * a.pageRows + h * a.pageSize + r.inPage;
      ring.issueTile(stage, &a.kvMap, r.page >= 0 && r.page < a.numPages, kRow, kRow + a.vRows, lane);
      return;
    }
#endif
    ring.issue(stage, source(r), lane);
  };

  float acc[M][NT][4];
  float mRow[M][2], lRow[M][2];
#pragma unroll
  for (int m = 0; m < M; ++m) {
#pragma unroll
    for (int n = 0; n < NT; ++n) acc[m][n][0] = acc[m][n][1] = acc[m][n][2] = acc[m][n][3] = 0.f;
    mRow[m][0] = mRow[m][1] = -INFINITY;
    lRow[m][0] = lRow[m][1] = 0.f;
  }

  // win[i]: the tile of iteration it + i (-1: none); tiles are issued in the
  // order they are taken, so the ring's stage of a tile is its ordinal % kStages.
  // Every stage is in flight while the warp waits: the tile after them goes
  // into the stage just consumed. The first tiles' page lookups go out
  // together, before any copy (a copy between two lookups would order them
  // one after another).
  int win[kStages + 1];
  RowRef first[kStages];
#pragma unroll
  for (int i = 0; i < kStages; ++i) {
    win[i] = take();
    first[i] = lookup(win[i]);
  }
#pragma unroll
  for (int i = 0; i < kStages; ++i) {
    if (win[i] >= 0) {
      issue(i, first[i]);
    } else {
      ring.skip();
    }
  }
  win[kStages] = take();
  RowRef ahead = lookup(win[kStages]);
  // forward(): the new tokens go into the cache while the first tiles are in flight.
  if (a.newK != nullptr && slot == 0 && rt == 0) appendNewTokens<D, kBf16>(a, s, h);
  for (int it = 0; win[0] >= 0; ++it) {
    ring.wait(it);  // tile `it` landed
    const KeyRange ti = rangeOf(win[0]);
    const int stg = it % kStages;
#if MOBA_DECODE_BULK
    if (kTma && ti.end - ti.p0 < decode::kWarpKeys) ring.zeroTailV(stg, max(0, ti.end - ti.p0), lane);
#endif
    // forward(): the tile's new tokens came from pages this op may not have
    // written yet; their rows replace them.
    if (ti.p0 + decode::kWarpKeys > newFrom && ti.p0 < ti.end) {
      patchNewRows<D, kTma>(a, ring.kMut(stg), ring.vMut(stg), max(newFrom - ti.p0, 0),
                            min(ti.end - ti.p0, decode::kWarpKeys), s.qStart + ti.p0 - newFrom, h);
    }
    const uint16_t* ks = ring.k(stg);
    const uint16_t* vs = ring.v(stg);

    float sc[M][2][4];
#pragma unroll
    for (int m = 0; m < M; ++m)
#pragma unroll
      for (int n = 0; n < 2; ++n) sc[m][n][0] = sc[m][n][1] = sc[m][n][2] = sc[m][n][3] = 0.f;
#pragma unroll
    for (int kk = 0; kk < KSTEPS; ++kk) {
      uint32_t kf[4];
      {
        const int key = (lane & 7) + ((lane >> 4) << 3);
        ldsm4(kf, decode::tileChunk<D, kTma>(ks, key, kk * 2 + ((lane >> 3) & 1)));
      }
#pragma unroll
      for (int m = 0; m < M; ++m) {
        uint32_t qa[4];
        const int row = m * 16 + (lane & 7) + (((lane >> 3) & 1) << 3);
        ldsm4(qa, Qs + row * RH + (kk * 2 + (lane >> 4)) * 8);
        mma16816<kBf16>(sc[m][0], qa, kf[0], kf[1]);
        mma16816<kBf16>(sc[m][1], qa, kf[2], kf[3]);
      }
    }

    // Mask, then the online softmax in log2 units, per row.
    uint32_t pa[M][4];
#pragma unroll
    for (int m = 0; m < M; ++m) {
#pragma unroll
      for (int hh = 0; hh < 2; ++hh) {
        const int lr = m * 16 + (lane >> 2) + hh * 8;
        const bool rowOn = (ti.rows >> lr) & 1u;
        float mx = -INFINITY;
#pragma unroll
        for (int n = 0; n < 2; ++n) {
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            const int pos = ti.p0 + n * 8 + (lane & 3) * 2 + e;
            const bool ok = rowOn && pos < ti.end && pos <= tRow[m][hh];
            const float x = ok ? sc[m][n][hh * 2 + e] * a.scaleLog2 : -INFINITY;
            sc[m][n][hh * 2 + e] = x;
            mx = fmaxf(mx, x);
          }
        }
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
        const float mNew = fmaxf(mRow[m][hh], mx);
        const float mUse = mNew == -INFINITY ? 0.f : mNew;  // keeps exp2(-inf - -inf) out
        const float corr = exp2f(mRow[m][hh] - mUse);
        mRow[m][hh] = mNew;
        lRow[m][hh] *= corr;
#pragma unroll
        for (int n = 0; n < NT; ++n) {
          acc[m][n][hh * 2] *= corr;
          acc[m][n][hh * 2 + 1] *= corr;
        }
#pragma unroll
        for (int n = 0; n < 2; ++n) {
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            const float p = exp2f(sc[m][n][hh * 2 + e] - mUse);
            sc[m][n][hh * 2 + e] = p;
            lRow[m][hh] += p;
          }
        }
      }
      // The probabilities as the A operand: the accumulator layout of two
      // n-tiles is the A layout of one k16 step.
      pa[m][0] = pack2<kBf16>(sc[m][0][0], sc[m][0][1]);
      pa[m][1] = pack2<kBf16>(sc[m][0][2], sc[m][0][3]);
      pa[m][2] = pack2<kBf16>(sc[m][1][0], sc[m][1][1]);
      pa[m][3] = pack2<kBf16>(sc[m][1][2], sc[m][1][3]);
    }
#pragma unroll
    for (int dp = 0; dp < D / 16; ++dp) {
      uint32_t vf[4];
      const int key = (lane & 7) + (((lane >> 3) & 1) << 3);
      ldsm4T(vf, decode::tileChunk<D, kTma>(vs, key, dp * 2 + (lane >> 4)));
#pragma unroll
      for (int m = 0; m < M; ++m) {
        mma16816<kBf16>(acc[m][2 * dp], pa[m], vf[0], vf[1]);
        mma16816<kBf16>(acc[m][2 * dp + 1], pa[m], vf[2], vf[3]);
      }
    }
    // Every lane is done with the stage: refill it.
    __syncwarp();
    if (win[kStages] >= 0) {
      issue(stg, ahead);
    } else {
      ring.skip();
    }
#pragma unroll
    for (int i = 0; i < kStages; ++i) win[i] = win[i + 1];
    win[kStages] = take();
    ahead = lookup(win[kStages]);
  }
  ring.drain();
  // The next op's grid may launch and run up to its own wait (a programmatic
  // launch) while this one merges: it reads nothing this grid writes before then.
  allowDependentGrid();
  // The warps' merge, in two CTA barriers: each warp posts its rows' running
  // maxima (outside the rings, so before the other warps are done with
  // theirs); then each scales its accumulators and sums to the rows' common
  // maximum and posts them (padding rows skipped); one pass adds them up.
  __shared__ float mShared[kWarps][32];  // [warp][row], RT <= 32
  static_assert(RT <= 32, "one row maximum per (warp, row)");
#pragma unroll
  for (int m = 0; m < M; ++m) {
#pragma unroll
    for (int hh = 0; hh < 2; ++hh) {
      if ((lane & 3) == 0) mShared[warp][m * 16 + (lane >> 2) + hh * 8] = mRow[m][hh];
    }
  }
  __syncthreads();  // every warp is done with its ring: reuse the bytes to merge the warps
  auto rowMax = [&](int lr) {
    float mx = mShared[0][lr];
#pragma unroll
    for (int w = 1; w < kWarps; ++w) mx = fmaxf(mx, mShared[w][lr]);
    return mx;
  };

  constexpr int kAccStride = warpMergeStride(D);
  float* accW = reinterpret_cast<float*>(region);  // [kWarps][RT][kAccStride], scaled to the row's maximum
  float* lW = accW + kWarps * RT * kAccStride;     // [kWarps][RT], likewise
  float* lseRow = lW + kWarps * RT;                // [RT]
#pragma unroll
  for (int m = 0; m < M; ++m) {
#pragma unroll
    for (int hh = 0; hh < 2; ++hh) {
      float l = lRow[m][hh];
      l += __shfl_xor_sync(0xffffffffu, l, 1);
      l += __shfl_xor_sync(0xffffffffu, l, 2);
      const int lr = m * 16 + (lane >> 2) + hh * 8;
      if (lr < rowsHere) {
        const float f = lseWeight(mRow[m][hh], rowMax(lr));
        if ((lane & 3) == 0) lW[warp * RT + lr] = l * f;
#pragma unroll
        for (int n = 0; n < NT; ++n) {
          const int col = n * 8 + (lane & 3) * 2;
          *reinterpret_cast<float2*>(accW + (warp * RT + lr) * kAccStride + col) =
              make_float2(acc[m][n][hh * 2] * f, acc[m][n][hh * 2 + 1] * f);
        }
      }
    }
  }
  __syncthreads();

  // Cluster: the CTA's partial stays in its shared memory, after the warps' merge.
  float* clusterO = lseRow + RT;  // [RT][D]
  float* partO = a.partO + (static_cast<int64_t>(item) * a.numSlots + slot) * RT * D;
  float* partL = a.partL + (static_cast<int64_t>(item) * a.numSlots + slot) * RT;
  for (int e = tid; e < rowsHere * (D / 4); e += kThreads) {
    const int lr = e / (D / 4), d = (e - lr * (D / 4)) * 4;
    float l = 0.f;
    float4 o = make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll
    for (int w = 0; w < kWarps; ++w) {
      l += lW[w * RT + lr];
      const float4 v = *reinterpret_cast<const float4*>(accW + (w * RT + lr) * kAccStride + d);
      o.x += v.x;
      o.y += v.y;
      o.z += v.z;
      o.w += v.w;
    }
    const float inv = l > 0.f ? 1.f / l : 0.f;
    if (a.numSlots == 1) {
      storeRow4<kBf16>(a.out + globalRowOf(a, s, h, row0 + lr) * D + d, o, inv);
      continue;
    }
    o = make_float4(o.x * inv, o.y * inv, o.z * inv, o.w * inv);
    if (d == 0) {
      const float lse = l > 0.f ? rowMax(lr) + log2f(l) : -INFINITY;
      if (cluster) {
        lseRow[lr] = lse;
      } else {
        partL[lr] = lse;
      }
    }
    if (cluster) {
      *reinterpret_cast<float4*>(clusterO + lr * D + d) = o;
    } else {
      *reinterpret_cast<float4*>(partO + lr * D + d) = o;
    }
  }
  if (a.numSlots == 1) return;

  if (cluster) {
    clusterMerge<D, kBf16>(a, s, h, slot, row0, rowsHere, clusterO, lseRow);
    return;
  }

  // Split-KV: the last CTA of the group to finish merges every slot.
  __syncthreads();
  if (tid == 0) {
    // With the fused gate every CTA of the item counted once before.
    isLast = arriveRelease(a.counters + item) == (gateCounted ? 2 : 1) * a.numSlots - 1;
    if (isLast) fenceAcquire();
  }
  __syncthreads();
  if (!isLast) return;
  const float* groupO = a.partO + static_cast<int64_t>(item) * a.numSlots * RT * D;
  const float* groupL = a.partL + static_cast<int64_t>(item) * a.numSlots * RT;
  // Per (row, slot) weights first (one warp per row, slots over lanes), so
  // that the pass over the partial outputs is independent loads only.
  float* weight = accW;                   // [rowsHere, numSlots]
  float* invSum = accW + RT * a.numSlots; // [rowsHere]
  for (int lr = warp; lr < rowsHere; lr += kWarps) {
    float mx = -INFINITY;
    for (int sl = lane; sl < a.numSlots; sl += 32) mx = fmaxf(mx, __ldcg(groupL + sl * RT + lr));
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, off));
    float sum = 0.f;
    for (int sl = lane; sl < a.numSlots; sl += 32) {
      const float w = lseWeight(__ldcg(groupL + sl * RT + lr), mx);
      weight[lr * a.numSlots + sl] = w;
      sum += w;
    }
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, off);
    if (lane == 0) invSum[lr] = sum > 0.f ? 1.f / sum : 0.f;
  }
  __syncthreads();
  for (int e = tid; e < rowsHere * (D / 4); e += kThreads) {
    const int lr = e / (D / 4), d = (e - lr * (D / 4)) * 4;
    float4 o = make_float4(0.f, 0.f, 0.f, 0.f);
    const float* w = weight + lr * a.numSlots;
    // kMergeBatch slots' loads in flight at once.
    for (int sl0 = 0; sl0 < a.numSlots; sl0 += kMergeBatch) {
      float4 v[kMergeBatch];
#pragma unroll
      for (int u = 0; u < kMergeBatch; ++u) {
        v[u] = sl0 + u < a.numSlots
                   ? __ldcg(reinterpret_cast<const float4*>(groupO + (static_cast<int64_t>(sl0 + u) * RT + lr) * D + d))
                   : make_float4(0.f, 0.f, 0.f, 0.f);
      }
#pragma unroll
      for (int u = 0; u < kMergeBatch; ++u) {
        const float f = sl0 + u < a.numSlots ? w[sl0 + u] : 0.f;
        o.x += f * v[u].x;
        o.y += f * v[u].y;
        o.z += f * v[u].z;
        o.w += f * v[u].w;
      }
    }
    storeRow4<kBf16>(a.out + globalRowOf(a, s, h, row0 + lr) * D + d, o, invSum[lr]);
  }
  if (tid == 0) a.counters[item] = 0;
}

// ------------------------------------------------------------ host launch --

// The kernels of one (head dim, row tiles, dtype) instance.
struct Kernels {
  const void* decode;
  const void* decodeTma;
  const void* decodeTmaRuns;
  const void* scores;
  const void* gate;
};

template <int D, int M, bool kBf16>
Kernels kernelsOf() {
  return {reinterpret_cast<const void*>(decodeKernel<D, M, kBf16, false, false>),
          reinterpret_cast<const void*>(decodeKernel<D, M, kBf16, true, false>),
          reinterpret_cast<const void*>(decodeKernel<D, M, kBf16, true, true>),
          reinterpret_cast<const void*>(scoresKernel<D, kBf16>), reinterpret_cast<const void*>(gateKernel<D, kBf16>)};
}

Kernels kernelsFor(int D, int M, bool bf16) {
  if (D == 64) {
    if (bf16) return M == 1 ? kernelsOf<64, 1, true>() : kernelsOf<64, 2, true>();
    return M == 1 ? kernelsOf<64, 1, false>() : kernelsOf<64, 2, false>();
  }
  if (bf16) return M == 1 ? kernelsOf<128, 1, true>() : kernelsOf<128, 2, true>();
  return M == 1 ? kernelsOf<128, 1, false>() : kernelsOf<128, 2, false>();
}

// Allows `kernel` `bytes` of dynamic shared memory with the whole carveout
// given to shared memory (the driver's default carveout can leave room for
// only one of our 100 KB CTAs per SM), and returns how many of its CTAs fit
// on one SM. Cached per (kernel, device); JavaScript thread only.
Status prepareKernel(const void* kernel, size_t bytes, int threads, int* perSm) {
  struct Prepared {
    const void* kernel;
    int device;
    size_t granted;  // largest dynamic shared memory allowed so far
    size_t bytes;    // size of the last occupancy query
    int perSm;
  };
  static std::vector<Prepared> prepared;
  int dev = 0;
  cudaGetDevice(&dev);
  Prepared* e = nullptr;
  for (Prepared& x : prepared) {
    if (x.kernel == kernel && x.device == dev) e = &x;
  }
  if (!e) {
    MOBA_RETURN_IF_ERROR(cudaStatus(
        cudaFuncSetAttribute(kernel, cudaFuncAttributePreferredSharedMemoryCarveout, cudaSharedmemCarveoutMaxShared),
        "cudaFuncSetAttribute(carveout)"));
    // Nothing granted yet: without the attribute, static and dynamic shared
    // memory together may not pass 48 KB (scoresKernel's 48 KB of rows plus
    // its 2.6 KB of static tiles failed to launch).
    prepared.push_back({kernel, dev, 0, 0, 0});
    e = &prepared.back();
  }
  if (bytes > e->granted) {
    MOBA_RETURN_IF_ERROR(cudaStatus(
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)),
        "cudaFuncSetAttribute(shared memory)"));
    e->granted = bytes;
  }
  if (e->perSm == 0 || e->bytes != bytes) {
    int n = 0;
    MOBA_RETURN_IF_ERROR(cudaStatus(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, kernel, threads, bytes),
                                    "cudaOccupancyMaxActiveBlocksPerMultiprocessor"));
    e->perSm = n > 0 ? n : 1;
    e->bytes = bytes;
  }
  *perSm = e->perSm;
  return Status::Ok();
}

// How a grid is launched. dependent: programmatic dependent launch (it may
// start before the previous kernel ends). cooperative: every CTA resident at
// once (the fused gate's CTAs wait for each other). cluster > 1: every
// `cluster` CTAs along x form one thread-block cluster (resident together,
// sharing their shared memory).
struct LaunchMode {
  bool dependent = false;
  bool cooperative = false;
  int cluster = 0;
};

cudaLaunchConfig_t launchConfig(dim3 grid, int threads, size_t smem, LaunchMode mode, cudaStream_t stream,
                                cudaLaunchAttribute (&attr)[2]) {
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = grid;
  cfg.blockDim = dim3(threads);
  cfg.dynamicSmemBytes = smem;
  cfg.stream = stream;
  unsigned n = 0;
  if (mode.dependent) addDependentLaunch(attr, n);
  if (mode.cooperative) {
    attr[n].id = cudaLaunchAttributeCooperative;
    attr[n++].val.cooperative = 1;
  } else if (mode.cluster > 1) {
    attr[n].id = cudaLaunchAttributeClusterDimension;
    attr[n].val.clusterDim.x = static_cast<unsigned>(mode.cluster);
    attr[n].val.clusterDim.y = 1;
    attr[n++].val.clusterDim.z = 1;
    // The default scheduling policy: load-balancing once made the H200's 8
    // clusters of 16 place better (moba (512, 3) at 1 x 128K 17.5 -> 16.5
    // us, one query repeated) while the cluster tests failed now and then
    // with "illegal instruction"; on the current kernels, with a new query
    // each step, spread and load-balancing measure the same as the default.
  }
  cfg.attrs = attr;
  cfg.numAttrs = n;
  return cfg;
}

cudaError_t launch(const void* kernel, dim3 grid, int threads, size_t smem, DecodeArgs& args, LaunchMode mode,
                   CudaContext& ctx) {
  cudaLaunchAttribute attr[2];
  cudaLaunchConfig_t cfg = launchConfig(grid, threads, smem, mode, ctx.stream, attr);
  void* params[] = {&args};
  return cudaLaunchKernelExC(&cfg, kernel, params);
}

// How many clusters of `size` (2..kMaxCluster) CTAs of `kernel` (with `smem`
// bytes each) can be resident on the device at once (0: none, or the size is
// refused): sizes above 8 are non-portable (allowed on sm_90 when asked for),
// and a cluster's CTAs must fit in one GPC. Asked once per (kernel, device,
// smem, size): an op may ask for several sizes. JavaScript thread only.
// Errors count as 0.
int activeClusters(const void* kernel, int size, size_t smem, CudaContext& ctx) {
  struct Known {
    const void* kernel;
    int device;
    size_t smem;
    int clusters[kMaxCluster + 1];  // -1: not asked yet
  };
  static std::vector<Known> known;
  int dev = 0;
  cudaGetDevice(&dev);
  Known* k = nullptr;
  for (Known& e : known) {
    if (e.kernel == kernel && e.device == dev && e.smem == smem) k = &e;
  }
  if (k == nullptr) {
    if (known.size() >= 64) known.erase(known.begin());
    known.push_back({kernel, dev, smem, {}});
    k = &known.back();
    for (int& c : k->clusters) c = -1;
  }
  if (k->clusters[size] < 0) {
    int clusters = 0;
    if (size <= 8 || cudaFuncSetAttribute(kernel, cudaFuncAttributeNonPortableClusterSizeAllowed, 1) == cudaSuccess) {
      cudaLaunchAttribute attr[2];
      LaunchMode mode;
      mode.cluster = size;
      cudaLaunchConfig_t cfg = launchConfig(dim3(size), kThreads, smem, mode, ctx.stream, attr);
      if (cudaOccupancyMaxActiveClusters(&clusters, kernel, &cfg) != cudaSuccess) clusters = 0;
    }
    cudaGetLastError();  // a refusal above is an answer, not a pending error
    k->clusters[size] = clusters;
  }
  return k->clusters[size];
}

int64_t ceilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

// The static shared memory of `kernel` (what the compiler placed there, on
// top of the dynamic bytes of a launch). Cached; JavaScript thread only.
Status staticSharedBytes(const void* kernel, size_t* bytes) {
  static std::vector<std::pair<const void*, size_t>> known;
  for (const auto& k : known) {
    if (k.first == kernel) {
      *bytes = k.second;
      return Status::Ok();
    }
  }
  cudaFuncAttributes attr = {};
  MOBA_RETURN_IF_ERROR(cudaStatus(cudaFuncGetAttributes(&attr, kernel), "cudaFuncGetAttributes"));
  known.push_back({kernel, attr.sharedSizeBytes});
  *bytes = attr.sharedSizeBytes;
  return Status::Ok();
}

// The pool as a 2D tensor of rows of headDim elements, for tensor copies of
// 16-row x 64-column boxes with the 128-byte swizzle. Cached per (pool, rows,
// head dim); false when the driver offers no encoder or the pool has more
// rows than 32-bit coordinates reach. JavaScript thread only.
bool poolTensorMap(const PagedKV& kv, CUtensorMap* out) {
  static PFN_cuTensorMapEncodeTiled_v12000 encode = nullptr;
  static bool looked = false;
  if (!looked) {
    looked = true;
    void* fn = nullptr;
    cudaDriverEntryPointQueryResult found;
    if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &fn, 12000, cudaEnableDefault, &found) == cudaSuccess &&
        found == cudaDriverEntryPointSuccess) {
      encode = reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(fn);
    }
    cudaGetLastError();
  }
  if (encode == nullptr) return false;
  const int64_t rows = static_cast<int64_t>(kv.numPages) * (kv.pageStride() / kv.headDim);
  if (rows <= 0 || rows > INT32_MAX) return false;
  struct Cached {
    const void* pool;
    int64_t rows;
    int headDim;
    CUtensorMap map;
  };
  static std::vector<Cached> cache;
  for (const Cached& c : cache) {
    if (c.pool == kv.pool && c.rows == rows && c.headDim == kv.headDim) {
      *out = c.map;
      return true;
    }
  }
  const cuuint64_t dims[2] = {static_cast<cuuint64_t>(kv.headDim), static_cast<cuuint64_t>(rows)};
  const cuuint64_t strides[1] = {static_cast<cuuint64_t>(kv.headDim) * 2};
  const cuuint32_t box[2] = {64, static_cast<cuuint32_t>(decode::kWarpKeys)};
  const cuuint32_t elementStrides[2] = {1, 1};
  CUtensorMap map;
  if (encode(&map, CU_TENSOR_MAP_DATA_TYPE_UINT16, 2, kv.pool, dims, strides, box, elementStrides,
             CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
             CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) != CUDA_SUCCESS) {
    return false;
  }
  if (cache.size() >= 16) cache.erase(cache.begin());
  cache.push_back({kv.pool, rows, kv.headDim, map});
  *out = map;
  return true;
}

// MOBA_DECODE_LAUNCH=plain: no cooperative or cluster launches (moba then
// gates in its own kernel and merges split-KV through global memory), for
// environments that refuse them, and to test that path on any GPU.
bool plainLaunchesOnly() {
  static const bool plain = envIs("MOBA_DECODE_LAUNCH", "plain");
  return plain;
}

// Row-tile MMA blocks (16 rows each) for R query rows per (sequence, KV head):
// one up to 16 rows, else two (row tiles of 32).
int rowTileBlocks(int64_t R) { return R <= 16 ? 1 : 2; }

// What the kernels cannot take, refused before anything is enqueued (the op
// may append its new tokens before the attention launch).
Status checkDecode(const DecodeParams& p) {
  const PagedKV& kv = p.kv;
  if (kv.headDim != 64 && kv.headDim != 128) return Status::Invalid("unsupported head_dim for decode: " + std::to_string(kv.headDim));
  if (kv.dtype != DType::BF16 && kv.dtype != DType::F16) {
    return Status::Invalid(std::string("unsupported dtype for decode: ") + dtypeName(kv.dtype));
  }
  if (p.batch > 65535) return Status::Invalid("decode takes at most 65535 sequences per op, received " + std::to_string(p.batch));
  if (p.policy == DecodePolicy::Moba && (p.chunkSize < 1 || p.topK < 1 || p.chunkSize % kv.pageSize != 0)) {
    return Status::Invalid("moba decode needs chunkSize >= 1, topK >= 1 and pageSize dividing chunkSize");
  }
  const int64_t R = static_cast<int64_t>(p.maxQLen) * (p.numQHeads / kv.numKVHeads);
  const int64_t rowTiles = ceilDiv(R, 16 * rowTileBlocks(R));
  if (kv.numKVHeads * rowTiles > 65535) {
    return Status::Invalid("decode: too many KV heads x row tiles (" + std::to_string(kv.numKVHeads * rowTiles) + ")");
  }
  return Status::Ok();
}

// The append a step must enqueue before its gate reads the key sums (new
// tokens that span two blocks). It runs once, right before the op's first
// launch: a step refused for its shared memory or its workspace leaves the
// cache as it was.
class PendingAppend {
 public:
  explicit PendingAppend(const KVAppendParams* append) : append_(append) {}
  Status enqueue(CudaContext& ctx) {
    const KVAppendParams* append = append_;
    append_ = nullptr;
    return append ? kvAppendLaunch(*append, ctx) : Status::Ok();
  }

 private:
  const KVAppendParams* append_;
};

// One decode op, on parameters checkDecode has passed. coordinated:
// cooperative and cluster launches allowed; *refused: the device turned the
// attention grid's coordinated launch down (it did not run; gate kernels
// enqueued ahead of it only wrote the workspace), and the caller goes again
// without.
Status decodeLaunchAs(const DecodeParams& p, CudaContext& ctx, bool coordinated, PendingAppend& first, bool* refused) {
  const PagedKV& kv = p.kv;
  const int D = kv.headDim;
  if (p.batch == 0) return Status::Ok();
  const bool moba = p.policy == DecodePolicy::Moba;
  const int group = p.numQHeads / kv.numKVHeads;
  const int R = p.maxQLen * group;
  const int M = rowTileBlocks(R);
  const int RT = 16 * M;
  const int rowTiles = static_cast<int>(ceilDiv(R, RT));
  const int64_t items = static_cast<int64_t>(p.batch) * kv.numKVHeads * rowTiles;
  const Kernels kernels = kernelsFor(D, M, kv.dtype == DType::BF16);

  DecodeArgs a = {};
  a.q = static_cast<const uint16_t*>(p.q);
  a.out = static_cast<uint16_t*>(p.out);
  a.newK = static_cast<const uint16_t*>(p.append.k);
  a.newV = static_cast<const uint16_t*>(p.append.v);
  a.kv = static_cast<const uint16_t*>(kv.pool) + kv.layerOffset();
  a.pageStride = kv.pageStride();
  a.vOffset = kv.vOffset();
  a.sums = kv.keySums + kv.sumsLayerOffset();
  a.sumsPageStride = kv.sumsPageStride();
  a.sumPages = kv.sumPages;
  a.qStart = p.seqInfo;
  a.qLen = p.seqInfo + p.batch;
  a.kvLen = p.seqInfo + 2 * p.batch;
  a.pageIndptr = p.seqInfo + 3 * p.batch;
  a.pageIndices = p.pageIndices;
  a.numPageIndices = p.numPageIndices;
  a.numPages = kv.numPages;
  a.numRows = p.numRows;
  a.numQHeads = p.numQHeads;
  a.numKVHeads = kv.numKVHeads;
  a.group = group;
  a.pageSize = kv.pageSize;
  a.batch = p.batch;
  a.maxQLen = p.maxQLen;
  a.maxKvLen = p.maxKvLen;
  a.rowTiles = rowTiles;
  a.byGroup = FastDiv(group);
  a.byRowTiles = FastDiv(rowTiles);
  a.scaleLog2 = p.softmaxScale * kLog2e;
  a.moba = moba ? 1 : 0;

  // Shared memory: the rings' mbarriers, the query rows, then one region that
  // holds in turn the warps' rings and the merge of the warps, then (moba)
  // the union of the selected blocks.
  const size_t rowBytes = static_cast<size_t>(D + 8) * 2;
  const size_t ringBytes = static_cast<size_t>(kThreads / 32) * kStages * 2 * decode::kWarpKeys * rowBytes;
  const size_t warpMergeBytes = (static_cast<size_t>(kThreads / 32) * RT * warpMergeStride(D) + (kThreads / 32) * RT + RT) * 4;
  const size_t regionBytes = CudaContext::alignUp(std::max(ringBytes, warpMergeBytes), 16);
  size_t unionBytes = 0;
  int maxPast = 0;
  size_t scoresSmem = 0, gateSmem = 0;
  const int64_t maxTiles = ceilDiv(p.maxKvLen, kTile);
  size_t gateStatic = 0, scoresStatic = 0;  // the gates' static shared memory
  // Key-sum runs per moba block: one (the gate reads one sum per block), or
  // several (added up first, by scoresKernel or by the fused gate).
  const int64_t runsPerBlock = moba ? p.chunkSize / (static_cast<int64_t>(kv.pageSize) * kv.sumPages) : 1;
  if (moba) {
    MOBA_RETURN_IF_ERROR(staticSharedBytes(kernels.gate, &gateStatic));
    MOBA_RETURN_IF_ERROR(staticSharedBytes(kernels.scores, &scoresStatic));
    a.chunkSize = p.chunkSize;
    a.topK = p.topK;
    a.tilesPerBlock = static_cast<int>(ceilDiv(p.chunkSize, kTile));
    a.byChunk = FastDiv(p.chunkSize);
    a.byTopK = FastDiv(p.topK);
    a.byTilesPerBlock = FastDiv(a.tilesPerBlock);
    a.sumRuns = static_cast<int>(runsPerBlock);
    a.bySumRuns = FastDiv(a.sumRuns);
    a.fusedChunk = runsPerBlock > 1 ? static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(kFusedChunk, kFusedRuns / runsPerBlock)))
                                    : kFusedChunk;
    const int64_t numBlocks = ceilDiv(p.maxKvLen, p.chunkSize);
    maxPast = static_cast<int>((p.maxKvLen - 1) / p.chunkSize);
    a.maxPast = maxPast;
    a.bitmapWords = static_cast<int>(ceilDiv(numBlocks, 32));
    a.unionCap = static_cast<int>(std::min<int64_t>(numBlocks, static_cast<int64_t>(RT) * p.topK));
    unionBytes = static_cast<size_t>(a.unionCap) * 2 * 4;
    // Several runs: scoresKernel adds a block's runs first, one CTA per block
    // (unless the fused gate does).
    a.scoresReady = runsPerBlock > 1 ? 1 : 0;
    const size_t stageBytes = static_cast<size_t>(RT) * maxPast * 4;
    const size_t selectBytes = (static_cast<size_t>(a.bitmapWords) * 2 + static_cast<size_t>(RT) * p.topK + RT) * 4;
    // The key-sum tile takes what the rows' selections and union leave: up to
    // kGateChunk blocks at once (halved while the CTA would not fit; at 32
    // rows over 100K tokens in blocks of 16, topK 171 and up need it).
    const size_t fixedGateBytes = static_cast<size_t>(RT) * D * 4 + selectBytes + unionBytes;
    a.gateChunk = kGateChunk;
    while (!a.scoresReady && a.gateChunk > kGateChunkMin &&
           fixedGateBytes + static_cast<size_t>(a.gateChunk) * sumRowFloats(D) * 4 + gateStatic > ctx.maxSharedPerBlockOptin) {
      a.gateChunk /= 2;
    }
    gateSmem = fixedGateBytes + (a.scoresReady ? 0 : static_cast<size_t>(a.gateChunk) * sumRowFloats(D) * 4);
    // The rows' scores stay in shared memory when they fit, else in the workspace.
    a.stageScores = !a.scoresReady && gateSmem + gateStatic + stageBytes <= ctx.maxSharedPerBlockOptin ? 1 : 0;
    if (a.stageScores) gateSmem += stageBytes;
    // scoresKernel stages the rows of an item in turns of at most 48 KB (MQA
    // with many query heads and 8 new tokens has thousands of rows).
    a.scoresRows = std::min(R, std::max(1, kScoresStageBytes / (D * 4)));
    if (a.scoresReady) scoresSmem = static_cast<size_t>(a.scoresRows) * D * 4;
  }
  a.rowTileRows = RT;
  // Tensor copies for moba, whose few tiles per warp wait on their issue: 4
  // instructions per tile, not 32 one lane at a time (the 1 x 128K moba step
  // 12% faster). Full decode streams faster with row copies (tensor copies
  // of 16 x 64 boxes: 6% slower at 1 x 128K and 16 x 32K). Every tile must be
  // 16 keys of one page: pages and blocks of a multiple of 16 keys.
  const bool tma = moba && ctx.ccMajor == 9 && kv.pageSize % decode::kWarpKeys == 0 &&
                   p.chunkSize % decode::kWarpKeys == 0 && poolTensorMap(kv, &a.kvMap);
  if (tma) {
    a.kvRow0 = static_cast<int>(kv.layerOffset() / D);
    a.pageRows = static_cast<int>(kv.pageStride() / D);
    a.vRows = static_cast<int>(kv.vOffset() / D);
  }
  a.regionBytes = static_cast<int>(regionBytes);
  // (+ up to 1023 bytes that align the rings for tensor copies)
  const size_t smemBytes = kBarBytes + static_cast<size_t>(RT) * rowBytes + (tma ? 1024 : 0) + regionBytes + unionBytes;
  const void* attention = tma ? kernels.decodeTma : kernels.decode;
  // The attention instances' static shared memory (the warps' merge maxima);
  // the run adder's instance may replace the tensor-copy one below.
  size_t attentionStatic = 0, runsStatic = 0;
  MOBA_RETURN_IF_ERROR(staticSharedBytes(attention, &attentionStatic));
  if (tma) MOBA_RETURN_IF_ERROR(staticSharedBytes(kernels.decodeTmaRuns, &runsStatic));
  attentionStatic = std::max(attentionStatic, runsStatic);
  const size_t worst = std::max({smemBytes + attentionStatic, scoresSmem + scoresStatic, gateSmem + gateStatic});
  if (worst > ctx.maxSharedPerBlockOptin) {
    const std::string what = moba ? "topK " + std::to_string(p.topK) + " for " + std::to_string(RT) +
                                        " query rows per (sequence, KV head) over " +
                                        std::to_string(ceilDiv(p.maxKvLen, p.chunkSize)) + " blocks"
                                  : std::to_string(RT) + " query rows per (sequence, KV head)";
    return Status::Invalid("decode: " + what + " needs " + std::to_string(worst) +
                           " bytes of shared memory per CTA, but this device allows at most " +
                           std::to_string(ctx.maxSharedPerBlockOptin) + " (use a smaller topK or shorter sequences)");
  }
  // Slots per item: enough CTAs for one full wave (every SM holding as many
  // as fit), so that batch 1 at long context still keeps every SM streaming.
  int perSm = 1;
  MOBA_RETURN_IF_ERROR(prepareKernel(attention, smemBytes, kThreads, &perSm));
  const int64_t target = static_cast<int64_t>(ctx.smCount > 0 ? ctx.smCount : 132) * perSm;
  const int slotsWanted = static_cast<int>(std::min<int64_t>(kMaxSlots, std::max<int64_t>(1, target / items)));
  if (moba) {
    const int64_t maxVirtual = static_cast<int64_t>(a.unionCap) * a.tilesPerBlock;
    a.numSlots = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(slotsWanted, maxVirtual)));
  } else {
    a.numSlots = static_cast<int>(ceilDiv(maxTiles, ceilDiv(maxTiles, slotsWanted)));
  }
  // Clusters (moba with tensor copies, so sm_90): the item's CTAs, at most
  // kMaxCluster of them, form one thread-block cluster and merge their
  // split-KV partials through each other's shared memory, with cluster
  // barriers in place of a global counter and a last-CTA merge (the
  // 1 x 128K (512, 3) step: 33 CTAs per item through global memory, or 16 in
  // a cluster).
  // The fused gate: when a block is one key-sum run and its scratch fits in
  // the rings' region, the attention CTAs gate themselves: one launch, no
  // selection round trip through a second kernel. Its CTAs exchange their
  // candidates within the cluster, or, without one, through global memory
  // when the whole grid fits on the GPU at once (a cooperative launch).
  // With tensor copies the fused gate also adds up the key-sum runs of
  // blocks that span several (scoresKernel's work), up to kFusedRuns per CTA.
  // Blocks a fused-gate CTA scores at most, with `slots` CTAs per item.
  auto sharePerCta = [&](int slots) { return static_cast<int>(ceilDiv(std::max(maxPast, 1), slots)); };
  auto fusedFits = [&](int slots) {
    const int per = sharePerCta(slots);
    return (!a.scoresReady || (tma && per * runsPerBlock <= kFusedRuns)) &&
           FusedScratch(D, RT, per, slots, p.topK, a.bitmapWords).bytes <= regionBytes;
  };
  if (coordinated && moba && tma && a.numSlots > 1 && warpMergeBytes + static_cast<size_t>(RT) * D * 4 <= regionBytes) {
    // The largest size at which every item's cluster is resident at once:
    // one cluster more than fit waits for a whole cluster to finish, and the
    // step takes two waves (2 x 128K, 16 clusters of 16 where 14 fit: 31 us
    // against 17 us for one sequence).
    const int most = std::min(a.numSlots, kMaxCluster);
    int size = 0;
    for (int c = most; c >= 2 && size == 0; --c) {
      if (activeClusters(attention, c, smemBytes, ctx) >= items) size = c;
    }
    if (size == 0) {
      // No size fits them all: the largest that fits at all, in waves.
      size = most > 8 && activeClusters(attention, most, smemBytes, ctx) == 0 ? 8 : most;
      if (activeClusters(attention, size, smemBytes, ctx) == 0) size = 0;
    }
    if (size > 0) {
      a.numSlots = a.cluster = size;
      a.fusedGate = fusedFits(size) ? 1 : 0;
    }
  }
  if (coordinated && moba && !a.cluster && ctx.cooperativeLaunch && items * a.numSlots <= target) {
    a.fusedGate = fusedFits(a.numSlots) ? 1 : 0;
  }
  if (a.fusedGate && a.scoresReady) {
    // The run adder's instance: the same shared memory and threads, so the
    // same CTAs per SM and clusters (asked again all the same: the cluster
    // size is an attribute of each kernel). Should it differ, scoresKernel
    // and gateKernel add and select instead.
    int perSmRuns = 0;
    MOBA_RETURN_IF_ERROR(prepareKernel(kernels.decodeTmaRuns, smemBytes, kThreads, &perSmRuns));
    if (perSmRuns == perSm && (!a.cluster || activeClusters(kernels.decodeTmaRuns, a.cluster, smemBytes, ctx) > 0)) {
      attention = kernels.decodeTmaRuns;
    } else {
      a.fusedGate = 0;
    }
  }
  if (a.fusedGate) a.gatePer = sharePerCta(a.numSlots);
  a.bySlots = FastDiv(a.numSlots);
  a.counters = nullptr;
  if (a.numSlots > 1 && !a.cluster) MOBA_RETURN_IF_ERROR(ctx.counters(static_cast<size_t>(items), &a.counters));

  // Workspace: the gate's scores and selections, then the partial outputs and their lse.
  // (fused gate: its candidates in place of both).
  const bool gateKernelRuns = moba && !a.fusedGate;
  const bool globalScores = gateKernelRuns && !a.stageScores;
  const size_t scoreFloats = globalScores ? static_cast<size_t>(p.numRows) * p.numQHeads * maxPast : 0;
  const size_t selectionInts =
      gateKernelRuns ? static_cast<size_t>(items) * (1 + 2 * static_cast<size_t>(a.unionCap))
                     : a.fusedGate && !a.cluster ? static_cast<size_t>(items) * RT * a.numSlots * (p.topK - 1) * 2 : 0;
  const size_t partials = a.numSlots > 1 && !a.cluster ? static_cast<size_t>(items) * a.numSlots * RT : 0;
  const size_t scoreBytes = CudaContext::alignUp(scoreFloats * 4);
  const size_t selectionBytes = CudaContext::alignUp(selectionInts * 4);
  const size_t partOBytes = CudaContext::alignUp(partials * D * 4);
  const size_t bytes = scoreBytes + selectionBytes + partOBytes + partials * 4;
  if (bytes > 0) {
    void* ws = nullptr;
    MOBA_RETURN_IF_ERROR(ctx.scratch(bytes, &ws));
    char* base = static_cast<char*>(ws);
    a.scores = reinterpret_cast<float*>(base);
    a.selection = reinterpret_cast<int32_t*>(base + scoreBytes);
    a.candidates = reinterpret_cast<uint64_t*>(base + scoreBytes);
    a.partO = reinterpret_cast<float*>(base + scoreBytes + selectionBytes);
    a.partL = reinterpret_cast<float*>(base + scoreBytes + selectionBytes + partOBytes);
  }
  if (gateKernelRuns) {
    int unused = 0;
    if (a.scoresReady && maxPast > 0) {
      MOBA_RETURN_IF_ERROR(prepareKernel(kernels.scores, scoresSmem, kThreads, &unused));
      MOBA_RETURN_IF_ERROR(first.enqueue(ctx));
      MOBA_RETURN_IF_ERROR(cudaStatus(
          launch(kernels.scores, dim3(maxPast, kv.numKVHeads, p.batch), kThreads, scoresSmem, a, LaunchMode{}, ctx),
          "decode launch (scores)"));
    }
    // The gate reads key sums this step's append may have completed: plain
    // stream order behind it (a programmatic launch measured no faster).
    MOBA_RETURN_IF_ERROR(prepareKernel(kernels.gate, gateSmem, kGateThreads, &unused));
    MOBA_RETURN_IF_ERROR(first.enqueue(ctx));
    MOBA_RETURN_IF_ERROR(cudaStatus(
        launch(kernels.gate, dim3(kv.numKVHeads * rowTiles, p.batch), kGateThreads, gateSmem, a, LaunchMode{}, ctx),
        "decode launch (gate)"));
  }
  // Programmatic dependent launch (sm_90 and later): the attention grid may
  // start while the kernel before it (gateKernel, or the previous op) ends,
  // reading the plan's metadata and, behind gateKernel, the query rows before
  // it waits (decodeKernel). Full decode at 1 x 128K: 3% faster. Clusters
  // too: the moba step at 1 x 128K with a new query each step 18.1-18.8 ->
  // 16.8-17.9 us, 16 x 32K 85-87 -> 83-85 us (a step repeating one query,
  // whose blocks stay in L2, 0.1-0.9 us slower). Not with a cooperative
  // launch, whose CTAs must all be resident at once.
  LaunchMode mode;
  mode.cooperative = a.fusedGate && !a.cluster;
  mode.dependent = ctx.ccMajor >= 9 && !mode.cooperative;
  mode.cluster = a.cluster;
  MOBA_RETURN_IF_ERROR(first.enqueue(ctx));
  const cudaError_t err = launch(attention, dim3(a.numSlots, kv.numKVHeads * rowTiles, p.batch), kThreads, smemBytes, a, mode, ctx);
  if ((mode.cooperative && err == cudaErrorCooperativeLaunchTooLarge) ||
      (mode.cluster > 1 && (err == cudaErrorInvalidClusterSize || err == cudaErrorLaunchOutOfResources))) {
    cudaGetLastError();  // answered, not pending
    *refused = true;
    return Status::Ok();
  }
  return cudaStatus(err, "decode launch");
}

}  // namespace

Status decodeLaunch(const DecodeParams& params, CudaContext& ctx) {
  // The attention appends the new tokens itself (one launch), unless a moba
  // gate might read a key sum they change: when a sequence's new tokens lie
  // in two blocks, one may complete a block that a later one's row scores.
  MOBA_RETURN_IF_ERROR(checkDecode(params));
  const DecodeParams* use = &params;
  DecodeParams appended;
  const bool appendFirst = params.append.k != nullptr && params.policy == DecodePolicy::Moba && params.maxQLen > 1 &&
                           params.appendSpansBlocks;
  if (appendFirst) {
    appended = params;
    appended.append = KVAppendParams{};
    use = &appended;
  }
  PendingAppend first(appendFirst ? &params.append : nullptr);
  const DecodeParams& p = *use;
  bool refused = false;
  MOBA_RETURN_IF_ERROR(decodeLaunchAs(p, ctx, !plainLaunchesOnly(), first, &refused));
  if (!refused) return Status::Ok();
  return decodeLaunchAs(p, ctx, false, first, &refused);
}

}  // namespace moba
