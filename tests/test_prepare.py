"""The prepare stage: every source, the split, validation errors and atomic output."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ganpipe.config import DataParams
from ganpipe.data import sources
from ganpipe.data.prepared import load_prepared
from ganpipe.errors import ConfigError, DataError
from ganpipe.stages.prepare import prepare


def _png(path: Path, size: tuple[int, int] = (6, 6), mode: str = "L", value: int = 100) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    color = value if mode in ("L", "1") else (value, 0, 255 - value)
    Image.new(mode, size, color).save(path)
    return path


def _tree(root: Path, classes: tuple[str, ...] = ("cat", "dog"), n: int = 3) -> Path:
    for ci, name in enumerate(classes):
        for i in range(n):
            _png(root / name / f"{i}.png", value=40 * ci + i)
    return root


def _csv(path: Path, rows: list[list[object]], side: int = 2, header: str | None = None) -> Path:
    header = header or ",".join(["label"] + [f"pixel{i}" for i in range(side * side)])
    path.write_text("\n".join([header] + [",".join(map(str, r)) for r in rows]) + "\n")
    return path


def _run(tmp_path: Path, **kw: object) -> dict:
    return prepare(DataParams(**kw), tmp_path / "out", origin="params.yaml")


# --- built-in sources -----------------------------------------------------------------------------


def test_mnist_5k_default_is_stratified_and_written(tmp_path: Path) -> None:
    summary = _run(tmp_path)
    prepared = load_prepared(tmp_path / "out")
    train, test = prepared.train, prepared.test
    assert train.images.shape == (4000, 28, 28, 1) and train.images.dtype == np.uint8
    assert test.images.shape == (1000, 28, 28, 1) and test.labels.dtype == np.int64
    assert summary["class_names"] == [str(d) for d in range(10)]
    assert summary["train_counts"] == [400] * 10 and summary["test_counts"] == [100] * 10
    assert json.loads((tmp_path / "out" / "summary.json").read_text()) == summary
    assert summary["source"] == "mnist_5k" and summary["shape"] == [28, 28, 1]
    assert train.images.max() == 255
    # The source is sorted by label; the split must not be.
    assert len(np.unique(train.labels[:50])) > 5


def test_content_hash_is_stable_per_seed(tmp_path: Path) -> None:
    a = prepare(DataParams(seed=0), tmp_path / "a")["content_hash"]
    b = prepare(DataParams(seed=0), tmp_path / "b")["content_hash"]
    c = prepare(DataParams(seed=1), tmp_path / "c")["content_hash"]
    assert a == b != c


def test_max_per_class_caps_training_only(tmp_path: Path) -> None:
    summary = _run(tmp_path, max_per_class=7, image_size=14)
    assert summary["train_counts"] == [7] * 10 and summary["test_counts"] == [100] * 10
    assert summary["shape"] == [14, 14, 1]


def test_class_caps_cap_named_classes_after_max_per_class(tmp_path: Path) -> None:
    summary = _run(tmp_path, source="digits", max_per_class=100, class_caps={"3": 5, "7": 200})
    counts = summary["train_counts"]
    # "7" is capped at 200 but max_per_class came first: 100; "3" at 5; the test split untouched.
    assert counts[3] == 5 and counts[7] == 100
    assert [c for i, c in enumerate(counts) if i != 3] == [100] * 9
    assert summary["test_counts"] == _run(tmp_path / "plain", source="digits")["test_counts"]
    assert summary["class_caps"] == {"3": 5, "7": 200}
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["class_caps"] == {
        "3": 5,
        "7": 200,
    }
    # Seeded, and the order the caps are written in does not matter.
    again = prepare(DataParams(source="digits", max_per_class=100, class_caps={"7": 200, "3": 5}),
                    tmp_path / "again")  # fmt: skip
    assert again["content_hash"] == summary["content_hash"]
    other = prepare(DataParams(source="digits", max_per_class=100, class_caps={"3": 5}, seed=1),
                    tmp_path / "other")  # fmt: skip
    assert other["content_hash"] != summary["content_hash"]


def test_class_caps_unknown_class_names_the_key_and_the_classes(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"data\.class_caps.*'five'.*'0', '1'.*'9'"):
        _run(tmp_path, source="digits", class_caps={"5": 3, "five": 3})
    assert not (tmp_path / "out").exists()


def test_no_class_caps_no_summary_key(tmp_path: Path) -> None:
    assert "class_caps" not in _run(tmp_path, source="digits")


def test_digits_rescaled_to_0_255(tmp_path: Path) -> None:
    summary = _run(tmp_path, source="digits")
    prepared = load_prepared(tmp_path / "out")
    assert summary["shape"] == [8, 8, 1] and summary["num_train"] + summary["num_test"] == 1797
    assert prepared.train.images.min() == 0 and prepared.train.images.max() == 255
    assert min(summary["test_counts"]) > 0


# --- keras-layout .npz and keras.datasets --------------------------------------------------------


def test_mnist_npz_keeps_predefined_split(tmp_path: Path, mnist_npz: Path) -> None:
    summary = _run(tmp_path, source="mnist", path=str(mnist_npz), max_per_class=5)
    assert summary["num_train"] == 50 and summary["num_test"] == 10000
    assert summary["shape"] == [28, 28, 1]


def test_cifar_like_npz_flattens_labels(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    npz = tmp_path / "cifar.npz"
    y_train = np.repeat(np.arange(10), 2)[:, None].astype(np.uint8)  # N x 1, as keras gives it
    np.savez(
        npz,
        x_train=rng.integers(0, 256, (20, 4, 4, 3), dtype=np.uint8),
        y_train=y_train,
        x_test=rng.integers(0, 256, (10, 4, 4, 3), dtype=np.uint8),
        y_test=np.arange(10)[:, None],
    )
    summary = _run(tmp_path, source="cifar10", path=str(npz))
    assert summary["shape"] == [4, 4, 3] and summary["class_names"][0] == "airplane"
    assert summary["train_counts"] == [2] * 10 and summary["test_counts"] == [1] * 10


def test_npz_missing_keys(tmp_path: Path) -> None:
    npz = tmp_path / "bad.npz"
    np.savez(npz, x_train=np.zeros((2, 4, 4)), y_train=np.zeros(2))
    with pytest.raises(DataError, match="missing keys x_test, y_test"):
        _run(tmp_path, source="mnist", path=str(npz))


def test_npz_label_out_of_range(tmp_path: Path) -> None:
    npz = tmp_path / "bad.npz"
    x = np.zeros((3, 4, 4), np.uint8)
    np.savez(npz, x_train=x, y_train=np.array([0, 1, 12]), x_test=x, y_test=np.array([0, 1, 2]))
    with pytest.raises(DataError, match=r"0\.\.9, found 0\.\.12"):
        _run(tmp_path, source="mnist", path=str(npz))


def test_keras_loader_offline_says_set_path(tmp_path: Path, monkeypatch) -> None:
    def offline(name: str):
        raise OSError("URL fetch failure")

    monkeypatch.setattr(sources, "_keras_load_data", offline)
    with pytest.raises(DataError, match=r"keras\.datasets\.fashion_mnist.*data\.path"):
        _run(tmp_path, source="fashion_mnist")
    assert not (tmp_path / "out").exists()


def test_missing_path_is_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^params\.yaml: data\.path: .*does not exist"):
        _run(tmp_path, source="mnist", path=str(tmp_path / "nope.npz"))


# --- folder of class folders ----------------------------------------------------------------------


def test_folder_grayscale(tmp_path: Path) -> None:
    root = _tree(tmp_path / "imgs", classes=("dog", "cat"), n=5)
    (root / "cat" / ".DS_Store").write_bytes(b"\0junk")
    (root / "cat" / "notes.txt").write_text("not an image")
    with pytest.warns(UserWarning, match="notes.txt"):
        summary = _run(tmp_path, source="folder", path=str(root))
    assert summary["class_names"] == ["cat", "dog"]
    assert summary["shape"] == [6, 6, 1]
    assert summary["train_counts"] == [4, 4] and summary["test_counts"] == [1, 1]
    prepared = load_prepared(tmp_path / "out")
    # dog pixels were written as 0..4, cat pixels as 40..44: labels follow the sorted folders.
    images, labels = prepared.train.images, prepared.train.labels
    assert (images[labels == 0] >= 40).all() and (images[labels == 1] < 5).all()


def test_folder_with_any_rgb_image_is_rgb(tmp_path: Path) -> None:
    root = _tree(tmp_path / "imgs")
    _png(root / "dog" / "color.jpg", mode="RGB")
    summary = _run(tmp_path, source="folder", path=str(root))
    assert summary["shape"] == [6, 6, 3]
    assert summary["num_train"] + summary["num_test"] == 7


def test_folder_16_bit_grayscale_is_scaled_not_clipped(tmp_path: Path) -> None:
    root = _tree(tmp_path / "imgs")
    Image.fromarray(np.full((6, 6), 65535, np.uint16)).save(root / "dog" / "deep.png")
    Image.fromarray(np.full((6, 6), 257 * 100, np.uint16)).save(root / "dog" / "mid.png")
    _run(tmp_path, source="folder", path=str(root))
    prepared = load_prepared(tmp_path / "out")
    images = np.concatenate([prepared.train.images, prepared.test.images])
    assert images.shape[-1] == 1 and images.max() == 255
    assert (images == 100).all(axis=(1, 2, 3)).any()  # 16-bit 25700 -> 8-bit 100


def test_folder_corrupt_image_named(tmp_path: Path) -> None:
    root = _tree(tmp_path / "imgs")
    bad = root / "dog" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    with pytest.raises(DataError, match=r"broken\.png: not a readable image"):
        _run(tmp_path, source="folder", path=str(root))


def test_folder_mixed_sizes(tmp_path: Path) -> None:
    root = _tree(tmp_path / "imgs")
    _png(root / "dog" / "big.png", size=(10, 7))
    with pytest.raises(DataError, match=r"big\.png: size 10x7 differs from 6x6") as err:
        _run(tmp_path, source="folder", path=str(root))
    assert "data.image_size" in str(err.value)
    summary = _run(tmp_path, source="folder", path=str(root), image_size=8)
    assert summary["shape"] == [8, 8, 1]


def test_folder_empty_class_named(tmp_path: Path) -> None:
    root = _tree(tmp_path / "imgs")
    (root / "emu").mkdir()
    (root / "emu" / ".DS_Store").write_bytes(b"")
    with pytest.raises(DataError, match=r"emu: class folder holds no"):
        _run(tmp_path, source="folder", path=str(root))


def test_folder_class_too_small_to_split(tmp_path: Path) -> None:
    root = _tree(tmp_path / "imgs")
    _png(root / "emu" / "only.png")
    with pytest.raises(DataError, match=r"class 'emu' has 1 image"):
        _run(tmp_path, source="folder", path=str(root))


def test_folder_single_class_rejected(tmp_path: Path) -> None:
    root = _tree(tmp_path / "imgs", classes=("cat",))
    with pytest.raises(DataError, match="at least 2 classes"):
        _run(tmp_path, source="folder", path=str(root))


# --- CSV ------------------------------------------------------------------------------------------


def _rows(labels: list[object]) -> list[list[object]]:
    return [[lab, *([10 * i] * 4)] for i, lab in enumerate(labels)]


def test_csv_string_labels(tmp_path: Path) -> None:
    csv = _csv(tmp_path / "d.csv", _rows(["b", "a", "b", "a", "b", "a"]))
    summary = _run(tmp_path, source="csv", path=str(csv))
    assert summary["class_names"] == ["a", "b"] and summary["shape"] == [2, 2, 1]
    assert summary["train_counts"] == [2, 2] and summary["test_counts"] == [1, 1]


def test_csv_numeric_labels_sort_numerically_and_rgb(tmp_path: Path) -> None:
    rows = [[lab, *([7] * 12)] for lab in (10, 2, 10, 2)]
    csv = _csv(tmp_path / "d.csv", rows, header="y," + ",".join(f"p{i}" for i in range(12)))
    summary = _run(tmp_path, source="csv", path=str(csv), label_column="y")
    assert summary["class_names"] == ["2", "10"] and summary["shape"] == [2, 2, 3]


def test_csv_missing_pixel_names_row(tmp_path: Path) -> None:
    rows = _rows([0, 1, 0, 1])
    rows[2][3] = ""
    csv = _csv(tmp_path / "d.csv", rows)
    with pytest.raises(DataError, match=r"data row 3 \(header not counted\), column 'pixel2'"):
        _run(tmp_path, source="csv", path=str(csv))


@pytest.mark.parametrize(
    ("value", "message"), [("dark", "non-numeric"), ("300", "outside 0-255"), ("-1", "outside")]
)
def test_csv_bad_pixel_value(tmp_path: Path, value: str, message: str) -> None:
    rows = _rows([0, 1, 0, 1])
    rows[1][1] = value
    csv = _csv(tmp_path / "d.csv", rows)
    with pytest.raises(DataError, match=f"data row 2 .*{message}"):
        _run(tmp_path, source="csv", path=str(csv))


def test_csv_bad_column_count(tmp_path: Path) -> None:
    csv = tmp_path / "d.csv"
    csv.write_text("label,p0,p1,p2,p3,p4\n0,1,2,3,4,5\n1,1,2,3,4,5\n")
    with pytest.raises(DataError, match="5 pixel columns make no square image"):
        _run(tmp_path, source="csv", path=str(csv))
    _csv(csv, [[0, 1, 2, 3, 4], [1, 1, 2, 3, 4, 5]])  # a row with one field too many
    with pytest.raises(DataError, match="not a readable CSV"):
        _run(tmp_path, source="csv", path=str(csv))


def test_csv_unknown_label_column_is_config_error(tmp_path: Path) -> None:
    csv = _csv(tmp_path / "d.csv", _rows([0, 1]))
    with pytest.raises(ConfigError, match=r"^params\.yaml: data\.label_column: 'digit'"):
        _run(tmp_path, source="csv", path=str(csv), label_column="digit")


# --- output ---------------------------------------------------------------------------------------


def test_failure_keeps_previous_output(tmp_path: Path) -> None:
    csv = _csv(tmp_path / "d.csv", _rows([0, 1, 0, 1]))
    data = tmp_path / "data"
    data.mkdir()
    out = data / "prepared"
    good = prepare(DataParams(source="csv", path=str(csv)), out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    csv.write_text(csv.read_text().replace("0,0,0,0,0", "0,0,,0,0"))
    with pytest.raises(DataError):
        prepare(DataParams(source="csv", path=str(csv)), out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in data.iterdir()) == ["prepared"]  # no temp dirs left
    assert load_prepared(out).summary == good


def test_refuses_to_replace_unrelated_directory(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="precious.txt"):
        _run(tmp_path, source="digits")
    assert (out / "precious.txt").read_text() == "keep me"


def test_evaluator_class_weights_only_for_imbalanced_training_data() -> None:
    # Prepared long-tailed data is what the evaluator's class weights are for (ganpipe/evaluation/domain_classifier.py).
    from ganpipe.evaluation.domain_classifier import (
        class_weights_mean_over_classes as class_weights,
    )

    assert class_weights(np.repeat(np.arange(3), [100, 90, 70]), 3) is None  # 100/70 <= 1.5
    w = class_weights(np.repeat(np.arange(4), [1000, 1000, 20, 20]), 4)
    assert w is not None and sorted(w) == [0, 1, 2, 3]
    assert np.mean(list(w.values())) == pytest.approx(1.0)
    assert w[2] == pytest.approx(50 * w[0])
