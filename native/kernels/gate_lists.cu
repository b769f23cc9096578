// The gate's CSR lists (common/moba_lists.h), built on the GPU without a
// host round trip:
//  1. one item per (row, head, slot < topK-1), enumerated in ascending
//     entry order (entry = row * numQHeads + h); its key is the segment
//     (globalBlock * numQHeads + h) of the slot's past block, or numSegments
//     when the slot holds none;
//  2. a stable radix sort of (key, item) over the key's bits: segments come
//     out contiguous and, because the sort is stable, ascending by entry;
//  3. segment offsets by binary search in the sorted keys; entries and the
//     reverse map entryOf from the sorted items, head by head (see
//     listFinishKernel).
#include <cub/device/device_radix_sort.cuh>

#include "gate_device.cuh"
#include "gate_internal.h"
#include "common/cuda_context.h"

namespace moba {
namespace {

constexpr int kThreads = 256;

__global__ void __launch_bounds__(kThreads) listKeysKernel(ListsArgs a) {
  const int kp = a.topK - 1;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < a.items;
       i += static_cast<int64_t>(gridDim.x) * kThreads) {
    const int entry = static_cast<int>(i / kp);
    const int slot = static_cast<int>(i % kp);
    const int row = entry / a.nqh, h = entry % a.nqh;
    const int32_t* sel = a.indices + (static_cast<size_t>(h) * a.totalQ + row) * a.topK;
    const int v = sel[slot];
    // Past blocks fill the first slots, the current block follows them: a
    // slot holds a past block exactly when the next slot is used.
    uint32_t key = static_cast<uint32_t>(a.numSegments);
    if (v >= 0 && sel[slot + 1] >= 0) {
      const int b = gate::sequenceOf(a.cuQ, a.batch, row);
      key = static_cast<uint32_t>((static_cast<int64_t>(a.cuBlocksMeta[b]) + v) * a.nqh + h);
    }
    a.keys0[i] = static_cast<int32_t>(key);
    a.vals0[i] = static_cast<int32_t>(i);
  }
}

__global__ void __launch_bounds__(kThreads)
    listOffsetsKernel(const uint32_t* sortedKeys, int64_t items, int64_t numSegments, int32_t* offsets) {
  for (int64_t s = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; s <= numSegments;
       s += static_cast<int64_t>(gridDim.x) * kThreads) {
    int64_t lo = 0, hi = items;  // first position with key >= s
    while (lo < hi) {
      int64_t mid = (lo + hi) >> 1;
      if (static_cast<int64_t>(sortedKeys[mid]) < s) lo = mid + 1;
      else hi = mid;
    }
    offsets[s] = static_cast<int32_t>(lo);
  }
}

// Entries and the reverse map, one CTA per (run of global blocks, query
// head). The sorted order has the head fastest (segment = globalBlock * nqh +
// h) while entryOf is laid out [h][row][slot], so walking it in sorted order
// scattered every write over all heads' rows: each a 4-byte write to its own
// DRAM sector. CTAs run roughly in launch order (x fastest), so with the head
// in y the writes of a stretch of time stay within one head's totalQ *
// (topK-1) * 4 bytes, which L2 holds and merges before they reach DRAM.
// With few segments (long chunks), each is split among `parts` CTAs.
__global__ void __launch_bounds__(kThreads)
    listFinishKernel(ListsArgs a, int32_t* sortedVals, int blocksPerCta, int parts) {
  const int kp = a.topK - 1;
  const int run = blockIdx.x / parts, part = blockIdx.x - run * parts;
  const int gb0 = run * blocksPerCta;
  const int gb1 = min(gb0 + blocksPerCta, a.totalBlocks);
  for (int h = blockIdx.y; h < a.nqh; h += gridDim.y) {
    for (int gb = gb0; gb < gb1; ++gb) {
      const int64_t s = static_cast<int64_t>(gb) * a.nqh + h;
      const int first = a.offsets[s], count = a.offsets[s + 1] - first;
      const int begin = first + static_cast<int>(static_cast<int64_t>(count) * part / parts);
      const int end = first + static_cast<int>(static_cast<int64_t>(count) * (part + 1) / parts);
      // Four loads in flight per thread: a segment may hold most of a
      // sequence's rows.
      constexpr int kUnroll = 4;
      for (int e0 = begin + threadIdx.x; e0 < end; e0 += kUnroll * kThreads) {
        int item[kUnroll];
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) item[u] = e0 + u * kThreads < end ? sortedVals[e0 + u * kThreads] : 0;
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) {
          const int e = e0 + u * kThreads;
          if (e >= end) break;
          const int entry = item[u] / kp;  // item = entry * kp + slot, entry = row * nqh + h
          const int slot = item[u] - entry * kp;
          const int row = entry / a.nqh;
          sortedVals[e] = entry;
          a.entryOf[(static_cast<int64_t>(h) * a.totalQ + row) * kp + slot] = e;
        }
      }
    }
  }
  // Items without a past block sort last (key numSegments): no entry. Every
  // CTA takes a share.
  const int64_t ctas = static_cast<int64_t>(gridDim.x) * gridDim.y;
  const int64_t cta = static_cast<int64_t>(blockIdx.y) * gridDim.x + blockIdx.x;
  for (int64_t e = a.offsets[a.numSegments] + cta * kThreads + threadIdx.x; e < a.items; e += ctas * kThreads) {
    sortedVals[e] = -1;
  }
}

unsigned gridFor(int64_t n) {
  int64_t blocks = (n + kThreads - 1) / kThreads;
  if (blocks > 65536) blocks = 65536;
  return static_cast<unsigned>(blocks < 1 ? 1 : blocks);
}

}  // namespace

size_t listsSortTempBytes(int64_t items, int endBit) {
  if (items == 0) return 0;
  cub::DoubleBuffer<uint32_t> keys(nullptr, nullptr);
  cub::DoubleBuffer<int32_t> vals(nullptr, nullptr);
  size_t bytes = 0;
  cub::DeviceRadixSort::SortPairs(nullptr, bytes, keys, vals, static_cast<int>(items), 0, endBit);
  return bytes;
}

Status launchListsBuild(const ListsArgs& a, int32_t** entries, cudaStream_t stream) {
  MOBA_RETURN_IF_ERROR(cudaStatus(
      cudaMemcpyAsync(a.cuBlocks, a.cuBlocksMeta, sizeof(int32_t) * (a.batch + 1), cudaMemcpyDeviceToDevice, stream),
      "gate lists: cuBlocks copy"));
  if (a.items == 0) {
    *entries = a.vals0;
    return cudaStatus(cudaMemsetAsync(a.offsets, 0, sizeof(int32_t) * (a.numSegments + 1), stream),
                      "gate lists: offsets");
  }
  MOBA_RETURN_IF_ERROR(cudaStatus(cudaMemsetAsync(a.entryOf, 0xff, sizeof(int32_t) * a.items, stream),
                                  "gate lists: entryOf"));
  listKeysKernel<<<gridFor(a.items), kThreads, 0, stream>>>(a);
  MOBA_RETURN_IF_ERROR(checkLaunch("gate lists: keys"));
  cub::DoubleBuffer<uint32_t> keys(reinterpret_cast<uint32_t*>(a.keys0), reinterpret_cast<uint32_t*>(a.keys1));
  cub::DoubleBuffer<int32_t> vals(a.vals0, a.vals1);
  size_t bytes = a.tempBytes;
  MOBA_RETURN_IF_ERROR(cudaStatus(
      cub::DeviceRadixSort::SortPairs(a.temp, bytes, keys, vals, static_cast<int>(a.items), 0, a.endBit, stream),
      "gate lists: sort"));
  listOffsetsKernel<<<gridFor(a.numSegments + 1), kThreads, 0, stream>>>(keys.Current(), a.items, a.numSegments,
                                                                          a.offsets);
  MOBA_RETURN_IF_ERROR(checkLaunch("gate lists: offsets"));
  // About one CTA per 1024 items, at most 8192: a few segments each, or a
  // share of one.
  int64_t finishCtas = a.items / 1024;
  finishCtas = finishCtas < 1 ? 1 : (finishCtas > 8192 ? 8192 : finishCtas);
  const int64_t segments = static_cast<int64_t>(a.totalBlocks) * a.nqh;
  const int64_t perCta = (segments + finishCtas - 1) / finishCtas;
  const int blocksPerCta = static_cast<int>(perCta < 1 ? 1 : perCta);
  int runs = (a.totalBlocks + blocksPerCta - 1) / blocksPerCta;
  if (runs < 1) runs = 1;
  const int64_t heads = a.nqh < 65535 ? a.nqh : 65535;
  const int64_t share = finishCtas / (static_cast<int64_t>(runs) * heads);
  const int parts = static_cast<int>(share < 1 ? 1 : share);
  const dim3 finishGrid(static_cast<unsigned>(runs * parts), static_cast<unsigned>(heads));
  listFinishKernel<<<finishGrid, kThreads, 0, stream>>>(a, vals.Current(), blocksPerCta, parts);
  MOBA_RETURN_IF_ERROR(checkLaunch("gate lists: entries"));
  *entries = vals.Current();
  return Status::Ok();
}

}  // namespace moba
