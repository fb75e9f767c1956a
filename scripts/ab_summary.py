#!/usr/bin/env python3
"""Per `ttt bench` row, the working tree against a baseline (scripts/gpu_ab.sh): medians of
tokens/s (decode: ms a token, lower is better) and GPU peak over the rounds' JSON files, and
the ratio working tree / baseline ("-" where a side has no value: a row that failed).

  scripts/ab_summary.py BASE_NAME NEW.json... -- BASE.json..."""
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


def main(argv):
    if "--" not in argv or len(argv) < 4:
        sys.exit(__doc__)
    split = argv.index("--")
    name, new, base = argv[1], rows(argv[2:split]), rows(argv[split + 1:])
    print(f"{'size':5} {'variant':8} {'mode':7} {'context':>8} {'working tree':>14} {name:>14} {'ratio':>7}"
          f" {'peak GiB':>9} {'(' + name + ')':>10}")
    for key in sorted(set(new) | set(base)):
        field = "ms_per_token" if key[2] == "decode" else "tokens_per_s"  # rows that failed have neither
        a, b = median(new.get(key, []), field), median(base.get(key, []), field)
        ratio = f"{a / b:7.3f}" if a and b else f"{'-':>7}"
        peak_a = median(new.get(key, []), "gpu_peak_allocated_gib")
        peak_b = median(base.get(key, []), "gpu_peak_allocated_gib")
        fmt = lambda v: f"{v:14.1f}" if v is not None else f"{'-':>14}"
        fmt_peak = lambda v: f"{v:9.2f}" if v is not None else f"{'-':>9}"
        print(f"{key[0]:5} {key[1]:8} {key[2]:7} {key[3]:8} {fmt(a)} {fmt(b)} {ratio} {fmt_peak(peak_a)} "
              f"{fmt_peak(peak_b):>10}")


if __name__ == "__main__":
    main(sys.argv)
