"""Where the features for the distances come from (`evaluate.extractor`).

  classifier   the cached domain classifier's 128-d "features" layer (default). Fréchet key:
               `classifier_fd` (TF-GAN's "Fréchet classifier distance").
  inception    Keras's ImageNet InceptionV3, no top, global average pool: 2048-d, as FID uses.
               Images are resized bilinearly to 299x299, grayscale tiled to 3 channels, scaled to
               [-1, 1] (Inception's preprocessing). Fréchet key: `fid`. Weights come from
               `evaluate.inception_weights` (a local .h5 / .weights.h5 file) or else Keras's
               "imagenet" download; without usable weights this refuses, never falling back to a
               randomly initialised network.
  keras_model  the output of layer `evaluate.layer` of your own `.keras` model (`evaluate.model_path`),
               flattened. Images are resized to its input size when that is fixed, grayscale tiled
               when it wants 3 channels, and scaled to `evaluate.model_input_range`. Fréchet key:
               `classifier_fd`.

Whatever gives the features, the class probabilities (conditional accuracy, classifier score,
evaluator test accuracy) always come from the domain classifier: only a classifier of *this*
dataset's labels can say whether a sample looks like the class it was generated for.

`load_feature_network` does the checks a user can fail (missing files, unknown layer, no weights)
before anything is trained; `build_extractor` then pairs the network with the domain classifier.
Each extractor's `identity` names everything its features depend on (weights file hash, layer,
preprocessing): the reference statistics cache is keyed by it.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ganpipe.config import EvaluateParams
from ganpipe.errors import ConfigError, DataError
from ganpipe.evaluation.metrics.features import FeatureSet, extract, run_batched
from ganpipe.io import file_sha256

# Bump when the preprocessing below changes: it invalidates cached reference statistics.
PREPROCESS_VERSION = 1
INCEPTION_SIZE = 299
INCEPTION_DIM = 2048
INCEPTION_WEIGHTS_FILE = "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5"
INCEPTION_WEIGHTS_URL = (
    "https://storage.googleapis.com/tensorflow/keras-applications/inception_v3/"
    + INCEPTION_WEIGHTS_FILE
)
# Images per forward pass: small for Inception (299x299 activations), larger for small networks.
BATCH = {"classifier": 256, "inception": 32, "keras_model": 128}
FD_KEY = {"classifier": "classifier_fd", "inception": "fid", "keras_model": "classifier_fd"}
# Keras 3 warnings that mean a layer kept its random initialisation.
_PARTIAL_LOAD = ("freshly-initialized", "could not be loaded", "Skipping variable loading")
_SCALE = {"-1..1": (1 / 127.5, -1.0), "0..1": (1 / 255.0, 0.0), "0..255": (1.0, 0.0)}


# ---- preprocessing ---------------------------------------------------------------------------------


def prepare_input(
    images: np.ndarray,
    size: tuple[int | None, int | None] | None = None,
    channels: int | None = None,
    input_range: str = "-1..1",
) -> np.ndarray:
    """uint8 N x H x W x C images -> float32 network input.

    Bilinear resize (half-pixel centres, no antialiasing: TF's and TF-GAN's default) to `size` when
    given and different, grayscale tiled to `channels` = 3, then scaled from [0, 255] to
    `input_range` ("-1..1", "0..1" or "0..255").
    """
    x = np.asarray(images)
    if x.ndim != 4:
        raise DataError(f"expected N x H x W x C images, got shape {x.shape}")
    c = x.shape[-1]
    if channels is not None and c != channels and not (c == 1 and channels == 3):
        raise DataError(f"the feature network takes {channels}-channel images; these have {c}")
    x = x.astype(np.float32)
    h, w = size if size is not None else (None, None)
    h, w = h or x.shape[1], w or x.shape[2]
    if (h, w) != x.shape[1:3] and len(x):
        import keras

        x = keras.ops.convert_to_numpy(
            keras.ops.image.resize(x, (h, w), interpolation="bilinear", antialias=False)
        )
        np.clip(x, 0.0, 255.0, out=x)
    if channels == 3 and c == 1:
        x = np.repeat(x, 3, axis=-1)
    scale, offset = _SCALE[input_range]
    return x * np.float32(scale) + np.float32(offset)


def inception_preprocess(images: np.ndarray) -> np.ndarray:
    """uint8 images -> InceptionV3 input: 299 x 299 bilinear, 3 channels, [-1, 1]."""
    return prepare_input(images, (INCEPTION_SIZE, INCEPTION_SIZE), 3, "-1..1")


# ---- networks --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FeatureNetwork:
    """A network other than the domain classifier: uint8 batch -> N x dim features."""

    name: str
    features: Callable[[np.ndarray], np.ndarray]
    dim: int | None  # None: known after the first batch
    identity: dict[str, Any]
    batch_size: int


def _inception_v3(weights: str) -> Any:
    """InceptionV3 without its top, global-average pooled (a seam for tests)."""
    import keras

    return keras.applications.InceptionV3(
        include_top=False,
        weights=weights,
        input_shape=(INCEPTION_SIZE, INCEPTION_SIZE, 3),
        pooling="avg",
    )


def _load_strictly(load: Callable[[], Any], what: str) -> Any:
    """`load()`, refusing (ValueError) when Keras reports weights it could not match: Keras 3 warns
    and keeps a layer's random initialisation for some partial matches."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = load()
    partial = [w for w in caught if any(s in str(w.message) for s in _PARTIAL_LOAD)]
    if partial:
        raise ValueError(f"{what}: weights only partly loaded ({partial[0].message})")
    for w in caught:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return model


def _howto_weights() -> str:
    return (
        f"download {INCEPTION_WEIGHTS_URL} where there is internet access, then either set "
        f"evaluate.inception_weights=/path/to/{INCEPTION_WEIGHTS_FILE} or put the file in "
        "~/.keras/models/ (Keras's download cache); or use evaluate.extractor=classifier"
    )


def load_inception(weights: str | None) -> FeatureNetwork:
    """ImageNet InceptionV3 pool features; ConfigError (saying how to get weights) if none load."""
    import keras

    if weights:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise ConfigError(
                f"evaluate.inception_weights: {path}: file not found; {_howto_weights()}"
            )
        if not path.name.endswith(".h5"):
            raise ConfigError(
                f"evaluate.inception_weights: {path}: expected an .h5 or .weights.h5 weights file"
            )
        try:
            model = _load_strictly(lambda: _inception_v3(str(path)), str(path))
        except Exception as e:  # wrong architecture, truncated file, ...
            raise ConfigError(
                f"evaluate.inception_weights: {path}: not InceptionV3 no-top weights ({e}); "
                f"{_howto_weights()}"
            ) from None
        source = {"weights_sha256": file_sha256(path)}
    else:
        try:
            model = _load_strictly(lambda: _inception_v3("imagenet"), "imagenet")
        except Exception as e:  # offline: "URL fetch failure ..."
            raise ConfigError(
                "evaluate.extractor=inception needs InceptionV3 ImageNet weights and Keras could not "
                f"get them ({e}). No randomly initialised network is used instead: "
                f"{_howto_weights()}"
            ) from None
        source = {"weights": f"keras-imagenet/{INCEPTION_WEIGHTS_FILE}"}

    def features(batch: np.ndarray) -> np.ndarray:
        return np.asarray(model.predict_on_batch(inception_preprocess(batch)))

    identity = {
        "name": "inception",
        **source,
        "preprocess": f"bilinear{INCEPTION_SIZE},tile3,-1..1,v{PREPROCESS_VERSION}",
        "keras": keras.__version__,
    }
    return FeatureNetwork("inception", features, INCEPTION_DIM, identity, BATCH["inception"])


def load_keras_model(
    model_path: str, layer: str, input_range: str, image_shape: tuple[int, ...]
) -> FeatureNetwork:
    """The flattened output of `layer` of the .keras model at `model_path`; ConfigError naming the
    key for a missing or unloadable file, an unknown layer (listing the layers) or a model whose
    input cannot take these images."""
    import keras

    path = Path(model_path).expanduser()
    if not path.is_file():
        raise ConfigError(f"evaluate.model_path: {path}: file not found")
    try:
        model = _load_strictly(
            lambda: keras.saving.load_model(path, compile=False, safe_mode=True), str(path)
        )
    except Exception as e:
        raise ConfigError(f"evaluate.model_path: {path}: cannot load a Keras model: {e}") from None
    names = [lay.name for lay in model.layers]
    if layer not in names:
        raise ConfigError(
            f"evaluate.layer: {layer!r} is not a layer of {path}; its layers are: {', '.join(names)}"
        )
    try:
        if len(model.inputs) != 1:
            raise ValueError(f"it has {len(model.inputs)} inputs, not one image input")
        sub = keras.Model(model.inputs[0], model.get_layer(layer).output)
    except Exception as e:
        raise ConfigError(
            f"evaluate.layer: cannot read layer {layer!r} of {path} as a feature output ({e}); "
            "use a layer of the top-level functional or Sequential model"
        ) from None
    if len(sub.inputs) != 1 or len(sub.inputs[0].shape) != 4:
        raise ConfigError(
            f"evaluate.model_path: {path}: needs one image input (N x H x W x C); it takes "
            f"{[tuple(i.shape) for i in sub.inputs]}"
        )
    _, h, w, c = sub.inputs[0].shape
    data_c = int(image_shape[-1])
    if c is not None and c != data_c and not (data_c == 1 and c == 3):
        raise ConfigError(
            f"evaluate.model_path: {path}: takes {c}-channel images, the data has {data_c}"
        )
    out_shape = tuple(sub.outputs[0].shape[1:])
    dim = math.prod(out_shape) if all(s is not None for s in out_shape) else None
    channels = int(c) if c is not None else data_c

    def features(batch: np.ndarray) -> np.ndarray:
        x = prepare_input(batch, (h, w), channels, input_range)
        return np.asarray(sub.predict_on_batch(x)).reshape(len(batch), -1)

    identity = {
        "name": "keras_model",
        "model_sha256": file_sha256(path),
        "layer": layer,
        "input": [h, w, channels],
        "input_range": input_range,
        "preprocess": f"bilinear,tile,v{PREPROCESS_VERSION}",
        "keras": keras.__version__,
    }
    return FeatureNetwork("keras_model", features, dim, identity, BATCH["keras_model"])


def load_feature_network(
    params: EvaluateParams, image_shape: tuple[int, ...]
) -> FeatureNetwork | None:
    """The network `params.extractor` names (None for the domain classifier, which
    `build_extractor` receives ready); fails with a ConfigError before any work is done."""
    if params.extractor == "classifier":
        return None
    if params.extractor == "inception":
        return load_inception(params.inception_weights)
    if params.extractor == "keras_model":
        assert params.model_path and params.layer  # EvaluateParams checks this
        return load_keras_model(
            params.model_path, params.layer, params.model_input_range, image_shape
        )
    raise ConfigError(f"evaluate.extractor: unknown extractor {params.extractor!r}")


# ---- extractor = feature network + domain classifier ------------------------------------------------


@dataclass(frozen=True)
class Extractor:
    """Features from `network` (or the classifier's own features when it is None), class
    probabilities from the domain `classifier` ([features, logits] model)."""

    classifier: Any
    classifier_identity: dict[str, Any]
    network: FeatureNetwork | None = None
    classifier_batch_size: int = field(default=BATCH["classifier"])

    @property
    def name(self) -> str:
        return self.network.name if self.network else "classifier"

    @property
    def fd_key(self) -> str:
        """The Fréchet distance's key: `fid` for Inception features, else `classifier_fd`."""
        return FD_KEY[self.name]

    @property
    def identity(self) -> dict[str, Any]:
        """What the features and probabilities depend on (the reference cache key)."""
        ident: dict[str, Any] = {"classifier": self.classifier_identity}
        if self.network:
            ident["network"] = self.network.identity
        return ident

    def feature_set(self, images: np.ndarray, labels: np.ndarray) -> FeatureSet:
        """One batched pass of each network over `images` (uint8 N x H x W x C)."""
        feats, probs = extract(self.classifier, images, self.classifier_batch_size)
        if self.network is not None:
            net = self.network
            (feats,) = run_batched(lambda b: (net.features(b),), images, (net.dim,), net.batch_size)
        return FeatureSet(feats, probs, np.asarray(labels, dtype=np.int64))


def classifier_identity(meta: dict[str, Any]) -> dict[str, Any]:
    """The cached domain classifier's identity: its cache key and when that network was trained."""
    return {"key": meta.get("key"), "trained_at": meta.get("trained_at")}


def build_extractor(
    network: FeatureNetwork | None, classifier: Any, classifier_meta: dict[str, Any]
) -> Extractor:
    """Pair a feature network (None: the classifier's own features) with the domain classifier's
    two-output model (`ganpipe.evaluation.domain_net.feature_extractor`) and its meta.json."""
    return Extractor(classifier, classifier_identity(classifier_meta), network)
