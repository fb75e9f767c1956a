#!/usr/bin/env python3
"""A prefix span's sliding-window attention by parts on cuDNN's Hopper kernel, against FA2's
window (what the engine calls): Q queries after a cache of W-1 keys, window W. The band splits
into three rectangles cuDNN runs at its causal-square rate: the span's own keys (a causal
square), the cache's last W-1-Q keys (visible to every query), and its first Q keys, which
query a sees from key a on (a causal square with queries and keys reversed). The parts merge
by their logsumexps; the backward runs each part's kernel with the merged output and
logsumexp (as ring attention does). Checks the numbers against FA2 and times both, forward
and forward + backward. Run on the GPU machine:

  python3 bench/attention_by_parts.py"""
import time
import traceback

import torch

H, D = 12, 64
aten = torch.ops.aten


def timed(f, n=20):
    """ms per call of f captured in a CUDA graph: the GPU's time, without the host's."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            f()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        f()
    graph.replay()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(n):
        graph.replay()
    torch.cuda.synchronize()
    return (time.perf_counter() - t) / n * 1e3


def fa2(q, k, v, window):
    """[1, T, H, D] layout; bottom-right causal with the window."""
    tq, tk = q.shape[1], k.shape[1]
    return aten._flash_attention_forward(q, k, v, None, None, tq, tk, 0.0, True, False,
                                         window_size_left=window - 1, window_size_right=0)


def fa2_backward(do, q, k, v, out, lse, window):
    tq, tk = q.shape[1], k.shape[1]
    z = torch.empty((), dtype=torch.int64, device="cuda")
    return aten._flash_attention_backward(do, q, k, v, out, lse, None, None, tq, tk, 0.0, True, z, z,
                                          window_size_left=window - 1, window_size_right=0)


def heads(t):  # [1, T, H, D] -> [1, H, T, D], contiguous (cuDNN through aten wants it so)
    return t.transpose(1, 2).contiguous()


def cudnn(q, k, v, causal):
    """[1, H, T, D] contiguous; returns out [1, H, T, D] and logsumexp as cuDNN shapes it."""
    out, lse, *_ = aten._scaled_dot_product_cudnn_attention(q, k, v, None, True, 0.0, causal, False)
    return out, lse


def cudnn_backward(do, q, k, v, out, lse, causal):
    z = torch.zeros((), dtype=torch.int64, device="cuda")
    tq, tk = q.shape[2], k.shape[2]
    return aten._scaled_dot_product_cudnn_attention_backward(do, q, k, v, out, lse, z, z, None, None, None, tq, tk,
                                                             0.0, causal)


def parts(q, k, v, window):
    """The three rectangles (queries, keys, values, causal, reversed), [1, H, T, D], for Q
    queries after a cache of window - 1 keys."""
    tq = q.shape[2]
    cache = window - 1
    assert k.shape[2] == cache + tq and tq < cache
    flip = lambda t: t.flip(2)
    return [
        (flip(q), flip(k[:, :, :tq]), flip(v[:, :, :tq]), True, True),  # query a sees cache key c >= a
        (q, k[:, :, tq:cache].contiguous(), v[:, :, tq:cache].contiguous(), False, False),  # all see these
        (q, k[:, :, cache:].contiguous(), v[:, :, cache:].contiguous(), True, False),  # the span itself
    ]


def by_parts(q, k, v, window):
    """q, k, v [1, H, T, D] contiguous -> out [1, H, T, D], lse (cuDNN's shape)."""
    outs, lses = [], []
    for pq, pk, pv, causal, reversed_ in parts(q, k, v, window):
        o, l = cudnn(pq, pk, pv, causal)
        if reversed_:
            o, l = o.flip(2), l.flip(2)
        outs.append(o)
        lses.append(l)
    lse = torch.logsumexp(torch.stack(lses), 0)
    w = [(l - lse).exp().reshape(*l.shape[:3], 1) for l in lses]
    out = sum(o.float() * x for o, x in zip(outs, w))
    return out.to(q.dtype), lse


def by_parts_backward(do, q, k, v, out, lse, window):
    dq = torch.zeros(q.shape, dtype=torch.float32, device="cuda")
    dks, dvs = [], []
    for pq, pk, pv, causal, reversed_ in parts(q, k, v, window):
        if reversed_:
            g, o, l = do.flip(2), out.flip(2), lse.flip(2).contiguous()
        else:
            g, o, l = do, out, lse
        a, b, c = cudnn_backward(g, pq, pk, pv, o, l, causal)
        if reversed_:
            a, b, c = a.flip(2), b.flip(2), c.flip(2)
        dq += a.float()
        dks.append(b)
        dvs.append(c)
    return dq.to(q.dtype), torch.cat(dks, 2), torch.cat(dvs, 2)


def span_case(tq, window):
    """Random bf16 q, k, v and dO of Q queries after a cache of window - 1 keys ([1, T, H, D]),
    FA2's output (with its logsumexp) and gradients, and q, k, v, dO by head."""
    tk = window - 1 + tq
    q, k, v = (torch.randn(1, t, H, D, device="cuda", dtype=torch.bfloat16) for t in (tq, tk, tk))
    do = torch.randn(1, tq, H, D, device="cuda", dtype=torch.bfloat16)
    ref = fa2(q, k, v, window)
    ref_grads = fa2_backward(do, q, k, v, ref[0], ref[1], window)
    return (q, k, v, do), ref, ref_grads, tuple(heads(t) for t in (q, k, v, do))


def rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def main():
    torch.manual_seed(0)
    for tq, window in [(4096, 8192), (2048, 8192), (1024, 8192), (2048, 4096)]:
        try:
            tk = window - 1 + tq
            (q, k, v, do), ref, ref_grads, (qh, kh, vh, doh) = span_case(tq, window)
            out_h, lse = by_parts(qh, kh, vh, window)
            out = out_h.transpose(1, 2)
            grads = [g.transpose(1, 2) for g in by_parts_backward(doh, qh, kh, vh, out_h, lse, window)]
            # fp32 reference of the same band, for the size of bf16 rounding itself
            pos_q = torch.arange(tk - tq, tk, device="cuda")[:, None]
            pos_k = torch.arange(tk, device="cuda")[None, :]
            mask = (pos_q >= pos_k) & (pos_q - pos_k < window)
            qf, kf, vf = (t.float().requires_grad_() for t in (q, k, v))
            s = torch.einsum("qhd,khd->hqk", qf[0], kf[0]) / D**0.5
            p = s.masked_fill(~mask, float("-inf")).softmax(-1)
            exact = torch.einsum("hqk,khd->qhd", p, vf[0])[None]
            exact_grads = torch.autograd.grad(exact, (qf, kf, vf), do.float())
            print(f"{tq} queries, window {window}: vs fp32 exact: out FA2 {rel(ref[0], exact):.2e} parts {rel(out, exact):.2e}; "
                  f"lse parts vs FA2 {rel(lse.reshape(1, H, tq), ref[1][..., :tq]):.2e} (shape {tuple(lse.shape)}); grads q/k/v FA2 "
                  + " ".join(f"{rel(a, e):.2e}" for a, e in zip(ref_grads, exact_grads)) + " parts "
                  + " ".join(f"{rel(a, e):.2e}" for a, e in zip(grads, exact_grads)))
            pairs = tq * window * H  # visible pairs, per head summed
            flops = 4 * pairs * D
            t_fa = timed(lambda: fa2(q, k, v, window))
            t_p = timed(lambda: by_parts(qh, kh, vh, window))
            t_fa_b = timed(lambda: fa2_backward(do, q, k, v, ref[0], ref[1], window))
            t_p_b = timed(lambda: by_parts_backward(doh, qh, kh, vh, out_h, lse, window))
            print(f"   fwd ms FA2 {t_fa:.3f} ({flops / t_fa / 1e9:.0f} TFLOP/s)  parts {t_p:.3f} ({flops / t_p / 1e9:.0f});"
                  f"  bwd ms FA2 {t_fa_b:.3f}  parts {t_p_b:.3f};  fwd+bwd ratio {(t_fa + t_fa_b) / (t_p + t_p_b):.2f}x")
            parts_ms = [timed(lambda: cudnn(pq, pk, pv, c)) for pq, pk, pv, c, _ in parts(qh, kh, vh, window)]
            print("   cuDNN parts alone, fwd ms: " + " ".join(f"{t:.3f}" for t in parts_ms))
            back_ms = []
            for pq, pk, pv, c, r in parts(qh, kh, vh, window):
                g, o, l = (doh.flip(2), out_h.flip(2), lse.flip(2).contiguous()) if r else (doh, out_h, lse)
                back_ms.append(timed(lambda: cudnn_backward(g, pq, pk, pv, o, l, c)))
            fa2_split = timed(lambda: fa2(q[:, :1024], k[:, tk - 1024 - window + 1:], v[:, tk - 1024 - window + 1:], window))
            print("   cuDNN parts alone, bwd ms: " + " ".join(f"{t:.3f}" for t in back_ms)
                  + f";  FA2 fwd of the last 1024 queries {fa2_split:.3f}")
            if tq == 4096:  # where the parts' backward spends its time
                with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
                    by_parts_backward(doh, qh, kh, vh, out_h, lse, window)
                    torch.cuda.synchronize()
                print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=12))
        except Exception as e:
            print(f"{tq} queries, window {window}: fails: {e!r}"[:400])
            traceback.print_exc()

if __name__ == "__main__":
    main()
