# What a data-parallel training step pays beyond its gradients, measured on this machine
# (issue 21's scaling): the gradients' NCCL all-reduce in 25 MB buckets (as Communicator does
# it: packed, reduced one bucket in flight, copied back) and in one piece; the global gradient
# norm; and AdamW's update written as our trainer's plain ops against one fused pass (PyTorch's
# fused AdamW), for the parameter shapes of the 125M and 760M fa models with a tied 128256 head.
# Usage (one process a GPU): torchrun --nproc-per-node 2 bench/data_parallel_costs.py
import os
import statistics

import torch
import torch.distributed as dist

BUCKET_BYTES = 25 << 20


def shapes(d_model, layers, d_ff, vocab=128256):
    per_layer = [(d_model, d_model)] * 4 + [(d_ff, d_model)] * 2 + [(d_model, d_ff)] + [(d_model,)] * 2
    return [(vocab, d_model)] + per_layer * layers + [(d_model,)]


def timed(fn, repeats=5):
    fn()
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        dist.barrier()
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def bucketed_all_reduce(grads):
    in_flight = None
    i = 0
    while i < len(grads):
        members, size = [], 0
        while i < len(grads) and (not members or size < BUCKET_BYTES):
            members.append(grads[i])
            size += grads[i].numel() * grads[i].element_size()
            i += 1
        flat = members[0] if len(members) == 1 else torch.cat([g.reshape(-1) for g in members])
        work = dist.all_reduce(flat, async_op=True)
        if in_flight:
            finish(*in_flight)
        in_flight = (work, members, flat)
    finish(*in_flight)


def finish(work, members, flat):
    work.wait()
    if len(members) == 1:
        return
    offset = 0
    for g in members:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def plain_adamw(params, grads, m, v, lr=1e-3, b1=0.9, b2=0.95, eps=1e-8, wd=0.1, step=1):
    c1, c2 = 1 - b1**step, 1 - b2**step
    with torch.no_grad():
        for p, g, mm, vv in zip(params, grads, m, v):
            mm.mul_(b1).add_(g, alpha=1 - b1)
            vv.mul_(b2).addcmul_(g, g, value=1 - b2)
            update = (mm / c1) / ((vv / c2).sqrt() + eps)
            p.sub_(lr * (update + wd * p))


def main():
    torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group("nccl")
    rank = dist.get_rank()
    for name, model in [("125m", shapes(768, 12, 2048)), ("760m", shapes(1536, 24, 4096))]:
        params = [torch.randn(s, device="cuda") for s in model]
        grads = [torch.randn_like(p) for p in params]
        m = [torch.zeros_like(p) for p in params]
        v = [torch.zeros_like(p) for p in params]
        count = sum(p.numel() for p in params)
        flat = torch.cat([g.reshape(-1) for g in grads])
        rows = {
            "all-reduce, 25 MB buckets": timed(lambda: bucketed_all_reduce(grads)),
            "all-reduce, one piece": timed(lambda: dist.all_reduce(flat)),
            "gradient norm (pow, sum each)": timed(lambda: sum(g.pow(2).sum() for g in grads).item()),
            "AdamW, plain ops": timed(lambda: plain_adamw(params, grads, m, v)),
        }
        for p, g in zip(params, grads):
            p.grad = g
        fused = torch.optim.AdamW(params, lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1, fused=True)
        rows["AdamW, fused"] = timed(fused.step)
        if rank == 0:
            gb = count * 4 / 1e9
            print(f"{name}: {count / 1e6:.0f}M parameters, {gb:.2f} GB of fp32 gradients")
            for label, ms in rows.items():
                extra = f"  ({gb / (ms / 1e3):.0f} GB/s of gradients)" if "all-reduce" in label else ""
                print(f"  {label:32s} {ms:8.2f} ms{extra}")
        del params, grads, m, v, flat, fused
        torch.cuda.empty_cache()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
