"""The stages in order, and the one function that runs any of them.

The CLI (and so `dvc.yaml`), `ganpipe run` and the Prefect flow all call `run_stage`; no stage logic
lives anywhere else. Imports are inside the functions so `ganpipe prepare` never loads TensorFlow.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from ganpipe.config import Params
from ganpipe.ops.tracking import NULL_TRACKER, RUN_FILE, Tracker, save_run_file

# classifier before augment: augment.reject_off_label filters with it
STAGES = ("prepare", "train", "generate", "classifier", "augment", "evaluate")


@dataclass(frozen=True)
class Paths:
    """Where each stage reads and writes; the defaults are the ones `dvc.yaml` declares."""

    prepared: Path = Path("data/prepared")
    models: Path = Path("models")
    checkpoints: Path = Path("checkpoints")
    synthetic: Path = Path("data/synthetic")
    augmented: Path = Path("data/augmented")
    evaluator: Path = Path("evaluator")
    metrics: Path = Path("metrics")

    @classmethod
    def under(cls, root: str | os.PathLike[str]) -> Paths:
        """The default layout below `root` (tests, sweeps)."""
        return cls(**{f.name: Path(root) / f.default for f in fields(cls)})


def run_stage(
    name: str,
    params: Params,
    paths: Paths = Paths(),
    tracker: Tracker = NULL_TRACKER,
    progress: bool = True,
) -> dict[str, Any]:
    """Run one stage; return its summary (metrics for `evaluate`)."""
    if name == "prepare":
        from ganpipe.stages.prepare import prepare

        return prepare(params.data, paths.prepared, origin=params.origin)
    if name == "train":
        from ganpipe.data.prepared import load_prepared
        from ganpipe.training.trainer import train

        summary = load_prepared(paths.prepared).summary
        tracker.set_tags(
            {"data.content_hash": summary["content_hash"], "data.source": summary["source"]}
        )
        tracker.log_artifact(paths.prepared / "summary.json", "data")
        result = train(params, paths.prepared, paths.models, paths.checkpoints, tracker, progress)
        tracker.log_artifact(paths.models / "samples" / "final.png", "samples")
        tracker.log_artifact(paths.models / "history.csv", "train")
        tracker.log_generator(paths.models / "generator.keras")
        save_run_file(tracker, paths.models)
        return result
    if name == "generate":
        from ganpipe.stages.generate import generate

        return generate(
            params.generate, paths.models, paths.prepared, paths.synthetic,
            latent_dim=params.model.latent_dim, tracker=tracker,
        )  # fmt: skip
    if name == "augment":
        from ganpipe.stages.augment import augment

        classifier = None
        if params.augment.reject_off_label:
            from ganpipe.models.classifier import get_classifier

            classifier = get_classifier(paths.prepared, params.evaluate, paths.evaluator)[0]
        return augment(params.augment, paths.prepared, paths.synthetic, paths.augmented, classifier)
    if name == "classifier":
        from ganpipe.models.classifier import get_classifier

        return get_classifier(paths.prepared, params.evaluate, paths.evaluator)[1]
    if name == "evaluate":
        from ganpipe.stages.evaluate import evaluate

        return evaluate(
            params.evaluate,
            paths.prepared,
            paths.synthetic,
            paths.metrics,
            paths.evaluator,
            tracker,
            augment_params=params.augment,
        )
    raise ValueError(f"unknown stage {name!r}; stages are {', '.join(STAGES)}")


def run_file(paths: Paths) -> Path:
    """The file through which a stage run on its own finds the pipeline's MLflow run."""
    return paths.models / RUN_FILE
