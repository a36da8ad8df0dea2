"""rlae_jax: Reinforcement-Learning-Assisted Ensembles of LLMs (Fu et al., EMNLP 2025) in JAX."""
from rlae_jax.generation import generate, generate_tokens
from rlae_jax.models import Member, from_pretrained

__all__ = ["Member", "from_pretrained", "generate", "generate_tokens"]
