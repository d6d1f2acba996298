"""Where each stage reads and writes: one `Paths` passed down to every stage."""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from pathlib import Path


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
    # the utility stage's work: its scenarios' data, GANs and arms (kept between runs, not an output)
    utility: Path = Path("utility")

    @classmethod
    def under(cls, root: str | os.PathLike[str]) -> Paths:
        """The default layout below `root` (tests, sweeps)."""
        return cls(**{f.name: Path(root) / f.default for f in fields(cls)})
