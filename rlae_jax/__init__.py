"""rlae_jax: Reinforcement-Learning-Assisted Ensembles of LLMs (Fu et al., EMNLP 2025) in JAX.
`generate_member` continues prompts with one member; `rlae_jax.engine.generate` with an ensemble."""
from rlae_jax.models.generate import generate_member, generate_tokens
from rlae_jax.models import Member, from_pretrained

__all__ = ["Member", "from_pretrained", "generate_member", "generate_tokens"]
