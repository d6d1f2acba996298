"""Generator and discriminator builders, conditioned on labels, sized from the data shape."""

from ganpipe.models.dcgan import build_discriminator, build_generator, upsamplings

__all__ = ["build_discriminator", "build_generator", "upsamplings"]
