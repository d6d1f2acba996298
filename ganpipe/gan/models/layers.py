"""The two layers Keras lacks for class-conditional GANs, registered so that
`keras.models.load_model` (safe_mode on) reads a saved model on any backend once ganpipe is
imported (`import ganpipe.gan.models`, which every ganpipe entry point does).

- `ClassBatchNorm`: batch normalisation whose gain and bias are looked up per class (the
  conditional BatchNorm of SNGAN and BigGAN's generators): BatchNormalization without its own
  scale and centre, then y * gamma[label] + beta[label], gamma starting at 1 and beta at 0.
- `SpectralEmbedding`: keras.layers.SpectralNormalization around an Embedding, for the projection
  discriminator's class embedding (Miyato & Koyama 2018 normalise it too). The built-in wrapper
  works on embeddings but casts its output to its input's dtype, which for labels is int32; this
  one keeps the embedding's float output. The normalisation itself is Keras's (in a training call
  the embedding matrix is overwritten by matrix / sigma, and the power-iteration vector updated),
  so the train steps treat it as any SpectralNormalization (step_jax.stateless_call_all).
"""

from __future__ import annotations

import keras
from keras import layers, ops

PACKAGE = "ganpipe"


@keras.saving.register_keras_serializable(package=PACKAGE)
class ClassBatchNorm(layers.Layer):
    """[x: N x ... x C, label: N int] -> BatchNorm(x) * gamma[label] + beta[label]."""

    def __init__(
        self, num_classes: int, momentum: float = 0.99, epsilon: float = 1e-3, **kwargs
    ) -> None:
        super().__init__(**kwargs)
        self.num_classes, self.momentum, self.epsilon = num_classes, momentum, epsilon
        self.norm = layers.BatchNormalization(
            momentum=momentum,
            epsilon=epsilon,
            center=False,
            scale=False,
            dtype=self.dtype_policy,
            name="norm",
        )

    def build(self, input_shape: list[tuple[int | None, ...]]) -> None:
        x_shape = tuple(input_shape[0])
        channels = x_shape[-1]
        self.norm.build(x_shape)
        self.gamma = self.add_weight(
            shape=(self.num_classes, channels), initializer="ones", name="gamma"
        )
        self.beta = self.add_weight(
            shape=(self.num_classes, channels), initializer="zeros", name="beta"
        )

    def call(self, inputs: list, training: bool | None = None):
        x, label = inputs
        y = self.norm(x, training=training)
        shape = (-1,) + (1,) * (len(x.shape) - 2) + (x.shape[-1],)
        label = ops.cast(label, "int32")
        gamma = ops.reshape(ops.cast(ops.take(self.gamma, label, axis=0), y.dtype), shape)
        beta = ops.reshape(ops.cast(ops.take(self.beta, label, axis=0), y.dtype), shape)
        return y * gamma + beta

    def compute_output_shape(self, input_shape: list[tuple[int | None, ...]]):
        return tuple(input_shape[0])

    def get_config(self) -> dict:
        return super().get_config() | {
            "num_classes": self.num_classes,
            "momentum": self.momentum,
            "epsilon": self.epsilon,
        }


@keras.saving.register_keras_serializable(package=PACKAGE)
class SpectralEmbedding(layers.SpectralNormalization):
    """SpectralNormalization(Embedding(...)) whose output stays float (see the module docstring)."""

    def call(self, inputs, training: bool = False):
        if training:  # as keras.layers.SpectralNormalization.call
            new_vector_u, new_kernel = ops.cond(
                ops.all(ops.equal(self.kernel.value, 0)),
                lambda: (self.vector_u.value, self.kernel.value),
                self.normalized_weights,
            )
            self.vector_u.assign(new_vector_u)
            self.kernel.assign(new_kernel)
        return self.layer(inputs)

    def compute_output_shape(self, input_shape):
        return self.layer.compute_output_shape(input_shape)


def spectral(layer: layers.Layer, enabled: bool) -> layers.Layer:
    """`layer`, spectrally normalised (named `<name>_sn`) when `enabled` (model.spectral_norm):
    an Embedding in SpectralEmbedding, anything else in keras.layers.SpectralNormalization.

    The wrapper always computes in float32: under a mixed policy it would read the float32 kernel
    autocast to bfloat16/float16, normalise it there and assign it back, rounding the float32
    master weights to 16 bits every step (and float16 overflows in its power iteration). The
    wrapped layer keeps its own (mixed) policy for the convolution itself."""
    if not enabled:
        return layer
    wrapper = (
        SpectralEmbedding if isinstance(layer, layers.Embedding) else layers.SpectralNormalization
    )
    return wrapper(layer, name=f"{layer.name}_sn", dtype="float32")


def label_input() -> keras.KerasTensor:
    """The models' label input: N int32 class indices."""
    return keras.Input(shape=(), dtype="int32", name="label")


def projection_logits(
    features: keras.KerasTensor, label: keras.KerasTensor, num_classes: int, sn: bool
) -> keras.KerasTensor:
    """A projection discriminator's head (Miyato & Koyama 2018): dense(h) + <embed(label), h>,
    float32 N x 1 logits; both parts spectrally normalised when `sn`."""
    unconditional = spectral(layers.Dense(1, name="d_dense"), sn)(features)
    embed = spectral(layers.Embedding(num_classes, features.shape[-1], name="d_proj_embed"), sn)
    projection = layers.Dot(axes=1, name="d_projection")([features, embed(label)])
    return layers.Add(dtype="float32", name="logits")([unconditional, projection])
