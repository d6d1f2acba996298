"""The trainer on 8x8 digits with a tiny model: outputs, validation, resume, divergence."""

from __future__ import annotations

import math
import shutil
from functools import partial
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from ganpipe.config import Params, load_params
from ganpipe.data.prepared import Prepared, Split, make_summary, save_prepared
from ganpipe.errors import ConfigError, TrainingError
from ganpipe.gan.training import step_tf, train
from ganpipe.gan.training.checkpoint import Checkpoints, run_key
from ganpipe.gan.training.state import build_for_training
from ganpipe.io import read_json
from ganpipe.tracker import Tracker
from tests.train_fixtures import (
    BATCH,
    N_TRAIN,
    OPTION_RUNS,
    RESUME_OPTIONS,
    STEPS_PER_EPOCH,
    tiny,
    tiny_with,
)


class RecordingTracker(Tracker):
    def __init__(self) -> None:
        self.metrics: list[tuple[dict, int | None]] = []
        self.artifacts: list[tuple[Path, str | None]] = []

    def log_metrics(self, metrics, step=None):
        self.metrics.append((dict(metrics), step))

    def log_artifact(self, path, artifact_path=None):
        assert Path(path).exists()
        self.artifacts.append((Path(path), artifact_path))

    def log_generator(self, model_path):  # the pipeline's job, not the trainer's
        raise AssertionError("train() must not log the generator")


def test_writes_all_outputs(tmp_path, data_dir):
    tracker = RecordingTracker()
    params = tiny(epochs=4)
    total = 4 * STEPS_PER_EPOCH
    summary = train(params, data_dir, tmp_path / "model", tmp_path / "ck", tracker, progress=False)

    model = tmp_path / "model"
    names = {p.name for p in model.iterdir()}
    assert names == {
        "generator.keras",
        "discriminator.keras",
        "history.csv",
        "samples",
        "train_summary.json",
    }
    assert summary == read_json(model / "train_summary.json")
    assert summary["steps"] == total and summary["resumed_from_step"] == 0
    assert summary["images_per_sec"] > 0

    hist = pd.read_csv(model / "history.csv")
    assert list(hist.columns) == [
        "step",
        "epoch",
        "d_loss",
        "g_loss",
        "d_real",
        "d_fake",
        "ada_p",
        "images_per_sec",
    ]
    assert (hist["ada_p"] == 0.0).all() and "ada_p" not in summary  # ADA is off
    assert hist["step"].tolist() == list(range(1, total + 1))
    assert hist["epoch"].tolist() == [1 + i // STEPS_PER_EPOCH for i in range(total)]
    assert np.isfinite(hist.drop(columns=["step", "epoch"]).to_numpy()).all()
    assert hist[["d_real", "d_fake"]].stack().between(0, 1).all()

    samples = sorted(p.name for p in (model / "samples").iterdir())
    assert samples == ["final.png", "step_000004.png", "step_000008.png", "step_000012.png",
                       "step_000016.png", "step_000020.png", "step_000024.png"]  # fmt: skip
    with Image.open(model / "samples" / "final.png") as im:
        # one row per class, 10 columns, 8x8 digits scaled x4, 2-pixel padding
        assert im.size == (10 * (32 + 2) + 2, 10 * (32 + 2) + 2)

    g = keras.models.load_model(model / "generator.keras")
    out = g.predict([np.zeros((2, 8), np.float32), np.array([1, 2], np.int32)], verbose=0)
    assert out.shape == (2, 8, 8, 1)

    logged_steps = [step for m, step in tracker.metrics if "train/d_loss" in m]
    assert logged_steps == [20, 24]
    assert tracker.metrics[-1][0].keys() == {"train_seconds", "train_images_per_sec"}
    assert [a for _, a in tracker.artifacts] == ["samples"] * 7

    ckpts = Checkpoints(Path(summary["checkpoint_dir"])).paths()
    assert [p.name for p in ckpts] == ["ckpt_0000020.npz", "ckpt_0000024.npz"]  # the last two


def test_batch_larger_than_data_is_refused(tmp_path, data_dir):
    params = tiny(batch_size=N_TRAIN + 1)
    with pytest.raises(
        ConfigError, match=r"train\.batch_size: 201 is larger than the training set"
    ):
        train(params, data_dir, tmp_path / "model", tmp_path / "ck", progress=False)
    assert not list(tmp_path.iterdir())


def test_image_size_without_layout_is_refused(tmp_path):
    odd = Split(np.zeros((20, 7, 7, 1), np.uint8), np.arange(20) % 2)
    save_prepared(tmp_path / "data", Prepared(odd, odd, make_summary(odd, odd, ["a", "b"], "x")))
    with pytest.raises(ConfigError, match=r"data\.image_size: image size 7x7"):
        train(tiny(batch_size=4), tmp_path / "data", tmp_path / "model", tmp_path / "ck")
    assert not (tmp_path / "model").exists()


def test_more_epochs_resume_and_match_an_uninterrupted_run(tmp_path, data_dir, capsys):
    ck = tmp_path / "ck"
    first = train(tiny(epochs=1), data_dir, tmp_path / "m1", ck, progress=False)
    assert "starting fresh in" in capsys.readouterr().out

    second = train(tiny(epochs=2), data_dir, tmp_path / "m2", ck, progress=False)
    assert f"resuming from step {STEPS_PER_EPOCH} in {ck}" in capsys.readouterr().out
    assert second["run_key"] == first["run_key"]
    assert second["resumed_from_step"] == STEPS_PER_EPOCH
    assert second["steps_trained"] == STEPS_PER_EPOCH
    resumed = pd.read_csv(tmp_path / "m2" / "history.csv")
    assert len(resumed) == 2 * STEPS_PER_EPOCH

    straight = train(
        tiny(epochs=2), data_dir, tmp_path / "m3", tmp_path / "ck_other", progress=False
    )
    assert straight["resumed_from_step"] == 0
    expected = pd.read_csv(tmp_path / "m3" / "history.csv")
    cols = ["step", "epoch", "d_loss", "g_loss", "d_real", "d_fake"]
    pd.testing.assert_frame_equal(resumed[cols], expected[cols], rtol=1e-4)

    # Nothing left to do: the outputs are rewritten from the checkpoint, which holds everything
    # (BatchNorm statistics included), so the generator is the one the resumed run saved.
    again = train(tiny(epochs=2), data_dir, tmp_path / "m4", ck, progress=False)
    assert "nothing to do" in capsys.readouterr().out
    assert again["steps_trained"] == 0 and again["images_per_sec"] is None
    z = np.random.default_rng(0).standard_normal((4, 8)).astype(np.float32)
    labels = np.arange(4, dtype=np.int32)
    a, b = (
        keras.models.load_model(tmp_path / m / "generator.keras").predict([z, labels], verbose=0)
        for m in ("m2", "m4")
    )
    np.testing.assert_array_equal(a, b)

    # Fewer epochs than the checkpoints cover: that run is discarded and training starts afresh.
    shorter = train(tiny(epochs=1), data_dir, tmp_path / "m5", ck, progress=False)
    assert "is past the 6 steps asked for" in capsys.readouterr().out
    assert shorter["resumed_from_step"] == 0
    assert [p.name for p in Checkpoints(ck / first["run_key"]).paths()] == [
        "ckpt_0000004.npz",
        "ckpt_0000006.npz",
    ]


def test_the_run_key_follows_the_training_source(tmp_path, monkeypatch):
    """Editing a file of the trainer (a comment will do) changes the run key; the fingerprint is
    taken over the registry's CHECKPOINT_CODE, here a copy of them that the test edits."""
    from ganpipe import keys
    from ganpipe.registry import CHECKPOINT_CODE

    for part in CHECKPOINT_CODE:
        src, dst = keys.PACKAGE_ROOT / part, tmp_path / part
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)
    key = run_key(tiny(), "h")
    monkeypatch.setattr(keys, "PACKAGE_ROOT", tmp_path)
    keys.source_fingerprint.cache_clear()
    try:
        assert run_key(tiny(), "h") == key  # the same bytes under the same names
        with open(tmp_path / "gan" / "training" / "trainer.py", "a") as f:
            f.write("# edited\n")
        keys.source_fingerprint.cache_clear()
        edited = run_key(tiny(), "h")
        assert edited != key
        (tmp_path / "gan" / "models" / "dcgan.py").write_text("# another builder\n")
        keys.source_fingerprint.cache_clear()
        assert run_key(tiny(), "h") not in (key, edited)
    finally:
        keys.source_fingerprint.cache_clear()  # computed afresh from the real sources next time


def test_a_finished_run_trains_afresh_after_the_code_changes(
    tmp_path, data_dir, monkeypatch, capsys
):
    """The bug this guards against: after an edit to the trainer, `dvc repro` reruns `train`, which
    found the finished checkpoint ("nothing to do") and exported a model the current code never
    trained. An edit is simulated by another source fingerprint."""
    ck = tmp_path / "ck"
    first = train(tiny(), data_dir, tmp_path / "m", ck, progress=False)
    assert "starting fresh in" in capsys.readouterr().out
    monkeypatch.setattr(
        "ganpipe.gan.training.checkpoint.source_fingerprint", lambda *parts: "edited trainer"
    )
    again = train(tiny(), data_dir, tmp_path / "m", ck, progress=False)
    out = capsys.readouterr().out
    assert "nothing to do" not in out and "starting fresh in" in out
    assert again["run_key"] != first["run_key"]
    assert again["resumed_from_step"] == 0 and again["steps_trained"] == STEPS_PER_EPOCH


def test_other_params_start_fresh_in_their_own_dir(tmp_path, data_dir):
    base = tiny()
    assert run_key(base, "h") == run_key(tiny(epochs=5, sample_every=1, checkpoint_every=9), "h")
    assert run_key(base, "h") != run_key(tiny(g_learning_rate=1e-3), "h")
    assert run_key(base, "h") != run_key(base, "other data")
    first = train(base, data_dir, tmp_path / "m1", tmp_path / "ck", progress=False)
    other = train(
        tiny(d_learning_rate=1e-3), data_dir, tmp_path / "m2", tmp_path / "ck", progress=False
    )
    assert other["resumed_from_step"] == 0
    assert other["run_key"] != first["run_key"]
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == sorted(
        [first["run_key"], other["run_key"]]
    )


def test_diverging_loss_stops_and_keeps_earlier_outputs(tmp_path, data_dir, monkeypatch):
    model, ck = tmp_path / "model", tmp_path / "ck"
    train(tiny(), data_dir, model, ck, progress=False)
    before = {p.name: p.read_bytes() for p in model.iterdir() if p.is_file()}

    real_make = step_tf.make_train_step

    def make_diverging(*args):
        step = real_make(*args)
        calls = 0

        def run(*batch):
            nonlocal calls
            calls += 1
            out = step(*batch)
            return out | ({"g_loss": math.nan} if calls == 3 else {})

        return run

    monkeypatch.setattr(step_tf, "make_train_step", make_diverging)
    with pytest.raises(
        TrainingError, match=r"loss became nan at step 9 \(d_loss=.*g_loss=nan\)"
    ) as e:
        train(tiny(epochs=3), data_dir, model, ck, progress=False)
    assert "the last good checkpoint is kept in" in str(e.value)
    assert "ckpt_0000008.npz" in str(e.value)
    after = {p.name: p.read_bytes() for p in model.iterdir() if p.is_file()}
    assert after == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_tutorial_arch_needs_28x28x1(tmp_path, data_dir):
    params = Params.model_validate(
        {"model": {"arch": "dcgan_tutorial"}, "train": {"batch_size": BATCH}}
    )
    with pytest.raises(ConfigError, match=r"model\.arch: the dcgan_tutorial .* \(got 8x8x1\)"):
        train(params, data_dir, tmp_path / "model", tmp_path / "ck", progress=False)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("key", "value"),
    [("precision", "float16"), ("precision", "bfloat16"), ("backend", "torch"),
     ("backend", "TensorFlow")],
)  # fmt: skip
def test_precision_and_backend_params_are_validated(key, value):
    with pytest.raises(ConfigError, match=rf"train\.{key}: Input should be"):
        load_params(None, [f"train.{key}={value}"])


def test_backend_param_must_match_keras(tmp_path, data_dir):
    assert tiny(backend="tensorflow").train.backend == "tensorflow"
    with pytest.raises(ConfigError, match=r"train\.backend: is 'jax' but Keras is running on"):
        train(tiny(backend="jax"), data_dir, tmp_path / "model", tmp_path / "ck", progress=False)


def test_mixed_bfloat16_on_tensorflow(tmp_path, data_dir):
    summary = train(
        tiny(precision="mixed_bfloat16"), data_dir, tmp_path / "m", tmp_path / "ck", progress=False
    )
    assert summary["precision"] == "mixed_bfloat16"
    hist = pd.read_csv(tmp_path / "m" / "history.csv")
    assert np.isfinite(hist[["d_loss", "g_loss"]].to_numpy()).all()
    g = keras.models.load_model(tmp_path / "m" / "generator.keras")
    assert g.get_layer("g_dense").compute_dtype == "bfloat16"
    assert keras.config.dtype_policy().name == "float32"  # the global policy is restored


# --- training options (losses, spectral norm, EMA, DiffAugment) ---


def _ckpt_arrays(summary: dict) -> dict[str, np.ndarray]:
    last = Checkpoints(Path(summary["checkpoint_dir"])).paths()[-1]
    with np.load(last) as f:
        return {k: f[k] for k in f.files}


@pytest.mark.parametrize("name", sorted(OPTION_RUNS))
def test_option_runs_write_outputs_with_finite_losses(tmp_path, data_dir, name):
    spectral_norm, options = OPTION_RUNS[name]
    params = tiny_with(spectral_norm, **options)
    summary = train(params, data_dir, tmp_path / "m", tmp_path / "ck", progress=False)
    assert summary["loss"] == params.train.loss
    assert summary["exported_generator"] == ("ema" if name == "ema" else "live")
    assert summary["run_key"] != run_key(tiny(), summary["data_content_hash"])
    hist = pd.read_csv(tmp_path / "m" / "history.csv")
    assert len(hist) == STEPS_PER_EPOCH
    assert np.isfinite(hist.drop(columns=["step", "epoch"]).to_numpy()).all()
    assert (tmp_path / "m" / "samples" / "final.png").exists()
    d = keras.models.load_model(tmp_path / "m" / "discriminator.keras")
    has_sn = any(isinstance(x, keras.layers.SpectralNormalization) for x in d.layers)
    assert has_sn == spectral_norm
    g = keras.models.load_model(tmp_path / "m" / "generator.keras")
    out = g.predict([np.zeros((2, 8), np.float32), np.array([1, 2], np.int32)], verbose=0)
    assert out.shape == (2, 8, 8, 1) and np.isfinite(out).all()


def test_ema_generator_is_exported(tmp_path, data_dir):
    summary = train(tiny(ema_decay=0.9), data_dir, tmp_path / "m", tmp_path / "ck", progress=False)
    arrays = _ckpt_arrays(summary)  # the final checkpoint: live G ("g") and its EMA ("g_ema")
    exported = keras.models.load_model(tmp_path / "m" / "generator.keras")
    live = {v.path: i for i, v in enumerate(exported.variables)}  # same layout as the live G
    for i, v in enumerate(exported.trainable_variables):
        value = keras.ops.convert_to_numpy(v)
        np.testing.assert_array_equal(value, arrays[f"g_ema.{i:05d}"])
        assert not np.allclose(value, arrays[f"g.{live[v.path]:05d}"])
    stats = exported.non_trainable_variables
    assert stats  # BatchNorm moving statistics: the live generator's
    for v in stats:
        np.testing.assert_array_equal(
            keras.ops.convert_to_numpy(v), arrays[f"g.{live[v.path]:05d}"]
        )


def test_resume_is_exact_with_ema_diffaugment_and_wgan_gp(tmp_path, data_dir):
    ck = tmp_path / "ck"
    train(tiny(epochs=1, **RESUME_OPTIONS), data_dir, tmp_path / "m1", ck, progress=False)
    resumed = train(tiny(epochs=2, **RESUME_OPTIONS), data_dir, tmp_path / "m2", ck, progress=False)
    assert resumed["resumed_from_step"] == STEPS_PER_EPOCH
    straight = train(
        tiny(epochs=2, **RESUME_OPTIONS),
        data_dir,
        tmp_path / "m3",
        tmp_path / "ck2",
        progress=False,
    )
    cols = ["d_loss", "g_loss", "d_real", "d_fake"]
    a, b = (pd.read_csv(tmp_path / m / "history.csv")[cols] for m in ("m2", "m3"))
    pd.testing.assert_frame_equal(a, b, rtol=1e-4)
    ga, gb = (keras.models.load_model(tmp_path / m / "generator.keras") for m in ("m2", "m3"))
    for x, y in zip(ga.get_weights(), gb.get_weights(), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-6)
    assert straight["exported_generator"] == "ema"


def test_embed_noise_changes_training_and_resumes_exactly(tmp_path, data_dir):
    """model.embed_noise draws from a Keras seed generator whose state is a generator variable:
    it is checkpointed, so a resumed run draws the same noise as an uninterrupted one."""
    ck = tmp_path / "ck"
    noisy = partial(tiny_with, embed_noise=0.5)
    train(noisy(epochs=1), data_dir, tmp_path / "m1", ck, progress=False)
    resumed = train(noisy(epochs=2), data_dir, tmp_path / "m2", ck, progress=False)
    assert resumed["resumed_from_step"] == STEPS_PER_EPOCH
    train(noisy(epochs=2), data_dir, tmp_path / "m3", tmp_path / "ck2", progress=False)
    train(tiny(epochs=2), data_dir, tmp_path / "m4", tmp_path / "ck3", progress=False)
    cols = ["d_loss", "g_loss", "d_real", "d_fake"]
    a, b, plain = (pd.read_csv(tmp_path / m / "history.csv")[cols] for m in ("m2", "m3", "m4"))
    pd.testing.assert_frame_equal(a, b, rtol=1e-4)
    # the noise reaches the step: the same seeds without it train differently from the first step
    assert not np.allclose(a.to_numpy()[0], plain.to_numpy()[0], rtol=1e-3)
    assert run_key(noisy(), "h") != run_key(tiny(), "h")


def test_default_step_takes_no_aux(tmp_path, data_dir, monkeypatch):
    """With the options off the runner passes nothing extra (the plain traced step); with them
    on, the step's aux does not make the tf.function retrace per step."""
    seen, steps = [], []
    real_make = step_tf.make_train_step

    def recording(*args):
        step = real_make(*args)
        steps.append(step)

        def run(*batch):
            seen.append(len(batch))
            return step(*batch)

        return run

    monkeypatch.setattr(step_tf, "make_train_step", recording)
    train(tiny(), data_dir, tmp_path / "m", tmp_path / "ck", progress=False)
    assert set(seen) == {3}
    seen.clear()
    train(
        tiny(ema_decay=0.5, diffaugment="cutout"),
        data_dir, tmp_path / "m", tmp_path / "ck", progress=False,
    )  # fmt: skip
    assert set(seen) == {4}
    assert [s.tf_function.experimental_get_tracing_count() for s in steps] == [1, 1]


def test_distribute_param_and_key(tmp_path, data_dir):
    """train.distribute is validated; it is not in the run key, the replica count (above 1) is;
    on this one-CPU session auto trains on one device."""
    with pytest.raises(ConfigError, match=r"train\.distribute: Input should be"):
        load_params(None, ["train.distribute=mirrored"])
    base = tiny()
    assert run_key(base, "h") == run_key(tiny(distribute="none"), "h")
    assert run_key(base, "h") == run_key(tiny(distribute="data_parallel"), "h", replicas=1)
    assert run_key(base, "h") != run_key(base, "h", replicas=2)
    summary = train(base, data_dir, tmp_path / "m", tmp_path / "ck", progress=False)
    assert (summary["distribute"], summary["replicas"]) == ("none", 1)
    assert summary["run_key"] == run_key(base, summary["data_content_hash"])


def test_train_stage_tracks_what_the_pipeline_tracked(tmp_path, data_dir):
    """stages.train.run: the trainer plus the pipeline's tracking (data tags and summary, final
    grid, history, generator), in that order."""
    from ganpipe.pipeline import Paths
    from ganpipe.stages import train as train_stage

    calls = []

    class StageTracker(Tracker):
        def log_data(self, prepared_dir):
            calls.append(("data", Path(prepared_dir).name))

        def log_artifact(self, path, artifact_path=None):
            assert Path(path).exists()
            calls.append((Path(path).name, artifact_path))

        def log_generator(self, model_path):
            calls.append(("generator", Path(model_path).name))

    paths = Paths(prepared=data_dir, models=tmp_path / "models", checkpoints=tmp_path / "ck")
    summary = train_stage.run(tiny(), paths, StageTracker(), progress=False)
    assert summary == read_json(tmp_path / "models" / "train_summary.json")
    assert calls[:2] == [("data", data_dir.name), ("summary.json", "data")]
    assert calls[-4:] == [
        ("final.png", "samples"),  # the trainer's
        ("final.png", "samples"),  # the stage's (as pipeline.run_stage did)
        ("history.csv", "train"),
        ("generator", "generator.keras"),
    ]


# --- train.class_balance: the epoch order (ganpipe/gan/training/sampling.py) -------------------------


def _long_tail_labels() -> np.ndarray:
    """Classes 0-4 with 1,000 images, 5-9 with 20, shuffled."""
    labels = np.repeat(np.arange(10), [1000] * 5 + [20] * 5)
    return np.random.default_rng(7).permutation(labels)


def test_balanced_order_gives_every_class_an_equal_share():
    from ganpipe.gan.training.sampling import epoch_order

    labels = _long_tail_labels()
    order = epoch_order(3, 0, labels, class_balance=True)
    assert order.shape == labels.shape and order.dtype == np.int64
    share = np.bincount(labels[order], minlength=10) / len(order)
    np.testing.assert_allclose(share, 0.1, atol=1e-3)
    # Rare images are cycled: each one used 25 or 26 times (510 positions over 20 images).
    rare_uses = np.bincount(order, minlength=len(labels))[labels >= 5]
    assert rare_uses.min() >= 25 and rare_uses.max() <= 26
    # Common ones are sub-sampled: 510 distinct images of 1,000, no repeats within the epoch.
    common = order[labels[order] == 0]
    assert len(np.unique(common)) == len(common)
    # The classes are spread over the epoch, not in blocks: a batch of 64 holds most classes.
    assert len(np.unique(labels[order[:64]])) >= 8


def test_epoch_order_is_a_pure_function_of_seed_and_epoch():
    from ganpipe.gan.training.sampling import epoch_order

    labels = _long_tail_labels()
    a = epoch_order(3, 5, labels, class_balance=True)
    np.testing.assert_array_equal(a, epoch_order(3, 5, labels.copy(), class_balance=True))
    assert not np.array_equal(a, epoch_order(3, 6, labels, class_balance=True))
    assert not np.array_equal(a, epoch_order(4, 5, labels, class_balance=True))
    # Without the option: exactly the permutation the trainer always drew.
    plain = epoch_order(3, 5, labels, class_balance=False)
    np.testing.assert_array_equal(plain, np.random.default_rng([3, 5]).permutation(len(labels)))


def test_class_balance_is_in_the_run_key_and_resumes_exactly(tmp_path, data_dir, monkeypatch):
    from ganpipe.data.prepared import load_split
    from ganpipe.gan.training.sampling import balanced_order

    assert run_key(tiny(class_balance=True), "h") != run_key(tiny(), "h")
    seen = []
    begin = step_tf.HostRunner.begin_epoch
    monkeypatch.setattr(
        step_tf.HostRunner, "begin_epoch", lambda self, perm: (seen.append(perm), begin(self, perm))
    )
    ck = tmp_path / "ck"
    train(tiny(epochs=1, class_balance=True), data_dir, tmp_path / "m1", ck, progress=False)
    labels = load_split(data_dir / "train.npz").labels
    np.testing.assert_array_equal(seen[0], balanced_order(0, 0, labels))  # what the runner got
    resumed = train(tiny(epochs=2, class_balance=True), data_dir, tmp_path / "m2", ck,
                    progress=False)  # fmt: skip
    assert resumed["resumed_from_step"] == STEPS_PER_EPOCH
    train(tiny(epochs=2, class_balance=True), data_dir, tmp_path / "m3", tmp_path / "ck2",
          progress=False)  # fmt: skip
    cols = ["d_loss", "g_loss", "d_real", "d_fake"]
    a, b = (pd.read_csv(tmp_path / m / "history.csv")[cols] for m in ("m2", "m3"))
    pd.testing.assert_frame_equal(a, b, rtol=1e-4)


def test_auto_turns_the_long_tail_recipe_on_only_for_imbalanced_data():
    from ganpipe.gan.training.imbalance import AUTO_DIFFAUGMENT, resolve_auto

    auto = tiny(class_balance="auto", ada="auto", diffaugment="auto")
    balanced = np.repeat(np.arange(10), 100)
    params, why = resolve_auto(auto, balanced, 10)
    recipe = (params.train.class_balance, params.train.ada, params.train.diffaugment)
    assert (*recipe, why) == (False, False, "", "")
    # imbalanced: ADA first (its samples covered the rare classes better), DiffAugment stays off
    params, why = resolve_auto(auto, _long_tail_labels(), 10)
    assert (params.train.class_balance, params.train.ada, params.train.diffaugment) == (
        True,
        True,
        "",
    )
    assert "largest class 1000 images, smallest 20: 50x" in why and "(ADA)" in why
    assert "train.class_balance/train.ada: auto" in why and "DiffAugment" not in why
    # with ADA turned off, DiffAugment's auto is the long-tail augmentation
    params, why = resolve_auto(
        tiny(class_balance="auto", diffaugment="auto"), _long_tail_labels(), 10
    )
    assert (params.train.ada, params.train.diffaugment) == (False, AUTO_DIFFAUGMENT)
    assert "DiffAugment" in why and "ADA" not in why
    # a DiffAugment policy given: ADA's auto stays off (the two are alternatives)
    params, _ = resolve_auto(tiny(ada="auto", diffaugment="color"), _long_tail_labels(), 10)
    assert (params.train.ada, params.train.diffaugment) == (False, "color")
    # just under the threshold (4x) stays off; a class without images counts as imbalanced
    params, _ = resolve_auto(auto, np.repeat(np.arange(3), [399, 100, 100]), 3)
    assert params.train.class_balance is False
    params, _ = resolve_auto(auto, np.repeat(np.arange(3), [5, 5, 0]), 3)
    assert params.train.class_balance is True
    # ADA and DiffAugment are alternatives: auto leaves DiffAugment off beside ADA
    params, why = resolve_auto(tiny(ada=True, diffaugment="auto"), _long_tail_labels(), 10)
    assert params.train.diffaugment == "" and "DiffAugment" not in why
    # explicit values are kept as given
    params, why = resolve_auto(tiny(), _long_tail_labels(), 10)
    assert (params.train.class_balance, params.train.diffaugment, why) == (False, "", "")
    with pytest.raises(ConfigError, match="train.ada_policy"):
        load_params(None, ["train.ada_policy=auto"])
    with pytest.raises(ConfigError, match="two ways to augment"):
        load_params(None, ["train.ada=true", "train.diffaugment=color"])
    assert load_params(None, ["train.diffaugment=color"]).train.ada == "auto"  # resolves off


def test_plan_run_resolves_auto_and_names_the_explicit_recipes_checkpoints(
    tmp_path, data_dir, capsys
):
    from ganpipe.data.prepared import load_prepared
    from ganpipe.gan.training.plan import plan_run

    auto = tiny(class_balance="auto", ada="auto", diffaugment="auto")
    # balanced digits: auto is off, and the run key is the one the explicit off always had
    run = plan_run(auto, data_dir, tmp_path / "ck")
    assert run.ckpt.dir == plan_run(tiny(), data_dir, tmp_path / "ck").ckpt.dir
    assert "imbalanced" not in capsys.readouterr().out
    # classes 5-9 cut to 2 images each: on, said so, keyed as the explicit recipe
    data = load_prepared(data_dir)
    keep = np.flatnonzero(data.train.labels < 5)
    for k in range(5, 10):
        keep = np.concatenate([keep, np.flatnonzero(data.train.labels == k)[:2]])
    tail = tmp_path / "tail"
    train_split = Split(data.train.images[keep], data.train.labels[keep])
    names = [str(i) for i in range(10)]
    summary = make_summary(train_split, data.test, names, "digits")
    save_prepared(tail, Prepared(train_split, data.test, summary))
    run = plan_run(auto, tail, tmp_path / "ck")
    assert (run.params.train.class_balance, run.params.train.ada) == (True, True)
    assert run.params.train.diffaugment == ""
    assert "imbalanced training data" in capsys.readouterr().out
    explicit = tiny(class_balance=True, ada=True)
    assert run.ckpt.dir == plan_run(explicit, tail, tmp_path / "ck").ckpt.dir


@pytest.mark.parametrize("arch", ["mlp", "mlp_convd", "resnet"])
def test_every_arch_trains_as_a_gan(tmp_path, data_dir, arch):
    """The seed articles' dense GAN and the residual one train through the same step as the
    default: D learns to tell real from fake (its mean output on real images ends above that on
    fakes), both models' weights move, and the exported generator loads and draws finite images."""
    import ganpipe.gan.models  # noqa: F401  (registers the layers the saved models use)

    p = tiny(epochs=2)
    model = p.model.model_dump() | {"arch": arch}
    params = Params.model_validate({"model": model, "train": p.train.model_dump()})
    summary = train(params, data_dir, tmp_path / "m", tmp_path / "ck", progress=False)
    assert summary["arch"] == arch
    hist = pd.read_csv(tmp_path / "m" / "history.csv")
    assert len(hist) == 2 * STEPS_PER_EPOCH
    assert np.isfinite(hist[["d_loss", "g_loss"]].to_numpy()).all()
    late = hist.iloc[STEPS_PER_EPOCH:]
    assert late["d_real"].mean() > late["d_fake"].mean()
    initial = build_for_training(params, (8, 8, 1), 10)  # the same seeded start
    for name, start in (("generator", initial.generator), ("discriminator", initial.discriminator)):
        trained = keras.models.load_model(tmp_path / "m" / f"{name}.keras", safe_mode=True)
        moved = [
            not np.array_equal(a, b)
            for a, b in zip(start.get_weights(), trained.get_weights(), strict=True)
        ]
        assert any(moved), name
    g = keras.models.load_model(tmp_path / "m" / "generator.keras", safe_mode=True)
    out = g.predict([np.zeros((2, 8), np.float32), np.array([1, 2], np.int32)], verbose=0)
    assert out.shape == (2, 8, 8, 1) and np.isfinite(out).all()
