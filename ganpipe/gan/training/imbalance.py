"""`train.class_balance`, `train.ada` and `train.diffaugment: auto`: what the long-tail recipe
does, on when the training data is imbalanced, off otherwise (with augment.reject_off_label and
generate.headroom's auto, resolved by their stages from the same rule).

Measured on MNIST with five classes capped at 20 images (49x fewer than the others;
docs/results.md, the long-tail section): with the plain recipe the GAN draws the rare classes
on-label 22-44% of the time; class-balanced real batches raise that to >= 77%, and DiffAugment on
top (D sees the 20 images under colour, shift and cutout variants instead of memorising them) to
>= 96%. ADA instead of DiffAugment (p adapts to how much D overfits) covers the rare classes'
real images better: over four GAN seeds its recall beat DiffAugment's by 0.38 (0.33 .. 0.43),
and the exports of two ADA GANs helped a classifier by +0.39 and +0.37 points, two DiffAugment
GANs' by +0.18 (not measurable) and +0.34 (ADA - DiffAugment at that seed +0.03, -0.08 .. +0.15:
no measurable difference in utility). ADA's worst rare class is drawn on-label only 61-79% of the
time in three of four seeds, which is why the off-label filter comes with it.
Natural datasets are far from that: MNIST's largest class has 1.24x its smallest, the
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
    """`params` with train.class_balance, train.ada and train.diffaugment's `auto` replaced by what
    the data asks for, and a line saying what was chosen and why ("" when none is auto or auto
    turned nothing on). On imbalanced data ADA's auto comes first: DiffAugment's auto is on only
    when ADA is off (the two are alternatives), and ADA's is off when DiffAugment names a policy."""
    tp = params.train
    autos = [k for k in ("class_balance", "ada", "diffaugment") if getattr(tp, k) == "auto"]
    if not autos:
        return params, ""
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes)
    ratio, hi, lo = class_ratio(counts), int(counts.max()), int(counts.min())
    imbalanced = ratio >= LONG_TAIL_RATIO
    changes: dict[str, object] = {}
    if "class_balance" in autos:
        changes["class_balance"] = imbalanced
    if "ada" in autos:
        changes["ada"] = imbalanced and tp.diffaugment in ("", "auto")
    if "diffaugment" in autos:
        ada_on = changes.get("ada", tp.ada) is True
        changes["diffaugment"] = AUTO_DIFFAUGMENT if imbalanced and not ada_on else ""
    resolved = params.model_copy(update={"train": tp.model_copy(update=changes)})
    chosen = [k for k, v in changes.items() if v]
    if not chosen:
        return resolved, ""
    names = {
        "class_balance": "class-balanced real batches",
        "ada": "adaptive discriminator augmentation (ADA)",
        "diffaugment": f"DiffAugment ({changes.get('diffaugment')})",
    }
    what = " and ".join(names[k] for k in chosen)
    keys = "/".join(f"train.{k}" for k in chosen)
    return resolved, (
        f"imbalanced training data (largest class {hi} images, smallest {lo}: {ratio:.3g}x, "
        f'auto\'s threshold {LONG_TAIL_RATIO:g}x): {what} ({keys}: auto; set false or "" to '
        "turn off)"
    )
