"""ganpipe: grow a small labelled image dataset with a class-conditional GAN."""

from ganpipe.errors import ConfigError, DataError, GanpipeError

__all__ = ["ConfigError", "DataError", "GanpipeError"]
__version__ = "0.1.0"
