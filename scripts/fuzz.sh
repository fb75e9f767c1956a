#!/usr/bin/env bash
# Builds the fuzz harnesses of fuzz/ (clang-14, libFuzzer, AddressSanitizer and
# UndefinedBehaviorSanitizer) into build-fuzz/ and runs each for a bounded time from its seed
# corpus (fuzz/corpus/<name>/) and its regression inputs (tests/fuzz_regressions/<name>/).
# A crash, a sanitizer report, a leak, a timeout or an out-of-memory fails the script and
# leaves the input in tests/fuzz_regressions/<name>/: commit it with the fix.
#   scripts/fuzz.sh [--seconds N] [harness...]      (default: 30 seconds each, every harness)
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=30
harnesses=()
while (($#)); do
  case "$1" in
    --seconds) seconds="$2"; shift 2 ;;
    *) harnesses+=("$1"); shift ;;
  esac
done

bash scripts/setup.sh
generator=()
command -v ninja >/dev/null && generator=(-G Ninja)
if [[ ! -f build-fuzz/CMakeCache.txt ]]; then
  cmake -S . -B build-fuzz "${generator[@]}" -DTTT_FUZZ=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DCMAKE_CXX_COMPILER=clang++-14 -DBUILD_TESTING=OFF >/dev/null
fi
cmake --build build-fuzz --parallel "$(nproc)"
if ((${#harnesses[@]} == 0)); then
  for fuzzer in build-fuzz/fuzz/*_fuzzer; do harnesses+=("$(basename "$fuzzer" _fuzzer)"); done
fi

# Each run: a 5 s limit per input, 1 GiB of memory (a header that makes the parser allocate
# more is a finding), the corpus grown in a scratch folder, crashes written to the regressions.
# Harnesses run side by side, one per core (each libFuzzer process uses one), so CI's fuzzing
# takes seconds x harnesses / cores.
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
fuzz_one() {
  local name=$1 regressions=tests/fuzz_regressions/$1
  mkdir -p "$work/$name" "$regressions"
  build-fuzz/fuzz/${name}_fuzzer -max_total_time="$seconds" -timeout=5 -rss_limit_mb=1024 \
    -malloc_limit_mb=1024 -artifact_prefix="$regressions/" -print_final_stats=1 \
    "$work/$name" "fuzz/corpus/$name" "$regressions" >"$work/$name.log" 2>&1
}
cores=$(nproc)
for name in "${harnesses[@]}"; do
  while (($(jobs -rp | wc -l) >= cores)); do wait -n || true; done
  { fuzz_one "$name" || touch "$work/$name.failed"; } &
done
wait
failed=()
for name in "${harnesses[@]}"; do
  if [[ -f "$work/$name.failed" ]]; then
    failed+=("$name")
    tail -40 "$work/$name.log" 2>/dev/null || true
  fi
  runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$work/$name.log" | grep -o '[0-9]*$' || echo "?")
  echo "fuzz: $name: $runs executions in ${seconds}s$([[ -f "$work/$name.failed" ]] && echo ", FAILED")"
  rmdir "tests/fuzz_regressions/$name" 2>/dev/null || true  # only harnesses with findings keep a folder
done
if ((${#failed[@]})); then
  echo "fuzz: findings in ${failed[*]}: inputs saved under tests/fuzz_regressions/" >&2
  exit 1
fi
