"""The independent downstream check of issue 22: an ordinary practitioner's CNN, trained on the real
training split and on the augmented export, scored on the real test split. The utility stage's
strongest real-only arm must be at least as good as this recipe's real arm on the same data.

The recipe (as the issue states it): a LeNet-style CNN (conv 5x5/32, max-pool, conv 5x5/64,
max-pool, dense 256, dropout 0.5, softmax), Adam 1e-3, random shifts (0.1) and rotations (10
degrees) in both arms, a class-weighted loss (inverse frequency, mean weight 1), early stopping
(patience 3, best weights restored) on a stratified 15% real validation split, batch 128, up to
30 epochs, `--seeds` seeds (the same split and initialisation for both arms of a seed).

    python benchmarks/lenet_reference.py --workdir /work/lt          # data/prepared + data/augmented
    python benchmarks/lenet_reference.py --workdir /work/lt --seeds 5 --json lenet.json

Prints balanced accuracy and worst-class recall per seed and arm, then mean +- std and the paired
difference (augmented - real).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def lenet(shape: tuple[int, int, int], k: int, seed: int):  # noqa: ANN201 (a keras.Model)
    import keras
    from keras import layers

    keras.utils.set_random_seed(seed)
    inputs = keras.Input(shape)
    x = layers.RandomTranslation(0.1, 0.1, fill_mode="constant", fill_value=-1.0, seed=seed)(inputs)
    x = layers.RandomRotation(10 / 360, fill_mode="constant", fill_value=-1.0, seed=seed + 1)(x)
    x = layers.Conv2D(32, 5, padding="same", activation="relu")(x)
    x = layers.MaxPooling2D(2)(x)
    x = layers.Conv2D(64, 5, padding="same", activation="relu")(x)
    x = layers.MaxPooling2D(2)(x)
    x = layers.Flatten()(x)
    x = layers.Dense(256, activation="relu")(x)
    x = layers.Dropout(0.5)(x)
    return keras.Model(inputs, layers.Dense(k, activation="softmax")(x))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--workdir", default=".", help="a workspace with data/prepared, data/augmented")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--json", help="also write the results as JSON here")
    args = ap.parse_args(argv)

    import keras

    from ganpipe.data.prepared import Split, load_prepared, to_float
    from ganpipe.evaluation.downstream import (
        class_weights_mean_over_images,
        classification_metrics,
        validation_split,
    )

    work = Path(args.workdir)
    real = load_prepared(work / "data/prepared")
    with np.load(work / "data/augmented/train.npz", allow_pickle=False) as f:
        syn = f["is_synthetic"].astype(bool)
        synthetic = Split(f["images"][syn], f["labels"][syn].astype(np.int64))
    k, shape = real.num_classes, real.image_shape
    rows: dict[str, list[dict[str, float]]] = {"real": [], "augmented": []}
    for seed in range(args.seeds):
        tr, va = validation_split(real.train.labels, 0.15, np.random.default_rng([seed, 15]))
        val = Split(real.train.images[va], real.train.labels[va])
        base = Split(real.train.images[tr], real.train.labels[tr])
        arms = {
            "real": base,
            "augmented": Split(
                np.concatenate([base.images, synthetic.images]),
                np.concatenate([base.labels, synthetic.labels]),
            ),
        }
        for name, train in arms.items():
            model = lenet(shape, k, seed)
            model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy")
            stop = keras.callbacks.EarlyStopping(patience=3, restore_best_weights=True)
            model.fit(
                to_float(train.images), train.labels, batch_size=128, epochs=30, verbose=0,
                validation_data=(to_float(val.images), val.labels), callbacks=[stop],
                class_weight=class_weights_mean_over_images(train.labels, k, "auto"),
            )  # fmt: skip
            pred = np.concatenate(
                [
                    np.asarray(model(to_float(real.test.images[i : i + 512]), training=False))
                    for i in range(0, len(real.test), 512)
                ]
            ).argmax(axis=1)
            scores = classification_metrics(real.test.labels, pred, k)
            rows[name].append(scores)
            print(
                f"seed {seed} {name:<10} balanced_accuracy={scores['balanced_accuracy']:.4f} "
                f"worst_class_recall={scores['worst_class_recall']:.4f}",
                flush=True,
            )
    out = {}
    for m in ("balanced_accuracy", "worst_class_recall"):
        r = np.array([s[m] for s in rows["real"]])
        a = np.array([s[m] for s in rows["augmented"]])
        out[m] = {
            "real": [float(r.mean()), float(r.std(ddof=1))],
            "augmented": [float(a.mean()), float(a.std(ddof=1))],
            "difference": float((a - r).mean()),
        }
        print(
            f"{m}: real {r.mean():.4f} +- {r.std(ddof=1):.4f}, augmented {a.mean():.4f} +- "
            f"{a.std(ddof=1):.4f}, paired difference {(a - r).mean():+.4f}"
        )
    if args.json:
        Path(args.json).write_text(json.dumps({"seeds": args.seeds, **out}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
