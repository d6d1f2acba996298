"""Classification accuracy score (CAS, Ravuri & Vinyals 2019): a classifier trained on synthetic
samples only, scored on the real test set, beside the same classifier trained on the real
training set.

    python benchmarks/cas.py /tmp/ttq/generator.keras --prepared ttq-run/data/prepared
    python benchmarks/cas.py models/generator.keras --per-class 6000 --seeds 3

Trained as the utility stage trains one arm (`ganpipe.evaluation.downstream_fit.fit_job`:
ganpipe's downstream CNN, classic augmentation, utility.* params, `--steps` fixed steps with a
cosine schedule, the real test split only scored), on `--per-class` samples of every class drawn
from the generator
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
    ap.add_argument("--steps", type=int, default=2000, help="training steps of each classifier")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="utility.* params")
    ap.add_argument("--json", help="also write the table as JSON here")
    args = ap.parse_args(argv)

    import tempfile

    import keras

    import ganpipe.gan.models.layers  # noqa: F401  (registers the layers a generator may use)
    from ganpipe.config import load_params
    from ganpipe.data.prepared import Split, load_prepared, to_uint8
    from ganpipe.evaluation.downstream_fit import Job, arrays_file, fit_job
    from ganpipe.evaluation.downstream_study import settings_of

    params = load_params(None, args.overrides).utility
    real = load_prepared(args.prepared)
    generator = keras.models.load_model(args.generator, compile=False, safe_mode=True)
    latent_dim = int(generator.inputs[0].shape[-1])
    k = real.num_classes
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
    settings = settings_of(params, workers=1)
    none = Split(real.train.images[:0], real.train.labels[:0])
    with tempfile.TemporaryDirectory() as tmp:
        for name, train in {"synthetic": synthetic, "real": real.train}.items():
            # each set's own validation split (unused by a fixed budget); the real test split
            path = arrays_file(Path(tmp) / f"{name}.npz", train, real.test, none, None, k)
            for seed in range(args.seeds):
                r = fit_job(Job(name, seed, seed, steps=args.steps), path, settings)
                results[name].append(r["test"] | {"seconds": r["seconds"]})
                scores = " ".join(f"{m}={v:.4f}" for m, v in r["test"].items())
                print(f"seed {seed} {name:<10} {scores}")

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
