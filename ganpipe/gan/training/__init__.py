"""The trainer (`train`, trainer.py): plan.py settles a run, state.py builds what it trains,
trainer.py resumes and runs the loop, export.py writes the model dir. One runner and train step per
Keras backend (`step_tf.py`, `step_jax.py`), each imported only on its backend; the loss math they
share is losses.py."""

from ganpipe.gan.training.trainer import train

__all__ = ["train"]
