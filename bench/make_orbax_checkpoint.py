#!/usr/bin/env python3
"""Writes a synthetic orbax checkpoint in the TTT-E2E authors' layout, for timing
`ttt convert orbax` at real sizes (bench/convert_orbax.sh).

The tree is their model.weights() tree (tests/fixtures/orbax/README.md): per-layer arrays
stacked on a leading axis of n_layers, prime MLPs on a leading axis of suffix_len, empty
(None) leaves where theirs are; saved by orbax's CheckpointManager as the item
`model_weights` with StandardSave (OCDBT, zarr, zstd), so the folder is
<out>/<step>/model_weights/ as their ttt/infra/checkpoint.py writes it. Values are random
fp32 (matrices N(0, 0.02^2), norm gains 1): the conversion's speed does not depend on them.

Needs jax and orbax-checkpoint (the GPU machine has both). Usage:
    python3 bench/make_orbax_checkpoint.py --size 3b --out results/orbax_bench/3b [--step 100]
"""
import argparse

# The authors' ttt-e2e shapes (their configs/model/*.yaml); vocabulary 128256 (Llama-3).
SIZES = {
    "125m": dict(n_layers=12, d_model=768, n_heads=12, d_ff=1664, suffix_len=3),
    "350m": dict(n_layers=24, d_model=1024, n_heads=16, d_ff=2304, suffix_len=6),
    "760m": dict(n_layers=24, d_model=1536, n_heads=16, d_ff=3328, suffix_len=6),
    "1b": dict(n_layers=24, d_model=2048, n_heads=32, d_ff=4352, suffix_len=6),
    "3b": dict(n_layers=32, d_model=2560, n_heads=32, d_ff=5632, suffix_len=8),
}
VOCAB = 128256


def weights_tree(n_layers, d_model, n_heads, d_ff, suffix_len, seed=0):
    import jax  # here: bench/make_synthetic_orbax.py imports SIZES where jax is not installed
    import jax.numpy as jnp

    keys = iter(jax.random.split(jax.random.PRNGKey(seed), 64))

    def matrix(*shape):
        return 0.02 * jax.random.normal(next(keys), shape, dtype=jnp.float32)

    def gain(*shape):
        return jnp.ones(shape, dtype=jnp.float32)

    head = d_model // n_heads
    L, D, F, S = n_layers, d_model, d_ff, suffix_len
    norm = lambda *shape: {"weight": gain(*shape), "bias": None}
    return {
        "step_index": {"init": None},
        "language_model": {
            "model": {
                "wte": {"weight": matrix(VOCAB, D)},
                "ln_f": norm(D),
                "h": {
                    "blocks": {
                        "seq_modeling_block": {
                            "wq": {"weight": matrix(L, D, D)},
                            "wk": {"weight": matrix(L, D, D)},
                            "wv": {"weight": matrix(L, D, D)},
                            "wo": {"weight": matrix(L, D, D)},
                            "q_norm": norm(L, head),
                            "k_norm": norm(L, head),
                            "kv_cache_index": {"init": None},
                            "chunk_index": {"init": None},
                        },
                        "feed_forward": {
                            "w1": {"weight": matrix(L, D, F)},
                            "w2": {"weight": matrix(L, F, D)},
                            "w3": {"weight": matrix(L, D, F)},
                        },
                        "seq_norm": norm(L, D),
                        "ffn_norm": norm(L, D),
                        "seq_post_norm": norm(L, D),
                        "ffn_post_norm": norm(L, D),
                        "ffn_prime_norm": None,
                        "ffn_prime_post_norm": None,
                        "feed_forward_prime": None,
                    },
                    "prime_storage": {
                        "ffn_prime_norm": norm(S, D),
                        "ffn_prime_post_norm": norm(S, D),
                        "feed_forward_prime": {
                            "w1": {"weight": matrix(S, D, F)},
                            "w2": {"weight": matrix(S, F, D)},
                            "w3": {"weight": matrix(S, D, F)},
                        },
                    },
                },
            },
            "lm_head": None,
        },
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=sorted(SIZES), default="3b")
    parser.add_argument("--out", required=True, help="folder of step folders to create")
    parser.add_argument("--step", type=int, default=100)
    args = parser.parse_args()
    import jax
    import orbax.checkpoint as ocp

    tree = weights_tree(**SIZES[args.size])
    count = sum(x.size for x in jax.tree_util.tree_leaves(tree))
    manager = ocp.CheckpointManager(args.out)
    manager.save(args.step, args=ocp.args.Composite(model_weights=ocp.args.StandardSave(tree)))
    manager.wait_until_finished()
    print(f"wrote {args.out}/{args.step}/model_weights: {args.size}, {count / 1e9:.2f}B parameters, "
          f"{4 * count / 1e9:.1f} GB in fp32")


if __name__ == "__main__":
    main()
