#!/usr/bin/env bash
# A same-machine A/B on the lent GPU, first half (here): puts into .ab_base/ the sources as
# they were at REV where they differ from the working tree (tree/: REV's files; removed: files
# the working tree has and REV had not), for scripts/gpu_ab.sh to build that baseline beside
# the working tree on the device. Carry .ab_base along (run's carry: [".deps", ".ab_base"]).
#   scripts/ab_base.sh REV
set -euo pipefail
cd "$(dirname "$0")/.."
rev=${1:?usage: scripts/ab_base.sh REV}
git rev-parse --verify -q "$rev^{commit}" >/dev/null || { echo "ab_base: no commit '$rev'" >&2; exit 2; }
dirs=(CMakeLists.txt src apps tests bench fuzz)
rm -rf .ab_base && mkdir -p .ab_base/tree
git rev-parse --short "$rev" >.ab_base/rev
: >.ab_base/removed
git diff --name-status --no-renames "$rev" -- "${dirs[@]}" | while IFS=$'\t' read -r status path; do
  if [[ $status == A ]]; then
    echo "$path" >>.ab_base/removed
  else
    mkdir -p ".ab_base/tree/$(dirname "$path")"
    git show "$rev:$path" >".ab_base/tree/$path"
  fi
done
git ls-files --others --exclude-standard -- "${dirs[@]}" >>.ab_base/removed
echo "ab_base: baseline $(cat .ab_base/rev): $(find .ab_base/tree -type f | wc -l) files as at $rev," \
  "$(wc -l <.ab_base/removed) removed"
