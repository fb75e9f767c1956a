#!/usr/bin/env python3
"""Times the TTT-E2E authors' own meta-learning step (their JAX code) and reports its GPU
peak, for the comparisons of issues 19 and 24 ("in no more memory than theirs").

Their repository (github.com/test-time-training/e2e) is run as it is; only the packages
their training *script* needs and the GPU machine lacks (hydra, omegaconf, grain, zarr,
used for configuration files and data loading) are replaced by empty stand-ins, since this
builds the configuration and the batch itself. The model is their 125M ttt-e2e as their
configs/experiment/125m/pretrain/pretrain-125m-e2e.yaml sets it (their extension configs
set the same model), one sequence a step, random tokens, their default remat settings.

Each length runs in its own process, so that JAX's peak (memory_stats' peak_bytes_in_use:
the process's, its compilations' autotuning included, as `ttt bench` reports its own peak
allocated over its warm-up and timed runs) is that length's alone:

    python3 bench/authors_train_step.py --repo PATH --lengths 8192,32768 [--steps 3]
"""
import argparse
import json
import os
import subprocess
import sys
import time
import types


def stand_in(name, **attributes):
    module = types.ModuleType(name)
    module.__dict__.update(attributes)
    sys.modules[name] = module
    return module


def install_stand_ins():
    class ConfigStore:
        @staticmethod
        def instance():
            return ConfigStore()

        def store(self, *args, **kwargs):
            pass

    class Anything:
        def __init__(self, *args, **kwargs):
            pass

    stand_in("hydra", main=lambda *a, **k: (lambda f: f))
    stand_in("hydra.core")
    stand_in("hydra.core.config_store", ConfigStore=ConfigStore)
    stand_in("hydra.core.hydra_config", HydraConfig=Anything)
    stand_in("omegaconf", MISSING="???", OmegaConf=Anything)
    for name in ("grain", "grain._src", "grain._src.python", "grain._src.python.data_loader",
                 "grain._src.python.dataset", "grain._src.python.dataset.dataset"):
        stand_in(name, MapDataset=Anything, ReadOptions=Anything, DataLoader=Anything, IterDataset=Anything,
                 RandomAccessDataSource=Anything, MapDatasetSource=Anything)
    sys.modules["grain"].python = stand_in("grain.python", MapDataset=Anything, ReadOptions=Anything,
                                          RandomAccessDataSource=object, IterDataset=Anything)
    for name in ("zarr", "zarr.codecs", "zarr.storage"):
        stand_in(name)


def one_length(repo, length, steps):
    install_stand_ins()
    sys.path.insert(0, repo)
    import equinox as eqx
    import jax
    import jax.numpy as jnp
    import numpy as np

    from ttt.config import Config, SGDOptimizerConfig
    from ttt.model.data import Batch
    from ttt.model.loop import train_on_sequence
    from ttt.model.transformer import MetaModel
    from ttt.optimizers import make_optimizer

    cfg = Config()
    m = cfg.model
    # configs/model/125m.yaml, then the pretrain-125m-e2e experiment's model keys.
    m.name, m.vocab_size, m.bos_token_id, m.eos_token_id = "125m", 128256, 128000, 128001
    m.num_hidden_layers, m.hidden_size, m.num_attention_heads = 12, 768, 12
    m.initializer_range, m.rms_norm_eps, m.tie_word_embeddings = 0.02, 1e-6, True
    m.seq_modeling_block, m.force_flash, m.unroll_block_scan = "SWA", False, True
    m.mini_batch_size, m.sliding_window_size, m.rope_theta = 1024, 8192, 500000.0
    m.prime, m.suffix_len, m.intermediate_size = True, 3, 1664
    m.seq_len = length
    t = cfg.training
    t.train_mode, t.seq_length, t.global_batch_size, t.accum_steps = "meta", length, 1, 1
    t.spec_inner = ("language_model.**.suffix_blocks.feed_forward_prime.**",)
    t.spec_outer = ("**",)
    t.ilr_init, t.ilr_warmup_steps = 0.1, 480
    t.optimizer_inner = SGDOptimizerConfig(lr=1.0, clip_gradient=1.0)
    t.dummy_dataset, t.log_wandb, t.n_data_parallel = True, False, 1

    device = jax.local_devices()[0]
    key = jax.random.PRNGKey(0)
    # Their ModelSharding's mesh, made with an API every JAX version has (theirs pins < 0.6).
    mesh = jax.sharding.Mesh(np.array(jax.local_devices()[:1]).reshape(1, 1), ("data", "state"))
    model, state = eqx.nn.make_with_state(MetaModel)(cfg, key=key)
    outer, _ = make_optimizer(t.optimizer_outer)
    opt_state = outer.init(model.trainable_parameters())

    tokens = np.random.default_rng(0).integers(0, m.vocab_size, size=(1, 1, length + 1), dtype=np.int32)
    batch = Batch(input_ids=jnp.asarray(tokens[..., :-1]), target_tokens=jnp.asarray(tokens[..., 1:]),
                  loss_masks=jnp.ones((1, 1, length), dtype=bool))

    times = []
    # The first step compiles, and on the H200 with JAX 0.11 the second took ~36 s again (a
    # second compilation): both are warm-up.
    warm_up = 2
    with (jax.set_mesh(mesh) if hasattr(jax, "set_mesh") else mesh):
        for step in range(steps + warm_up):
            state = state.set(model.step_index, jnp.array(step, dtype=jnp.int32))
            # Their step donates its arguments, the batch among them: a fresh copy each step.
            fresh = jax.block_until_ready(jax.tree.map(jnp.copy, batch))
            start = time.perf_counter()
            model, opt_state, loss, _ = train_on_sequence(state, model, opt_state, fresh, cfg)
            jax.block_until_ready(loss)
            times.append(time.perf_counter() - start)
    stats = device.memory_stats() or {}
    step_s = float(np.median(times[warm_up:]))
    return {"length": length, "step_s": step_s, "tokens_per_s": length / step_s, "compile_and_first_s": times[0],
            "peak_gib": stats.get("peak_bytes_in_use", float("nan")) / 2**30, "loss": float(np.asarray(loss).mean()),
            "device": str(device), "jax": jax.__version__}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repo", required=True, help="a checkout of the authors' repository")
    parser.add_argument("--lengths", default="8192", help="comma-separated sequence lengths")
    parser.add_argument("--steps", type=int, default=3, help="timed steps after two warm-up (compiling) ones")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # a child process: this length only
    args = parser.parse_args()
    if args.steps < 1:
        parser.error("--steps must be at least 1")
    if args.one is not None:
        print(json.dumps(one_length(os.path.abspath(args.repo), args.one, args.steps)), flush=True)
        return
    failed = False
    for length in (int(x) for x in args.lengths.split(",")):
        child = subprocess.run([sys.executable, __file__, "--repo", args.repo, "--steps", str(args.steps),
                                "--one", str(length)], capture_output=True, text=True)
        lines = child.stdout.strip().splitlines()
        if child.returncode != 0 or not lines:
            failed = True
            print(f"length {length}: failed ({child.returncode})\n{child.stderr[-4000:]}", file=sys.stderr)
            continue
        r = json.loads(lines[-1])
        print(f"authors' 125M ttt-e2e meta step, {length} tokens: {r['step_s']:.3f} s, "
              f"{r['tokens_per_s'] / 1000:.1f}K tokens/s, peak {r['peak_gib']:.2f} GiB "
              f"(first step {r['compile_and_first_s']:.0f} s, loss {r['loss']:.3f}, {r['device']}, jax {r['jax']})")
        print(json.dumps(r))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
