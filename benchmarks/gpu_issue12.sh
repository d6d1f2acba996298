#!/bin/bash
# The generator issue's GPU figures in one device run (JAX backend; H100/H200), printed and
# written under OUT:
#   1. time to quality on full MNIST, 120 s of training, with presets/mnist-gpu-2min.yaml
#      (FD / floor at 15, 30, 60, 90, 120 s) and the final generator saved;
#   2. CAS of that generator: 60,000 synthetic digits, trained as the utility stage trains;
#   3. training throughput of every architecture against a minimal jitted step (batch 1024,
#      float32 and mixed_bfloat16).
# Usage, from the repository root on the device machine (wheels in .whl: see docs/results.md):
#   bash benchmarks/gpu_issue12.sh /path/to/mnist.npz "$OUT"
set -euo pipefail
MNIST=${1:?path to mnist.npz}
OUT=${2:?output folder}
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
fi
export KERAS_BACKEND=jax PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
python benchmarks/time_to_quality.py presets/mnist-gpu-2min.yaml --budget 120 \
  --workdir /tmp/gpu-ttq --set data.path="$MNIST" --json "$OUT/ttq_gpu.json" \
  --grid "$OUT/gpu_grid.png" --save-generator /tmp/gpu-ttq/generator.keras
python benchmarks/cas.py /tmp/gpu-ttq/generator.keras --prepared /tmp/gpu-ttq/data/prepared \
  --per-class 6000 --seeds 3 --json "$OUT/cas_gpu.json"
python benchmarks/train_throughput.py --backend jax --batch-sizes 1024 \
  --precisions float32,mixed_bfloat16
