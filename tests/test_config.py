"""Params: loading, overrides, and one clear message per mistake before any work starts."""

from pathlib import Path

import pytest

from ganpipe.config import Params, load_params
from ganpipe.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def test_repo_params_match_the_defaults():
    # params.yaml documents the defaults; drift between them would mislead users.
    assert load_params(REPO / "params.yaml").model_dump() == Params().model_dump()


def test_overrides_are_typed_and_applied():
    p = load_params(REPO / "params.yaml", ["train.epochs=3", "data.source=digits", "data.path=x"])
    assert p.train.epochs == 3 and p.data.source == "digits" and p.data.path == "x"
    assert p.origin.endswith("params.yaml")


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("train.epochs=-1", "train.epochs: Input should be greater than or equal to 1"),
        ("train.epochz=3", "train.epochz: unknown key"),
        ("data.source=imagenet", "data.source: Input should be"),
        ("train.batch_size=abc", "train.batch_size: Input should be a valid integer"),
        ("nosuch.key=1", "nosuch: unknown key"),
        ("data.source=folder", "data.path is required"),
        ("epochs=3", "expected section.key=value"),
    ],
)
def test_bad_values_name_the_file_and_key(override, expected):
    with pytest.raises(ConfigError) as e:
        load_params(REPO / "params.yaml", [override])
    assert expected in str(e.value)
    if "section.key" not in expected:
        assert str(e.value).startswith(str(REPO / "params.yaml"))


def test_unreadable_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="cannot read params file"):
        load_params(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load_params(bad)
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_params(bad)


def test_flat_names_every_param():
    flat = Params().flat()
    assert flat["train.epochs"] == Params().train.epochs
    assert "tracking.experiment" in flat and "data.source" in flat


def test_every_preset_is_valid():
    """The presets are documented commands (README, docs/results.md): each one must load."""
    presets = sorted((Path(__file__).parents[1] / "presets").glob("*.yaml"))
    assert presets
    for preset in presets:
        load_params(preset, [])
