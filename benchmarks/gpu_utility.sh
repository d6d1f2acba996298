#!/bin/bash
# Issues 22/23's GPU figures in one device run (JAX backend; H100/H200). Three whole pipelines
# (`ganpipe run`: GAN, samples, evaluator, utility study, export) side by side on the one GPU,
# each timed per stage, each with `utility.workers` trainings at once:
#   longtail   presets/mnist-longtail.yaml as committed (10 paired seeds, the oversampling
#              control, shares with real fill, the ResNet second opinion, the worth curve)
#   labels600  presets/mnist-600-labels.yaml (the few-label case)
#   variety    the long-tail preset with VARIETY's generator options (issue 23's variety for the
#              rare classes), its study without the ResNet and the worth curve, with soft-target
#              treatments (utility.teacher_mixes [0, 0.5]), deferred ones (utility.synthetic_starts
#              [0, 0.5]) and real-filled ones (utility.real_fills [0, 1]) beside the plain ones
#   lowres     the long-tail GAN with model.shared_lowres for 3x the epochs, evaluated per class
#              (no study: on 2 CPU cores at 20 epochs its samples ignored their labels)
# Each job's log streams to OUT/<job>.log; at the end OUT/metrics.tgz holds every job's metrics/
# (utility.json, eval.json, per_class.csv, plots), and the log ends with the headline figures.
# Usage, from the repository root on the device machine (wheels in .whl: see docs/gpu.md):
#   bash benchmarks/gpu_utility.sh /path/to/mnist.npz "$OUT" [budget_s per job]
# EXTRA="--set train.epochs=1 --set utility.seeds=3 ..." is added to every job (a quick dry run);
# JOBS="longtail labels600" runs only those.
set -uo pipefail
MNIST=$(realpath "${1:?path to mnist.npz}")
OUT=$(realpath "${2:?output folder}")
BUDGET=${3:-520}
VARIETY=${VARIETY:---set model.embed_noise=0.25}
EXTRA=${EXTRA:-}
JOBS=${JOBS:-longtail labels600 variety lowres}
REPO=$PWD
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$REPO${PYTHONPATH:+:$PYTHONPATH}
else
  export PYTHONPATH=$REPO${PYTHONPATH:+:$PYTHONPATH}
fi
# A compilation cache shared by the workers: every training of one architecture and batch shape
# compiles the same program, so only the first one pays for it.
export KERAS_BACKEND=jax PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false \
  JAX_COMPILATION_CACHE_DIR=/tmp/jax-cache TF_CPP_MIN_LOG_LEVEL=3
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
python3 -c "import jax, keras; print('jax', jax.__version__, jax.devices(), 'keras', keras.__version__)" \
  || exit 1

job() {  # job NAME WORKERS PRESET [--set ...]: one pipeline in /tmp/gpu-NAME, log in OUT
  local name=$1 workers=$2 preset=$3
  shift 3
  [[ " $JOBS " == *" $name "* ]] || return 0
  # shellcheck disable=SC2086  # EXTRA is a list of --set options
  mkdir -p "/tmp/gpu-$name" && cd "/tmp/gpu-$name" || return 1
  local start=$SECONDS
  timeout "$BUDGET" python3 -m ganpipe.cli run --params "$REPO/presets/$preset" \
    --set data.path="$MNIST" --set tracking.enabled=false --set utility.workers="$workers" "$@" $EXTRA \
    >"$OUT/$name.log" 2>&1
  echo "== $name: rc $?, $((SECONDS - start)) s wall" >>"$OUT/$name.log"
  python3 - "$name" >>"$OUT/$name.log" 2>&1 <<'PY'
import csv, json, sys
from pathlib import Path
e = json.loads(Path("metrics/eval.json").read_text()) if Path("metrics/eval.json").exists() else {}
if e:
    print(f"FD/floor {e['classifier_fd'] / e['classifier_fd_floor']:.2f} on-label "
          f"{e['conditional_accuracy']:.4f} recall {e['recall']:.3f} coverage {e['coverage']:.3f}")
    rows = list(csv.DictReader(open("metrics/per_class.csv")))
    for k in ("conditional_accuracy", "recall", "coverage", "closer_to_train_fraction"):
        print(f"  per class {k}: " + " ".join(f"{float(r[k]):.2f}" for r in rows))
u = Path("metrics/utility.json")
if u.exists():
    u = json.loads(u.read_text())
    print("verdict", u.get("verdict"), "headline", json.dumps(u.get("headline")))
    for name, s in u.get("scenarios", {}).items():
        print(name, "baseline", s.get("baseline"), "treatment", s.get("treatment"),
              "verdicts", s.get("verdicts"), "seconds", s.get("seconds"))
PY
}

job longtail 8 mnist-longtail.yaml &
job labels600 6 mnist-600-labels.yaml &
# shellcheck disable=SC2086  # VARIETY is a list of --set options
job variety 5 mnist-longtail.yaml $VARIETY --set utility.second_architecture=false \
  --set 'utility.worth_multiples=[]' --set 'utility.teacher_mixes=[0,0.5]' \
  --set 'utility.synthetic_starts=[0,0.5]' --set 'utility.real_fills=[0,1]' &
job lowres 1 mnist-longtail.yaml --set model.shared_lowres=true --set train.epochs=60 \
  --set utility.enabled=false --set augment.mode=balance &
wait
# shellcheck disable=SC2046  # one metrics/ folder per job that ran
tar czf "$OUT/metrics.tgz" -C /tmp $(for j in $JOBS; do echo "gpu-$j/metrics"; done) 2>/dev/null
tail -n 25 "$OUT"/*.log
