#!/usr/bin/env bash
# A same-machine A/B on the lent GPU, first half (here): puts into .ab_base/ each baseline's
# sources where they differ from the working tree (.ab_base/REV/tree: REV's files;
# .ab_base/REV/removed: files the working tree has and REV had not), and the baselines' names
# in .ab_base/revs, for scripts/gpu_ab.sh to build them beside the working tree on the
# device (one call compares several commits: a bisection). Carry .ab_base along (run's carry:
# [".deps", ".ab_base"]).
#   scripts/ab_base.sh REV [REV...]
set -euo pipefail
cd "$(dirname "$0")/.."
[[ $# -gt 0 ]] || { echo "usage: scripts/ab_base.sh REV [REV...]" >&2; exit 2; }
for rev in "$@"; do
  git rev-parse --verify -q "$rev^{commit}" >/dev/null || { echo "ab_base: no commit '$rev'" >&2; exit 2; }
done
dirs=(CMakeLists.txt src apps tests bench fuzz third_party/cudnn-frontend)
rm -rf .ab_base && mkdir -p .ab_base
: >.ab_base/revs
for rev in "$@"; do
  short=$(git rev-parse --short "$rev")
  grep -qx "$short" .ab_base/revs && continue  # named twice
  echo "$short" >>.ab_base/revs
  base=.ab_base/$short
  mkdir -p "$base/tree"
  : >"$base/removed"
  git diff --name-status --no-renames "$rev" -- "${dirs[@]}" | while IFS=$'\t' read -r status path; do
    if [[ $status == A ]]; then
      echo "$path" >>"$base/removed"
    else
      mkdir -p "$base/tree/$(dirname "$path")"
      git show "$rev:$path" >"$base/tree/$path"
    fi
  done
  git ls-files --others --exclude-standard -- "${dirs[@]}" >>"$base/removed"
  echo "ab_base: baseline $short: $(find "$base/tree" -type f | wc -l) files as at $rev," \
    "$(wc -l <"$base/removed") removed"
done
