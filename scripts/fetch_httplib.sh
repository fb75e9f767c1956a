#!/usr/bin/env bash
# Fetches cpp-httplib's single header (httplib.h, header-only, no TLS) from Debian's source
# package cpp-httplib 0.11.4+ds-1+deb12u1, with Debian's patches applied (CVE-2023-26130), into
# third_party/cpp-httplib/ (never committed). Debian's binary package libcpp-httplib-dev ships
# the header split from a compiled library built against OpenSSL, which neither `ttt serve`
# (plain HTTP on a trusted network) nor the GPU machine (no Debian packages) can use. The
# archives are checked against the sha256 sums of Debian's signed .dsc. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=third_party/cpp-httplib
version=0.11.4+ds-1+deb12u1
[[ -f "$dir/.fetched" && "$(cat "$dir/.fetched")" == "$version" ]] && exit 0
pool=http://deb.debian.org/debian/pool/main/c/cpp-httplib
declare -A SHA256=(
  [cpp-httplib_0.11.4+ds.orig.tar.xz]=8b1a5df569003b6a4f24c68489bbda5c64aec94697bdc9ebba5d79408b2ae7eb
  [cpp-httplib_$version.debian.tar.xz]=a0adf8a38610806f6d94ba69839438635e5e6580775e28ff31d6a081e34f1484
)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for archive in "${!SHA256[@]}"; do
  echo "fetch_httplib: $pool/$archive" >&2
  curl -fsSL -o "$work/$archive" "$pool/$archive"
  echo "${SHA256[$archive]}  $work/$archive" | sha256sum --check --quiet
  tar -xf "$work/$archive" -C "$work"
done
source_dir=$(find "$work" -maxdepth 1 -type d -name 'yhirose-cpp-httplib-*')
while read -r patch; do
  [[ -z "$patch" || "$patch" == \#* ]] && continue
  patch --quiet -p1 -d "$source_dir" <"$work/debian/patches/$patch"
done <"$work/debian/patches/series"
mkdir -p "$dir"
cp "$source_dir/httplib.h" "$source_dir/LICENSE" "$dir/"
echo "$version" >"$dir/.fetched"
echo "fetch_httplib: $dir/httplib.h" >&2
