#!/usr/bin/env python3
"""cuDNN's own sliding window, reached through JAX (jax.nn.dot_product_attention with
implementation="cudnn" and local_window_size, which builds cuDNN's frontend graph with its
band), timed on the engine's shapes (bf16, 12 heads of 64, one sequence): is it worth calling
cuDNN's frontend from the engine, in place of the window by parts (model/window_attention.h)
and FA2's window? Compare with bench/attention_kernels.py and bench/attention_by_parts.py
(docs/BENCHMARKS.md). Run on the GPU machine, which has JAX:

  python3 bench/attention_cudnn_window.py

JAX aligns its masks to the top left: a span of Tq queries after Tk - Tq cached keys (window
W, Tk - Tq = W - 1) is the band key j in [i, i + W - 1], i.e. local_window_size (0, W - 1)
without the causal mask; a square is the causal mask with local_window_size (W - 1, 0). A
shape cuDNN does not take prints its error. ms per call and TFLOP/s over the visible (query,
key) pairs only; forward + backward counted as 3.5x the forward's work; "err": the largest
difference from XLA's attention under the engine's band as an explicit mask (whether the
window means what the engine means), on the shapes small enough for XLA's scores."""
import time

import jax
import jax.numpy as jnp
import numpy as np

H, D = 12, 64


def timed(f, *args, n=20):
    for _ in range(3):
        jax.block_until_ready(f(*args))
    t = time.perf_counter()
    for _ in range(n):
        out = f(*args)
    jax.block_until_ready(out)
    return (time.perf_counter() - t) / n * 1e3


def band(tq, tk, window):
    """The engine's mask: the queries are the last tq of tk positions, each sees `window` keys."""
    pq = np.arange(tk - tq, tk)[:, None]
    pk = np.arange(tk)[None, :]
    return (pq >= pk) & (pq - pk < window)


def main():
    print(jax.devices()[0].device_kind, "jax", jax.__version__)
    print(f"{'shape':24} {'mask':22} {'impl':6} {'fwd ms':>8} {'TFLOP/s':>8} {'fwd+bwd ms':>10} {'TFLOP/s':>8} "
          f"{'err':>8}")
    shapes = [(4096, 4096 + 8191, 8192), (1024, 1024 + 8191, 8192), (8192, 8192, 8192), (32768, 32768, 8192)]
    for tq, tk, window in shapes:
        keys = jax.random.split(jax.random.PRNGKey(0), 4)
        q = jax.random.normal(keys[0], (1, tq, H, D), jnp.bfloat16)
        k = jax.random.normal(keys[1], (1, tk, H, D), jnp.bfloat16)
        v = jax.random.normal(keys[2], (1, tk, H, D), jnp.bfloat16)
        cotangent = jax.random.normal(keys[3], (1, tq, H, D), jnp.bfloat16)
        small = tq * tk <= 8192 * 9216
        mask = band(tq, tk, window) if small else None
        flops = 4 * int(mask.sum() if small else band(tq, tk, window).sum()) * H * D
        reference = (jax.nn.dot_product_attention(q, k, v, mask=jnp.asarray(mask)[None, None], implementation="xla")
                     if small else None)
        if tq == tk:
            causal, local, mask_name = True, (window - 1, 0), f"causal, ({window - 1}, 0)"
        else:
            causal, local, mask_name = False, (0, tk - tq), f"band, (0, {tk - tq})"
        for impl in ("cudnn", "xla") if small else ("cudnn",):
            def forward(q, k, v):
                return jax.nn.dot_product_attention(q, k, v, is_causal=causal, local_window_size=local,
                                                    implementation=impl)

            def backward(q, k, v):
                return jax.grad(lambda *x: (forward(*x).astype(jnp.float32) * cotangent).sum(), argnums=(0, 1, 2))(
                    q, k, v)

            name = f"{tq}x{tk} w{window}"
            try:
                fwd = timed(jax.jit(forward), q, k, v)
                both = timed(jax.jit(backward), q, k, v, n=10)
                err = (float(jnp.abs(forward(q, k, v).astype(jnp.float32) - reference.astype(jnp.float32)).max())
                       if small else float("nan"))
                print(f"{name:24} {mask_name:22} {impl:6} {fwd:8.3f} {flops / fwd / 1e9:8.1f} {both:10.3f} "
                      f"{3.5 * flops / both / 1e9:8.1f} {err:8.4f}")
            except Exception as e:  # a shape or mask the implementation does not take
                print(f"{name:24} {mask_name:22} {impl:6} fails: {str(e).splitlines()[0][:70]}")


if __name__ == "__main__":
    main()
