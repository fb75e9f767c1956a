#!/usr/bin/env bash
# Copies the header-only dependencies (cpp-httplib's too), zstd's headers (its library, libzstd.so.1, is looked
# for there; without it `ttt convert orbax` is left out) and GoogleTest's sources from this
# machine's Debian packages into .deps/, for a machine that has libtorch but cannot install
# packages (the lent GPU machine): carry .deps there and build with scripts/gpu.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
rm -rf .deps && mkdir -p .deps/include
cp -r /usr/include/nlohmann /usr/include/CLI /usr/include/zstd.h /usr/include/zstd_errors.h \
  /usr/include/xxhash.h .deps/include/
cp third_party/cpp-httplib/httplib.h .deps/include/  # from scripts/fetch_httplib.sh (setup.sh runs it)
cp -r /usr/src/googletest .deps/googletest
echo "packed $(du -sh .deps | cut -f1) into .deps/"
