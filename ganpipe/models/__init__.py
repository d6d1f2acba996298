"""Generator and discriminator builders, conditioned on labels: `model.arch` picks the layout."""

from __future__ import annotations

import keras

from ganpipe.config import ModelParams
from ganpipe.models import dcgan, tutorial
from ganpipe.models.dcgan import build_discriminator, build_generator, upsamplings

__all__ = ["build_discriminator", "build_generator", "build_models", "check_shape", "upsamplings"]

_ARCHS = {"conditional": dcgan, "dcgan_tutorial": tutorial}


def check_shape(image_shape: tuple[int, int, int], params: ModelParams) -> None:
    """ValueError if `params.arch` has no layout for `image_shape`."""
    if params.arch == "dcgan_tutorial":
        tutorial.check_shape(image_shape)
    else:
        upsamplings(image_shape)


def build_models(
    image_shape: tuple[int, int, int], num_classes: int, params: ModelParams
) -> tuple[keras.Model, keras.Model]:
    """(generator, discriminator) of the architecture `params.arch`, under the current dtype
    policy."""
    module = _ARCHS[params.arch]
    return (
        module.build_generator(image_shape, num_classes, params),
        module.build_discriminator(image_shape, num_classes, params),
    )
