"""Cache keys: the sha256 of canonical JSON, and a fingerprint of the code that shapes a result.

Every cache in ganpipe (training checkpoints, the evaluator, the reference statistics) is keyed by
what went into it: params, data, and the source of the code that made it. With the code in the
key, a change to the trainer makes `dvc repro` (or any rerun) train afresh instead of resuming a
finished checkpoint that other code made, and a changed evaluator is retrained, not loaded.
"""

from __future__ import annotations

import hashlib
import json
from functools import cache
from pathlib import Path
from typing import Any

PACKAGE_ROOT = Path(__file__).resolve().parent


def json_sha256(obj: Any, length: int = 64) -> str:
    """sha256 (hex, first `length` digits) of `obj` as JSON with sorted keys (json.dumps' default
    separators: the keys stored before this function existed stay the same)."""
    blob = json.dumps(obj, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


@cache
def source_fingerprint(*parts: str) -> str:
    """A short hash of the source files under `parts` (paths relative to the package, e.g.
    "training" or "models/dcgan.py"): their relative names and bytes, in sorted order. Any edit,
    comments included, changes it; that errs on the side of recomputing, never of reusing."""
    digest = hashlib.sha256()
    for part in sorted(parts):
        root = PACKAGE_ROOT / part
        if not root.exists():
            raise FileNotFoundError(f"source_fingerprint: no {root}")
        files = sorted(root.rglob("*.py")) if root.is_dir() else [root]
        for path in files:
            digest.update(path.relative_to(PACKAGE_ROOT).as_posix().encode() + b"\0")
            digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]
