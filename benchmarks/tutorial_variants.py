"""Where does the tutorial architecture's GPU time go? A bare jitted Keras-on-JAX step for the
TensorFlow DCGAN tutorial's models, unconditional as in the tutorial, then with each piece of
conditioning that `model.arch: dcgan_tutorial` adds (a label embedding in G, a label plane in D),
with and without D's dropout. Same step for every variant; only the models differ.

    KERAS_BACKEND=jax python benchmarks/tutorial_variants.py --batch 1024 --precision mixed_bfloat16
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("KERAS_BACKEND", "jax")

import jax  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
from keras import layers  # noqa: E402

LATENT = 100


def generator(cond: bool) -> keras.Model:
    z = keras.Input((LATENT,))
    label = keras.Input((), dtype="int32")
    x = layers.Concatenate()([z, layers.Embedding(10, 50)(label)]) if cond else z
    x = layers.Dense(7 * 7 * 256, use_bias=False)(x)
    x = layers.LeakyReLU()(layers.BatchNormalization()(x))
    x = layers.Reshape((7, 7, 256))(x)
    for filters, stride in ((128, 1), (64, 2)):
        x = layers.Conv2DTranspose(filters, 5, strides=stride, padding="same", use_bias=False)(x)
        x = layers.LeakyReLU()(layers.BatchNormalization()(x))
    out = layers.Conv2DTranspose(
        1, 5, strides=2, padding="same", use_bias=False, activation="tanh", dtype="float32"
    )(x)
    return keras.Model([z, label], out)


def discriminator(cond: bool, dropout: bool) -> keras.Model:
    image = keras.Input((28, 28, 1))
    label = keras.Input((), dtype="int32")
    x = image
    if cond:
        plane = layers.Reshape((28, 28, 1))(layers.Embedding(10, 28 * 28)(label))
        x = layers.Concatenate()([image, plane])
    for filters in (64, 128):
        x = layers.LeakyReLU()(layers.Conv2D(filters, 5, strides=2, padding="same")(x))
        if dropout:
            x = layers.Dropout(0.3)(x)
    out = layers.Dense(1, dtype="float32")(layers.Flatten()(x))
    return keras.Model([image, label], out)


def bce(logits, target: float):
    return keras.ops.mean(
        keras.ops.binary_crossentropy(keras.ops.full_like(logits, target), logits, from_logits=True)
    )


def images_per_sec(g: keras.Model, d: keras.Model, batch: int, steps: int, repeats: int) -> float:
    g_opt, d_opt = keras.optimizers.Adam(1e-4), keras.optimizers.Adam(1e-4)
    g_opt.build(g.trainable_variables)
    d_opt.build(d.trainable_variables)

    def step(state, real, labels, key):
        g_tv, g_nt, d_tv, d_nt, g_ov, d_ov = state
        noise = jax.random.normal(key, (batch, LATENT))

        def d_loss(d_tv, fake):
            real_logits, d_nt1 = d.stateless_call(d_tv, d_nt, [real, labels], training=True)
            fake_logits, d_nt2 = d.stateless_call(d_tv, d_nt1, [fake, labels], training=True)
            return bce(real_logits, 1.0) + bce(fake_logits, 0.0), d_nt2

        def g_loss(g_tv):
            fake, g_nt1 = g.stateless_call(g_tv, g_nt, [noise, labels], training=True)
            logits, _ = d.stateless_call(d_tv, d_nt, [fake, labels], training=True)
            return bce(logits, 1.0), (g_nt1, fake)

        (gl, (g_nt1, fake)), g_grads = jax.value_and_grad(g_loss, has_aux=True)(g_tv)
        (dl, d_nt1), d_grads = jax.value_and_grad(d_loss, has_aux=True)(
            d_tv, jax.lax.stop_gradient(fake)
        )
        g_tv, g_ov = g_opt.stateless_apply(g_ov, g_grads, g_tv)
        d_tv, d_ov = d_opt.stateless_apply(d_ov, d_grads, d_tv)
        return (g_tv, g_nt1, d_tv, d_nt1, g_ov, d_ov), gl + dl

    jstep = jax.jit(step, donate_argnums=0)
    state = tuple(
        [v.value for v in vs]
        for vs in (
            g.trainable_variables,
            g.non_trainable_variables,
            d.trainable_variables,
            d.non_trainable_variables,
            g_opt.variables,
            d_opt.variables,
        )
    )
    rng = np.random.default_rng(0)
    real = jax.device_put(rng.uniform(-1, 1, (batch, 28, 28, 1)).astype("float32"))
    labels = jax.device_put(rng.integers(0, 10, batch).astype("int32"))
    key = jax.random.key(0)
    for i in range(10):  # compile and warm up
        state, loss = jstep(state, real, labels, jax.random.fold_in(key, i))
    loss.block_until_ready()
    rates = []
    for r in range(repeats):
        t0 = time.perf_counter()
        for i in range(steps):
            state, loss = jstep(state, real, labels, jax.random.fold_in(key, 1000 * r + i))
        loss.block_until_ready()
        rates.append(steps * batch / (time.perf_counter() - t0))
    return statistics.median(rates)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--precision", default="mixed_bfloat16")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    keras.mixed_precision.set_dtype_policy(args.precision)
    print(f"devices={jax.devices()} jax={jax.__version__} keras={keras.__version__}")
    print(f"batch={args.batch} precision={args.precision} steps={args.steps}x{args.repeats}")
    variants = [
        ("tutorial, unconditional", False, False, True),
        ("unconditional, no dropout", False, False, False),
        ("+ label embedding in G", True, False, True),
        ("+ label plane in D (= dcgan_tutorial)", True, True, True),
        ("dcgan_tutorial, no dropout", True, True, False),
    ]
    for name, cond_g, cond_d, dropout in variants:
        rate = images_per_sec(
            generator(cond_g), discriminator(cond_d, dropout), args.batch, args.steps, args.repeats
        )
        print(f"{name:40s} {rate:12,.0f} images/s")


if __name__ == "__main__":
    main()
