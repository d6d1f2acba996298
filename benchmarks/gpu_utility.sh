#!/bin/bash
# Issues 22/23's GPU figures in one device run (JAX backend; H100/H200): the long-tail preset's
# pipeline (its GAN, samples, evaluator, export) and then its utility study (10 paired seeds,
# both losses, the oversampling control, the ResNet second opinion, the worth curve), each timed;
# utility.json and utility.png are copied to OUT. Not yet run: no GPU was lent to the sessions that
# wrote it (docs/results.md says which figures are missing).
# Usage, from the repository root on the device machine (wheels in .whl: see docs/gpu.md):
#   bash benchmarks/gpu_utility.sh /path/to/mnist.npz "$OUT" [workers]
set -euo pipefail
MNIST=${1:?path to mnist.npz}
OUT=${2:?output folder}
WORKERS=${3:-4}  # trainings at once on the one GPU (small CNNs leave it mostly idle)
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
fi
export KERAS_BACKEND=jax PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
WORK=/tmp/gpu-lt && mkdir -p "$WORK" && cd "$WORK"
SETS=(--params "$OLDPWD/presets/mnist-longtail.yaml" --set data.path="$MNIST"
      --set tracking.enabled=false --set utility.workers="$WORKERS")
start=$(date +%s)
python -m ganpipe.cli run "${SETS[@]}" --set utility.enabled=false --quiet
mid=$(date +%s)
python -m ganpipe.cli utility "${SETS[@]}" --quiet
end=$(date +%s)
echo "pipeline without utility: $((mid - start)) s; utility study: $((end - mid)) s"
cp metrics/utility.json metrics/utility.png "$OUT/"
python - <<'PY'
import json
u = json.load(open("metrics/utility.json"))
s = u["scenarios"][u["headline_scenario"]]
print("verdict", u["verdict"], s["verdicts"], "baseline", s["baseline"], "treatment", s["treatment"])
for k, v in u["headline"].items():
    print(f"  {k}: {v:.4f}" if isinstance(v, float) else f"  {k}: {v}")
PY
