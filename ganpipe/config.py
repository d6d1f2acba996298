"""Typed parameters, one section per stage, loaded from `params.yaml` plus `--set` overrides.

Every problem is reported before any work starts, as one message naming the file and the key.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from ganpipe.errors import ConfigError

DEFAULT_PARAMS = "params.yaml"
# DiffAugment transforms `train.diffaugment` may list (ganpipe/training/diffaugment.py).
DIFFAUGMENT_POLICIES = ("color", "translation", "cutout")


def parse_diffaugment(policy: str) -> tuple[str, ...]:
    """A `train.diffaugment` policy as a tuple: "color, translation" -> ("color", "translation"),
    "" -> (). ValueError for an unknown or repeated name. Here, not in the Keras-importing
    training/diffaugment.py, so validating params stays cheap; both use this one parser."""
    names = tuple(n.strip() for n in policy.split(",") if n.strip())
    unknown = [n for n in names if n not in DIFFAUGMENT_POLICIES]
    if unknown:
        raise ValueError(
            f'unknown DiffAugment policy {", ".join(map(repr, unknown))}; expected "" or a '
            f"comma-separated subset of {', '.join(DIFFAUGMENT_POLICIES)}"
        )
    if len(set(names)) != len(names):
        raise ValueError("lists a DiffAugment policy twice")
    return names


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataParams(Section):
    source: Literal["mnist_5k", "digits", "mnist", "fashion_mnist", "cifar10", "folder", "csv"] = (
        "mnist_5k"
    )
    # An .npz (mnist/fashion_mnist/cifar10), a folder of class folders, or a CSV file.
    path: str | None = None
    test_fraction: float = Field(0.2, gt=0.0, lt=1.0)
    # Resize every image to image_size x image_size; null keeps sizes (and mixed sizes are an error).
    image_size: int | None = Field(None, ge=4, le=1024)
    # Keep at most this many training images per class (small-data experiments); null keeps all.
    max_per_class: int | None = Field(None, ge=1)
    label_column: str = "label"
    seed: int = 0

    @model_validator(mode="after")
    def _path_needed(self) -> DataParams:
        if self.source in ("folder", "csv") and not self.path:
            raise ValueError(f"data.path is required when data.source is {self.source!r}")
        return self


class ModelParams(Section):
    # conditional: ours, sized from the data (label channel + projection discriminator).
    # dcgan_tutorial: the TensorFlow DCGAN tutorial's layers, 28x28x1 only, minimal conditioning
    # (see ganpipe/models/tutorial.py); `filters` does not apply to it.
    arch: Literal["conditional", "dcgan_tutorial"] = "conditional"
    latent_dim: int = Field(64, ge=1)
    embed_dim: int = Field(32, ge=1)
    # Width of the widest convolution; the others halve from it.
    filters: int = Field(128, ge=8)
    # Wrap the discriminator's convolutions and dense layers in keras.layers.SpectralNormalization.
    spectral_norm: bool = False


class TrainParams(Section):
    epochs: int = Field(20, ge=1)
    batch_size: int = Field(64, ge=1)
    g_learning_rate: float = Field(2e-4, gt=0)
    d_learning_rate: float = Field(2e-4, gt=0)
    beta_1: float = Field(0.5, ge=0, lt=1)
    sample_every: int = Field(200, ge=1)
    checkpoint_every: int = Field(200, ge=1)
    seed: int = 0
    # Only checks Keras's backend, which is fixed at import by $KERAS_BACKEND (auto: whichever).
    backend: Literal["auto", "tensorflow", "jax"] = "auto"
    # Keras dtype policy for both models; the models' last layers stay float32. mixed_float16 also
    # wraps both optimizers in a LossScaleOptimizer.
    precision: Literal["float32", "mixed_bfloat16", "mixed_float16"] = "float32"
    # bce: non-saturating GAN loss; hinge; wgan_gp: Wasserstein loss + gradient penalty
    # (weight gp_weight, only used by wgan_gp). See ganpipe/training/losses.py.
    loss: Literal["bce", "hinge", "wgan_gp"] = "bce"
    gp_weight: float = Field(10.0, gt=0)
    # Exponential moving average of the generator's weights (e.g. 0.999); null: off. When on, the
    # EMA generator is the one exported (generator.keras) and drawn in the sample grids.
    ema_decay: float | None = Field(None, gt=0, lt=1)
    # DiffAugment policy for D's inputs (real and fake): "" (off) or a comma-separated subset of
    # color, translation, cutout.
    diffaugment: str = ""
    # Data parallel over the local devices (ganpipe/training/distribute.py): auto (data_parallel
    # when there is more than one device), none, or data_parallel. batch_size is the global batch,
    # split evenly across the devices.
    distribute: Literal["auto", "none", "data_parallel"] = "auto"

    @field_validator("diffaugment")
    @classmethod
    def _known_policies(cls, value: str) -> str:
        return ",".join(parse_diffaugment(value))  # canonical: no spaces


class GenerateParams(Section):
    per_class: int = Field(500, ge=1)
    # True: split per_class * num_classes across classes in proportion to the real counts.
    proportional: bool = False
    seed: int = 1
    batch_size: int = Field(256, ge=1)
    write_png: bool = True


class AugmentParams(Section):
    # Synthetic images added per real image (0.5: half as many synthetic as real).
    synthetic_ratio: float = Field(1.0, ge=0)
    seed: int = 0
    # Keep only synthetic samples the domain classifier (evaluator/) assigns to their label, with
    # at least min_confidence probability: off-label samples are label noise (ganpipe.evaluator.accept_mask).
    reject_off_label: bool = False
    min_confidence: float = Field(0.0, ge=0.0, lt=1.0)


class EvaluateParams(Section):
    classifier_epochs: int = Field(3, ge=1)
    classifier_batch_size: int = Field(128, ge=1)
    # Samples per set for the distances; capped by what exists.
    max_samples: int = Field(5000, ge=2)
    kid_subsets: int = Field(100, ge=1)
    kid_subset_size: int = Field(1000, ge=2)
    seed: int = 0
    # Features for the distances: the domain classifier (classifier_fd), ImageNet InceptionV3
    # pool features (fid), or a layer of your own .keras model (classifier_fd).
    extractor: Literal["classifier", "inception", "keras_model"] = "classifier"
    # Local InceptionV3 no-top weights (.h5 / .weights.h5); null: Keras's "imagenet" download.
    inception_weights: str | None = None
    # extractor keras_model: the .keras file, the layer whose output is the feature vector, and the
    # input range that model expects.
    model_path: str | None = None
    layer: str | None = None
    model_input_range: Literal["-1..1", "0..1", "0..255"] = "-1..1"
    # Downstream utility (CAS, augmentation uplift): trains several classifiers, so off by default.
    utility: bool = False
    utility_epochs: int = Field(3, ge=1)
    uplift_fractions: tuple[Annotated[float, Field(gt=0.0, le=1.0)], ...] = (0.01, 0.1)
    uplift_seeds: int = Field(3, ge=1)
    # Synthetic samples added per real one in the uplift's augmented arm (per class, as
    # augment.synthetic_ratio); null: every evaluated synthetic sample. Honours augment's rejection.
    uplift_synthetic_ratio: float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _keras_model_needs_path_and_layer(self) -> EvaluateParams:
        if self.extractor == "keras_model":
            missing = [k for k in ("model_path", "layer") if not getattr(self, k)]
            if missing:
                raise ValueError(
                    f"evaluate.{' and evaluate.'.join(missing)} required when evaluate.extractor "
                    "is 'keras_model'"
                )
        return self


class TrackingParams(Section):
    enabled: bool = True
    # null: $MLFLOW_TRACKING_URI, else sqlite:///<absolute cwd>/mlflow.db
    uri: str | None = None
    experiment: str = "ganpipe"
    register_model: bool = True
    model_name: str = "ganpipe-generator"
    # Champion promotion (Prefect flow): the metric that decides, and whether lower or higher wins.
    champion_metric: str = "classifier_fd"
    champion_mode: Literal["min", "max"] = "min"


class Params(Section):
    data: DataParams = DataParams()
    model: ModelParams = ModelParams()
    train: TrainParams = TrainParams()
    generate: GenerateParams = GenerateParams()
    augment: AugmentParams = AugmentParams()
    evaluate: EvaluateParams = EvaluateParams()
    tracking: TrackingParams = TrackingParams()

    _origin: str = PrivateAttr(default="<defaults>")

    @property
    def origin(self) -> str:
        """The file these params came from, for error messages."""
        return self._origin

    def error(self, key: str, message: str) -> ConfigError:
        """A ConfigError naming this params file and `key`, for checks that need the data."""
        return ConfigError(f"{self.origin}: {key}: {message}")

    def flat(self) -> dict[str, Any]:
        """`section.key -> value`, for logging to MLflow."""
        return {
            f"{section}.{key}": value
            for section, values in self.model_dump().items()
            for key, value in values.items()
        }


def _parse_override(item: str) -> tuple[list[str], Any]:
    key, sep, raw = item.partition("=")
    parts = key.strip().split(".")
    if not sep or len(parts) != 2 or not all(parts):
        raise ConfigError(f"--set {item!r}: expected section.key=value, e.g. train.epochs=3")
    return parts, yaml.safe_load(raw) if raw.strip() else None


def read_yaml(path: str | os.PathLike[str], what: str) -> Any:
    """Parse a YAML file; ConfigError naming the file when it can't be read or parsed."""
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read {what}: {e.strerror}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None


def load_params(path: str | os.PathLike[str] | None = None, overrides: list[str] = ()) -> Params:
    """Read `path` (default `params.yaml` if it exists, else the built-in defaults), apply
    `section.key=value` overrides and validate. Raises ConfigError with file and key."""
    if path is None:
        path = DEFAULT_PARAMS if Path(DEFAULT_PARAMS).exists() else None
    raw: dict[str, Any] = {}
    origin = "<defaults>"
    if path is not None:
        origin = str(path)
        raw = read_yaml(path, "params file") or {}
        if not isinstance(raw, dict):
            raise ConfigError(f"{origin}: expected a mapping of sections, got {type(raw).__name__}")
    for item in overrides:
        (section, key), value = _parse_override(item)
        sec = raw.setdefault(section, {})
        if not isinstance(sec, dict):
            raise ConfigError(f"{origin}: {section}: expected a mapping")
        sec[key] = value
    try:
        params = Params.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(_format_validation(origin, e)) from None
    params._origin = origin
    return params


def _format_validation(origin: str, err: ValidationError) -> str:
    lines = []
    for item in err.errors():
        key = ".".join(str(p) for p in item["loc"]) or "<top>"
        msg = item["msg"]
        if item["type"] == "extra_forbidden":
            msg = "unknown key"
        elif "input" in item and item["type"] != "missing":
            msg = f"{msg} (got {item['input']!r})"
        lines.append(f"{origin}: {key}: {msg}")
    return "\n".join(lines)
