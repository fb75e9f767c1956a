#!/usr/bin/env python3
"""Which attention kernel for sliding windows on the GPU (run on the GPU machine).

Compares, for the shapes the engine runs (12 heads of 64, bf16, window 8192), against an
fp32 reference of the same band mask: scaled_dot_product_attention with a boolean band
mask (memory-efficient kernel: every tile computed, masked), and the flash kernel inside
PyTorch with its window arguments (aten._flash_attention_forward: whole tiles outside the
window skipped). Forward, and forward plus backward. Prints the operators' schemas first,
since the engine calls them from C++."""
import torch
import torch.nn.functional as F

aten = torch.ops.aten
print(aten._flash_attention_forward.default._schema)
print(aten._flash_attention_backward.default._schema)

H, d, W = 12, 64, 8192
dev = "cuda"


def elapsed_ms(fn, repeats=10):
    fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeats):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / repeats


for Tq, S in [(1024, 8191), (1024, 4000), (8192, 0), (32768, 0), (1, 8191)]:
    Tk = S + Tq
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, T, H, d, device=dev, dtype=torch.bfloat16, requires_grad=True) for T in (Tq, Tk, Tk))
    qpos = torch.arange(S, S + Tq, device=dev)
    kpos = torch.arange(0, Tk, device=dev)
    dist = qpos[:, None] - kpos[None, :]
    mask = (dist >= 0) & (dist < W)

    def heads(t):
        return t.transpose(1, 2)

    def masked():
        return heads(F.scaled_dot_product_attention(heads(q), heads(k), heads(v), attn_mask=mask))

    def flash():
        return aten._flash_attention_forward(q, k, v, None, None, Tq, Tk, 0.0, True, False,
                                             window_size_left=W - 1, window_size_right=0)[0]

    with torch.no_grad():
        scores = torch.einsum("qhd,khd->hqk", q[0].float(), k[0].float()) / d**0.5
        probs = torch.softmax(scores.masked_fill(~mask, float("-inf")), -1)
        reference = torch.einsum("hqk,khd->qhd", probs, v[0].float())
    grad = torch.randn_like(q)
    for name, fn in (("sdpa-masked", masked), ("flash-window", flash)):
        try:
            out = fn()
            error = (out[0].float() - reference).abs().max().item()
            fwd = elapsed_ms(fn)
            both = elapsed_ms(lambda: torch.autograd.grad(fn(), (q, k, v), grad))
            useful = sum(min(W, S + i + 1) for i in range(Tq)) * H * d * 4  # fwd FLOPs inside the window
            print(f"Tq {Tq:6d} Tk {Tk:6d} {name:13s} max err {error:.2e}  fwd {fwd:8.3f} ms "
                  f"({useful / fwd / 1e9:6.1f} TFLOP/s useful)  fwd+bwd {both:8.3f} ms")
        except Exception as e:  # report and go on: one failing kernel must not hide the others
            print(f"Tq {Tq:6d} Tk {Tk:6d} {name:13s} FAILED: {str(e).splitlines()[0][:200]}")
