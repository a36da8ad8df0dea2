"""LM Evaluation Harness backend (`pip install lm-eval`): importing this package registers the
`lm-eval` model "rlae_jax" (`rlae_jax.harness.backend.RlaeLM`)."""

from rlae_jax.harness.backend import RlaeLM

__all__ = ["RlaeLM"]
