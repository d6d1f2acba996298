"""The stage registry (ganpipe/registry.py) against dvc.yaml and the code, and the house's import
rules (docs/layout.md): static reads of the source, no stage is run."""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

import pytest
import yaml

from ganpipe.registry import FOUNDATION, NAMES, STAGES

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "ganpipe"


def module_file(module: str) -> Path | None:
    """The source file of a `ganpipe...` module or package, None for anything else."""
    if module != "ganpipe" and not module.startswith("ganpipe."):
        return None
    base = REPO / module.replace(".", "/")
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.exists():
            return path
    return None


@cache
def imports_of(path: Path) -> frozenset[str]:
    """Every module `path` imports, at the top or inside a function (lazy imports count: they run
    when the stage does), type-checking-only imports left out."""
    tree = ast.parse(path.read_text())
    type_checking: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            type_checking.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in type_checking:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            # `from ganpipe.x import y` may name a submodule y
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return frozenset(found)


def closure(path: Path) -> set[Path]:
    """The ganpipe source files `path` reaches by imports (packages' __init__ included)."""
    seen: set[Path] = set()
    todo = [path]
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        for module in imports_of(current):
            parts = module.split(".")
            for i in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__ and a/b/__init__
                found = module_file(".".join(parts[:i]))
                if found is not None:
                    todo.append(found)
    return seen


def only_a_docstring(path: Path) -> bool:
    body = ast.parse(path.read_text()).body
    return all(isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant) for n in body)


def covered(path: Path, entries: tuple[str, ...]) -> bool:
    if path.name == "__init__.py" and only_a_docstring(path):
        return True  # an empty package shapes nothing
    rel = path.relative_to(PACKAGE).as_posix()
    return any(rel == e or rel.startswith(e.rstrip("/") + "/") for e in entries)


def dvc_stages() -> dict:
    return yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def names(entries: list) -> list[str]:
    return [e if isinstance(e, str) else next(iter(e)) for e in entries]


def test_dvc_yaml_declares_the_registry_stages_in_order():
    assert list(dvc_stages()) == list(NAMES)
    for name, stage in dvc_stages().items():
        assert stage["cmd"] == f"ganpipe {name} --quiet"


@pytest.mark.parametrize("name", NAMES)
def test_dvc_yaml_deps_params_and_outs_are_the_registry_ones(name):
    stage, spec = dvc_stages()[name], STAGES[name]
    assert stage["deps"] == [*spec.inputs, *(f"ganpipe/{c}" for c in spec.code)]
    assert stage["params"] == list(spec.params)
    outs = [*names(stage.get("outs", [])), *names(stage.get("metrics", []))]
    outs += names(stage.get("plots", []))
    assert sorted(outs) == sorted(spec.outputs)
    for entry in spec.code:
        assert (PACKAGE / entry).exists(), f"registry code entry ganpipe/{entry} does not exist"


@pytest.mark.parametrize("name", NAMES)
def test_a_stage_code_covers_everything_it_imports(name):
    """The drift this catches: generate imported data/synthetic.py, data/sampling.py and images.py
    while dvc.yaml listed none of them, so an edit there left generate 'up to date'."""
    spec = STAGES[name]
    reached = closure(PACKAGE / "stages" / f"{name}.py")
    missing = sorted(
        p.relative_to(PACKAGE).as_posix()
        for p in reached
        if not covered(p, spec.code) and not covered(p, FOUNDATION)
    )
    assert not missing, f"stage {name} imports code its registry entry does not name: {missing}"


def test_the_registry_drives_the_cli():
    from ganpipe.cli import _parser

    sub = next(a for a in _parser()._actions if a.dest == "command")
    assert list(sub.choices) == [*NAMES, "run", "serve", "check-metrics"]
    for name in NAMES:
        assert sub.choices[name].description == STAGES[name].help


# ---- the import rules of docs/layout.md ------------------------------------------------------------

WINGS = ("gan", "evaluation", "data")
ABOVE_STAGES = ("ganpipe.orchestration", "ganpipe.mlflow_adapter", "ganpipe.serve", "ganpipe.cli")


def package_files(*folders: str) -> list[Path]:
    return [p for f in folders for p in sorted((PACKAGE / f).rglob("*.py"))]


def imported(path: Path, prefixes: tuple[str, ...]) -> list[str]:
    return sorted(
        m for m in imports_of(path) if any(m == p or m.startswith(p + ".") for p in prefixes)
    )


@pytest.mark.parametrize("wing", WINGS)
def test_the_wings_import_no_stage_orchestration_or_mlflow(wing):
    forbidden = ("ganpipe.stages", "ganpipe.pipeline", *ABOVE_STAGES, "mlflow", "prefect", "dvc")
    bad = {
        p.relative_to(REPO).as_posix(): imported(p, forbidden)
        for p in package_files(wing)
        if imported(p, forbidden)
    }
    assert not bad, bad


def test_stages_import_only_the_tracking_interface():
    """Stages and the trainer see a Tracker, never the MLflow adapter or the orchestration. (The
    utility stage runs its scenarios through ganpipe.pipeline: a small pipeline of its own.)"""
    forbidden = (*ABOVE_STAGES, "mlflow", "prefect")
    bad = {
        p.name: imported(p, forbidden) for p in package_files("stages") if imported(p, forbidden)
    }
    assert not bad, bad


def test_only_the_mlflow_adapter_imports_mlflow():
    everything = sorted(PACKAGE.rglob("*.py"))
    importers = {
        p.relative_to(PACKAGE).parent.as_posix() for p in everything if imported(p, ("mlflow",))
    }
    assert importers == {"mlflow_adapter"}


def test_the_foundation_imports_nothing_above_it():
    allowed = {f"ganpipe.{f.removesuffix('.py')}" for f in FOUNDATION if f != "__init__.py"}
    for f in FOUNDATION:
        inside = {m for m in imported(PACKAGE / f, ("ganpipe",)) if module_file(m)}
        assert inside <= allowed, (f, inside)
