"""Gemma 3 text model (HF `gemma3_text`): the Llama-style decoder with Gemma's differences. The
config selects (1 + w) RMSNorms, per-head q/k norms, `query_pre_attn_scalar`, local/global RoPE
and final logit soft-capping; here: the four norms of a block and the sqrt(hidden) embedding
scale."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from rlae_jax.models.decoder import Decoder, DecoderLayer
from rlae_jax.models.layers import rms_norm


class Gemma3Layer(DecoderLayer):
    """x + post_attn_norm(attn(input_norm(x))); x + post_ff_norm(GeGLU(pre_ff_norm(x)))."""

    def __init__(self, config, layer_index: int, *, dtype, rngs):
        super().__init__(config, layer_index, dtype=dtype, rngs=rngs)
        self.pre_feedforward_norm = rms_norm(config, config.hidden_size, dtype)
        self.post_feedforward_norm = rms_norm(config, config.hidden_size, dtype)

    def __call__(self, x, positions, cache_keys, cache_values, slots, slot_positions):
        attn, cache_keys, cache_values = self.attention(
            self.input_norm(x), positions, cache_keys, cache_values, slots, slot_positions
        )
        x = x + self.post_attention_norm(attn)
        x = x + self.post_feedforward_norm(self.mlp(self.pre_feedforward_norm(x)))
        return x, cache_keys, cache_values


class Gemma3(Decoder):
    """Decoder with Gemma 3 blocks; token embeddings are multiplied by sqrt(hidden) rounded to the
    parameter dtype, as transformers does (the tied LM head uses the unscaled table)."""

    layer_class = Gemma3Layer

    def embed(self, tokens: jax.Array, positions: jax.Array) -> jax.Array:
        x = self.embedding(tokens)
        return x * jnp.asarray(np.float32(self.config.hidden_size**0.5)).astype(x.dtype)
