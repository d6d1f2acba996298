"""Training throughput: our trainer's step path against a minimal hand-written step.

For each architecture x batch size x precision, in one process, alternating after a warm-up:
  (a) ours: the runner the trainer uses (`trainer.make_runner`: on JAX the device-resident
      step_jax.DeviceRunner, on TensorFlow step_tf.HostRunner), driven the way the trainer's loop
      drives it (epoch permutations from NumPy, metrics fetched every LOG_EVERY steps);
  (b) minimal: the simplest step for the same models: one jitted, donated JAX function (or one
      tf.function) over a batch and noise already on the device, synced once at the end;
and prints the median images/s of each over the repeats, and a/b. The data is random uint8 28x28x1
with 10 classes (MNIST-sized: 60,000 images); nothing is downloaded.

Keras's backend is fixed at import: `--backend jax|tensorflow` runs one (default: $KERAS_BACKEND,
else jax if installed), `--all-backends` runs each installed one in a subprocess. The JAX path needs
only numpy, keras, jax, pydantic, pyyaml, tqdm, pandas and pillow (no TensorFlow).

  python benchmarks/train_throughput.py --all-backends --quick          # CPU
  python benchmarks/train_throughput.py --backend jax --batch-sizes 1024 \\
      --precisions float32,mixed_bfloat16                               # GPU
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ARCHS = ("dcgan_tutorial", "conditional", "mlp", "mlp_convd", "resnet")
NUM_CLASSES, SHAPE, N_IMAGES = 10, (28, 28, 1), 60_000


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--backend", choices=["jax", "tensorflow"])
    p.add_argument("--all-backends", action="store_true", help="each installed backend in turn")
    p.add_argument("--archs", default=",".join(ARCHS))
    p.add_argument("--batch-sizes", default=None, help="comma-separated (default 256; GPU 1024)")
    p.add_argument(
        "--precisions", default=None, help="default float32 on CPU, float32,mixed_bfloat16 on GPU"
    )
    p.add_argument("--steps", type=int, default=None, help="steps per timed repeat")
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--warmup", type=int, default=None, help="untimed steps of each first")
    p.add_argument("--quick", action="store_true", help="fewer steps and repeats (CPU smoke run)")
    return p.parse_args(argv)


def installed(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def run_all_backends(argv: list[str]) -> int:
    rest = [a for a in argv if a != "--all-backends"]
    status = 0
    for backend in ("tensorflow", "jax"):
        if not installed("jax" if backend == "jax" else "tensorflow"):
            print(f"\n=== {backend}: not installed, skipped ===", flush=True)
            continue
        print(f"\n=== {backend} ===", flush=True)
        env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3"}
        proc = subprocess.run([sys.executable, __file__, *rest, "--backend", backend], env=env)
        status = status or proc.returncode
    return status


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.all_backends:
        return run_all_backends(argv)
    backend = (
        args.backend
        or os.environ.get("KERAS_BACKEND")
        or ("jax" if installed("jax") else "tensorflow")
    )
    os.environ["KERAS_BACKEND"] = backend
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.path.insert(0, str(REPO))
    bench = Bench(backend)
    gpu = bench.on_gpu
    batch_sizes = [int(b) for b in (args.batch_sizes or ("1024" if gpu else "256")).split(",")]
    precisions = (args.precisions or ("float32,mixed_bfloat16" if gpu else "float32")).split(",")
    steps = args.steps or (200 if gpu else 2 if args.quick else 4)
    repeats = args.repeats or (5 if gpu else 3)
    warmup = args.warmup or (20 if gpu else 1)
    print(bench.describe())
    print(f"steps/repeat={steps} repeats={repeats} warmup={warmup} images={N_IMAGES} {SHAPE}")
    print(f"{'arch':<15} {'batch':>6} {'precision':<15} {'ours img/s':>12} "
          f"{'minimal img/s':>14} {'ours/minimal':>13}", flush=True)  # fmt: skip
    for arch in args.archs.split(","):
        for bs in batch_sizes:
            for precision in precisions:
                ours, minimal = bench.compare(arch, bs, precision, steps, repeats, warmup)
                a, b = statistics.median(ours), statistics.median(minimal)
                print(f"{arch:<15} {bs:>6} {precision:<15} {a:>12,.0f} {b:>14,.0f} {a / b:>13.3f}"
                      f"   (ours {_fmt(ours)}; minimal {_fmt(minimal)})", flush=True)  # fmt: skip
    mods = [m for m in ("tensorflow", "mlflow", "prefect", "dvc", "sklearn") if m in sys.modules]
    print(f"heavy modules imported: {mods or 'none'}")
    return 0


def _fmt(values: list[float]) -> str:
    return " ".join(f"{v:,.0f}" for v in values)


class Bench:
    def __init__(self, backend: str) -> None:
        import keras
        import numpy as np

        from ganpipe.gan.training import trainer
        from ganpipe.gan.training.state import build_for_training

        self.keras, self.np, self.trainer = keras, np, trainer
        self.build = build_for_training  # -> GanState: models, optimizers, options
        assert keras.backend.backend() == backend, (keras.backend.backend(), backend)
        self.backend = backend
        rng = np.random.default_rng(0)
        self.images = rng.integers(0, 256, (N_IMAGES, *SHAPE), dtype=np.uint8)
        self.labels = rng.integers(0, NUM_CLASSES, N_IMAGES).astype(np.int64)
        if backend == "jax":
            import jax

            self.devices = [str(d) for d in jax.devices()]
            self.on_gpu = jax.devices()[0].platform != "cpu"
        else:
            import tensorflow as tf

            gpus = tf.config.list_physical_devices("GPU")
            self.devices = [d.name for d in gpus] or ["CPU"]
            self.on_gpu = bool(gpus)

    def describe(self) -> str:
        versions = [f"python {platform.python_version()}", f"keras {self.keras.__version__}"]
        versions.append(f"numpy {self.np.__version__}")
        if self.backend == "jax":
            import jax
            import jaxlib

            versions += [f"jax {jax.__version__}", f"jaxlib {jaxlib.__version__}"]
        else:
            import tensorflow as tf

            versions.append(f"tensorflow {tf.__version__}")
        return f"backend={self.backend} devices={self.devices} cpus={os.cpu_count()}\n" + ", ".join(
            versions
        )

    def params(self, arch: str, batch_size: int, precision: str):
        from ganpipe.config import Params

        model = {"arch": arch} | ({"latent_dim": 100} if arch == "dcgan_tutorial" else {})
        return Params.model_validate(
            {"model": model, "train": {"batch_size": batch_size, "precision": precision}}
        )

    def compare(
        self, arch: str, bs: int, precision: str, steps: int, repeats: int, warmup: int
    ) -> tuple[list[float], list[float]]:
        params = self.params(arch, bs, precision)
        ours = Ours(self, params)
        minimal = (MinimalJax if self.backend == "jax" else MinimalTf)(self, params)
        ours.run(warmup)
        minimal.run(warmup)
        a, b = [], []
        for r in range(repeats):  # alternate, starting with each in turn
            for which in (ours, minimal) if r % 2 == 0 else (minimal, ours):
                t = time.perf_counter()
                which.run(steps)
                rate = steps * bs / (time.perf_counter() - t)
                (a if which is ours else b).append(rate)
        return a, b


class Ours:
    """The trainer's runner, driven like the trainer's loop drives it."""

    def __init__(self, bench: Bench, params) -> None:
        self.np, tr = bench.np, bench.trainer
        state = bench.build(params, SHAPE, NUM_CLASSES)
        self.runner = tr.make_runner(bench.backend, params, state, bench.images, bench.labels, 0)
        self.log_every, self.seed = tr.LOG_EVERY, params.train.seed
        self.spe = N_IMAGES // params.train.batch_size
        self.step, self.epoch = 0, -1

    def run(self, n: int) -> None:
        pending = []
        for _ in range(n):
            epoch = self.step // self.spe
            if epoch != self.epoch:
                perm = self.np.random.default_rng([self.seed, epoch]).permutation(N_IMAGES)
                self.runner.begin_epoch(perm)
                self.epoch = epoch
            pending.append(self.runner.step(self.step))
            self.step += 1
            if self.step % self.log_every == 0:
                self.runner.fetch(pending)
                pending.clear()
        self.runner.fetch(pending)  # the end of a timed run is a sync point


class MinimalJax:
    """One jitted, donated step over a fixed device-resident batch and noise."""

    def __init__(self, bench: Bench, params) -> None:
        import jax
        import jax.numpy as jnp

        self.jax = jax
        state = bench.build(params, SHAPE, NUM_CLASSES)
        g, d, g_opt, d_opt = state.generator, state.discriminator, state.g_opt, state.d_opt
        bs, np = params.train.batch_size, bench.np
        self.real = jax.device_put(bench.images[:bs].astype(np.float32) / 127.5 - 1)
        self.labels = jax.device_put(bench.labels[:bs].astype(np.int32))
        self.noise = jax.device_put(
            np.random.default_rng(1).standard_normal((bs, params.model.latent_dim), np.float32)
        )
        scaled = params.train.precision == "mixed_float16"

        def step(state, real, labels, noise):
            g_tv, g_ntv, d_tv, d_ntv, g_ov, d_ov = state

            def losses(g_tv, d_tv):
                fake, g_ntv2 = g.stateless_call(g_tv, g_ntv, [noise, labels], training=True)
                logits, d_ntv2 = d.stateless_call(
                    d_tv,
                    d_ntv,
                    [jnp.concatenate([real, fake]), jnp.concatenate([labels, labels])],
                    training=True,
                )
                r, f = jnp.split(logits.astype(jnp.float32), 2)
                d_loss = jnp.mean(jax.nn.softplus(-r)) + jnp.mean(jax.nn.softplus(f))
                return (d_loss, jnp.mean(jax.nn.softplus(-f))), (g_ntv2, d_ntv2)

            losses_, pullback, (g_ntv, d_ntv) = jax.vjp(losses, g_tv, d_tv, has_aux=True)
            one, zero = jnp.float32(2.0**15 if scaled else 1.0), jnp.float32(0)
            _, d_grads = pullback((one, zero))
            g_grads, _ = pullback((zero, one))
            d_tv, d_ov = d_opt.stateless_apply(d_ov, d_grads, d_tv)
            g_tv, g_ov = g_opt.stateless_apply(g_ov, g_grads, g_tv)
            return (g_tv, g_ntv, d_tv, d_ntv, g_ov, d_ov), jnp.stack(losses_)

        self.state = tuple(
            [jnp.array(v.value, copy=True) for v in vs]
            for vs in (
                g.trainable_variables,
                g.non_trainable_variables,
                d.trainable_variables,
                d.non_trainable_variables,
                g_opt.variables,
                d_opt.variables,
            )
        )
        self.step = jax.jit(step, donate_argnums=0)

    def run(self, n: int) -> None:
        for _ in range(n):
            self.state, out = self.step(self.state, self.real, self.labels, self.noise)
        out.block_until_ready()


class MinimalTf:
    """One tf.function step (two tapes, as in the TF tutorial) over a fixed on-device batch."""

    def __init__(self, bench: Bench, params) -> None:
        import tensorflow as tf

        state = bench.build(params, SHAPE, NUM_CLASSES)
        g, d, g_opt, d_opt = state.generator, state.discriminator, state.g_opt, state.d_opt
        bs, np = params.train.batch_size, bench.np
        self.real = tf.constant(bench.images[:bs].astype(np.float32) / 127.5 - 1)
        self.labels = tf.constant(bench.labels[:bs].astype(np.int32))
        self.noise = tf.constant(
            np.random.default_rng(1).standard_normal((bs, params.model.latent_dim), np.float32)
        )

        @tf.function
        def step(real, labels, noise):
            with tf.GradientTape() as g_tape, tf.GradientTape() as d_tape:
                fake = g([noise, labels], training=True)
                logits = d(
                    [tf.concat([real, fake], 0), tf.concat([labels, labels], 0)], training=True
                )
                r, f = tf.split(tf.cast(logits, tf.float32), 2)
                d_loss = tf.reduce_mean(tf.nn.softplus(-r)) + tf.reduce_mean(tf.nn.softplus(f))
                g_loss = tf.reduce_mean(tf.nn.softplus(-f))
                d_scaled, g_scaled = d_opt.scale_loss(d_loss), g_opt.scale_loss(g_loss)
            d_vars, g_vars = d.trainable_variables, g.trainable_variables
            d_grads = d_tape.gradient(d_scaled, d_vars)
            g_grads = g_tape.gradient(g_scaled, g_vars)
            d_opt.apply_gradients(zip(d_grads, d_vars, strict=True))
            g_opt.apply_gradients(zip(g_grads, g_vars, strict=True))
            return tf.stack([d_loss, g_loss])

        self.step = step

    def run(self, n: int) -> None:
        for _ in range(n):
            out = self.step(self.real, self.labels, self.noise)
        out.numpy()


if __name__ == "__main__":
    sys.exit(main())
