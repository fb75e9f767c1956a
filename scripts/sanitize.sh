#!/usr/bin/env bash
# The sanitizer build (docs/RELIABILITY.md): the torch-free libraries, their unit tests
# (ttt_text_tests: tokenizers, data preparation, OS helpers) and the fuzz harnesses' replays of
# their seeds and regression inputs, built with gcc's AddressSanitizer and
# UndefinedBehaviorSanitizer into build-asan/ and run; any report fails. The CLI tests among
# them drive build/ttt (scripts/build.sh first): libtorch is not instrumented, and building its
# code a second time would double CI's build.
set -euo pipefail
cd "$(dirname "$0")/.."
[[ -x build/ttt ]] || { echo "sanitize: build/ttt is missing: run scripts/build.sh first" >&2; exit 1; }
generator=()
command -v ninja >/dev/null && generator=(-G Ninja)
if [[ ! -f build-asan/CMakeCache.txt ]]; then
  cmake -S . -B build-asan "${generator[@]}" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DTTT_SANITIZE=ON \
    -DTTT_TEST_PROGRAM="$PWD/build/ttt" >/dev/null
fi
replays=$(cmake --build build-asan --target help | grep -o '^[a-z_]*_replay' | sort -u)
cmake --build build-asan --parallel "$(nproc)" --target ttt_text_tests $replays
# halt_on_error: the first report fails the test; leaks are reported too (ASan's default).
export ASAN_OPTIONS=halt_on_error=1:abort_on_error=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
# The tests labelled torch_free: ttt_text_tests and the replays, which build-asan has built;
# not MainJob's quick run, whose work is done by build/'s programs (the normal suite runs it).
ctest --test-dir build-asan --output-on-failure --parallel "$(nproc)" --timeout 600 -L torch_free -E '^MainJob\.'
