#!/usr/bin/env python3
"""Per `ttt bench` row, the working tree against one or more baselines (scripts/gpu_ab.sh):
medians of tokens/s (decode: ms a token, lower is better) and GPU peak over the rounds' JSON
files, and the ratio working tree / baseline ("-" where a side has no value: a row that
failed).

  scripts/ab_summary.py NEW.json... -- NAME BASE.json... [-- NAME BASE.json...]"""
import json
import statistics
import sys


def rows(paths):
    """(size, variant, mode, context) -> list of rows, over the files."""
    out = {}
    for path in paths:
        with open(path) as f:
            for row in json.load(f)["rows"]:
                key = (row["size"], row["variant"], row["mode"], row["context"])
                out.setdefault(key, []).append(row)
    return out


def median(rows, field):
    values = [r[field] for r in rows if field in r]
    return statistics.median(values) if values else None


def parse(argv):
    """(new rows, [(name, rows)]) from the command line, or exit with the usage."""
    groups, current = [], []
    for arg in argv[1:]:
        if arg == "--":
            groups.append(current)
            current = []
        else:
            current.append(arg)
    groups.append(current)
    if len(groups) < 2 or not groups[0] or any(len(g) < 2 for g in groups[1:]):
        sys.exit(__doc__)
    return rows(groups[0]), [(g[0], rows(g[1:])) for g in groups[1:]]


def main(argv):
    new, bases = parse(argv)
    header = f"{'size':5} {'variant':8} {'mode':7} {'context':>8} {'working tree':>14}"
    for name, _ in bases:
        header += f" {name:>14} {'ratio':>7}"
    header += f" {'peak GiB':>9}" + "".join(f" {'(' + name + ')':>10}" for name, _ in bases)
    print(header)
    fmt = lambda v: f"{v:14.1f}" if v is not None else f"{'-':>14}"
    for key in sorted(set(new).union(*(set(b) for _, b in bases))):
        field = "ms_per_token" if key[2] == "decode" else "tokens_per_s"  # rows that failed have neither
        a = median(new.get(key, []), field)
        line = f"{key[0]:5} {key[1]:8} {key[2]:7} {key[3]:8} {fmt(a)}"
        peaks = [median(new.get(key, []), "gpu_peak_allocated_gib")]
        for _, base in bases:
            b = median(base.get(key, []), field)
            line += f" {fmt(b)} " + (f"{a / b:7.3f}" if a and b else f"{'-':>7}")
            peaks.append(median(base.get(key, []), "gpu_peak_allocated_gib"))
        line += f" {peaks[0]:9.2f}" if peaks[0] is not None else f" {'-':>9}"
        line += "".join(f" {p:10.2f}" if p is not None else f" {'-':>10}" for p in peaks[1:])
        print(line)


if __name__ == "__main__":
    main(sys.argv)
