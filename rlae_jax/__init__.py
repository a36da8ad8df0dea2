"""rlae_jax: Reinforcement-Learning-Assisted Ensembles of LLMs (Fu et al., EMNLP 2025) in JAX.
`generate_member` continues prompts with one member, `Ensemble(members).generate` with several."""

from rlae_jax.models.generate import generate_member, generate_tokens
from rlae_jax.models import Member, from_pretrained
from rlae_jax.ensemble import Ensemble

__all__ = ["Ensemble", "Member", "from_pretrained", "generate_member", "generate_tokens"]
