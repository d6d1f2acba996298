"""`train.class_balance: auto` and `train.diffaugment: auto`: what the long-tail recipe does, on
when the training data is imbalanced, off otherwise.

Measured on MNIST with five classes capped at 20 images (49x fewer than the others;
docs/results.md, the long-tail section): with the plain recipe the GAN draws the rare classes
on-label 22-44% of the time; class-balanced real batches raise that to >= 77%, and DiffAugment on
top (D sees the 20 images under colour, shift and cutout variants instead of memorising them) to
>= 96%. Natural datasets are far from that: MNIST's largest class has 1.24x its smallest, the
embedded digits about 1.3x. LONG_TAIL_RATIO (ganpipe.data.sampling) sits between: a set whose
largest class has 4x the images of its smallest is long-tailed enough that the rare classes would
otherwise get a quarter of the common ones' updates.
"""

from __future__ import annotations

import numpy as np

from ganpipe.config import DIFFAUGMENT_POLICIES, Params
from ganpipe.data.sampling import LONG_TAIL_RATIO, class_ratio

AUTO_DIFFAUGMENT = ",".join(DIFFAUGMENT_POLICIES)


def resolve_auto(params: Params, labels: np.ndarray, num_classes: int) -> tuple[Params, str]:
    """`params` with train.class_balance and train.diffaugment's `auto` replaced by what the data
    asks for, and a line saying what was chosen and why ("" when neither is auto). DiffAugment's
    auto stays off with train.ada on (the two are alternatives)."""
    tp = params.train
    auto_balance, auto_da = tp.class_balance == "auto", tp.diffaugment == "auto"
    if not (auto_balance or auto_da):
        return params, ""
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes)
    ratio, hi, lo = class_ratio(counts), int(counts.max()), int(counts.min())
    imbalanced = ratio >= LONG_TAIL_RATIO
    changes: dict[str, object] = {}
    if auto_balance:
        changes["class_balance"] = imbalanced
    if auto_da:
        changes["diffaugment"] = AUTO_DIFFAUGMENT if imbalanced and not tp.ada else ""
    resolved = params.model_copy(update={"train": tp.model_copy(update=changes)})
    chosen = [k for k, v in changes.items() if v]
    if not chosen:
        return resolved, ""
    what = " and ".join(
        "class-balanced real batches" if k == "class_balance" else f"DiffAugment ({changes[k]})"
        for k in chosen
    )
    keys = "/".join(f"train.{k}" for k in chosen)
    # Not (yet) the default because it needs the off-label filter (ADA's on-label rate varies by
    # seed: one rare class at 0.61-0.79 in three of four GANs), and its edge in utility rests on
    # two ADA GANs against one DiffAugment GAN; so the default says where that recipe is instead.
    hint = (
        "; on MNIST's long tail train.ada=true with augment.reject_off_label=true (as in "
        "presets/mnist-longtail.yaml) covered the rare classes better (docs/results.md)"
        if changes.get("diffaugment")
        else ""
    )
    return resolved, (
        f"imbalanced training data (largest class {hi} images, smallest {lo}: {ratio:.3g}x, "
        f'auto\'s threshold {LONG_TAIL_RATIO:g}x): {what} ({keys}: auto; set false or "" to '
        f"turn off){hint}"
    )
