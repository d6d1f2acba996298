"""The trainer; backend-specific train steps live in small files of their own (`step_tf.py`,
`step_jax.py`), imported only on their backend."""

from ganpipe.training.trainer import train

__all__ = ["train"]
