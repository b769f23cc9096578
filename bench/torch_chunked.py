"""Dense attention of a prefill chunk over its cached context, through PyTorch: the counterpart
of `npm run bench -- chunked` (our attend() of C new tokens over N cached ones).

C queries (the last C positions of a sequence of N + C tokens) attend causally to all N + C
keys: position N + i sees keys 0..N + i (the mask's diagonal at the bottom right). K/V are
contiguous, as a dense engine would hold them. Times scaled_dot_product_attention with the
cuDNN and FlashAttention-2 backends with no mask (C * C / 2 more dot products than the causal
chunk needs: under 2% at C = 4K over N = 128K), and with PyTorch's bottom-right causal bias
where it has one (it picks its own kernel); bf16. Prints `backend | mask | N | C | ms | TFLOP/s`
(TFLOP/s counted over the causal dot products only).

Usage: python3 bench/torch_chunked.py [N ...] [--chunk C] [--heads 32] [--kv-heads 8]
[--dim 128]; writes $OUT/torch_chunked.json when OUT is set.
"""
import argparse
import json
import os

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

try:
    from torch.nn.attention.bias import causal_lower_right
except ImportError:  # older PyTorch: no bottom-right causal bias
    causal_lower_right = None


def median_ms(fn, iters):
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("contexts", nargs="*", type=int, default=[32768, 131072])
    ap.add_argument("--chunk", type=int, default=4096)
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--kv-heads", type=int, default=8)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--iters", type=int, default=10)
    a = ap.parse_args()
    C, rows = a.chunk, []
    for n in a.contexts:
        total = n + C
        q = torch.randn(1, a.heads, C, a.dim, dtype=torch.bfloat16, device="cuda")
        # The query heads of a KV head share its K/V; expanded once, outside the timing, so
        # every backend gets the plain multi-head form.
        k, v = (torch.randn(1, a.kv_heads, total, a.dim, dtype=torch.bfloat16, device="cuda")
                .repeat_interleave(a.heads // a.kv_heads, dim=1) for _ in range(2))
        # Dot products under the causal mask: every query sees N keys plus its place in the chunk.
        flops = 4 * a.heads * a.dim * (C * n + C * (C + 1) / 2)
        variants = [("cudnn", "none (C*C/2 extra)", [SDPBackend.CUDNN_ATTENTION], None),
                    ("flash2", "none (C*C/2 extra)", [SDPBackend.FLASH_ATTENTION], None)]
        if causal_lower_right:
            # The bias object picks its own kernel (FlashAttention-2 where it can).
            variants.append(("sdpa's pick", "causal bottom-right", None, causal_lower_right(C, total)))
        for name, mask_name, backends, mask in variants:
            def run():
                return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
            try:
                if backends:
                    with sdpa_kernel(backends):
                        ms = median_ms(run, a.iters)
                else:
                    ms = median_ms(run, a.iters)
            except Exception as ex:  # a backend may refuse a shape
                print(f"{name} | {mask_name} | {n} | {C} | unavailable: {type(ex).__name__}", flush=True)
                continue
            rows.append(dict(backend=name, mask=mask_name, heads=a.heads, kv_heads=a.kv_heads, dim=a.dim,
                             cached=n, chunk=C, ms=ms, tflops=flops / ms / 1e9))
            print(f"{name} | {mask_name} | {n} | {C} | {ms:.3f} | {flops / ms / 1e9:.0f}", flush=True)
        del q, k, v
        torch.cuda.empty_cache()
    if os.environ.get("OUT"):
        with open(os.path.join(os.environ["OUT"], "torch_chunked.json"), "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
