"""The parallel runner under the utility study (ganpipe.evaluation.workers)."""

from __future__ import annotations

import os

import pytest

from ganpipe.errors import GanpipeError
from ganpipe.evaluation.workers import run_jobs


def square_or_die(x: int) -> int:
    if x < 0:
        os._exit(1)  # what the kernel's OOM killer or a stray kill looks like to the pool
    return x * x


def test_jobs_come_back_in_order_and_a_dead_worker_is_a_clear_error():
    seen = []
    assert run_jobs(square_or_die, [3, 1, 2], workers=2, on_done=lambda j, r: seen.append(j)) == [
        9, 1, 4]  # fmt: skip
    assert sorted(seen) == [1, 2, 3]
    with pytest.raises(GanpipeError, match="a worker process died before its 3 jobs finished"):
        run_jobs(square_or_die, [1, -1, 2], workers=2)
