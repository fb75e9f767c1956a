#!/usr/bin/env bash
# The whole test suite from a fresh machine: install, build, run every test.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/build.sh
bash scripts/fetch_vocab.sh
ctest --test-dir build --output-on-failure --parallel "$(nproc)" --timeout 600
# Reliability (docs/RELIABILITY.md): the sanitizer build's tests, then every fuzz harness.
bash scripts/sanitize.sh
bash scripts/fuzz.sh --seconds 30
