#!/usr/bin/env python3
"""Sums up a Chrome trace written by `ttt bench --profile DIR`: where the GPU's time goes.

  scripts/profile_summary.py DIR/125m-ttt-e2e-eval-8192.json [more traces...]

For each trace: the wall span of the profiled run, the time the GPU was busy (kernels and
copies, overlaps merged) and idle (launch overhead, host work, synchronisation), kernels
per class (GEMM, attention, softmax/loss, elementwise, reductions, copies), the top kernels,
the GPU time per autograd node (eager runs) and the host's most frequent operators (how
many launches the engine asks for)."""
import bisect
import collections
import json
import re
import sys

# Kernel classes, first match wins (names of cuBLAS, cuDNN, flash/mem-efficient attention
# and ATen's own kernels on Hopper).
CLASSES = [
    ("attention", r"flash|fmha|attention|mem_eff|cutlassF|cutlassB"),
    ("gemm", r"gemm|nvjet|sm90_xmma|cutlass|cublas|ampere_|sm80_"),
    ("softmax/loss", r"softmax|nll|cross_entropy|logsumexp"),
    ("reduction", r"reduce|norm|sum|mean"),
    ("copy/cast", r"copy|memcpy|memset|cat|index|gather|scatter|fill"),
    ("elementwise", r"elementwise|vectorized|unrolled|pointwise"),
]


def classify(name):
    lower = name.lower()
    for label, pattern in CLASSES:
        if re.search(pattern, lower):
            return label
    return "other"


def busy_time(intervals):
    """Length of the union of [start, end) intervals."""
    total, current_start, current_end = 0.0, None, None
    for start, end in sorted(intervals):
        if current_end is None or start > current_end:
            if current_end is not None:
                total += current_end - current_start
            current_start, current_end = start, end
        else:
            current_end = max(current_end, end)
    if current_end is not None:
        total += current_end - current_start
    return total


def phases(events, device, launches):
    """Per named scope of the engine (RECORD_USER_SCOPE): its host time and the GPU time of the
    kernels launched inside it, from any thread (autograd runs backward on a thread of its own)."""
    scopes = [e for e in events if e.get("cat") == "user_annotation"]
    if not scopes:
        return
    launched = {e["args"]["correlation"]: e["ts"] for e in launches if "correlation" in e.get("args", {})}
    kernels = sorted((launched[e["args"]["correlation"]], e["dur"]) for e in device
                     if e.get("args", {}).get("correlation") in launched)
    times = [t for t, _ in kernels]
    table = collections.defaultdict(lambda: [0.0, 0.0, 0])
    for scope in scopes:
        lo = bisect.bisect_left(times, scope["ts"])
        hi = bisect.bisect_right(times, scope["ts"] + scope["dur"])
        row = table[scope["name"]]
        row[0] += scope["dur"]
        row[1] += sum(d for _, d in kernels[lo:hi])
        row[2] += 1
    print(f"{'phase':<34} {'host ms':>9} {'GPU ms':>9} {'count':>6}")
    for name, (host, gpu, count) in sorted(table.items(), key=lambda kv: -kv[1][1]):
        print(f"{name[:34]:<34} {host / 1e3:9.2f} {gpu / 1e3:9.2f} {count:6d}")


def by_node(events, host_ops, device, top=15):
    """GPU time per autograd node (the backward function whose evaluation launched the
    kernels; "forward: op" for kernels launched outside any), found through each kernel's
    launch and the host operators that enclose it on the launching thread."""
    # Every runtime or driver call with a correlation id (cuBLAS launches through the driver).
    launched = {e["args"]["correlation"]: e for e in events
                if e.get("cat") in ("cuda_runtime", "cuda_driver") and "correlation" in e.get("args", {})}
    per_thread = collections.defaultdict(list)
    for op in host_ops:
        per_thread[op["tid"]].append(op)
    starts = {}
    for tid, ops in per_thread.items():
        ops.sort(key=lambda op: op["ts"])
        starts[tid] = [op["ts"] for op in ops]
    prefix = "autograd::engine::evaluate_function: "
    table = collections.defaultdict(lambda: [0.0, 0])
    small = collections.defaultdict(lambda: [0.0, 0])  # (node, innermost op) of the small kernels
    for kernel in device:
        launch = launched.get(kernel.get("args", {}).get("correlation"))
        node, op = "?", "?"
        if launch is not None and launch["tid"] in per_thread:
            ops, ts = per_thread[launch["tid"]], launch["ts"]
            enclosing = [op["name"] for op in ops[max(0, bisect.bisect_right(starts[launch["tid"]], ts) - 400):
                                                 bisect.bisect_right(starts[launch["tid"]], ts)]
                         if op["ts"] + op["dur"] >= ts]
            nodes = [name[len(prefix):] for name in enclosing if name.startswith(prefix)]
            node = nodes[-1] if nodes else "forward: " + (enclosing[0] if enclosing else "?")
            op = enclosing[-1] if enclosing else "?"
        node = re.sub(r"torch::autograd::CppNode<(?:ttt::)?(?:\(anonymous namespace\)::)?(\w+)>", r"\1", node)
        table[node][0] += kernel["dur"]
        table[node][1] += 1
        if classify(kernel.get("name", "?")) in ("elementwise", "copy/cast", "reduction"):
            small[(node, op)][0] += kernel["dur"]
            small[(node, op)][1] += 1
    print(f"{'GPU ms by autograd node':<48} {'ms':>8} {'count':>7}")
    for name, (dur, count) in sorted(table.items(), key=lambda kv: -kv[1][0])[:top]:
        print(f"  {name[:46]:<46} {dur / 1e3:8.2f} {count:7d}")
    # Where the many small kernels (elementwise, copies and casts, reductions) come from.
    print(f"{'small kernels by autograd node / operator':<72} {'ms':>8} {'count':>7}")
    for (name, op), (dur, count) in sorted(small.items(), key=lambda kv: -kv[1][0])[:2 * top]:
        print(f"  {(name[:40] + ' / ' + op)[:70]:<70} {dur / 1e3:8.2f} {count:7d}")


def summarise(path):
    with open(path) as f:
        trace = json.load(f)
    events = [e for e in trace.get("traceEvents", []) if e.get("ph") == "X" and "dur" in e]
    device = [e for e in events if e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset")]
    host_ops = [e for e in events if e.get("cat") == "cpu_op"]
    launches = [e for e in events if e.get("cat") == "cuda_runtime" and "Launch" in e.get("name", "")]
    if not events:
        print(f"{path}: no events")
        return
    start = min(e["ts"] for e in events)
    end = max(e["ts"] + e["dur"] for e in events)
    span = end - start
    busy = busy_time([(e["ts"], e["ts"] + e["dur"]) for e in device])
    print(f"== {path}")
    print(f"wall {span / 1e3:.2f} ms; GPU busy {busy / 1e3:.2f} ms ({100 * busy / span:.0f}%), "
          f"idle {(span - busy) / 1e3:.2f} ms; {len(device)} kernels/copies, {len(launches)} launches, "
          f"{len(host_ops)} host ops")
    by_class = collections.defaultdict(lambda: [0.0, 0])
    by_name = collections.defaultdict(lambda: [0.0, 0])
    for e in device:
        name = e.get("name", "?")
        for table, key in ((by_class, classify(name)), (by_name, name)):
            table[key][0] += e["dur"]
            table[key][1] += 1
    print(f"{'class':<14} {'ms':>9} {'% busy':>7} {'count':>7}")
    for label, (dur, count) in sorted(by_class.items(), key=lambda kv: -kv[1][0]):
        print(f"{label:<14} {dur / 1e3:9.2f} {100 * dur / max(busy, 1e-9):7.1f} {count:7d}")
    print("top kernels:")
    for name, (dur, count) in sorted(by_name.items(), key=lambda kv: -kv[1][0])[:25]:
        print(f"  {dur / 1e3:8.2f} ms {count:6d}x  {name[:110]}")
    phases(events, device, launches)
    by_node(events, host_ops, device)
    ops = collections.Counter(e.get("name", "?") for e in host_ops)
    print("most frequent host ops:", ", ".join(f"{name} {n}" for name, n in ops.most_common(12)))
    print()


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    for trace_path in sys.argv[1:]:
        summarise(trace_path)
