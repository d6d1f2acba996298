"""The trainer; backend-specific train steps live in small files of their own (`step_tf.py`)."""

from ganpipe.training.trainer import train

__all__ = ["train"]
