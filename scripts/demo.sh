#!/usr/bin/env bash
# The main job, for now: build, train a small byte-level model of each variant for a
# minute on English text (the GPL-3 licence shipped with Debian) and evaluate it on text
# it never saw (the Apache-2.0 licence). Issue 5 replaces this with the paper's comparison
# on a real corpus and tokenizer.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/build.sh >/dev/null
out=results/demo
rm -rf "$out"
mkdir -p "$out"

# Byte-level tokens: ids 0..255 are bytes, 256 is bos; each file starts with bos.
to_tokens() { perl -0777 -ne 'print pack("V*", 256, unpack("C*", $_))'; }
to_tokens </usr/share/common-licenses/GPL-3 >"$out/train.u32"
head -c 8191 /usr/share/common-licenses/Apache-2.0 | to_tokens >"$out/eval.u32"

for variant in fa swa ttt-e2e; do
  extra=""
  case $variant in
    swa) extra='"window": 128,' ;;
    ttt-e2e) extra='"window": 128, "suffix_len": 1, "inner_lr": 1.0, "inner_clip": 1.0,' ;;
  esac
  cat >"$out/$variant.json" <<JSON
{"variant": "$variant", "vocab_size": 258, "d_model": 64, "n_layers": 4, "n_heads": 4,
 "d_ff": 192, "rms_eps": 1e-6, "rope_theta": 10000, $extra "mini_batch": 64,
 "tie_embeddings": true, "qk_norm": true, "bos_id": 256, "eos_id": 257}
JSON
  echo "== $variant"
  build/ttt train --model-config "$out/$variant.json" --train-tokens "$out/train.u32" \
    --out "$out/$variant" --steps 150 --batch-size 4 --seq-len 256 --lr 3e-3 --log-every 50
  echo -n "$variant on held-out text: "
  build/ttt eval --model "$out/$variant/model.safetensors" --tokens "$out/eval.u32" \
    --json "$out/$variant.eval.json"
done
echo "results in $out/ (training runs in */, per-token NLLs in *.eval.json)"
