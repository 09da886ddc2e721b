#!/usr/bin/env bash
# Every GPU figure of issue 17 in one run, written to one results file.
#
#   bash benchmarks/gpu.sh                      # on a GPU machine: <= 8 minutes on an H100/H200
#   GPU_SH_DRY_RUN=1 bash benchmarks/gpu.sh     # every part at a tiny size on the CPU: checks the script
#
# Results: $OUT/gpu-results.md when OUT is set, else benchmarks/_work/gpu-results.md; each part's
# full output beside it in gpu-logs/. Generated inputs and run outputs go to benchmarks/_work/gpu/
# (never under $OUT). Figures are printed as each part runs.
#
# Parts, in order, each in its own time box (the boxes add up to 8 minutes; a part that overruns
# is stopped and reported, and the next one starts): the CUDA-marked tests; JPEG decoding on the
# CPU and the GPU; colorize end to end on 1,000 1024x768 JPEGs (decode cpu/gpu/auto); colorize
# batched vs the reference loop on the same GPU; detect, segment and style.fast; DDColor-tiny;
# the classifier's training step in mixed precision. One failing part never stops the others.
#
# Needs: an NVIDIA GPU with a driver for the CUDA 13 libraries torch brings; uv; and either a
# finished `uv sync` or what `uv sync --frozen` needs (the package index, or a warm uv cache).
# Nothing else: weights are random and images are generated, so no other network is used.
# GPU_SH_SKIP_SYNC=1 skips the sync.
#
# On a machine with no package index but a Python that already has torch and torchvision (a
# lent GPU machine), run with GPU_SH_PYTHON=python3: the script then installs the wheels that
# `bash benchmarks/gpu_wheels.sh` put in .whl/ (imgflow itself and what the machine lacks) into
# /tmp/imgflow-site and runs everything with that Python instead of uv.

set -u -o pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
DRY=${GPU_SH_DRY_RUN:-0}
RESULTS_DIR=${OUT:-$ROOT/benchmarks/_work}
RESULTS=$RESULTS_DIR/gpu-results.md
LOGS=$RESULTS_DIR/gpu-logs
WORK=$ROOT/benchmarks/_work/gpu
mkdir -p "$RESULTS_DIR" "$LOGS" "$WORK"
BUDGET_S=480
STARTED=$(date +%s)
SUMMARY=()

if [ "$DRY" = 1 ]; then
  DEVICE=cpu; SCALE=dry
else
  DEVICE=cuda; SCALE=full
fi

say() { printf '%s\n' "$*" | tee -a "$RESULTS"; }

# part NAME SECONDS COMMAND...: run it in its time box (cut to what is left of the budget on a
# GPU), show its output as it goes, keep the log, and put its last lines in the results file.
part() {
  local name=$1 box=$2; shift 2
  local left=$((BUDGET_S - ($(date +%s) - STARTED)))
  if [ "$DRY" != 1 ] && [ "$left" -lt "$box" ]; then box=$left; fi
  if [ "$box" -le 5 ]; then
    SUMMARY+=("| $name | not run: the 8-minute budget was spent | 0 |")
    say "### $name: not run (the 8-minute budget was spent)"; say ""
    return
  fi
  local log=$LOGS/$name.log t0 rc status
  echo ">>> $name (up to ${box}s): $*"
  t0=$(date +%s)
  timeout --kill-after=15 "$box" "$@" 2>&1 | tee "$log"
  rc=${PIPESTATUS[0]}
  local took=$(($(date +%s) - t0))
  case $rc in
    0) status=ok ;;
    124|137) status="stopped after its ${box}s time box" ;;
    *) status="failed (exit $rc)" ;;
  esac
  SUMMARY+=("| $name | $status | $took |")
  {
    echo "### $name: $status, ${took}s"
    echo
    echo '`'"$*"'`'
    echo
    echo '```'
    tail -n 45 "$log"
    echo '```'
    echo
  } >> "$RESULTS"
}

: > "$RESULTS"
say "# GPU figures (benchmarks/gpu.sh, $SCALE)"
say ""
say "$(date -u +%Y-%m-%dT%H:%M:%SZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?'), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
if [ "$DRY" = 1 ]; then
  say "GPU_SH_DRY_RUN=1: every part at a tiny size on the CPU. These are not figures: they show the script runs."
fi
say ""

if [ -n "${GPU_SH_PYTHON:-}" ]; then
  SITE=/tmp/imgflow-site
  if ls .whl/*.whl >/dev/null 2>&1; then
    "$GPU_SH_PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target "$SITE" .whl/*.whl && say "installed $(ls .whl/*.whl | wc -l) carried wheels into $SITE"
  else
    say "GPU_SH_PYTHON is set but .whl/ holds no wheels: run benchmarks/gpu_wheels.sh first"
  fi
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}" IMGFLOW_CLI="$SITE/bin/imgflow"
  UV=(env "PYTHONPATH=$PYTHONPATH" "$GPU_SH_PYTHON")
  GPU_PY=("${UV[@]}" benchmarks/gpu.py --workdir "$WORK")
  STARTED=$(date +%s)
elif [ "${GPU_SH_SKIP_SYNC:-0}" != 1 ]; then
  t0=$(date +%s)
  if uv sync --frozen --quiet; then
    say "uv sync --frozen: $(($(date +%s) - t0))s (not counted in the budget)"
  else
    say "uv sync --frozen failed: going on with the environment as it is"
  fi
  STARTED=$(date +%s)
fi
if [ -z "${GPU_SH_PYTHON:-}" ]; then
  UV=(uv run --no-sync python)
  GPU_PY=("${UV[@]}" benchmarks/gpu.py --workdir "$WORK")
fi

if [ "$DRY" = 1 ]; then
  part facts 60 "${UV[@]}" benchmarks/gpu.py facts
  part tests 300 "${UV[@]}" -m pytest -m gpu -q -rs -p no:cacheprovider
  part decode 300 "${GPU_PY[@]}" decode --device cpu --count 16 --size 256x192 --batch 8 --workers 2
  part e2e 600 "${GPU_PY[@]}" e2e --device cpu --count 6 --size 128x96 --batch 4 --workers 2
  part colorize-vs-reference 900 "${UV[@]}" benchmarks/colorize.py --device cpu --models eccv16 \
    --count 2 --reps 1 --workdir "$WORK/colorize"
  part stages 600 "${GPU_PY[@]}" stages --device cpu --count 4 --size 128x96 --batch 4 --workers 2
  part ddcolor 900 "${UV[@]}" benchmarks/colorize.py --device cpu --models ddcolor-tiny --count 1 \
    --reps 1 --workdir "$WORK/colorize"
  part finetune 900 "${UV[@]}" benchmarks/finetune.py --device cpu --count 8 --epochs 1 --image-size 64 \
    --batch-size 4 --workers 1 --workdir "$WORK/finetune"
else
  part facts 15 "${UV[@]}" benchmarks/gpu.py facts
  part tests 90 "${UV[@]}" -m pytest -m gpu -q -rs -p no:cacheprovider
  part decode 45 "${GPU_PY[@]}" decode --count 1000
  part e2e 90 "${GPU_PY[@]}" e2e --count 1000 --batch 64
  part colorize-vs-reference 75 "${UV[@]}" benchmarks/colorize.py --device cuda --models eccv16 siggraph17 \
    --count 100 --reps 1 --workdir "$WORK/colorize"
  part stages 50 "${GPU_PY[@]}" stages --count 300 --batch 32
  part ddcolor 45 "${UV[@]}" benchmarks/colorize.py --device cuda --models ddcolor-tiny --autocast auto \
    --count 64 --reps 1 --workdir "$WORK/colorize"
  part finetune 60 "${UV[@]}" benchmarks/finetune.py --device cuda --count 1000 --batch-size 128 --epochs 2 \
    --workers 8 --workdir "$WORK/finetune"
fi

say "## Summary"
say ""
say "| part | status | seconds |"
say "|---|---|---|"
for row in "${SUMMARY[@]}"; do say "$row"; done
say ""
say "total: $(($(date +%s) - STARTED))s; results in $RESULTS"
