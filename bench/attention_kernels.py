#!/usr/bin/env python3
"""Attention kernels PyTorch offers on a GPU, timed on the engine's shapes (bf16, 12 heads of
64, one sequence): FA2 with its sliding window (what the engine calls), cuDNN and the
memory-efficient kernel under a band mask, and causal squares for each kernel's rate.
Forward, and forward + backward. Run on the GPU machine:

  python3 bench/attention_kernels.py

Prints ms per call and TFLOP/s counted over the visible (query, key) pairs only."""
import time

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

H, D = 12, 64


def timed(f, n=20):
    for _ in range(3):
        f()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(n):
        f()
    torch.cuda.synchronize()
    return (time.perf_counter() - t) / n * 1e3


def band(tq, tk, window):
    pq = torch.arange(tk - tq, tk, device="cuda")[:, None]
    pk = torch.arange(tk, device="cuda")[None, :]
    return (pq >= pk) & (pq - pk < window)


def main():
    torch.manual_seed(0)
    print(f"{'shape':34} {'kernel':24} {'fwd ms':>8} {'TFLOP/s':>8} {'fwd+bwd ms':>10} {'TFLOP/s':>8}")
    for tq, tk, window in [(4096, 4096 + 8191, 8192), (1024, 1024 + 8191, 8192), (8192, 8192, 0), (32768, 32768, 8192)]:
        q, k, v = (torch.randn(1, t, H, D, device="cuda", dtype=torch.bfloat16, requires_grad=True)
                   for t in (tq, tk, tk))
        mask = band(tq, tk, window) if window else band(tq, tk, tk + 1)
        pairs = mask.sum().item()
        flops = 4 * pairs * H * D
        qh, kh, vh = (t.transpose(1, 2) for t in (q, k, v))
        left = window - 1 if window else -1
        kernels = {
            "FA2 window": lambda: torch.ops.aten._flash_attention_forward(
                q, k, v, None, None, tq, tk, 0.0, True, False, window_size_left=left, window_size_right=0)[0],
        }
        for name, backend in [("cuDNN mask", SDPBackend.CUDNN_ATTENTION), ("mem-efficient mask", SDPBackend.EFFICIENT_ATTENTION)]:
            kernels[name] = (lambda b: lambda: _sdpa(qh, kh, vh, mask, b))(backend)
        if tq == tk and not window:
            for name, backend in [("cuDNN causal", SDPBackend.CUDNN_ATTENTION), ("FA2 causal", SDPBackend.FLASH_ATTENTION)]:
                kernels[name] = (lambda b: lambda: _sdpa(qh, kh, vh, None, b))(backend)
        for name, f in kernels.items():
            try:
                with torch.no_grad():
                    fwd = timed(f)
                def both():
                    out = f()
                    torch.autograd.grad(out, (q, k, v), torch.ones_like(out))

                total = timed(both, 10)
                print(f"{f'{tq}x{tk} w{window}':34} {name:24} {fwd:8.3f} {flops / fwd / 1e9:8.1f} {total:10.3f} "
                      f"{3.5 * flops / total / 1e9:8.1f}")
            except Exception as e:  # a kernel that does not take the shape
                print(f"{f'{tq}x{tk} w{window}':34} {name:24} fails: {str(e).splitlines()[0][:60]}")


def _sdpa(qh, kh, vh, mask, backend):
    with sdpa_kernel(backend):
        return F.scaled_dot_product_attention(qh, kh, vh, attn_mask=mask, is_causal=mask is None)


if __name__ == "__main__":
    main()
