"""Run independent jobs in parallel: local worker processes, or a Dask cluster (the engine the
sweeps use) when its scheduler's address is given. The utility study's trainings go through here,
so a user with more cores or machines gets the study in about the time of its longest training.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from ganpipe.errors import GanpipeError

__all__ = ["cores", "run_jobs"]


def cores() -> int:
    """CPU cores this process may use (the affinity mask, not the machine's total)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def run_jobs(
    fn: Callable[..., Any],
    jobs: Sequence[Any],
    args: tuple[Any, ...] = (),
    workers: int = 1,
    address: str | None = None,
    on_done: Callable[[Any, Any], None] | None = None,
) -> list[Any]:
    """[fn(job, *args) for job in jobs], in job order, computed by `workers` local processes (in
    this process when 1) or by the Dask scheduler at `address`. `on_done(job, result)` as each
    finishes (progress). The first job to fail raises here, after the others were cancelled; a
    worker process that dies (killed, out of memory) is a GanpipeError saying so."""
    if address:
        return _on_dask(fn, jobs, args, address, on_done)
    if workers <= 1 or len(jobs) <= 1:
        results = []
        for job in jobs:
            results.append(fn(job, *args))
            if on_done is not None:
                on_done(job, results[-1])
        return results
    # spawn, not fork: the parent may hold TensorFlow's threads, which a fork cannot copy safely
    context = multiprocessing.get_context("spawn")
    results: list[Any] = [None] * len(jobs)
    with ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=context) as pool:
        pending = {pool.submit(fn, job, *args): i for i, job in enumerate(jobs)}
        try:
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    i = pending.pop(future)
                    results[i] = future.result()
                    if on_done is not None:
                        on_done(jobs[i], results[i])
        except BaseException as e:
            for future in pending:
                future.cancel()
            if isinstance(e, BrokenProcessPool):
                raise GanpipeError(
                    f"a worker process died before its {len(jobs)} jobs finished (killed, or out "
                    "of memory: fewer workers use less); the stages finished before are kept, run "
                    "the command again"
                ) from None
            raise
    return results


def _on_dask(
    fn: Callable[..., Any],
    jobs: Sequence[Any],
    args: tuple[Any, ...],
    address: str,
    on_done: Callable[[Any, Any], None] | None,
) -> list[Any]:
    from distributed import Client, as_completed

    with Client(address) as client:
        futures = [client.submit(fn, job, *args, pure=False) for job in jobs]
        index = {future.key: i for i, future in enumerate(futures)}
        results: list[Any] = [None] * len(jobs)
        for future in as_completed(futures):
            i = index[future.key]
            results[i] = future.result()
            if on_done is not None:
                on_done(jobs[i], results[i])
    return results
