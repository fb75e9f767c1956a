# Shared by the shell benchmarks that train (bench/data_parallel.sh, bench/train_throughput.sh,
# scripts/multi_gpu.sh); source it, do not run it.

# The GPL's text (every Debian machine has it) as byte tokens, each document after bos 256,
# into a .u32 token file.
byte_text_tokens() {
  perl -0777 -ne 'print pack("V*", 256, unpack("C*", $_))' /usr/share/common-licenses/GPL-3 >"$1"
}

# The median tokens/s of a run's metrics.jsonl, its first step (warm-up) left out.
median_tokens_per_s() {
  python3 - "$1" <<'PY'
import json, statistics, sys
rates = [json.loads(line)["tokens_per_s"] for line in open(sys.argv[1])][1:]
print("%.0f" % statistics.median(rates))
PY
}
