#!/usr/bin/env bash
# Copies the header-only dependencies (cpp-httplib's too), zstd's headers (its library, libzstd.so.1, is looked
# for there; without it `ttt convert orbax` is left out) and GoogleTest's sources from this
# machine's Debian packages into .deps/, for a machine that has libtorch but cannot install
# packages (the lent GPU machine): carry .deps there and build with scripts/gpu.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
rm -rf .deps && mkdir -p .deps/include
cp -r /usr/include/nlohmann /usr/include/CLI /usr/include/zstd.h /usr/include/zstd_errors.h .deps/include/
# Folders of their own, so that including them does not bring .deps' nlohmann-json before the
# one every other target sees (PyTorch's own, on the GPU machine).
mkdir -p .deps/xxhash .deps/httplib
cp /usr/include/xxhash.h .deps/xxhash/
cp third_party/cpp-httplib/httplib.h .deps/httplib/  # from scripts/fetch_httplib.sh (setup.sh runs it)
cp -r /usr/src/googletest .deps/googletest
echo "packed $(du -sh .deps | cut -f1) into .deps/"
