"""The bad-input suite (tests/bad_inputs.py), one test per case: each bad data source, param
or damaged file stops its `ganpipe` command with exit 2, one message naming the file, row or key, no
traceback, and no change to the outputs of the completed tiny run in the workspace."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import bad_inputs as suite  # the one list of cases


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    return suite.build_workspace(tmp_path_factory.mktemp("bad-inputs") / "base")


def test_the_suite_is_at_least_25_distinct_cases() -> None:
    names = [c.name for c in suite.CASES]
    assert len(names) >= 25 and len(set(names)) == len(names)


@pytest.mark.parametrize("case", suite.CASES, ids=lambda c: c.name)
def test_bad_input(case, workspace: Path, tmp_path: Path) -> None:
    result = suite.run_case(case, workspace, tmp_path)
    if result.skipped:
        pytest.skip(result.skipped)
    assert result.ok, suite.explain(result)
