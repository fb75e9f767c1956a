#!/usr/bin/env python3
"""A chunk's sliding-window attention (1024 queries after a full cache of W - 1 keys, the
suffix chunks' shape) by cuDNN's parts, with the middle rectangle (every query sees its keys)
cut into n key slices run as one batched call: a chunk's 1024 queries give cuDNN only
8 x 12 = 96 query tiles, fewer than the H200's 132 SMs, so slices add tiles. Against FA2's
window (what the engine calls for chunks) and the three parts unsplit. GPU time of the
forward and the backward (dq is checked; cuDNN computes the keys' and values' gradients too,
timed but dropped) by CUDA graph (bench/attention_by_parts.py's timer). Run on the GPU
machine:

  python3 bench/attention_chunk_split.py"""
import torch

from attention_by_parts import D, H, cudnn, cudnn_backward, fa2, fa2_backward, rel, span_case, timed


def split_parts(q, k, v, window, n):
    """[1, H, T, D]: (reversed square), middle cut into n slices as a batch of n, own square."""
    tq, cache = q.shape[2], window - 1
    middle = cache - tq
    assert middle % n == 0
    s = middle // n
    flip = lambda t: t.flip(2)
    qn = q.expand(n, -1, -1, -1).contiguous()
    slices = lambda t: t[0, :, tq:cache].reshape(H, n, s, D).transpose(0, 1).contiguous()
    return [
        (flip(q), flip(k[:, :, :tq]), flip(v[:, :, :tq]), True, True),
        (qn, slices(k), slices(v), False, False),
        (q, k[:, :, cache:].contiguous(), v[:, :, cache:].contiguous(), True, False),
    ]


def forward(parts):
    outs, lses = [], []
    for pq, pk, pv, causal, reversed_ in parts:
        o, l = cudnn(pq, pk, pv, causal)
        if reversed_:
            o, l = o.flip(2), l.flip(2)
        for b in range(o.shape[0]):
            outs.append(o[b:b + 1])
            lses.append(l[b:b + 1])
    lse = torch.logsumexp(torch.stack(lses), 0)
    out = sum(o.float() * (l - lse).exp().reshape(*l.shape[:3], 1) for o, l in zip(outs, lses))
    return out.to(outs[0].dtype), lse


def backward(parts, do, out, lse):
    dq = torch.zeros(out.shape, dtype=torch.float32, device="cuda")
    for pq, pk, pv, causal, reversed_ in parts:
        n = pq.shape[0]
        if reversed_:
            g, o, l = do.flip(2), out.flip(2), lse.flip(2).contiguous()
        else:
            g, o, l = (t.expand(n, *t.shape[1:]).contiguous() for t in (do, out, lse))
        a, _, _ = cudnn_backward(g, pq, pk, pv, o, l, causal)
        if reversed_:
            a = a.flip(2)
        dq += a.float().sum(0, keepdim=True)
    return dq


def main():
    torch.manual_seed(0)
    tq, window = 1024, 8192
    (q, k, v, do), ref, ref_grads, (qh, kh, vh, doh) = span_case(tq, window)
    flops = 4 * tq * window * H * D
    t_fa, t_fa_b = timed(lambda: fa2(q, k, v, window)), timed(lambda: fa2_backward(do, q, k, v, ref[0], ref[1], window))
    print(f"{tq} queries, window {window}: FA2 fwd {t_fa:.3f} ms ({flops / t_fa / 1e9:.0f} TFLOP/s), bwd {t_fa_b:.3f} ms")
    for n in (1, 3):
        parts = split_parts(qh, kh, vh, window, n)
        out_h, lse = forward(parts)
        dq = backward(parts, doh, out_h, lse).transpose(1, 2)
        cudnn_fwd = sum(timed(lambda: cudnn(pq, pk, pv, c)) for pq, pk, pv, c, _ in parts)
        cudnn_bwd = 0.0
        for pq, pk, pv, c, r in parts:
            m = pq.shape[0]
            g, o, l = ((doh.flip(2), out_h.flip(2), lse.flip(2).contiguous()) if r else
                       tuple(t.expand(m, *t.shape[1:]).contiguous() for t in (doh, out_h, lse)))
            cudnn_bwd += timed(lambda: cudnn_backward(g, pq, pk, pv, o, l, c))
        print(f"  middle in {n} slices: out vs FA2 {rel(out_h.transpose(1, 2), ref[0]):.2e}, dq vs FA2 "
              f"{rel(dq, ref_grads[0]):.2e}; cuDNN calls alone fwd {cudnn_fwd:.3f} ms ({flops / cudnn_fwd / 1e9:.0f} "
              f"TFLOP/s), bwd {cudnn_bwd:.3f} ms; with torch's merge fwd {timed(lambda: forward(parts)):.3f} ms")


if __name__ == "__main__":
    main()
