#!/usr/bin/env bash
# A miniature of the paper's Figure 1 on the lent GPU (issue 19): fa, swa and ttt-e2e of
# equal parameter count (about 28M) pre-trained at 8K tokens per sequence on the same tokens
# of C source (Debian's linux-source: long directories of related files), then evaluated on
# held-out source directories by position and by context length up to 32K.
#
#   scripts/figure1_gpu.sh pack [--quick]
#       On this machine: the corpus (one document per source directory, its .c and .h files
#       in order; held-out directories for evaluation), a SentencePiece tokenizer, and the
#       corpus tokenized with it (`ttt data prepare`: the GPU machine lacks SentencePiece's
#       and PCRE2's headers, so it has no `ttt data`), packed into .gpu/figure1/ (about
#       25 MB, well under the 64 MiB a device command carries).
#   scripts/figure1_gpu.sh run STAGE[,STAGE...] [--quick] [--minutes M]
#       On the GPU machine (the CPU with --quick), in results/figure1-gpu/; stages:
#         data     unpack the tokens
#         pilot    a few ttt-e2e steps: its tokens/s sets the step count of all three runs,
#                  so that ttt-e2e trains for --minutes (default 6; 0.25 with --quick);
#                  or --steps N sets it (e.g. to add a run to an earlier one's)
#         swa, ttt-e2e, fa   train (the same sequences, the same number of steps)
#         ttt-e2e-ilr0       optional ablation: ttt-e2e trained with inner_lr 0 (its
#                  architecture without learning at test time), evaluated with the others
#         eval     all that were trained, by position and by context (8K, 16K, 32K), and
#                  ttt-e2e once more with its inner steps off (`ttt eval --inner-lr 0`); the
#                  evaluation is deterministic, so runs evaluated apart compare; the report goes
#                  to $OUT/figure1.tar.gz when $OUT is set (a device command brings back
#                  only a few files; draw its plots here: gnuplot plot.gp context.gp)
#
# A device command runs at most 10 minutes and the machine keeps its files only while it is
# warm (30 s between commands), so chain the stages over back-to-back commands, e.g.
#   run: bash scripts/gpu.sh --no-test && bash scripts/figure1_gpu.sh run data,pilot,swa
#   run: bash scripts/figure1_gpu.sh run ttt-e2e
#   run: bash scripts/figure1_gpu.sh run fa,eval
# (carry .deps and .gpu/figure1). A stage whose inputs are missing says which stage makes
# them. The 2026-12-02 run (README, docs/results/figure1_gpu) took --minutes 5: its three
# commands ran 4.9 (with the build, the GPU tests and a benchmark), 5.3 and 4.8 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; }  # the header above
(($#)) || { usage >&2; exit 2; }
[[ $1 == -h || $1 == --help ]] && { usage; exit 0; }
command=$1
shift
stages="" quick=0 minutes="" steps=""
if [[ $command == run ]]; then
  (($#)) || { echo "figure1_gpu: run needs its stages (see --help)" >&2; exit 2; }
  stages=$1
  shift
fi
while (($#)); do
  case $1 in
    --quick) quick=1; shift ;;
    --minutes) minutes=$2; shift 2 ;;
    --steps) steps=$2; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "figure1_gpu: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done

if [[ -z $minutes ]]; then
  minutes=6
  ((quick)) && minutes=0.25
fi
pack=.gpu/figure1
work=results/figure1-gpu
# Shapes: 8 blocks of width 512, 8 heads; ttt-e2e learns at test time in its last quarter
# (2 prime MLPs) and its MLPs are narrower so that its 10 weigh what the 8 of fa and swa do
# (10 x 1024 = 8 x 1280), as in the paper. Window 2048, mini-batch 512: an 8K training
# sequence is 16 inner steps, a 32K evaluation 64.
if ((quick)); then
  vocab_size=512 d_model=64 n_layers=4 n_heads=4 d_ff=160 d_ff_ttt=128 suffix_len=1
  window=128 mini_batch=64 seq_len=512 batch_size=1 lr=3e-3
  contexts=512,1024 eval_length=1024 train_mb=3 eval_docs=4 min_doc_kb=8 max_doc_kb=64
  device=cpu dtype=f32
else
  vocab_size=8192 d_model=512 n_layers=8 n_heads=8 d_ff=1280 d_ff_ttt=1024 suffix_len=2
  window=2048 mini_batch=512 seq_len=8192 batch_size=8 lr=3e-3
  contexts=8192,16384,32768 eval_length=32768 train_mb=160 eval_docs=48 min_doc_kb=160 max_doc_kb=512
  device=cuda dtype=bf16
fi
say() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*"; }

if [[ $command == pack ]]; then
  tarball=$(ls /usr/src/linux-source-*.tar.xz 2>/dev/null | tail -1 || true)
  if [[ -z $tarball ]]; then
    say "installing Debian's linux-source (about 140 MB)"
    SUDO=""
    [[ $(id -u) -ne 0 ]] && SUDO=sudo
    $SUDO apt-get install -y -qq --no-install-recommends linux-source >/dev/null
    tarball=$(ls /usr/src/linux-source-*.tar.xz | tail -1)
  fi
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  say "extracting the C sources of $tarball"
  tar -xJf "$tarball" -C "$tmp" --wildcards '*.c' '*.h'
  say "making documents: one per directory"
  rm -rf "$pack" && mkdir -p "$pack"
  python3 - "$tmp" "$tmp/corpus" $train_mb $eval_docs $min_doc_kb $max_doc_kb <<'PY'
import os, sys, zlib
root, out, train_mb, eval_docs, min_kb, max_kb = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:])
dirs = []
for d, _, files in os.walk(root):
    sources = sorted(f for f in files if f.endswith((".c", ".h")))
    if sources:
        dirs.append((os.path.relpath(d, root), [os.path.join(d, f) for f in sources]))
dirs.sort()
def text(files):
    parts, size = [], 0
    for f in files:
        with open(f, "rb") as fh:
            body = fh.read().decode("utf-8", "replace")
        parts.append(f"// file: {os.path.basename(f)}\n{body}")
        size += len(parts[-1])
        if size >= max_kb * 1024:
            break
    return "\n".join(parts)
# Held out: the large directories whose name hashes lowest, a fixed choice.
sized = [(d, f, sum(os.path.getsize(x) for x in f)) for d, f in dirs]
large = sorted((zlib.crc32(d.encode()), d) for d, _, s in sized if s >= min_kb * 1024)
held = {d for _, d in large[:eval_docs]}
os.makedirs(f"{out}/train"); os.makedirs(f"{out}/eval")
budget, written = train_mb * 1024 * 1024, 0
for i, (d, files, size) in enumerate(sized):
    name = d.replace("/", "_") + ".txt"
    if d in held:
        open(f"{out}/eval/{name}", "w").write(text(files))
    elif written < budget:
        body = text(files)
        open(f"{out}/train/{name}", "w").write(body)
        written += len(body)
print(f"{len(held)} held-out directories; {written / 1e6:.1f} MB of training text from {len(os.listdir(out + '/train'))} directories")
PY
  say "training the tokenizer (SentencePiece, $vocab_size tokens)"
  build/ttt data train-tokenizer --input "$tmp/corpus/train" --out "$pack/tokenizer.model" --vocab-size $vocab_size \
    --max-mb 16 >"$tmp/tokenizer.log" 2>&1 || { cat "$tmp/tokenizer.log" >&2; exit 1; }
  say "tokenizing"
  build/ttt data prepare --input "$tmp/corpus/train" --tokenizer "$pack/tokenizer.model" --out "$tmp/data/train" \
    --val 0.02 --test 0 | tail -2
  build/ttt data prepare --input "$tmp/corpus/eval" --tokenizer "$pack/tokenizer.model" --out "$tmp/data/eval" \
    --per-document | tail -2
  build/ttt data tokenizer-info --tokenizer "$pack/tokenizer.model" >"$pack/tokenizer-info.json"
  say "compressing"
  tar -C "$tmp/data" -cf - train eval | xz -T2 -6 >"$pack/data.tar.xz"
  echo "quick=$quick" >"$pack/made_with"
  say "packed: $(du -sh "$pack" | cut -f1) in $pack"
  exit 0
fi

[[ $command == run ]] || { echo "figure1_gpu: unknown command '$command' (pack or run)" >&2; exit 2; }
ttt=${TTT_BINARY:-}
if [[ -z $ttt ]]; then
  ttt=build/ttt
  [[ -x build-gpu/ttt ]] && ttt=build-gpu/ttt
fi
[[ -x $ttt ]] || { echo "figure1_gpu: $ttt not found (build first: scripts/gpu.sh --no-test)" >&2; exit 1; }
need() { [[ -e $1 ]] || { echo "figure1_gpu: $1 is missing; run the stage '$2' first" >&2; exit 1; }; }
mkdir -p "$work"
variants=(swa fa ttt-e2e)  # swa first: the report's paired differences are against it

model_config() {  # variant -> its config file
  local variant=$1 kind=$1 ff=$d_ff extra='"window": '$window','
  case $variant in
    fa) extra="" ;;
    ttt-e2e) ff=$d_ff_ttt extra='"window": '$window', "suffix_len": '$suffix_len', "inner_lr": 1.0, "inner_clip": 1.0,' ;;
    ttt-e2e-ilr0)
      kind=ttt-e2e ff=$d_ff_ttt
      extra='"window": '$window', "suffix_len": '$suffix_len', "inner_lr": 0.0, "inner_clip": 1.0,' ;;
  esac
  local bos eos
  bos=$(sed -n 's/.*"bos_id": *\([0-9]*\).*/\1/p' "$pack/tokenizer-info.json" | head -1)
  eos=$(sed -n 's/.*"eos_id": *\([0-9]*\).*/\1/p' "$pack/tokenizer-info.json" | head -1)
  cat >"$work/$variant.json" <<JSON
{"variant": "$kind", "vocab_size": $vocab_size, "d_model": $d_model, "n_layers": $n_layers, "n_heads": $n_heads,
 "d_ff": $ff, "rms_eps": 1e-6, "rope_theta": 500000, $extra "mini_batch": $mini_batch,
 "tie_embeddings": true, "qk_norm": true, "bos_id": $bos, "eos_id": $eos}
JSON
  echo "$work/$variant.json"
}

train() {  # variant steps out
  "$ttt" train --model-config "$(model_config "$1")" --train-tokens "$work/data/train/train.u32" \
    --val-tokens "$work/data/train/val.u32" --out "$3" --seq-len $seq_len --batch-size $batch_size --steps "$2" \
    --lr $lr --eval-every $(($2 / 2 > 0 ? $2 / 2 : 1)) --val-sequences 8 --checkpoint-every 0 --log-every 10 \
    --device $device --dtype $dtype
}

IFS=, read -r -a stage_list <<<"$stages"
for stage in "${stage_list[@]}"; do
  case $stage in
    data)
      need "$pack/data.tar.xz" "pack (on the development machine)"
      grep -qx "quick=$quick" "$pack/made_with" ||
        { echo "figure1_gpu: $pack was packed with $(cat "$pack/made_with"); pack again or match --quick" >&2; exit 1; }
      say "unpacking the tokens (runs trained on earlier tokens are removed)"
      rm -rf "$work/data" "$work/runs" "$work/steps" && mkdir -p "$work/data"
      xz -dc "$pack/data.tar.xz" | tar -C "$work/data" -xf -
      ;;
    pilot)
      need "$work/data/train/train.u32" data
      if [[ -n $steps ]]; then
        echo "$steps" >"$work/steps"
        say "pilot skipped: $steps steps as asked"
        continue
      fi
      say "pilot: 4 steps of ttt-e2e"
      rm -rf "$work/pilot"
      train ttt-e2e 4 "$work/pilot" >"$work/pilot.log" 2>&1 || { tail -5 "$work/pilot.log" >&2; exit 1; }
      tokens_per_s=$(tail -n 1 "$work/pilot/metrics.jsonl" | sed -n 's/.*"tokens_per_s":\([0-9.e+]*\).*/\1/p')
      steps=$(python3 -c "print(max(2, int($minutes * 60 * $tokens_per_s / ($batch_size * $seq_len))))")
      echo "$steps" >"$work/steps"
      say "ttt-e2e trains at $tokens_per_s tokens/s: $steps steps of $batch_size x $seq_len tokens in about $minutes minutes"
      ;;
    swa|fa|ttt-e2e|ttt-e2e-ilr0)
      [[ -n $steps ]] && echo "$steps" >"$work/steps"
      need "$work/steps" pilot
      steps=$(cat "$work/steps")
      say "training $stage: $steps steps"
      rm -rf "$work/runs/$stage"
      mkdir -p "$work/runs"
      train "$stage" "$steps" "$work/runs/$stage" >"$work/runs/$stage.log" 2>&1 ||
        { tail -5 "$work/runs/$stage.log" >&2; exit 1; }
      tail -n 1 "$work/runs/$stage/metrics.jsonl"
      ;;
    eval)
      trained=()
      for variant in "${variants[@]}" ttt-e2e-ilr0; do
        [[ -e $work/runs/$variant/model.safetensors ]] && trained+=("$variant")
      done
      ((${#trained[@]})) || { echo "figure1_gpu: no model trained yet; run a training stage first" >&2; exit 1; }
      variants=("${trained[@]}")
      models=()
      for variant in "${variants[@]}"; do models+=(--model "$work/runs/$variant/model.safetensors"); done
      report=$work/report
      rm -rf "$report" && mkdir -p "$report"
      say "evaluating on the held-out directories (first $eval_length tokens of each)"
      "$ttt" eval "${models[@]}" --documents "$work/data/eval" --length $eval_length --contexts $contexts \
        --report "$report" --device $device | tee "$report/eval.log"
      if [[ -e $work/runs/ttt-e2e/model.safetensors ]]; then
        say "ttt-e2e's meta-learned weights without test-time training (--inner-lr 0)"
        mkdir -p "$report/ttt-e2e-inner-lr-0"
        "$ttt" eval --model "$work/runs/ttt-e2e/model.safetensors" --inner-lr 0 --documents "$work/data/eval" \
          --length $eval_length --contexts $contexts --report "$report/ttt-e2e-inner-lr-0" --device $device |
          tee "$report/ttt-e2e-inner-lr-0/eval.log"
      fi
      for variant in "${variants[@]}"; do
        cp "$work/runs/$variant/metrics.jsonl" "$report/$variant.metrics.jsonl"
        cp "$work/$variant.json" "$report/$variant.json"
      done
      if [[ -n ${OUT:-} ]]; then
        tar -C "$work" -czf "$OUT/figure1.tar.gz" report
        say "report in $OUT/figure1.tar.gz"
      else
        say "report in $report"
      fi
      ;;
    *) echo "figure1_gpu: unknown stage '$stage' (data, pilot, swa, ttt-e2e, fa, ttt-e2e-ilr0, eval)" >&2; exit 2 ;;
  esac
done
