#!/usr/bin/env bash
# Prepare .whl/ for `GPU_SH_PYTHON=python3 bash benchmarks/gpu.sh` on a GPU machine that has no
# package index but whose Python already holds torch, torchvision, numpy, Pillow and friends.
#
#   bash benchmarks/gpu_wheels.sh                # imgflow's wheel + what such a machine lacks
#   PY=3.12 TORCHCODEC=0.11.0 bash benchmarks/gpu_wheels.sh
#
# It builds imgflow's own wheel (pure Python: the core and the first-party plugins, so their entry
# points register) and downloads, for that machine's Python (PY, default 3.12) and x86-64 Linux,
# the wheels of imgflow's dependencies that a typical CUDA image lacks: pydantic (+ its core),
# pycocotools, and TorchCodec for GPU JPEG decoding. TorchCodec must match the machine's torch
# (its README has the table; one TorchCodec minor per torch minor since 0.8 <-> 2.9): set
# TORCHCODEC accordingly. Everything else is taken from that machine's Python as it is.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-3.12}
TORCHCODEC=${TORCHCODEC:-0.11.0}
mkdir -p .whl
rm -f .whl/imgflow-*.whl
uv build --wheel --out-dir .whl >/dev/null
platforms=()
for n in 17 27 28 31 34 35; do platforms+=(--platform "manylinux_2_${n}_x86_64"); done
platforms+=(--platform manylinux2014_x86_64 --platform manylinux1_x86_64)
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version "$PY" --implementation cp \
  "${platforms[@]}" -d .whl \
  "pydantic==2.14.3" "pydantic-core==2.50.4" "annotated-types==0.8.0" "typing-inspection==0.4.5" \
  "pycocotools==2.0.11" "torchcodec==$TORCHCODEC"
ls -la .whl
echo "now, on the GPU machine: GPU_SH_PYTHON=python3 bash benchmarks/gpu.sh  (carry .whl)"
