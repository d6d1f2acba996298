"""Stage `train`: the prepared data in `paths.prepared` -> the generator and friends in
`paths.models` (the trainer: ganpipe.gan.training), resuming from `paths.checkpoints`.

Besides training, the stage does the tracking that belongs to the pipeline rather than to the
trainer: it tags the run with the data it trained on and logs that as the run's dataset input, logs
the data summary, the final sample grid, the history and the generator (a logged model, registered
only by the evaluate stage once the run got that far), and leaves the MLflow run's id
beside the model so that later stages run as their own processes (`dvc repro`) log into the same
run. The trainer itself logs only its metrics and sample grids.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ganpipe.config import Params
from ganpipe.tracker import Tracker, save_run_file

if TYPE_CHECKING:
    from ganpipe.paths import Paths


def run(params: Params, paths: Paths, tracker: Tracker, progress: bool = True) -> dict[str, Any]:
    """The stage: `paths.prepared` -> `paths.models` (checkpoints in `paths.checkpoints`); returns
    the trainer's summary (`train_summary.json`). TensorFlow or JAX is loaded only when it runs."""
    from ganpipe.data.prepared import load_prepared

    load_prepared(paths.prepared)  # missing data: an error before TF loads
    from ganpipe.gan.training.trainer import train

    tracker.log_data(paths.prepared)  # tags and the dataset input (once per run)
    tracker.log_artifact(paths.prepared / "summary.json", "data")
    result = train(params, paths.prepared, paths.models, paths.checkpoints, tracker, progress)
    tracker.log_artifact(paths.models / "samples" / "final.png", "samples")
    tracker.log_artifact(paths.models / "history.csv", "train")
    tracker.log_generator(paths.models / "generator.keras")
    save_run_file(tracker, paths.models)
    return result
