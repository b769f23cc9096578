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

// The most blocks a query may select (MAX_TOP_K in lib/gating.ts): every
// native entry point refuses more, and the CUDA gate has kernels up to it.
constexpr int kMaxTopK = 256;

// mobaGate: the selected blocks of every query (DESIGN.md section 1).
struct GateParams {
  DType dtype = DType::BF16;  // of q and k
  const void* q = nullptr;    // [totalQ, numQHeads, headDim]
  const void* k = nullptr;    // [totalK, numKVHeads, headDim]
  int32_t* indices = nullptr; // [numQHeads, totalQ, topK], ascending, -1 padded
  Varlen varlen;
  HeadShape heads;
  int chunkSize = 0;          // B, any positive value
  int topK = 0;               // 1 to kMaxTopK
  // Paged keys (chunked prefill over the KV cache): when set, k is the K of
  // (page 0, KV head 0, slot 0) in one layer of the pool, and key T (the
  // packed order of cuSeqlensK) of KV head h starts keyRows[T] + h *
  // keyHeadStride elements past it; offsets past keyRowsMax (or below zero)
  // read keyRowsMax: a bad table cannot reach outside the pool.
  const int64_t* keyRows = nullptr;  // device [totalK]
  int64_t keyHeadStride = 0;
  int64_t keyRowsMax = 0;
  // Paged keys whose cache keeps one key sum per block of chunkSize tokens
  // (PagedKV::keySums with sumPages * pageSize == chunkSize): a block's
  // centroid is its sum, read at the page of the block's last key (the page
  // holding key offset o is o / keyPageStride), instead of a pass over its
  // keys. The cache adds keys in the same order as that pass (token order,
  // fp32), so the centroids are the same bits.
  const float* keySums = nullptr;    // the layer's sums of (page 0, KV head 0), or nullptr
  int64_t sumsPageStride = 0;        // floats between pages
  int64_t keyPageStride = 0;         // elements between pages of the pool
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
  // Paged K/V (chunked prefill over the KV cache), as GateParams: k and v
  // point at (page 0, KV head 0, slot 0) of the layer's K and V.
  const int64_t* keyRows = nullptr;  // device [totalK]
  int64_t keyHeadStride = 0;
  int64_t keyRowsMax = 0;
  const float* keySums = nullptr;    // as GateParams (MoBA only)
  int64_t sumsPageStride = 0;
  int64_t keyPageStride = 0;
};

// The paged KV cache (lib/kv-cache.ts): one page pool shared by all layers.
// A page holds `pageSize` consecutive tokens of one sequence for every layer;
// within a (page, layer) K and V are stored per KV head, so one head's slice
// of a page is contiguous ("HND"): a decode CTA streams it with 16-byte loads.
struct PagedKV {
  DType dtype = DType::BF16;
  void* pool = nullptr;      // [numPages, numLayers, 2 (K, V), numKVHeads, pageSize, headDim]
  // [numPages, numLayers, numKVHeads, headDim] fp32 key sums, cumulative within
  // aligned runs of sumPages pages of a sequence (a key-sum block): a page's sum
  // covers its run's keys from the run's first token through the page's last.
  float* keySums = nullptr;
  int sumPages = 1;
  int numPages = 0;
  int numLayers = 0;
  int layer = 0;             // the layer this op reads or writes
  int numKVHeads = 0;
  int pageSize = 0;
  int headDim = 0;

  // Element offsets (in dtype units) for the selected layer.
  int64_t pageStride() const { return static_cast<int64_t>(numLayers) * 2 * numKVHeads * pageSize * headDim; }
  int64_t layerOffset() const { return static_cast<int64_t>(layer) * 2 * numKVHeads * pageSize * headDim; }
  int64_t vOffset() const { return static_cast<int64_t>(numKVHeads) * pageSize * headDim; }
  // Float offsets into keySums for the selected layer.
  int64_t sumsPageStride() const { return static_cast<int64_t>(numLayers) * numKVHeads * headDim; }
  int64_t sumsLayerOffset() const { return static_cast<int64_t>(layer) * numKVHeads * headDim; }
};

// A run of consecutive tokens of one sequence that lies in one page: the unit
// of work of kvAppend and kvGather. Stored as 6 int32 in device metadata.
//   page:  the page index in the pool
//   slot:  first slot in the page (0 <= slot, slot + count <= pageSize)
//   row:   first row of the contiguous [rows, numKVHeads, headDim] side
//   count: number of tokens
// kvAppend only: the segments of one sequence that fall in one key-sum run
// form a piece, whose key sums one worker adds in position order.
//   pieceSegments: on a piece's first segment, its number of segments; else 0
//   carryPage:     on a piece's first segment when it starts a page that is
//                  not its run's first: the run's previous page, whose sum the
//                  new page continues; else -1 (a fresh run starts from zero,
//                  a partly filled page from its own sum)
constexpr int kSegmentInts = 6;

// kvAppend: copies new K/V rows into their pages and updates the key sums.
struct KVAppendParams {
  PagedKV kv;
  const void* k = nullptr;           // [numRows, numKVHeads, headDim]
  const void* v = nullptr;           // [numRows, numKVHeads, headDim]
  int numRows = 0;
  const int32_t* segments = nullptr; // [numSegments, kSegmentInts] device metadata
  int numSegments = 0;
};

// kvGather: copies cached tokens out of their pages into contiguous rows, or
// (keyRows) only writes where each of them lies: chunked prefill's attention
// reads K/V in the pages through those offsets (AttentionParams::keyRows).
struct KVGatherParams {
  PagedKV kv;
  void* k = nullptr;                 // [numRows, numKVHeads, headDim]
  void* v = nullptr;                 // [numRows, numKVHeads, headDim]
  int numRows = 0;
  const int32_t* segments = nullptr; // [numSegments, kSegmentInts] device metadata
  int numSegments = 0;
  // When set, each row's key offset (AttentionParams::keyRows: element offset
  // of its K in a layer's page, KV head 0) is written here instead of copying
  // K and V; rows no segment covers get 0.
  int64_t* keyRows = nullptr;        // [numRows]
};

// Most query tokens per sequence the decode kernels take (speculative decoding).
constexpr int kMaxDecodeTokens = 8;

enum class DecodePolicy : int { Full = 0, Moba = 1 };

// decodeAttention over the paged cache (DESIGN.md section 1, decode): each
// sequence brings 1..kMaxDecodeTokens query rows whose K/V are already in the
// cache; its queries are the last qLen positions of its kvLen cached tokens.
// Device metadata `seqInfo` for `batch` sequences, int32, back to back:
//   qStart     [batch]   first row of the sequence in q / out
//   qLen       [batch]   1..kMaxDecodeTokens
//   kvLen      [batch]   cached tokens, new ones included (>= qLen)
//   pageIndptr [batch+1] prefix sums into pageIndices (pageIndptr[0] may be > 0)
//   pageIndices[numPageIndices] page of each sequence's i-th pageSize tokens
struct DecodeParams {
  PagedKV kv;
  const void* q = nullptr;  // [numRows, numQHeads, headDim]
  void* out = nullptr;      // [numRows, numQHeads, headDim]; rows of other sequences untouched
  int numRows = 0;
  int numQHeads = 0;
  int batch = 0;
  const int32_t* seqInfo = nullptr;      // device metadata, layout above
  const int32_t* pageIndices = nullptr;  // == seqInfo + 4 * batch + 1
  int numPageIndices = 0;
  // Host facts about the batch (exact), used to size grids and workspace.
  int maxQLen = 0;
  int maxKvLen = 0;
  int64_t sumKvLen = 0;
  float softmaxScale = 0.f;
  DecodePolicy policy = DecodePolicy::Full;
  int chunkSize = 0;  // moba: block size, a multiple of pageSize
  int topK = 0;       // moba
  // MobaAttention.forward() of a batch without prefill rows: the new tokens'
  // K/V (append.k, append.v: [numRows, numKVHeads, headDim], the rows of q)
  // go into the cache in this op, as kvAppend would write them (same bytes,
  // same key sums), and the attention reads them from those rows. kvLen
  // already counts them; append.kv equals kv. append.k == nullptr: they are in
  // the cache already.
  KVAppendParams append;
  // moba: some sequence's new tokens lie in two blocks, so one may complete a
  // block that a later row's gate scores (true when unknown).
  bool appendSpansBlocks = true;
};

}  // namespace moba
