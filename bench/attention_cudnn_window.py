#!/usr/bin/env python3
"""cuDNN's own sliding window, reached through JAX (jax.nn.dot_product_attention with
implementation="cudnn" and local_window_size, which builds cuDNN's frontend graph with its
band), timed on the engine's shapes (bf16, 12 heads of 64, one sequence): is it worth calling
cuDNN's frontend from the engine, in place of the window by parts (model/window_attention.h)
and FA2's window? Compare with bench/attention_kernels.py and bench/attention_by_parts.py
(docs/BENCHMARKS.md). Run on the GPU machine, which has JAX:

  python3 bench/attention_cudnn_window.py

JAX's cuDNN path takes a left window with the causal mask only (no right window), and aligns
masks to the top left, so every shape here is a square: T queries over T keys, each seeing
the W keys ending at it. A span of Tq queries after W - 1 cached keys runs as the square of
W - 1 + Tq (the first W - 1 queries are extra work): compare TFLOP/s, not ms, with the engine's
kernels on the real shapes. ms per call and TFLOP/s over the square's visible (query, key)
pairs; forward + backward counted as 3.5x the forward's work; "err": the largest difference
from XLA's attention under the band as an explicit mask (whether the window means what the
engine means), on the squares small enough for XLA's scores."""
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


def band(t, window):
    """The square's mask: query i sees keys i - window + 1 .. i."""
    pos = np.arange(t)
    return (pos[:, None] >= pos[None, :]) & (pos[:, None] - pos[None, :] < window)


def visible_pairs(t, window):
    return sum(min(window, i + 1) for i in range(t))


def main():
    print(jax.devices()[0].device_kind, "jax", jax.__version__)
    print(f"{'square, window':22} {'impl':6} {'fwd ms':>8} {'TFLOP/s':>8} {'fwd+bwd ms':>10} {'TFLOP/s':>8} {'err':>8}")
    window = 8192
    # 8191 + 4096: a prefix span after a full cache; 8191 + 1024: a chunk; then long squares.
    for t in (8191 + 4096, 8191 + 1024, 8192, 32768):
        keys = jax.random.split(jax.random.PRNGKey(0), 4)
        q, k, v, cotangent = (jax.random.normal(key, (1, t, H, D), jnp.bfloat16) for key in keys)
        flops = 4 * visible_pairs(t, window) * H * D
        small = t <= 8191 + 4096
        reference = (jax.nn.dot_product_attention(q, k, v, mask=jnp.asarray(band(t, window))[None, None],
                                                  implementation="xla") if small else None)
        for impl in ("cudnn", "xla") if small else ("cudnn",):
            def forward(q, k, v):
                return jax.nn.dot_product_attention(q, k, v, is_causal=True, local_window_size=(window - 1, 0),
                                                    implementation=impl)

            def backward(q, k, v):
                return jax.grad(lambda *x: (forward(*x).astype(jnp.float32) * cotangent).sum(), argnums=(0, 1, 2))(
                    q, k, v)

            name = f"{t} w{window}"
            try:
                fwd = timed(jax.jit(forward), q, k, v)
                both = timed(jax.jit(backward), q, k, v, n=10)
                err = (float(jnp.abs(forward(q, k, v).astype(jnp.float32) - reference.astype(jnp.float32)).max())
                       if small else float("nan"))
                print(f"{name:22} {impl:6} {fwd:8.3f} {flops / fwd / 1e9:8.1f} {both:10.3f} "
                      f"{3.5 * flops / both / 1e9:8.1f} {err:8.4f}")
            except Exception as e:  # a shape or mask the implementation does not take
                print(f"{name:22} {impl:6} fails: {str(e).splitlines()[0][:70]}")


if __name__ == "__main__":
    main()
