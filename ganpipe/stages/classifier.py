"""Stage `classifier`: train (or find in its cache) the evaluator for the prepared data.

The evaluator itself (network, training recipe, cache, features, off-label filter) lives in
`ganpipe.evaluation.domain_classifier`; augment, evaluate and the utility stage load it from the same cache.
"""

from __future__ import annotations

from typing import Any

from ganpipe.config import Params
from ganpipe.paths import Paths
from ganpipe.tracker import Tracker


def run(params: Params, paths: Paths, tracker: Tracker, progress: bool = True) -> dict[str, Any]:
    """The stage: `paths.prepared` -> `paths.evaluator` (classifier.keras, meta.json). Its own
    output, so a damaged cached file is rebuilt (with a warning); the stages that only read the
    evaluator stop with a DataError instead."""
    from ganpipe.evaluation.domain_classifier import get_evaluator

    return get_evaluator(
        paths.prepared, params.evaluate, paths.evaluator, rebuild_damaged=True
    ).meta
