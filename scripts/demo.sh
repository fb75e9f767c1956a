#!/usr/bin/env bash
# The main job, for now: build, create a small model of each variant and run `ttt eval`
# over real English text (the GPL-3 licence shipped with Debian), byte by byte.
# Training arrives with issue 3, so these models are untrained: their loss sits near
# ln(258) = 5.55, and the point is the whole pipeline on real input.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/build.sh >/dev/null
out=results/demo
mkdir -p "$out"

text=/usr/share/common-licenses/GPL-3
# Byte-level tokens: ids 0..255 are bytes, 256 is bos; the file starts with bos.
head -c 8192 "$text" | perl -0777 -ne 'print pack("V*", 256, unpack("C*", $_))' >"$out/text.u32"

for variant in fa swa ttt-e2e; do
  extra=""
  case $variant in
    swa) extra='"window": 256,' ;;
    ttt-e2e) extra='"window": 256, "suffix_len": 1, "inner_lr": 1.0, "inner_clip": 1.0,' ;;
  esac
  cat >"$out/$variant.json" <<JSON
{"variant": "$variant", "vocab_size": 258, "d_model": 128, "n_layers": 4, "n_heads": 4,
 "d_ff": 320, "rms_eps": 1e-6, "rope_theta": 10000, $extra "mini_batch": 64,
 "tie_embeddings": true, "qk_norm": true, "bos_id": 256, "eos_id": 257}
JSON
  build/ttt init --config "$out/$variant.json" --out "$out/$variant.safetensors" --seed 1
  echo -n "$variant: "
  build/ttt eval --model "$out/$variant.safetensors" --tokens "$out/text.u32" --json "$out/$variant.eval.json"
done
echo "results in $out/ (per-token NLLs in *.eval.json)"
