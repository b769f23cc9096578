// The MoBA gate on CUDA (DESIGN.md section 1), in two forms:
//  - gateLaunch: the user-facing indices, int32 [numQHeads, totalQ, topK],
//    ascending, -1 padded (mobaGate);
//  - mobaListsLaunch: the same selection plus, for the sparse attention
//    kernels, the CSR lists of common/moba_lists.h (per key block and query
//    head, the query rows that chose it as a past block).
//
// How the selection is computed (gate_*.cu):
//  1. gate_centroids.cu: one pass over K; fp32 centroids summed in key order
//     (bit-identical to the CPU backend), then a copy for the tensor cores
//     (fp16 scaled by a power of two per (sequence, KV head), whatever the
//     input dtype) and a bound on what that rounding can change in a score.
//  2. gate_topk.cu, fast path (topK <= 16): tiles of query rows against tiles
//     of centroids on tensor cores (mma.sync, scaled fp16 in, fp32 out); each
//     thread keeps a running top list per row in registers, so scores never
//     leave the chip. The final choice is certified with the error bound:
//     where two blocks are too close to order from the tensor-core scores,
//     the contested blocks are re-scored exactly (fp32, in the CPU backend's
//     summation order). Rows whose candidates do not fit on chip, or whose
//     data hold NaN/Inf, go to a list for the exact kernel.
//     gate_topk_sm90.cu replaces it for topK 2 to 8 on Hopper: the scores
//     on wgmma and, per thread, a branch-free best four (topK 2, 3) or best
//     eight (topK 4 to 8) of the columns it holds, merged per row; the same
//     band, certification and fallback.
//     gate_topk_two_pass.cu takes topK 17 to 64 on Hopper: the same wgmma
//     scores, twice. The first pass keeps each row's best score per column
//     of its tiles (past topK 32, per column and tile parity; one max per
//     score); their keep-th best bounds the row's from below, and the
//     second pass collects the blocks at or above that floor (less the
//     band's margin) into the row's candidates in shared memory, from which
//     the quad sorts the band.
//  3. gate_topk_large.cu (topK 17 to 256; on Hopper 65 to 256): tiles of
//     query rows against tiles of fp32 centroids on the FP32 pipes (FMA,
//     within a proven distance of the CPU backend's scores), a heap of each
//     row's best blocks in shared memory; blocks too close to the boundary
//     to order are re-scored in the CPU's summation order, and rows with
//     too many such near-ties, or NaN/Inf data, go to the exact kernel's
//     list.
//  4. gate_exact_rows.cu: the rows steps 2 and 3 hand back, one CTA each:
//     exact fp32 scores of every past block, exact top-(topK-1).
//     gate_own_block.cu: topK 1 keeps the current block alone, so nothing
//     is scored (no centroids either).
//  5. gate_lists.cu: the CSR lists from the indices, on the GPU: keys
//     (segment ids) per selected past block, a stable radix sort (CUB), then
//     segment offsets by binary search and the reverse map entryOf.
// Indices are identical to the CPU backend's for any input: both compute the
// same fp32 scores wherever the order depends on them.
#pragma once
#include <cstddef>

#include "../common/params.h"
#include "common/cuda_context.h"
#include "common/moba_lists.h"

namespace moba {

// mobaGate on CUDA: writes p.indices. Uses ctx.scratch() and ctx.uploadMeta().
Status gateLaunch(const GateParams& p, CudaContext& ctx);

// Bytes of workspace mobaListsLaunch needs for `p` (p.indices may be null).
// Returns 0 and sets *status on bad arguments when `status` is given.
size_t mobaListsWorkspaceBytes(const GateParams& p, Status* status = nullptr);

// Runs the gate and builds the CSR lists in `workspace` (device memory of at
// least mobaListsWorkspaceBytes(p) bytes, 256-byte aligned, e.g. carved out
// of the op's one ctx.scratch() buffer). Every array `lists` points at lives
// in `workspace` (cuBlocks included), so the lists stay valid until the
// workspace is reused. If p.indices is non-null the user-facing indices are
// written there too; otherwise they live in the workspace.
//
// It calls ctx.uploadMeta() once, and that buffer is shared by the op: call
// mobaListsLaunch before the op uploads its own metadata (an upload made
// before it would be overwritten for the kernels queued after it). Nothing
// in `lists` points into the metadata buffer.
//
// All lists work is enqueued on ctx.stream; no host synchronization. The
// number of entries is known on the device only (lists->numEntries).
Status mobaListsLaunch(const GateParams& p, CudaContext& ctx, void* workspace, MobaLists* lists);

}  // namespace moba
