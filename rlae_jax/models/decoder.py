"""Llama-style decoder: Llama 2/3/3.1/3.2, Mistral (sliding window) and Qwen2/2.5 (qkv bias, tied
embeddings), selected by ModelConfig fields rather than by code paths."""
from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from rlae_jax.models.config import ModelConfig
from rlae_jax.models.layers import (CausalLM, RMSNorm, activation, append_and_attend, apply_rope, linear,
                                    rope_inverse_frequencies)


class DecoderLayer(nnx.Module):
    """Pre-norm block: x + attn(norm(x)); x + SwiGLU(norm(x))."""

    def __init__(self, config: ModelConfig, layer_index: int, *, dtype, rngs: nnx.Rngs):
        hidden, head_dim = config.hidden_size, config.head_dim
        self.num_heads, self.num_kv_heads, self.head_dim = config.num_heads, config.num_kv_heads, head_dim
        self.window = config.layer_windows[layer_index]
        self.inv_freq = tuple(rope_inverse_frequencies(config).tolist())
        self.act = config.hidden_act
        self.input_norm = RMSNorm(hidden, config.norm_eps, param_dtype=dtype)
        self.q_proj = linear(hidden, config.num_heads * head_dim, config.qkv_bias, dtype, rngs)
        self.k_proj = linear(hidden, config.num_kv_heads * head_dim, config.qkv_bias, dtype, rngs)
        self.v_proj = linear(hidden, config.num_kv_heads * head_dim, config.qkv_bias, dtype, rngs)
        self.o_proj = linear(config.num_heads * head_dim, hidden, config.out_bias, dtype, rngs)
        self.post_attention_norm = RMSNorm(hidden, config.norm_eps, param_dtype=dtype)
        self.gate_proj = linear(hidden, config.intermediate_size, config.mlp_bias, dtype, rngs)
        self.up_proj = linear(hidden, config.intermediate_size, config.mlp_bias, dtype, rngs)
        self.down_proj = linear(config.intermediate_size, hidden, config.mlp_bias, dtype, rngs)

    def __call__(self, x, positions, cache_keys, cache_values, slots, slot_positions):
        batch, block, _ = x.shape
        h = self.input_norm(x)
        inv_freq = jnp.asarray(self.inv_freq, jnp.float32)
        q = apply_rope(self.q_proj(h).reshape(batch, block, self.num_heads, self.head_dim), positions, inv_freq)
        k = apply_rope(self.k_proj(h).reshape(batch, block, self.num_kv_heads, self.head_dim), positions, inv_freq)
        v = self.v_proj(h).reshape(batch, block, self.num_kv_heads, self.head_dim)
        attn, cache_keys, cache_values = append_and_attend(
            q, k, v, cache_keys, cache_values, slots, positions, slot_positions, self.window)
        x = x + self.o_proj(attn.reshape(batch, block, -1))
        h = self.post_attention_norm(x)
        x = x + self.down_proj(activation(self.act)(self.gate_proj(h)) * self.up_proj(h))
        return x, cache_keys, cache_values


class Decoder(CausalLM):
    """Token embedding → layers → RMSNorm → LM head (tied to the embedding when configured)."""

    def __init__(self, config: ModelConfig, *, dtype=jnp.float32, rngs: nnx.Rngs):
        self.config = config
        self.embedding = nnx.Embed(config.vocab_size, config.hidden_size, dtype=dtype, param_dtype=dtype,
                                   embedding_init=nnx.initializers.normal(0.02), rngs=rngs)
        self.layers = nnx.List([DecoderLayer(config, i, dtype=dtype, rngs=rngs) for i in range(config.num_layers)])
        self.norm = RMSNorm(config.hidden_size, config.norm_eps, param_dtype=dtype)
        if not config.tie_word_embeddings:
            self.lm_head = linear(config.hidden_size, config.vocab_size, False, dtype, rngs)
