"""The bad-input suite: every way a user can hand ganpipe bad data, params or damaged files.

  python tests/bad_inputs.py            # all cases; prints the table, exits 1 if any fails
  python tests/bad_inputs.py -k csv -v  # the cases whose name holds "csv", with their messages

Each case runs the real `ganpipe` command in a subprocess, in its own copy of a workspace that holds
a completed tiny run (tests/data/tiny.yaml, tracking off; built once), and passes when the command
exits 2 with `ganpipe <command>: error: <message>`, the message holds the case's text (the file,
row or key), nothing printed a traceback, and no file in the workspace changed (every file's hash
before and after; a temporary file left behind counts as a change).

The table's columns: exit code; clear (exit 2, the message holds the case's text, no traceback);
traceback; changed (files added, removed or modified); s (the command's seconds).

Adding a case is one `Case(...)` entry in CASES: its argv, the texts its message must hold, and a
`setup` that makes the bad input in the workspace copy; `wrap` runs the command inside something
else (a mount namespace with a small disk, see `small_disk`). tests/test_bad_inputs.py runs the
same list, one test each; tests/test_disk_full.py uses `small_disk` for more detailed checks.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "tests" / "data" / "tiny.yaml"
GANPIPE = str(Path(sys.executable).parent / "ganpipe")
TRACEBACK = "Traceback (most recent call last)"
PAGE = 4096  # tmpfs counts whole pages per file
# Not outputs: the workspace lock every command takes (ganpipe/lock.py) stays behind, released.
# and the lock file that guards a SQLite tracking store's creation (ganpipe/mlflow_adapter/tracking.py).
NOT_OUTPUTS = {".ganpipe.lock", "mlflow.db.lock"}

Setup = Callable[[Path], None]
# (workspace, ganpipe argv) -> the argv to run instead (e.g. inside a namespace with a small disk).
Wrap = Callable[[Path, list[str]], list[str]]


@dataclass(frozen=True)
class Case:
    name: str
    args: list[str]  # after `ganpipe`; `--quiet` is added. Paths are relative to the workspace.
    expect: tuple[str, ...]  # what the error message must contain (file, row, key)
    setup: Setup | None = None  # makes the bad input in the workspace copy
    wrap: Wrap | None = None
    skip: Callable[[], str | None] = field(default=lambda: None)  # a reason to skip, or None
    exit_code: int = 2  # the CLI's code for an error the user can fix

    @property
    def command(self) -> str:
        return self.args[0]


@dataclass
class Result:
    case: Case
    exit_code: int | None = None
    traceback: bool = False
    message: str = ""  # the `ganpipe <command>: error:` lines
    named: bool = False  # the message holds every expected text
    changed: list[str] = field(default_factory=list)  # files added, removed or modified
    seconds: float = 0.0
    skipped: str | None = None
    output: str = ""  # stdout + stderr, for -v and failing tests

    @property
    def clear(self) -> bool:
        return self.exit_code == self.case.exit_code and self.named and not self.traceback

    @property
    def ok(self) -> bool:
        return self.skipped is not None or (self.clear and not self.changed)


# --- the workspace ------------------------------------------------------------------------------


def env() -> dict[str, str]:
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    out = {**os.environ, "PATH": path, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONWARNINGS": "ignore"}
    out.setdefault("KERAS_BACKEND", "tensorflow")
    out.pop("MLFLOW_TRACKING_URI", None)
    return out


def build_workspace(root: Path) -> Path:
    """`root` holding a completed tiny run: params.yaml (tiny, tracking off) and every output."""
    root.mkdir(parents=True, exist_ok=True)
    shutil.copy(TINY, root / "params.yaml")
    done = subprocess.run(
        [GANPIPE, "run", "--quiet"], cwd=root, env=env(), capture_output=True, text=True
    )
    if done.returncode != 0:
        raise RuntimeError(f"the tiny run failed in {root}:\n{done.stdout}\n{done.stderr}")
    return root


def snapshot(root: Path) -> dict[str, str]:
    """Every file under `root` (hidden ones too) -> its SHA-256."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.is_symlink() and p.name not in NOT_OUTPUTS
    }


def diff(before: dict[str, str], after: dict[str, str]) -> list[str]:
    return sorted(
        [f"+{k}" for k in after.keys() - before.keys()]
        + [f"-{k}" for k in before.keys() - after.keys()]
        + [f"~{k}" for k in before.keys() & after.keys() if before[k] != after[k]]
    )


def run_case(case: Case, base: Path, scratch: Path) -> Result:
    """`case` in a fresh copy of the workspace `base` (made under `scratch`, removed after)."""
    reason = case.skip()
    if reason:
        return Result(case, skipped=reason)
    ws = scratch / case.name
    shutil.rmtree(ws, ignore_errors=True)
    shutil.copytree(base, ws, symlinks=True)
    try:
        (ws / "inputs").mkdir(exist_ok=True)
        if case.setup:
            case.setup(ws)
        before = snapshot(ws)
        argv = [GANPIPE, *case.args, "--quiet"]
        if case.wrap:
            argv = case.wrap(ws, argv)
        t0 = time.perf_counter()
        done = subprocess.run(argv, cwd=ws, env=env(), capture_output=True, text=True, timeout=600)
        seconds = time.perf_counter() - t0
        output = done.stdout + done.stderr
        # The message: from `ganpipe <command>: error:` to the end (a ConfigError may list keys).
        start = done.stderr.find(f"ganpipe {case.command}: error:")
        message = done.stderr[start:].strip() if start >= 0 else ""
        return Result(
            case,
            exit_code=done.returncode,
            traceback=TRACEBACK in output,
            message=message,
            named=bool(message) and all(text in message for text in case.expect),
            changed=diff(before, snapshot(ws)),
            seconds=seconds,
            output=output,
        )
    finally:
        shutil.rmtree(ws, ignore_errors=True)


# --- a small disk: a tmpfs in a private mount namespace -------------------------------------------

SMALL_DISK = ".small_disk"  # the mount point inside the workspace; empty outside the namespace
_SMALL_DISK_SCRIPT = r"""
set -eu
disk=$1 out=$2 size=$3; shift 3
mount -t tmpfs -o "size=$size" tmpfs "$disk"
cp -a "$out" "$disk/"
set +e
"$@"
rc=$?
set -e
# Back where it came from, with anything the run left beside it (a temporary dir would show).
rm -rf "$out"
cp -a "$disk/." "$(dirname "$out")/"
exit $rc
"""


@cache
def small_disk_unavailable() -> str | None:
    """Why a tmpfs cannot be mounted in a private namespace here, or None when it can."""
    if not shutil.which("unshare"):
        return "no unshare(1) on this machine"
    with tempfile.TemporaryDirectory() as d:
        try:
            done = subprocess.run(
                ["unshare", "--user", "--map-root-user", "--mount",
                 "mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", d],
                capture_output=True, text=True, timeout=30,
            )  # fmt: skip
        except (OSError, subprocess.TimeoutExpired) as e:
            return f"unshare failed: {e}"
    if done.returncode != 0:
        return f"unshare/mount not permitted here: {done.stderr.strip()}"
    return None


def disk_usage(path: Path) -> int:
    """Bytes `path` takes on a tmpfs: whole pages per file."""
    return sum(-(-p.stat().st_size // PAGE) * PAGE for p in path.rglob("*") if p.is_file())


def small_disk(out: str, headroom: int) -> Wrap:
    """Run the command with the output dir `out` (relative to the workspace) moved onto a tmpfs
    that holds a copy of it and `headroom` bytes more, then copied back. The command must write to
    `.small_disk/<name of out>` (its `--<x>-dir`)."""

    def wrap(ws: Path, argv: list[str]) -> list[str]:
        size = disk_usage(ws / out) + headroom
        (ws / SMALL_DISK).mkdir(exist_ok=True)
        return ["unshare", "--user", "--map-root-user", "--mount",
                "bash", "-c", _SMALL_DISK_SCRIPT, "small_disk", SMALL_DISK, out, str(size),
                *argv]  # fmt: skip

    return wrap


# --- bad inputs -----------------------------------------------------------------------------------

NPZ = ["--set", "data.source=mnist", "--set", "data.path=inputs/bad.npz"]
CSV = ["--set", "data.source=csv", "--set", "data.path=inputs/bad.csv"]
FOLDER = ["--set", "data.source=folder", "--set", "data.path=inputs/folder"]


def _arrays() -> dict[str, np.ndarray]:
    """A valid mnist-layout .npz's arrays: 8x8 uint8 images, every class in both splits."""
    rng = np.random.default_rng(0)
    return {
        "x_train": rng.integers(0, 256, (40, 8, 8), dtype=np.uint8),
        "y_train": np.arange(40) % 10,
        "x_test": rng.integers(0, 256, (20, 8, 8), dtype=np.uint8),
        "y_test": np.arange(20) % 10,
    }


def npz(**changes: np.ndarray | None) -> Setup:
    """inputs/bad.npz: the valid arrays with `changes` (None drops a key)."""

    def setup(ws: Path) -> None:
        arrays = {**_arrays(), **changes}
        np.savez(ws / "inputs" / "bad.npz", **{k: v for k, v in arrays.items() if v is not None})

    return setup


def truncate(rel: str, keep: float = 0.5) -> Setup:
    """Cut the workspace file `rel` to `keep` of its length (a copy cut short, a full disk)."""

    def setup(ws: Path) -> None:
        path = ws / rel
        path.write_bytes(path.read_bytes()[: int(path.stat().st_size * keep)])

    return setup


def then(*setups: Setup) -> Setup:
    def setup(ws: Path) -> None:
        for s in setups:
            s(ws)

    return setup


def csv(rows: list[str], header: str | None = None) -> Setup:
    """inputs/bad.csv: a header (label, p0..p63: 8x8 images) and `rows`."""
    header = header or "label," + ",".join(f"p{i}" for i in range(64))

    def setup(ws: Path) -> None:
        (ws / "inputs" / "bad.csv").write_text("\n".join([header, *rows]) + "\n")

    return setup


def csv_row(label: int, value: str = "7") -> str:
    return ",".join([str(label)] + [value] * 64)


GOOD_ROWS = [csv_row(i % 3) for i in range(12)]


def folder(classes: dict[str, int], extra: Callable[[Path], None] | None = None) -> Setup:
    """inputs/folder/<class>/<i>.png: `classes[c]` 8x8 grey images per class, then `extra`."""

    def setup(ws: Path) -> None:
        from PIL import Image

        root = ws / "inputs" / "folder"
        root.mkdir(parents=True)
        for name, n in classes.items():
            (root / name).mkdir()
            for i in range(n):
                Image.new("L", (8, 8), 40 * i % 256).save(root / name / f"{i}.png")
        if extra:
            extra(root)

    return setup


def write(rel: str, text: str) -> Setup:
    def setup(ws: Path) -> None:
        (ws / rel).write_text(text)

    return setup


def remove(rel: str) -> Setup:
    def setup(ws: Path) -> None:
        shutil.rmtree(ws / rel)

    return setup


_float = _arrays()["x_train"].astype(np.float64)

CASES: list[Case] = [
    # data sources (all `ganpipe prepare`: no TensorFlow)
    Case("data_path_missing", ["prepare", *NPZ[:2], "--set", "data.path=inputs/nope.npz"],
         ("data.path", "inputs/nope.npz")),
    Case("npz_truncated", ["prepare", *NPZ], ("inputs/bad.npz",),
         then(npz(), truncate("inputs/bad.npz"))),
    Case("npz_not_a_zip", ["prepare", *NPZ], ("inputs/bad.npz",),
         write("inputs/bad.npz", "x_train,y_train\n1,2\n")),
    Case("npz_missing_keys", ["prepare", *NPZ], ("inputs/bad.npz", "x_test"), npz(x_test=None)),
    Case("npz_object_arrays", ["prepare", *NPZ], ("inputs/bad.npz", "y_train"),
         npz(y_train=np.array([str(i % 10) for i in range(40)], dtype=object))),
    Case("npz_length_mismatch", ["prepare", *NPZ], ("inputs/bad.npz", "y_train", "40"),
         npz(y_train=np.arange(30) % 10)),
    Case("labels_out_of_range", ["prepare", *NPZ], ("inputs/bad.npz", "y_train", "0..9"),
         npz(y_train=np.arange(40) % 11)),
    Case("labels_negative", ["prepare", *NPZ], ("inputs/bad.npz", "y_test", "-1"),
         npz(y_test=np.arange(20) % 10 - 1)),
    Case("labels_not_integers", ["prepare", *NPZ], ("inputs/bad.npz", "y_train", "integer"),
         npz(y_train=(np.arange(40) % 10) + 0.5)),
    Case("pixels_nan", ["prepare", *NPZ], ("inputs/bad.npz", "x_train", "NaN"),
         npz(x_train=np.where(np.arange(64).reshape(8, 8) == 5, np.nan, _float))),
    Case("pixels_out_of_range", ["prepare", *NPZ], ("inputs/bad.npz", "x_test", "0-255"),
         npz(x_test=np.full((20, 8, 8), 300.0))),
    Case("dataset_empty", ["prepare", *NPZ], ("inputs/bad.npz", "x_train", "no images"),
         npz(x_train=np.zeros((0, 8, 8), np.uint8), y_train=np.zeros(0, np.int64))),
    Case("only_one_class", ["prepare", *FOLDER], ("inputs/folder", "at least 2 classes"),
         folder({"a": 4})),
    Case("folder_empty", ["prepare", *FOLDER], ("inputs/folder", "no class folders"), folder({})),
    Case("folder_empty_class", ["prepare", *FOLDER], ("inputs/folder/b", "no .png"),
         folder({"a": 4, "b": 0})),
    Case("folder_unreadable_image", ["prepare", *FOLDER], ("inputs/folder/b/3.png",),
         folder({"a": 4, "b": 4}, lambda root: (root / "b" / "3.png").write_bytes(b"\x89PNG..."))),
    Case("folder_mixed_sizes", ["prepare", *FOLDER], ("inputs/folder/", "data.image_size"),
         folder({"a": 4, "b": 4}, lambda root: _png(root / "b" / "9.png", (9, 9)))),
    Case("csv_bad_row", ["prepare", *CSV], ("inputs/bad.csv", "row 5", "non-numeric"),
         csv([*GOOD_ROWS[:4], csv_row(1, "x"), *GOOD_ROWS[4:]])),
    Case("csv_missing_pixel", ["prepare", *CSV], ("inputs/bad.csv", "row 3", "missing pixel"),
         csv([*GOOD_ROWS[:2], csv_row(1, ""), *GOOD_ROWS[2:]])),
    Case("csv_missing_label_column", ["prepare", *CSV], ("data.label_column", "inputs/bad.csv"),
         csv(GOOD_ROWS, header=",".join(f"p{i}" for i in range(65)))),
    Case("csv_not_square", ["prepare", *CSV], ("inputs/bad.csv", "square"),
         csv(["1,2,3", "0,1,2"] * 4, header="label,a,b")),
    # params (`ganpipe prepare` validates all of them before any work)
    Case("param_unknown_key", ["prepare", "--set", "train.epoch=3"],
         ("params.yaml", "train.epoch", "unknown key")),
    Case("param_wrong_type", ["prepare", "--set", "train.epochs=many"],
         ("params.yaml", "train.epochs", "many")),
    Case("param_out_of_range", ["prepare", "--set", "data.test_fraction=1.5"],
         ("params.yaml", "data.test_fraction")),
    Case("param_unknown_arch", ["prepare", "--set", "model.arch=vgg"],
         ("params.yaml", "model.arch", "vgg")),
    Case("param_incompatible", ["prepare", "--set", "train.ada=true",
                                "--set", "train.diffaugment=color"],
         ("params.yaml", "train.ada", "train.diffaugment")),
    Case("param_malformed_set", ["prepare", "--set", "train.epochs"], ("--set", "train.epochs")),
    Case("params_file_missing", ["prepare", "--params", "inputs/nope.yaml"],
         ("inputs/nope.yaml",)),
    Case("params_file_bad_yaml", ["prepare", "--params", "inputs/bad.yaml"],
         ("inputs/bad.yaml", "line 3"), write("inputs/bad.yaml", "data:\n  a: 1\n  b: c: d\n")),
    Case("params_file_not_mapping", ["prepare", "--params", "inputs/bad.yaml"],
         ("inputs/bad.yaml", "mapping"), write("inputs/bad.yaml", "- data\n- train\n")),
    Case("params_file_unknown_section", ["prepare", "--params", "inputs/bad.yaml"],
         ("inputs/bad.yaml", "trian", "unknown key"), write("inputs/bad.yaml", "trian:\n  epochs: 3\n")),
    # damaged or missing files a later stage reads
    Case("prepared_missing", ["train"], ("data/prepared",), remove("data/prepared")),
    Case("prepared_truncated", ["train"], ("data/prepared/train.npz",),
         truncate("data/prepared/train.npz")),
    Case("generator_truncated", ["generate"], ("models/generator.keras",),
         truncate("models/generator.keras")),
    Case("evaluator_damaged", ["evaluate"], ("evaluator/classifier.keras",),
         truncate("evaluator/classifier.keras")),
    # another run holds the workspace (ganpipe/lock.py): stop at once, naming it
    Case("workspace_locked", ["run"], ("another run is using the workspace", "nightly holder"),
         wrap=lambda ws, argv: held_workspace(argv)),
    Case("tracking_server_down", ["run", "--set", "tracking.enabled=true",
                                  "--set", "tracking.uri=http://127.0.0.1:9"],
         ("http://127.0.0.1:9", "not reachable", "tracking.enabled=false")),
    Case("tracking_store_damaged", ["train", "--set", "tracking.enabled=true"],
         ("mlflow.db", "cannot be opened"), write("mlflow.db", "not a database\n" * 100)),
    # the disk fills up while generate writes its PNGs (tests/test_disk_full.py: more checks)
    Case("disk_full", ["generate", "--set", "generate.per_class=100",
                       "--synthetic-dir", f"{SMALL_DISK}/synthetic"],
         ("disk full", f"{SMALL_DISK}/synthetic/images/", f"previous {SMALL_DISK}/synthetic was kept"),
         wrap=small_disk("data/synthetic", 256 * 1024), skip=small_disk_unavailable),
]  # fmt: skip


def held_workspace(argv: list[str]) -> list[str]:
    """`argv` run by a process that holds the workspace's lock, as a nightly run would."""
    script = (
        "import subprocess, sys\n"
        "from ganpipe.lock import workspace_lock\n"
        "from ganpipe.paths import Paths\n"
        "with workspace_lock(Paths(), command='nightly holder'):\n"
        "    sys.exit(subprocess.run(sys.argv[1:]).returncode)\n"
    )
    return [sys.executable, "-c", script, *argv]


def _png(path: Path, size: tuple[int, int]) -> None:
    from PIL import Image

    Image.new("L", size, 0).save(path)


# --- the table ------------------------------------------------------------------------------------


def table(results: list[Result], seconds: float) -> str:
    def yn(flag: bool) -> str:
        return "yes" if flag else "no"

    head = (
        f"{'case':28s} {'command':9s} {'exit':>4s}  {'clear':5s} {'traceback':9s} "
        f"{'changed':>7s} {'s':>5s}  verdict"
    )
    rows = [head, "-" * len(head)]
    for r in results:
        c = r.case
        if r.skipped:
            rows.append(f"{c.name:28s} {c.command:9s} {'-':>4s}  skipped: {r.skipped}")
            continue
        rows.append(
            f"{c.name:28s} {c.command:9s} {r.exit_code:>4d}  {yn(r.clear):5s} "
            f"{yn(r.traceback):9s} {len(r.changed):>7d} {r.seconds:5.1f}  {'ok' if r.ok else 'FAIL'}"
        )
    ran = [r for r in results if not r.skipped]
    rows += [
        "-" * len(head),
        f"cases {len(results)} (ran {len(ran)}, skipped {len(results) - len(ran)}), "
        f"clear errors {sum(r.clear for r in ran)}, tracebacks {sum(r.traceback for r in ran)}, "
        f"outputs changed {sum(bool(r.changed) for r in ran)}, "
        f"failed {sum(not r.ok for r in ran)}; {seconds:.0f} s",
    ]
    return "\n".join(rows)


def explain(r: Result) -> str:
    """Why a case failed, for the reader (and pytest's assertion message)."""
    lines = [f"{r.case.name}: ganpipe {' '.join(r.case.args)}"]
    if r.exit_code != r.case.exit_code:
        lines.append(f"  exit {r.exit_code}, expected {r.case.exit_code}")
    if r.traceback:
        lines.append("  printed a traceback")
    if not r.named:
        lines.append(f"  the message lacks {[t for t in r.case.expect if t not in r.message]}")
    if r.changed:
        lines.append(f"  changed: {', '.join(r.changed[:8])}")
    lines.append("  output:\n    " + "\n    ".join(r.output.strip().splitlines()[-15:]))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("-k", default="", help="only the cases whose name holds this text")
    ap.add_argument("-v", action="store_true", help="print each case's message")
    ap.add_argument("--workspace", type=Path, help="reuse this completed tiny run (else build one)")
    args = ap.parse_args(argv)
    cases = [c for c in CASES if args.k in c.name]
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="ganpipe-bad-inputs-") as tmp:
        base = args.workspace or build_workspace(Path(tmp) / "base")
        print(f"workspace ready in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        results = []
        for case in cases:
            r = run_case(case, base, Path(tmp))
            results.append(r)
            if args.v and not r.skipped:
                print(f"{case.name}: {r.message or '(no error line)'}", file=sys.stderr)
    print(table(results, time.perf_counter() - t0))
    failed = [r for r in results if not r.ok]
    for r in failed:
        print("\n" + explain(r))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
