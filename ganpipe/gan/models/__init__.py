"""Generator and discriminator builders, conditioned on labels: `model.arch` picks the layout."""

from __future__ import annotations

from collections.abc import Callable

import keras

from ganpipe.config import ModelParams
from ganpipe.gan.models import dcgan, layers, mlp, resnet, tutorial
from ganpipe.gan.models.dcgan import build_discriminator, build_generator, upsamplings

__all__ = [
    "ARCHS",
    "build_discriminator",
    "build_generator",
    "build_models",
    "check_shape",
    "layers",
    "upsamplings",
]

Builder = Callable[[tuple[int, int, int], int, ModelParams], keras.Model]
# model.arch -> (generator builder, discriminator builder). Importing this package registers
# ganpipe's custom layers (models/layers.py) with Keras, so saved models load.
ARCHS: dict[str, tuple[Builder, Builder]] = {
    "conditional": (dcgan.build_generator, dcgan.build_discriminator),
    "dcgan_tutorial": (tutorial.build_generator, tutorial.build_discriminator),
    "mlp": (mlp.build_generator, mlp.build_discriminator),
    "mlp_convd": (mlp.build_generator, mlp.build_convd_discriminator),
    "resnet": (resnet.build_generator, resnet.build_discriminator),
}


def check_shape(image_shape: tuple[int, int, int], params: ModelParams) -> None:
    """ValueError if `params.arch` has no layout for `image_shape`."""
    if params.arch == "dcgan_tutorial":
        tutorial.check_shape(image_shape)
    elif params.arch in ("conditional", "resnet"):
        upsamplings(image_shape)


def build_models(
    image_shape: tuple[int, int, int], num_classes: int, params: ModelParams
) -> tuple[keras.Model, keras.Model]:
    """(generator, discriminator) of the architecture `params.arch`, under the current dtype
    policy."""
    build_g, build_d = ARCHS[params.arch]
    return build_g(image_shape, num_classes, params), build_d(image_shape, num_classes, params)
