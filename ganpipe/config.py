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
    ValidationInfo,
    field_validator,
    model_validator,
)

from ganpipe.errors import ConfigError

DEFAULT_PARAMS = "params.yaml"
# DiffAugment transforms `train.diffaugment` may list (ganpipe/gan/training/diffaugment.py).
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
    # Cap chosen classes' training images, by class name, after max_per_class (a long tail from
    # any dataset): {"5": 20, "6": 20}. The test split is never capped.
    class_caps: dict[str, Annotated[int, Field(ge=1)]] | None = None
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
    # (see ganpipe/gan/models/tutorial.py); `filters` does not apply to it.
    # mlp, mlp_convd: the dense GAN of the seed articles (dense D, or two 5x5 stride-2
    # convolutions), trained right and conditioned (ganpipe/gan/models/mlp.py), 28x28-sized layers
    # for any shape. resnet: SNGAN's residual G (class-conditional BatchNorm) and D (projection),
    # scaled to the data's shape (ganpipe/gan/models/resnet.py).
    arch: Literal["conditional", "dcgan_tutorial", "mlp", "mlp_convd", "resnet"] = "conditional"
    latent_dim: int = Field(64, ge=1)
    embed_dim: int = Field(32, ge=1)
    # Width of the widest convolution; the others halve from it.
    filters: int = Field(64, ge=8)
    # Spectral normalisation of every discriminator layer with weights, the label embeddings
    # included (conditional, resnet, mlp, mlp_convd; dcgan_tutorial: its convolutions and dense).
    spectral_norm: bool = False
    # conditional: class-conditional BatchNorm in the generator (a gain and bias per class, as in
    # SNGAN/BigGAN) instead of the label embedding concatenated to z. resnet always has it.
    class_bn: bool = False
    # conditional without class_bn: Gaussian noise of this std added to the generator's class
    # embedding while training (NoisyTwins' noise, without its twin loss): the embeddings of
    # different classes overlap, so a rare class's samples borrow variety from the common ones
    # instead of collapsing onto its few images. 0: off; NoisyTwins uses about 0.75 (relative to
    # embeddings initialised uniformly in +-0.05, so ours is an absolute std: see docs/architectures.md).
    embed_noise: float = Field(0.0, ge=0.0)
    # conditional without class_bn: the generator's first layer (z -> its smallest feature map)
    # is shared by all classes, and the class embedding joins that map tiled over its pixels
    # (UTLO/BAGAN's shared low-resolution stage): the coarse layout is learned from every
    # class's images, so a rare class draws its variety from it rather than from its few images.
    shared_lowres: bool = False
    # gSR (Rangwani et al. 2022): this weight x the largest singular value of each class's
    # class-conditional BatchNorm gains and biases, grouped into near-square matrices, added to G's
    # loss (ganpipe/gan/training/gsr.py): it keeps a rare class's conditioning from collapsing
    # onto a few directions. Needs the class-conditional BatchNorm (conditional with class_bn, or
    # resnet). 0: off; the paper uses 0.5 on CIFAR-10-LT.
    class_bn_gsr: float = Field(0.0, ge=0.0)

    @model_validator(mode="after")
    def _embedding_options_need_embedding(self) -> ModelParams:
        if self.class_bn_gsr and not (self.arch == "resnet" or
                                      (self.arch == "conditional" and self.class_bn)):  # fmt: skip
            raise ValueError(
                "model.class_bn_gsr needs the class-conditional BatchNorm: model.arch resnet, or "
                "conditional with class_bn true"
            )
        for key in ("embed_noise", "shared_lowres"):
            if getattr(self, key) and (self.arch != "conditional" or self.class_bn):
                raise ValueError(
                    f"model.{key} needs model.arch conditional with class_bn false (the "
                    "generator whose class enters as an embedding)"
                )
        return self


class TrainParams(Section):
    # The defaults are the best recipe found for the main job's budget (about 3 minutes of training
    # on 2 CPU cores on the embedded digits): docs/results.md, "Choosing the defaults".
    epochs: int = Field(45, ge=1)
    batch_size: int = Field(64, ge=1)
    g_learning_rate: float = Field(4e-4, gt=0)
    d_learning_rate: float = Field(4e-4, gt=0)
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
    # (weight gp_weight, only used by wgan_gp). See ganpipe/gan/training/losses.py.
    loss: Literal["bce", "hinge", "wgan_gp"] = "bce"
    gp_weight: float = Field(10.0, gt=0)
    # Exponential moving average of the generator's weights (e.g. 0.999); null: off. When on, the
    # EMA generator is the one exported (generator.keras) and drawn in the sample grids.
    ema_decay: float | None = Field(0.999, gt=0, lt=1)
    # DiffAugment policy for D's inputs (real and fake): "" (off), a comma-separated subset of
    # color, translation, cutout, or auto: all three on imbalanced training data (the largest class
    # at least 4x the smallest: ganpipe.data.sampling.LONG_TAIL_RATIO), else off.
    diffaugment: str = "auto"
    # Data parallel over the local devices (ganpipe/gan/training/distribute.py): auto (data_parallel
    # when there is more than one device), none, or data_parallel. batch_size is the global batch,
    # split evenly across the devices.
    distribute: Literal["auto", "none", "data_parallel"] = "auto"
    # Draw real batches class-balanced (every class equally often, its images cycled) instead of
    # one pass over the data per epoch: rare classes get as many of D's and G's steps (the fake
    # batch uses the real batch's labels) as common ones. For long-tailed data; auto: on when the
    # training data is imbalanced (as diffaugment's auto).
    class_balance: bool | Literal["auto"] = "auto"
    # Adaptive discriminator augmentation (Karras et al. 2020; ganpipe/gan/training/ada.py): each of
    # ada_policy's transforms is applied to each image D sees with probability p, and p moves
    # every ada_interval steps towards D's outputs on real images having mean sign ada_target,
    # by at most 1 per ada_kimg thousand images. Not together with diffaugment. auto: on when the
    # training data is imbalanced (as class_balance's auto) and diffaugment is not set to a policy;
    # on MNIST's long tail its rare samples covered the real ones better than DiffAugment's.
    ada: bool | Literal["auto"] = "auto"
    ada_policy: str = "color,translation,cutout"
    ada_target: float = Field(0.6, gt=0, lt=1)
    ada_interval: int = Field(4, ge=1)
    ada_kimg: float = Field(100.0, gt=0)

    @field_validator("diffaugment", "ada_policy")
    @classmethod
    def _known_policies(cls, value: str, info: ValidationInfo) -> str:
        if info.field_name == "diffaugment" and value.strip() == "auto":
            return "auto"
        return ",".join(parse_diffaugment(value))  # canonical: no spaces

    @model_validator(mode="after")
    def _one_augmentation(self) -> TrainParams:
        if self.ada is True and self.diffaugment not in ("", "auto"):
            raise ValueError(
                "train.ada and train.diffaugment are two ways to augment D's inputs: set one "
                "(train.ada_policy picks ADA's transforms)"
            )
        if self.ada is not False and not self.ada_policy:
            raise ValueError("train.ada needs at least one transform in train.ada_policy")
        return self


class GenerateParams(Section):
    # Samples per class: a number, or "auto": what augment's mode needs for each class times
    # `headroom` (room for its filters), at least `min_per_class`. headroom auto: 1.5, or 2 on
    # imbalanced training data, where the off-label filter drops more of the rare classes' samples
    # (ganpipe.data.synthetic.HEADROOM).
    per_class: int | Literal["auto"] = "auto"
    headroom: Annotated[float, Field(ge=1.0)] | Literal["auto"] = "auto"
    min_per_class: int = Field(100, ge=1)
    # True (with a number per_class): split per_class * num_classes across classes in proportion
    # to the real counts.
    proportional: bool = False
    seed: int = 1
    batch_size: int = Field(256, ge=1)
    write_png: bool = True


class AugmentParams(Section):
    # How many synthetic images each class gets: ratio (synthetic_ratio x its real count),
    # balance (up to target_per_class, default the largest class's real count), counts (by name),
    # or auto: the utility study's choice on validation data (metrics/utility.json) of how much of
    # the pool (balance on long-tailed data, else ratio) and with what loss weight; none at all
    # unless its verdict is `helps`. Needs utility.enabled.
    mode: Literal["ratio", "balance", "counts", "auto"] = "ratio"
    # Synthetic images added per real image (0.5: half as many synthetic as real).
    synthetic_ratio: float = Field(1.0, ge=0)
    target_per_class: int | None = Field(None, ge=1)
    counts: dict[str, Annotated[int, Field(ge=0)]] | None = None
    seed: int = 0
    # Filters, in this order (ganpipe.evaluation.filters). Keep only synthetic samples the domain classifier
    # (evaluator/) assigns to their label, with at least min_confidence probability: off-label
    # samples are label noise. auto: on when the training data is imbalanced (as
    # train.class_balance's auto): a GAN draws its rare classes off-label most.
    reject_off_label: bool | Literal["auto"] = "auto"
    min_confidence: float = Field(0.0, ge=0.0, lt=1.0)
    # Drop near-copies of training images (ganpipe.evaluation.metrics.memorization): closer to their nearest training
    # image, in pixels (any 1-pixel shift) or in evaluator features, than the
    # memorization_quantile/2 quantile of real images' distance to their nearest other training
    # image in that space. A held-out real image is dropped with probability <= the quantile.
    memorization_guard: bool = True
    memorization_quantile: float = Field(0.02, gt=0.0, lt=1.0)
    # Keep only samples inside the real training images' k-NN balls in evaluator features (the
    # precision criterion of Kynkaanniemi et al. 2019).
    fidelity_filter: bool = False
    fidelity_k: int = Field(5, ge=1)
    # Refuse to export when metrics/utility.json's verdict is "hurts" (needs utility.enabled).
    require_benefit: bool = False
    # Per-image training targets in train.npz, which ganpipe.data.loaders applies: `soft_labels`
    # (a real image's is its one-hot label; a synthetic image's mixes in, with weight teacher_mix,
    # the evaluator's softmax at teacher_temperature: a classifier trained on the real data as
    # teacher, He et al. 2023 used temperature 2 and weight 0.5) and `weights` (synthetic_weight
    # for a synthetic image, 1 for a real one). The defaults leave the labels hard and weights 1.
    teacher_mix: float = Field(0.0, ge=0.0, le=1.0)
    teacher_temperature: float = Field(2.0, gt=0.0)
    synthetic_weight: float = Field(1.0, ge=0.0)
    # The part of a user's training before the synthetic images join (deferral; recorded in
    # train.npz as `synthetic_start`: train that part of the epochs on the loaders' synthetic=False).
    synthetic_start: float = Field(0.0, ge=0.0, lt=1.0)
    # ... and the part after which they leave (1: never; recorded as `synthetic_stop`: train the
    # epochs after it on synthetic=False again, fine-tuning on the real images).
    synthetic_stop: float = Field(1.0, gt=0.0, le=1.0)

    @model_validator(mode="after")
    def _mode_needs(self) -> AugmentParams:
        if self.synthetic_start >= self.synthetic_stop:
            raise ValueError(
                f"augment.synthetic_start ({self.synthetic_start:g}) must be below "
                f"augment.synthetic_stop ({self.synthetic_stop:g})"
            )
        if self.mode == "counts" and not self.counts:
            raise ValueError("augment.counts (class name: number) required when mode is 'counts'")
        if self.counts and self.mode != "counts":
            raise ValueError("augment.counts is only read when augment.mode is 'counts'")
        if self.target_per_class is not None and self.mode != "balance":
            raise ValueError("augment.target_per_class is only read when augment.mode is 'balance'")
        return self


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


class UtilityParams(Section):
    """The downstream test (ganpipe.evaluation.downstream_study): does adding the synthetic
    samples help a classifier that is not the evaluator, over the strongest real-only baseline
    (chosen on validation among the losses, with and without oversampling)? Off by default: a
    study is dozens of classifier trainings (131, about 110 min, for the long-tail preset on 2 cores)."""

    enabled: bool = False
    # Scenarios: the data as given; a stratified label_fraction of it; a long tail (class_caps).
    # Each non-given scenario trains its own GAN (and evaluator) on the data it keeps.
    scenarios: tuple[Literal["as_given", "label_fraction", "long_tail"], ...] = ("as_given",)
    label_fraction: float = Field(0.1, gt=0.0, lt=1.0)
    class_caps: dict[str, Annotated[int, Field(ge=1)]] | None = None
    # paired seeds: every arm of a seed shares its split, initialisation and real batches
    seeds: int = Field(10, ge=3)
    seed: int = 0
    # The losses each arm is trained with; the strongest is chosen on validation.
    losses: tuple[Literal["weighted", "balanced_softmax"], ...] = ("weighted", "balanced_softmax")
    # the control arm: the real images repeated to the counts the synthetic fill adds
    oversample_control: bool = True
    # a second opinion: a small ResNet (or your model_path model) trains the chosen pair too
    second_architecture: bool = True
    # the worth-in-real-images curve (scenarios whose caps removed real images): the rare
    # classes' real images x these multiples ([]: no curve)
    worth_multiples: tuple[Annotated[float, Field(gt=1.0)], ...] = (1.5, 2.0, 3.0)
    # your .keras model (images in [-1, 1] -> class logits or probabilities) as the second
    # architecture; null: ganpipe's small ResNet
    model_path: str | None = None
    # training steps of every arm; auto: the best epoch of one early-stopped calibration training
    # (max_epochs, patience on the validation loss) of the class-weighted real-only arm
    steps: int | Literal["auto"] = "auto"
    max_epochs: int = Field(30, ge=1)
    patience: int = Field(3, ge=1)
    batch_size: int = Field(128, ge=1)
    learning_rate: float = Field(1e-3, gt=0)
    validation_fraction: float = Field(0.1, gt=0.0, lt=1.0)
    # parallel trainings: local worker processes (auto: one per core) ...
    workers: int | Literal["auto"] = "auto"
    # ... or a Dask scheduler (tcp://host:8786) whose workers see this workspace's files
    dask_address: str | None = None
    # The treatments chosen among on validation, each with every loss: the share of each class's
    # synthetic samples added (1: all that augment's settings export) and every synthetic image's
    # loss weight. augment.mode auto exports the chosen share and weight when the verdict is helps.
    synthetic_shares: tuple[Annotated[float, Field(gt=0.0, le=1.0)], ...] = (1.0,)
    synthetic_weights: tuple[Annotated[float, Field(gt=0.0)], ...] = (1.0,)
    # ... and the part of a synthetic image's target taken from a teacher (0: its own label;
    # He et al. 2023: 0.5): the seed's chosen real-only arm, its softmax at
    # augment.teacher_temperature. augment.mode auto exports the chosen part as augment.teacher_mix.
    teacher_mixes: tuple[Annotated[float, Field(ge=0.0, le=1.0)], ...] = (0.0,)
    # ... and the part of the training steps before the synthetic images join the batches (0:
    # from the first step; 0.5: M2m's deferral, the second half). augment.mode auto records the
    # chosen part as augment.synthetic_start (the loaders' synthetic=False is the first part).
    synthetic_starts: tuple[Annotated[float, Field(ge=0.0, lt=1.0)], ...] = (0.0,)
    # ... and the part of the training steps after which they leave again (1: they stay to the end;
    # 0.75: the last quarter fine-tunes on the real images alone, as after SYNAuG's balanced
    # pretraining). augment.mode auto records the chosen part as augment.synthetic_stop.
    synthetic_stops: tuple[Annotated[float, Field(gt=0.0, le=1.0)], ...] = (1.0,)
    # ... and the part of the gap between a treatment's share and the whole pool filled with
    # copies of the real images, as the oversampled control does (0: none; 1: every class at the
    # control's counts, a share of them synthetic: DA-Fusion's replacement); the copies stay for
    # the whole training. augment.mode auto exports the chosen part as the real images' weights.
    real_fills: tuple[Annotated[float, Field(ge=0.0, le=1.0)], ...] = (0.0,)
    # Classic augmentation (every arm): random shifts (fraction of the size), rotations (degrees).
    classic_shift: float = Field(0.1, ge=0.0, lt=0.5)
    classic_rotation: float = Field(10.0, ge=0.0, le=180.0)
    # The headline metric the verdict is read from.
    verdict_metric: Literal["accuracy", "balanced_accuracy", "macro_f1", "worst_class_recall"] = (
        "balanced_accuracy"
    )

    @model_validator(mode="after")
    def _long_tail_needs_caps(self) -> UtilityParams:
        if "long_tail" in self.scenarios and not self.class_caps:
            raise ValueError("utility.class_caps required for the long_tail scenario")
        if len(set(self.scenarios)) != len(self.scenarios) or not self.scenarios:
            raise ValueError("utility.scenarios: list each scenario once, at least one")
        if not self.losses or len(set(self.losses)) != len(self.losses):
            raise ValueError("utility.losses: list each loss once, at least one")
        for key in (
            "synthetic_shares",
            "synthetic_weights",
            "teacher_mixes",
            "synthetic_starts",
            "synthetic_stops",
            "real_fills",
        ):
            values = getattr(self, key)
            if not values or len(set(values)) != len(values):
                raise ValueError(f"utility.{key}: list each value once, at least one")
        if isinstance(self.steps, int) and self.steps < 1:
            raise ValueError("utility.steps: at least 1, or auto")
        if isinstance(self.workers, int) and self.workers < 1:
            raise ValueError("utility.workers: at least 1, or auto")
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
    utility: UtilityParams = UtilityParams()
    tracking: TrackingParams = TrackingParams()

    @model_validator(mode="after")
    def _benefit_needs_utility(self) -> Params:
        if self.augment.require_benefit and not self.utility.enabled:
            raise ValueError("augment.require_benefit needs utility.enabled: true")
        if self.augment.mode == "auto" and not self.utility.enabled:
            raise ValueError(
                "augment.mode auto exports what the utility study chooses on validation: it "
                "needs utility.enabled: true (or pick ratio, balance or counts yourself)"
            )
        return self

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
        raise ConfigError(f"{path}: not valid YAML: {_yaml_problem(e)}") from None


def _yaml_problem(e: yaml.YAMLError) -> str:
    """PyYAML's error on one line, where it is first: "line 3, column 6: expected ..."."""
    mark = getattr(e, "problem_mark", None)
    if mark is None:
        return " ".join(str(e).split())
    context = f" ({e.context})" if getattr(e, "context", None) else ""
    return f"line {mark.line + 1}, column {mark.column + 1}: {e.problem}{context}"


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
        # A section-wide check's input is the whole section: not worth repeating.
        elif "input" in item and item["type"] != "missing" and not isinstance(item["input"], dict):
            msg = f"{msg} (got {item['input']!r})"
        lines.append(f"{origin}: {key}: {msg}")
    return "\n".join(lines)
