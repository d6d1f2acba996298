"""Time to quality: train a config for a wall-clock budget; print the quality it has reached at
fixed points of that budget (a curve, not one point).

    python benchmarks/time_to_quality.py params.yaml --budget 180
    python benchmarks/time_to_quality.py presets/mnist-cpu-10min.yaml --budget 600 \\
        --set data.path=/path/to/mnist.npz --json ttq.json
    KERAS_BACKEND=jax python benchmarks/time_to_quality.py presets/mnist-gpu-2min.yaml --budget 120

Prepares the data and trains (or loads) the pipeline's evaluator in --workdir, then trains the
GAN with the trainer's own parts (plan_run, build_for_training, make_runner, epoch_order: the
steps `ganpipe train` runs, without its checkpoints) until `--budget` seconds of training have
passed. At each point (default 1/8, 1/4, 1/2, 3/4 and all of the budget) the clock stops, and the
exported generator (the EMA one under train.ema_decay) draws --per-class samples of every class,
scored as the evaluate stage scores them: Fréchet classifier distance to the real training
subsample, the same for real test images (the floor), conditional accuracy, classifier score.
The clock includes tracing/compilation: it is the time a user waits. `train.epochs` does not
apply (the budget does); the data-order and noise seeds are the trainer's.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("params", help="params file or preset")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--budget", type=float, default=180.0, help="seconds of training")
    ap.add_argument(
        "--points",
        default="0.125,0.25,0.5,0.75,1",
        help="fractions of the budget at which to score (comma-separated)",
    )
    ap.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="wall: elapsed seconds; cpu: this process's CPU seconds / the cores it may use (what "
        "the run would take with the machine to itself: for comparing runs on a shared machine)",
    )
    ap.add_argument("--per-class", type=int, default=500, help="samples per class per score")
    ap.add_argument("--workdir", default="ttq-run", help="prepared data and evaluator go here")
    ap.add_argument("--json", help="also write the curve as JSON here")
    ap.add_argument("--grid", help="save the final sample grid (PNG) here")
    ap.add_argument("--save-generator", help="save the final exported generator (.keras) here")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import keras

    from ganpipe.config import load_params
    from ganpipe.data.prepared import to_uint8
    from ganpipe.evaluation.domain_classifier import get_evaluator
    from ganpipe.evaluation.metrics import MetricInputs, compute_metrics
    from ganpipe.evaluation.metrics.extractors import build_extractor, load_feature_network
    from ganpipe.evaluation.scoring import real_references
    from ganpipe.gan.training import ema
    from ganpipe.gan.training.plan import plan_run
    from ganpipe.gan.training.sampling import epoch_order
    from ganpipe.gan.training.state import build_for_training
    from ganpipe.gan.training.trainer import LOG_EVERY, make_runner
    from ganpipe.pipeline import Paths, run_stage
    from ganpipe.stages.evaluate import REFERENCE_CACHE

    params = load_params(args.params, [*args.overrides, "tracking.enabled=false"])
    paths = Paths.under(args.workdir)
    run_stage("prepare", params, paths, progress=False)
    run_stage("classifier", params, paths, progress=False)
    ep = params.evaluate
    prepared_run = plan_run(params, paths.prepared, Path(args.workdir) / "unused-checkpoints")
    data, params = prepared_run.data, prepared_run.params  # the data's resolved auto values
    evaluator = get_evaluator(paths.prepared, ep, paths.evaluator)
    extractor = build_extractor(
        load_feature_network(ep, data.image_shape), evaluator.extractor, evaluator.meta
    )
    refs = real_references(ep, data, extractor, Path(args.workdir) / REFERENCE_CACHE).refs

    fractions = sorted(float(f) for f in args.points.split(","))
    marks = [args.budget * f for f in fractions]
    tp, latent_dim, k = params.train, params.model.latent_dim, data.num_classes
    t0 = time.perf_counter()
    state = build_for_training(params, data.image_shape, k)
    runner = make_runner(
        prepared_run.backend, params, state, data.train.images, data.train.labels, 0
    )
    spe = len(data.train) // tp.batch_size
    eval_labels = np.repeat(np.arange(k, dtype=np.int32), args.per_class)
    eval_noise = np.random.default_rng([tp.seed, 0xE7A1]).standard_normal(
        (len(eval_labels), latent_dim), dtype=np.float32
    )

    def score() -> dict[str, float]:
        runner.sync_to_keras()
        if state.ema_generator is not None:
            ema.copy_statistics(state.ema_generator, state.generator)
        images = []
        for s in range(0, len(eval_labels), 500):
            out = state.exported(
                [eval_noise[s : s + 500], eval_labels[s : s + 500]], training=False
            )
            images.append(to_uint8(keras.ops.convert_to_numpy(out)))
        syn = extractor.feature_set(np.concatenate(images), eval_labels)
        inputs = MetricInputs(
            synthetic=syn,
            real=refs["train"].features,
            real_test=refs["test"].features,
            fd_key=extractor.fd_key,
            real_stats=refs["train"].stats,
            real_test_stats=refs["test"].stats,
        )
        names = ["frechet", "frechet_floor", "conditional_accuracy", "classifier_score"]
        m = compute_metrics(inputs, names)
        fd = m[extractor.fd_key]
        return {
            "fd": fd,
            "floor": m[f"{extractor.fd_key}_floor"],
            "fd_over_floor": fd / m[f"{extractor.fd_key}_floor"],
            "conditional_accuracy": m["conditional_accuracy"],
            "classifier_score": m["classifier_score"],
        }

    setup_seconds = time.perf_counter() - t0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()

    def now_seconds() -> float:
        if args.clock == "cpu":
            return time.process_time() / (cores or 1)
        return time.perf_counter()

    curve: list[dict[str, float]] = []
    trained, step, epoch, pending = 0.0, 0, -1, []
    clock = now_seconds()
    print(f"{'seconds':>8} {'step':>7} {'epoch':>6} {'fd':>8} {'fd/floor':>9} {'cond_acc':>9}")
    for mark in marks:
        while trained < mark:
            if step // spe != epoch:
                epoch = step // spe
                runner.begin_epoch(epoch_order(tp.seed, epoch, data.train.labels, tp.class_balance))
            pending.append(runner.step(step))
            step += 1
            if len(pending) >= LOG_EVERY or not prepared_run.backend == "jax":
                values = runner.fetch(pending)  # waits for the steps (JAX runs ahead)
                pending.clear()
                if not np.all(np.isfinite(values[:, :2])):
                    print(f"nonfinite loss at step {step}", file=sys.stderr)
                    return 1
                now = now_seconds()
                trained += now - clock
                clock = now
        runner.fetch(pending)
        pending.clear()
        row = {"seconds": round(trained, 1), "step": step, "epoch": round(step / spe, 2)}
        row |= score()
        curve.append(row)
        print(
            f"{row['seconds']:>8.1f} {step:>7d} {row['epoch']:>6.1f} {row['fd']:>8.3f} "
            f"{row['fd_over_floor']:>9.2f} {row['conditional_accuracy']:>9.4f}",
            flush=True,
        )
        clock = now_seconds()  # scoring is not training time

    if args.grid:
        from ganpipe.gan.training.export import write_samples

        write_samples(prepared_run, state, Path(args.grid))
    if args.save_generator:
        runner.sync_to_keras()
        if state.ema_generator is not None:
            ema.copy_statistics(state.ema_generator, state.generator)
        state.exported.save(args.save_generator)
    result = {
        "params": args.params,
        "overrides": args.overrides,
        "budget_seconds": args.budget,
        "clock": args.clock,
        "backend": keras.backend.backend(),
        "machine": platform.node(),
        "num_train": len(data.train),
        "batch_size": tp.batch_size,
        "setup_seconds": round(setup_seconds, 1),
        "curve": curve,
    }
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
