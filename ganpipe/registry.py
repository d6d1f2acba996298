"""What a stage is, written down once: the one declarative registry of the pipeline's stages.

The CLI (names, help, which stages need Keras or log to MLflow), `ganpipe.pipeline.run_stages` (the
one loop that runs stages, for `ganpipe run`, the Prefect flow, sweeps and the utility stage's
scenarios), the cache fingerprints (`code_fingerprint`) and the check of `dvc.yaml`
(tests/test_registry.py) all read `STAGES`. Pure data: no ganpipe imports, so any floor may read it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Stage:
    name: str
    help: str
    # needs a Keras backend (ganpipe.backend checks for one before the stage imports Keras)
    keras: bool
    # logs into the pipeline's MLflow run (`train` opens it, the later ones rejoin it)
    tracked: bool
    # params.yaml sections or `section.key`s its outputs depend on (dvc.yaml's `params`)
    params: tuple[str, ...]
    # workspace files and folders it reads (dvc.yaml's data deps)
    inputs: tuple[str, ...]
    # what it writes: dvc.yaml's outs, metrics and plots
    outputs: tuple[str, ...]
    # the code that shapes its outputs, relative to the package: folders or files (dvc.yaml's code
    # deps and the cache fingerprints). Besides these every stage stands on FOUNDATION below.
    code: tuple[str, ...]


# The floors every stage imports (typed params, atomic I/O, errors, keys, locks, paths, the tracker
# interface, the backend check). They are not code deps of any stage: an edit there would rerun the
# whole pipeline, and what they compute is fixed by params.yaml (every key is written there) or does
# not reach an output (I/O, locking, tracking).
FOUNDATION = (
    "__init__.py",
    "backend.py",
    "config.py",
    "errors.py",
    "io.py",
    "keys.py",
    "lock.py",
    "paths.py",
    "registry.py",
    "tracker.py",
)

_GAN_CODE = ("data", "gan")
# the domain classifier and the metrics package its features come from
_EVALUATOR_CODE = (
    "data",
    "evaluation/domain_classifier.py",
    "evaluation/domain_net.py",
    "evaluation/metrics",
)

_SEQUENCE = (
    Stage(
        "prepare",
        "load and validate the raw data; write data/prepared/{train,test}.npz + summary.json",
        keras=False,  # imports Keras only to download a Keras dataset, and checks there itself
        tracked=False,
        params=("data",),
        inputs=("data/raw",),
        outputs=("data/prepared",),
        code=("data", "stages/prepare.py"),
    ),
    Stage(
        "train",
        "train the class-conditional GAN; write models/ (resumes from checkpoints/)",
        keras=True,
        tracked=True,
        params=("model", "train"),
        inputs=("data/prepared",),
        outputs=("models", "checkpoints"),
        code=(*_GAN_CODE, "images.py", "stages/train.py"),
    ),
    Stage(
        "generate",
        "sample labelled synthetic images into data/synthetic/",
        keras=True,
        tracked=True,
        # generate.per_class auto generates what augment's mode asks for
        params=(
            "generate",
            "augment.mode",
            "augment.synthetic_ratio",
            "augment.target_per_class",
            "augment.counts",
        ),
        inputs=("data/prepared/summary.json", "models/generator.keras"),
        outputs=("data/synthetic",),
        code=("data", "gan/generator.py", "gan/models", "images.py", "stages/generate.py"),
    ),
    Stage(
        "classifier",
        "train (or reuse) the domain classifier the evaluation uses, in evaluator/",
        keras=True,
        tracked=False,
        params=("evaluate.classifier_epochs", "evaluate.classifier_batch_size", "evaluate.seed"),
        inputs=("data/prepared",),
        outputs=("evaluator",),
        code=(*_EVALUATOR_CODE, "stages/classifier.py"),
    ),
    Stage(
        "utility",
        "does adding the samples help a downstream classifier? write metrics/utility.json",
        keras=True,
        tracked=True,
        # scenarios other than as_given train their own GAN and evaluator with these
        params=(
            "utility",
            "augment",
            # as_given with data.class_caps: the images the caps removed price the samples
            "data",
            "model",
            "train",
            "generate",
            "evaluate.classifier_epochs",
            "evaluate.classifier_batch_size",
            "evaluate.seed",
        ),
        # the verdict gates augment's export (augment.require_benefit): utility runs first
        inputs=("data/prepared", "data/synthetic/samples.npz", "evaluator"),
        outputs=("metrics/utility.json", "metrics/utility.csv", "metrics/utility.png"),
        # its scenarios run train, generate, classifier and augment on a subset
        code=(
            "data",
            "evaluation",
            "gan",
            "images.py",
            "pipeline.py",
            "stages/augment.py",
            "stages/classifier.py",
            "stages/generate.py",
            "stages/prepare.py",
            "stages/train.py",
            "stages/utility.py",
        ),
    ),
    Stage(
        "augment",
        "merge real and filtered synthetic training data into data/augmented/",
        keras=True,
        tracked=True,
        params=("augment",),
        inputs=(
            "data/prepared",
            "data/synthetic/samples.npz",
            "evaluator",
            "metrics/utility.json",
        ),
        outputs=("data/augmented",),
        code=("data", "evaluation", "stages/augment.py"),
    ),
    Stage(
        "evaluate",
        "score the synthetic samples; write metrics/eval.json and metrics/per_class.csv",
        keras=True,
        tracked=True,
        params=("evaluate", "augment.memorization_quantile"),
        inputs=("data/prepared", "data/synthetic/samples.npz", "evaluator"),
        outputs=(
            "metrics/eval.json",
            "metrics/memorization.json",
            "metrics/per_class.csv",
            "metrics/per_class_accuracy.png",
            "metrics/feature_space.png",
            "metrics/nearest_copies.png",
        ),
        code=("data", "evaluation", "stages/evaluate.py"),
    ),
)

# The pipeline order. The classifier (the evaluator) comes before augment, whose filters use it;
# utility before augment, whose export it can gate (augment.require_benefit).
STAGES: dict[str, Stage] = {s.name: s for s in _SEQUENCE}
NAMES: tuple[str, ...] = tuple(STAGES)

# Where a stage's own cache keys take their code from: the checkpoints (training code), the
# evaluator, the real data's reference statistics.
CHECKPOINT_CODE = _GAN_CODE
EVALUATOR_CODE = _EVALUATOR_CODE
REFERENCE_CODE = ("evaluation/metrics",)

# Groups the orchestration runs together.
SHARED_STAGES = ("prepare", "classifier")  # a sweep's once-per-dataset stages
CONFIG_STAGES = ("train", "generate", "evaluate")  # a sweep's per-configuration stages
SUBSET_STAGES = ("train", "generate", "classifier")  # a utility scenario's own GAN and evaluator


def stage(name: str) -> Stage:
    """The stage called `name`; ValueError naming the stages otherwise."""
    if name not in STAGES:
        raise ValueError(f"unknown stage {name!r}; stages are {', '.join(NAMES)}")
    return STAGES[name]
