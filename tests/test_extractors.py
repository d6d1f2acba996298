"""Feature extractors (classifier, Inception, a user's Keras model) and the reference statistics cache.

Nothing here downloads: the Inception tests build InceptionV3 with random weights (under a second)
or replace its loader, and the other networks are tiny.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import keras
import numpy as np
import pytest

from ganpipe.config import EvaluateParams, load_params
from ganpipe.data.prepared import to_float
from ganpipe.errors import ConfigError, DataError
from ganpipe.evaluation.domain_net import build_classifier, feature_extractor
from ganpipe.evaluation.metrics import FeatureSet, SingularCovarianceWarning, feature_stats
from ganpipe.evaluation.metrics import extractors as ex
from ganpipe.evaluation.metrics.features import extract, run_batched
from ganpipe.evaluation.metrics.reference import load_or_compute, real_reference

OFFLINE = Exception(
    "URL fetch failure on https://storage.googleapis.com/tensorflow/keras-applications/"
    "inception_v3/inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5: None -- "
    "[Errno -2] Name or service not known"
)


def images(n: int, h: int = 8, w: int = 8, c: int = 1, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, h, w, c), dtype=np.uint8)


@pytest.fixture(scope="module")
def classifier():
    """An untrained domain classifier for 8x8x1 images: its outputs only need to be valid."""
    keras.utils.set_random_seed(0)
    return feature_extractor(build_classifier((8, 8, 1), 10))


@pytest.fixture(scope="module")
def tiny_model_path(tmp_path_factory) -> Path:
    """A user's model: 8x8x1 -> conv -> flatten -> Dense(16, "embedding") -> Dense(10)."""
    keras.utils.set_random_seed(1)
    inp = keras.Input((8, 8, 1), name="pixels")
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="conv")(inp)
    x = keras.layers.Flatten(name="flat")(x)
    x = keras.layers.Dense(16, activation="relu", name="embedding")(x)
    out = keras.layers.Dense(10, name="head")(x)
    path = tmp_path_factory.mktemp("user_model") / "mine.keras"
    keras.Model(inp, out).save(path)
    return path


# ---- batching -------------------------------------------------------------------------------------


def test_run_batched_matches_one_pass_and_infers_dims():
    x = images(37, c=3)
    flat = x.reshape(37, -1).astype(np.float32)

    def fn(b):
        return (b.reshape(len(b), -1).astype(np.float32), b.mean(axis=(1, 2, 3)))

    a, m = run_batched(fn, x, (None, 1), batch_size=8)
    np.testing.assert_array_equal(a, flat)
    np.testing.assert_allclose(m[:, 0], x.mean(axis=(1, 2, 3)), rtol=1e-6)
    assert a.dtype == np.float32 and a.shape == (37, 192)
    (empty,) = run_batched(lambda b: (b,), x[:0], (5,))
    assert empty.shape == (0, 5)
    with pytest.raises(ValueError, match="unknown"):
        run_batched(lambda b: (b,), x[:0], (None,))
    with pytest.raises(ValueError, match="batch_size"):
        run_batched(fn, x, (None, 1), batch_size=0)


# ---- preprocessing --------------------------------------------------------------------------------


def test_inception_preprocess_resizes_tiles_and_scales():
    x = images(3, 28, 28, 1)
    x[0] = 0
    x[1] = 255
    y = ex.inception_preprocess(x)
    assert y.shape == (3, 299, 299, 3) and y.dtype == np.float32
    assert y.min() >= -1.0 and y.max() <= 1.0
    np.testing.assert_array_equal(y[..., 0], y[..., 1])
    np.testing.assert_array_equal(y[..., 0], y[..., 2])
    np.testing.assert_allclose(y[0], -1.0)  # black -> -1
    np.testing.assert_allclose(y[1], 1.0, atol=1e-6)  # white -> 1 (bilinear keeps constants)
    # bilinear: the resized image's mean follows the original's
    assert abs(float((y[2].mean() + 1) * 127.5) - float(x[2].mean())) < 3.0

    rgb = images(2, 10, 12, 3)
    z = ex.inception_preprocess(rgb)
    assert z.shape == (2, 299, 299, 3)
    assert not np.array_equal(z[..., 0], z[..., 1])  # colour channels are kept, not tiled
    with pytest.raises(DataError, match="3-channel"):
        ex.inception_preprocess(images(1, 8, 8, 2))


def test_prepare_input_ranges_and_no_op_resize():
    x = images(4, 8, 8, 1)
    np.testing.assert_allclose(ex.prepare_input(x), to_float(x), atol=1e-6)
    np.testing.assert_allclose(ex.prepare_input(x, input_range="0..1"), x / 255.0, atol=1e-6)
    np.testing.assert_array_equal(ex.prepare_input(x, (8, 8), 1, "0..255"), x.astype(np.float32))
    assert ex.prepare_input(x, (None, None), 3).shape == (4, 8, 8, 3)


# ---- Inception ------------------------------------------------------------------------------------


def test_inception_refuses_without_weights_offline(monkeypatch):
    def offline(weights):
        assert weights == "imagenet"
        raise OFFLINE

    monkeypatch.setattr(ex, "_inception_v3", offline)
    with pytest.raises(ConfigError) as e:
        ex.load_feature_network(EvaluateParams(extractor="inception"), (28, 28, 1))
    msg = str(e.value)
    assert "URL fetch failure" in msg and "No randomly initialised network" in msg
    assert "evaluate.inception_weights=" in msg and ex.INCEPTION_WEIGHTS_URL in msg


def test_inception_weights_file_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"inception_weights: .*nope\.h5: file not found"):
        ex.load_inception(str(tmp_path / "nope.h5"))
    txt = tmp_path / "weights.txt"
    txt.write_text("x")
    with pytest.raises(ConfigError, match=r"expected an \.h5"):
        ex.load_inception(str(txt))
    # weights of another network: refused, not half-loaded
    other = tmp_path / "other.weights.h5"
    keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)]).save_weights(other)
    with pytest.raises(ConfigError, match="not InceptionV3 no-top weights"):
        ex.load_inception(str(other))


def test_partly_loaded_weights_are_refused(tmp_path, monkeypatch):
    """Keras 3 only warns for some mismatches and keeps random weights: that is a refusal too."""
    path = tmp_path / "old.weights.h5"
    path.write_bytes(b"stand-in")

    def partial(weights):
        warnings.warn(
            "Affected layers will retain their freshly-initialized weights.", stacklevel=1
        )
        return object()

    monkeypatch.setattr(ex, "_inception_v3", partial)
    with pytest.raises(ConfigError, match="weights only partly loaded"):
        ex.load_inception(str(path))


def test_inception_from_local_weights_file(tmp_path):
    """A local weights file (here: InceptionV3's random init, saved) gives 2048-d pool features."""
    path = tmp_path / "inception.weights.h5"
    ex._inception_v3(None).save_weights(path)
    net = ex.load_feature_network(
        EvaluateParams(extractor="inception", inception_weights=str(path)), (28, 28, 1)
    )
    assert net.name == "inception" and net.dim == 2048
    assert len(net.identity["weights_sha256"]) == 64
    f = net.features(images(2, 28, 28, 1))
    assert f.shape == (2, 2048) and np.isfinite(f).all()


# ---- a user's Keras model -------------------------------------------------------------------------


def test_keras_model_layer_features(tiny_model_path):
    net = ex.load_keras_model(str(tiny_model_path), "embedding", "-1..1", (8, 8, 1))
    assert net.dim == 16 and net.identity["layer"] == "embedding"
    x = images(5)
    model = keras.saving.load_model(tiny_model_path, compile=False)
    sub = keras.Model(model.inputs[0], model.get_layer("embedding").output)
    np.testing.assert_allclose(net.features(x), np.asarray(sub(to_float(x))), rtol=1e-5, atol=1e-6)
    # a conv layer is flattened; another input range is another identity (and other features)
    conv = ex.load_keras_model(str(tiny_model_path), "conv", "0..1", (8, 8, 1))
    assert conv.dim == 8 * 8 * 4 and conv.features(x).shape == (5, 256)
    assert conv.identity["model_sha256"] == net.identity["model_sha256"]


def test_keras_model_errors(tiny_model_path, tmp_path):
    with pytest.raises(ConfigError, match=r"model_path: .*missing\.keras: file not found"):
        ex.load_keras_model(str(tmp_path / "missing.keras"), "embedding", "-1..1", (8, 8, 1))
    bad = tmp_path / "bad.keras"
    bad.write_bytes(b"not a zip")
    with pytest.raises(ConfigError, match="cannot load a Keras model"):
        ex.load_keras_model(str(bad), "embedding", "-1..1", (8, 8, 1))
    with pytest.raises(ConfigError) as e:
        ex.load_keras_model(str(tiny_model_path), "pool5", "-1..1", (8, 8, 1))
    assert "'pool5' is not a layer" in str(e.value)
    assert "pixels, conv, flat, embedding, head" in str(e.value)
    with pytest.raises(ConfigError, match="takes 1-channel images, the data has 3"):
        ex.load_keras_model(str(tiny_model_path), "embedding", "-1..1", (8, 8, 3))


def test_keras_model_resizes_and_tiles_to_its_input(tmp_path):
    inp = keras.Input((16, 16, 3))
    x = keras.layers.GlobalAveragePooling2D(name="gap")(inp)
    path = tmp_path / "rgb.keras"
    keras.Model(inp, keras.layers.Dense(3, name="head")(x)).save(path)
    net = ex.load_keras_model(str(path), "gap", "0..255", (8, 8, 1))
    x8 = images(4)
    f = net.features(x8)
    assert f.shape == (4, 3)
    np.testing.assert_allclose(f[:, 0], f[:, 2])  # tiled gray
    np.testing.assert_allclose(f[:, 0], x8.mean(axis=(1, 2, 3)), rtol=0.05)  # resize keeps means


def test_keras_model_params_need_path_and_layer(tmp_path):
    with pytest.raises(ConfigError, match="evaluate.model_path and evaluate.layer required"):
        load_params(None, ["evaluate.extractor=keras_model"])
    with pytest.raises(ConfigError, match="evaluate.layer required"):
        load_params(None, ["evaluate.extractor=keras_model", "evaluate.model_path=m.keras"])
    with pytest.raises(ConfigError, match="evaluate.extractor: Input should be"):
        load_params(None, ["evaluate.extractor=vgg"])


# ---- extractor selection --------------------------------------------------------------------------


def test_extractor_selection_keys_and_feature_sets(classifier, tiny_model_path):
    meta = {"key": {"content_hash": "abc"}, "trained_at": "now"}
    assert ex.load_feature_network(EvaluateParams(), (8, 8, 1)) is None
    plain = ex.build_extractor(None, classifier, meta)
    assert (plain.name, plain.fd_key) == ("classifier", "classifier_fd")
    x, y = images(20), np.arange(20) % 10
    fs = plain.feature_set(x, y)
    f, p = extract(classifier, x)
    np.testing.assert_allclose(fs.features, f, rtol=1e-5)
    assert fs.features.shape == (20, 128) and fs.labels.dtype == np.int64

    params = EvaluateParams(
        extractor="keras_model", model_path=str(tiny_model_path), layer="embedding"
    )
    mine = ex.build_extractor(ex.load_feature_network(params, (8, 8, 1)), classifier, meta)
    assert (mine.name, mine.fd_key) == ("keras_model", "classifier_fd")
    fs2 = mine.feature_set(x, y)
    assert fs2.features.shape == (20, 16)
    np.testing.assert_allclose(fs2.probs, p, rtol=1e-5)  # probabilities: the domain classifier's
    assert mine.identity["classifier"] == plain.identity["classifier"]
    assert mine.identity != plain.identity

    fake_inception = ex.FeatureNetwork("inception", lambda b: np.zeros((len(b), 4)), 4, {}, 8)
    assert ex.build_extractor(fake_inception, classifier, meta).fd_key == "fid"


# ---- reference statistics cache -------------------------------------------------------------------


def test_feature_stats_in_blocks_match_numpy():
    x = np.random.default_rng(3).normal(size=(1001, 7)).astype(np.float32)
    mu, sigma = feature_stats(x, block=64)
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(mu, x64.mean(0), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(sigma, np.cov(x64, rowvar=False), rtol=1e-10, atol=1e-13)
    assert mu.dtype == sigma.dtype == np.float64
    with pytest.warns(SingularCovarianceWarning):
        feature_stats(x[:5])
    with pytest.raises(ValueError, match="at least 2"):
        feature_stats(x[:1])


def _fs(n: int, seed: int = 0) -> FeatureSet:
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.ones(3), size=n).astype(np.float32)
    return FeatureSet(rng.normal(size=(n, 4)).astype(np.float32), probs, np.arange(n) % 3)


def test_load_or_compute_reuses_and_invalidates(tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return _fs(50)

    parts = {"content_hash": "a" * 64, "split": "train", "extractor": {"name": "x"}}
    first = load_or_compute(tmp_path, parts, compute, "x-train")
    assert not first.from_cache and len(calls) == 1
    assert first.path.parent == tmp_path and first.path.name.startswith("x-train-")
    assert first.mu.dtype == np.float64 and first.sigma.shape == (4, 4)
    assert not list(tmp_path.glob(".*"))  # atomic: no temp file left behind

    again = load_or_compute(tmp_path, dict(parts), compute, "x-train")
    assert again.from_cache and len(calls) == 1
    np.testing.assert_array_equal(again.features.features, first.features.features)
    np.testing.assert_array_equal(again.sigma, first.sigma)

    other = load_or_compute(tmp_path, {**parts, "content_hash": "b" * 64}, compute, "x-train")
    assert not other.from_cache and len(calls) == 2 and other.path != first.path

    first.path.write_bytes(b"garbage")  # damaged: recomputed and rewritten
    fixed = load_or_compute(tmp_path, parts, compute, "x-train")
    assert not fixed.from_cache and len(calls) == 3
    assert load_or_compute(tmp_path, parts, compute, "x-train").from_cache


@pytest.mark.filterwarnings("ignore::ganpipe.evaluation.metrics.SingularCovarianceWarning")
def test_real_reference_counts_extractions(tmp_path, classifier):
    meta = {"key": {"content_hash": "abc"}, "trained_at": "t1"}
    extractor = ex.build_extractor(None, classifier, meta)
    calls = []

    class Counting:
        name = extractor.name
        identity = extractor.identity

        def feature_set(self, imgs, labels):
            calls.append(len(imgs))
            return extractor.feature_set(imgs, labels)

    x, y = images(60), np.arange(60) % 10
    idx = np.arange(0, 60, 2)
    ref = real_reference(tmp_path, "h1", "train", x, y, idx, Counting())
    assert calls == [30] and len(ref.features) == 30
    np.testing.assert_array_equal(ref.features.labels, y[idx])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        real_reference(tmp_path, "h1", "train", x, y, idx, Counting())
    assert calls == [30], "same data, extractor and sample: read from the cache"
    real_reference(tmp_path, "h2", "train", x, y, idx, Counting())  # new data version
    real_reference(tmp_path, "h1", "train", x, y, idx[:-1], Counting())  # another sample
    real_reference(tmp_path, "h1", "test", x, y, idx, Counting())  # another split
    retrained = ex.build_extractor(None, classifier, {**meta, "trained_at": "t2"})
    Counting.identity = retrained.identity  # the classifier was retrained
    real_reference(tmp_path, "h1", "train", x, y, idx, Counting())
    assert calls == [30, 30, 29, 30, 30]
    full = real_reference(tmp_path, "h1", "train", x, y, np.arange(60), Counting())
    assert calls[-1] == 60 and len(full.features) == 60
