"""The order in which an epoch visits the training set: `epoch_order`.

By default an epoch is one seeded permutation of the training set. With `train.class_balance`
(long-tailed data) it is a class-balanced order instead (`balanced_order`): the same length, but
each position's class is equally likely to be any class, and each class's images are cycled
through seeded permutations, so a class of 20 images is seen as often as one of 1,000 (its images
repeat; the common classes' are sub-sampled, a different subset each epoch).

Both are pure functions of (train.seed, epoch, labels): a run resumed from a checkpoint visits
exactly what an uninterrupted run would have.
"""

from __future__ import annotations

import numpy as np

# A third seed word for the balanced order's generator: its draws never coincide with the default
# permutation's (default_rng([seed, epoch])), which stays exactly what it always was.
_BALANCED_STREAM = 1


def epoch_order(seed: int, epoch: int, labels: np.ndarray, class_balance: bool) -> np.ndarray:
    """The indices into the training set that epoch `epoch` visits, len(labels) of them.
    `class_balance` as resolved for the data (imbalance.resolve_auto), never `auto`."""
    if not isinstance(class_balance, bool):
        raise ValueError(f"class_balance must be True or False here, not {class_balance!r}")
    if not class_balance:
        return np.random.default_rng([seed, epoch]).permutation(len(labels))
    return balanced_order(seed, epoch, labels)


def balanced_order(seed: int, epoch: int, labels: np.ndarray) -> np.ndarray:
    """len(labels) indices whose classes are balanced over the classes present in `labels`.

    Every class gets n // k positions and a random n % k of them one more (exact counts, so a
    short run is balanced too, not only on average); the classes are then shuffled over the
    positions. A class's positions are filled from back-to-back permutations of its images:
    a class with fewer images than positions has each image once before any repeats, and a class
    with more has a random subset.
    """
    labels = np.asarray(labels)
    n = len(labels)
    rng = np.random.default_rng([seed, epoch, _BALANCED_STREAM])
    classes = np.unique(labels)
    k = len(classes)
    quota = np.full(k, n // k, dtype=np.int64)
    quota[rng.choice(k, n % k, replace=False)] += 1
    slots = rng.permutation(np.repeat(np.arange(k), quota))  # class (as 0..k-1) of each position
    order = np.empty(n, dtype=np.int64)
    for j, c in enumerate(classes):
        members = np.flatnonzero(labels == c)
        need = int(quota[j])
        cycles = -(-need // len(members))  # ceil
        drawn = np.concatenate([rng.permutation(members) for _ in range(cycles)])[:need]
        order[slots == j] = drawn
    return order
