"""GPT-2: learned positions, fused qkv projection, LayerNorm, GELU MLP, tied LM head."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from rlae_jax.models.config import ModelConfig
from rlae_jax.models.layers import CausalLM, activation, append_and_attend, linear


def layer_norm(dim: int, eps: float, dtype, rngs: nnx.Rngs) -> nnx.LayerNorm:
    return nnx.LayerNorm(
        dim, epsilon=eps, use_fast_variance=False, dtype=dtype, param_dtype=dtype, rngs=rngs
    )


class GPT2Block(nnx.Module):
    """x + attn(ln_1(x)); x + mlp(ln_2(x)). HF's Conv1D weights are already `[in, out]`."""

    def __init__(self, config: ModelConfig, *, dtype, rngs: nnx.Rngs):
        hidden = config.hidden_size
        self.num_heads, self.head_dim, self.act = (
            config.num_heads,
            config.head_dim,
            config.hidden_act,
        )
        self.ln_1 = layer_norm(hidden, config.norm_eps, dtype, rngs)
        self.c_attn = linear(hidden, 3 * hidden, True, dtype, rngs)
        self.c_proj = linear(hidden, hidden, True, dtype, rngs)
        self.ln_2 = layer_norm(hidden, config.norm_eps, dtype, rngs)
        self.c_fc = linear(hidden, config.intermediate_size, True, dtype, rngs)
        self.mlp_proj = linear(config.intermediate_size, hidden, True, dtype, rngs)

    def __call__(self, x, positions, cache_keys, cache_values, slots, slot_positions):
        batch, block, hidden = x.shape
        qkv = self.c_attn(self.ln_1(x)).reshape(batch, block, 3, self.num_heads, self.head_dim)
        attn, cache_keys, cache_values = append_and_attend(
            qkv[:, :, 0],
            qkv[:, :, 1],
            qkv[:, :, 2],
            cache_keys,
            cache_values,
            slots,
            positions,
            slot_positions,
            window=None,
        )
        x = x + self.c_proj(attn.reshape(batch, block, hidden))
        x = x + self.mlp_proj(activation(self.act)(self.c_fc(self.ln_2(x))))
        return x, cache_keys, cache_values


class GPT2(CausalLM):
    """Token + learned position embeddings → blocks → LayerNorm → LM head (tied by default)."""

    def __init__(self, config: ModelConfig, *, dtype=jnp.float32, rngs: nnx.Rngs):
        self.config = config
        init = nnx.initializers.normal(0.02)
        self.embedding = nnx.Embed(
            config.vocab_size,
            config.hidden_size,
            dtype=dtype,
            param_dtype=dtype,
            embedding_init=init,
            rngs=rngs,
        )
        self.position_embedding = nnx.Embed(
            config.max_position_embeddings,
            config.hidden_size,
            dtype=dtype,
            param_dtype=dtype,
            embedding_init=init,
            rngs=rngs,
        )
        self.layers = nnx.List(
            [GPT2Block(config, dtype=dtype, rngs=rngs) for _ in range(config.num_layers)]
        )
        self.norm = layer_norm(config.hidden_size, config.norm_eps, dtype, rngs)
        if not config.tie_word_embeddings:
            self.lm_head = linear(config.hidden_size, config.vocab_size, False, dtype, rngs)

    def embed(self, tokens: jax.Array, positions: jax.Array) -> jax.Array:
        positions = jnp.clip(positions, 0, self.config.max_position_embeddings - 1)
        return self.embedding(tokens) + self.position_embedding(positions)
