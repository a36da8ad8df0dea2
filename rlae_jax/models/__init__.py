"""Flax NNX ports of the member LLMs and their Hugging Face loading."""

from rlae_jax.models.config import SUPPORTED_MODEL_TYPES, ModelConfig, config_from_hf
from rlae_jax.models.installed import PRESETS as INSTALLED_PRESETS
from rlae_jax.models.installed import installed_gguf
from rlae_jax.models.kv_cache import KVCache
from rlae_jax.models.loading import from_pretrained, param_count, save_pretrained
from rlae_jax.models.member import Member, StepOutput, build_model
from rlae_jax.models.prompts import chat_prompt

__all__ = [
    "INSTALLED_PRESETS",
    "SUPPORTED_MODEL_TYPES",
    "KVCache",
    "Member",
    "ModelConfig",
    "StepOutput",
    "build_model",
    "chat_prompt",
    "config_from_hf",
    "from_pretrained",
    "installed_gguf",
    "param_count",
    "save_pretrained",
]
