"""Classification accuracy score (CAS, Ravuri & Vinyals 2019): a classifier trained on synthetic
samples only, scored on the real test set, beside the same classifier trained on the real
training set.

    python benchmarks/cas.py /tmp/ttq/generator.keras --prepared ttq-run/data/prepared
    python benchmarks/cas.py models/generator.keras --per-class 6000 --seeds 3

Trained as the utility stage trains (`ganpipe.evaluation.downstream.train_and_score`: ganpipe's downstream CNN,
utility.* params, early stopping on a validation split of the *real* training images, the real
test split only scored), on `--per-class` samples of every class drawn from the generator
(default 6,000: 60,000 for MNIST). Prints accuracy, balanced accuracy and macro-F1, mean and std
over `--seeds`, for the synthetic and the real training set, and their ratio.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("generator", help="a generator .keras file (z, label) -> images")
    ap.add_argument("--prepared", default="data/prepared", help="prepared data directory")
    ap.add_argument("--per-class", type=int, default=6000)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="utility.* params")
    ap.add_argument("--json", help="also write the table as JSON here")
    args = ap.parse_args(argv)

    import keras

    import ganpipe.gan.models.layers  # noqa: F401  (registers the layers a generator may use)
    from ganpipe.config import load_params
    from ganpipe.data.prepared import Split, load_prepared, to_uint8
    from ganpipe.evaluation.downstream import train_and_score, validation_split

    params = load_params(None, args.overrides).utility
    real = load_prepared(args.prepared)
    generator = keras.models.load_model(args.generator, compile=False, safe_mode=True)
    latent_dim = int(generator.inputs[0].shape[-1])
    k, shape = real.num_classes, real.image_shape
    labels = np.repeat(np.arange(k, dtype=np.int32), args.per_class)
    z = np.random.default_rng(12345).standard_normal((len(labels), latent_dim), dtype=np.float32)
    images = np.concatenate(
        [
            to_uint8(keras.ops.convert_to_numpy(generator([z[i : i + 500], labels[i : i + 500]])))
            for i in range(0, len(labels), 500)
        ]
    )
    synthetic = Split(images, labels.astype(np.int64))

    results: dict[str, list[dict[str, float]]] = {"synthetic": [], "real": []}
    for seed in range(args.seeds):
        rng = np.random.default_rng([params.seed, seed])
        train_idx, val_idx = validation_split(real.train.labels, params.validation_fraction, rng)
        val = Split(real.train.images[val_idx], real.train.labels[val_idx])
        sets = {
            "synthetic": synthetic,
            "real": Split(real.train.images[train_idx], real.train.labels[train_idx]),
        }
        for name, train in sets.items():
            r = train_and_score(train, val, real.test, shape, k, params, seed, classic=False)
            results[name].append(r.scores | {"epochs": r.epochs, "seconds": r.seconds})
            print(
                f"seed {seed} {name:<10} " + " ".join(f"{m}={v:.4f}" for m, v in r.scores.items())
            )

    table = {}
    for name, rows in results.items():
        table[name] = {
            m: {
                "mean": statistics.fmean(r[m] for r in rows),
                "std": statistics.stdev(r[m] for r in rows) if len(rows) > 1 else 0.0,
            }
            for m in rows[0]
        }
    print(f"\n{'trained on':<12} {'accuracy':>17} {'balanced acc.':>17} {'macro-F1':>17}")
    for name, t in table.items():
        cells = [
            f"{t[m]['mean']:.4f} ± {t[m]['std']:.4f}"
            for m in ("accuracy", "balanced_accuracy", "macro_f1")
        ]
        print(f"{name:<12} " + " ".join(f"{c:>17}" for c in cells))
    ratio = table["synthetic"]["accuracy"]["mean"] / table["real"]["accuracy"]["mean"]
    print(f"CAS = {table['synthetic']['accuracy']['mean']:.4f} ({ratio:.4f} of real)")
    if args.json:
        out = {"generator": args.generator, "per_class": args.per_class, "table": table}
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
