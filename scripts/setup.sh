#!/usr/bin/env bash
# Installs everything the build and the tests need, from Debian packages only.
# Idempotent: packages already present are not fetched again.
set -euo pipefail

# curl, xz-utils, patch: scripts/fetch_httplib.sh (curl also drives `ttt serve` in the tests).
# clang-14, libclang-rt-14-dev: the fuzz harnesses' compiler and libFuzzer (scripts/fuzz.sh).
# libxxhash-dev: the checksums of saved files (header-only use).
# libgloo-dev: the headers of the Gloo that Debian's libtorch links (c10d's CPU backend, for
# data-parallel training).
PACKAGES=(
  build-essential cmake ninja-build pkg-config
  libtorch-dev libopenblas-dev libgloo-dev
  nlohmann-json3-dev libcli11-dev libgtest-dev
  libpcre2-dev libsentencepiece-dev
  libzstd-dev libxxhash-dev
  gnuplot-nox
  curl xz-utils patch
  clang-14 libclang-rt-14-dev
)
# node and npm fetch the tokenizers' vocabularies (scripts/fetch_vocab.sh) and compute the
# reference encodings in the tests; a machine with node from elsewhere keeps it.
command -v node >/dev/null || PACKAGES+=(nodejs)
command -v npm >/dev/null || PACKAGES+=(npm)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}" >&2
  SUDO=""
  [[ $(id -u) -ne 0 ]] && SUDO=sudo
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# cpp-httplib for `ttt serve`: its single header from Debian's source package (see the script).
bash "$(dirname "$0")/fetch_httplib.sh"
