"""Llama-style decoder: Llama 2/3/3.1/3.2, Mistral (sliding window), Qwen2/2.5 (qkv bias, tied
embeddings) and Qwen 3 (per-head q/k RMSNorm), selected by ModelConfig fields rather than by code
paths."""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from rlae_jax.models.config import ModelConfig
from rlae_jax.models.layers import (
    CausalLM,
    activation,
    append_and_attend,
    apply_rope,
    linear,
    rms_norm,
    rope_inverse_frequencies,
)


class DecoderLayer(nnx.Module):
    """Pre-norm block: x + attn(norm(x)); x + SwiGLU(norm(x))."""

    def __init__(self, config: ModelConfig, layer_index: int, *, dtype, rngs: nnx.Rngs):
        hidden, head_dim = config.hidden_size, config.head_dim
        self.num_heads, self.num_kv_heads = config.num_heads, config.num_kv_heads
        self.head_dim = head_dim
        self.window = config.layer_windows[layer_index]
        self.inv_freq = tuple(rope_inverse_frequencies(config, layer_index).tolist())
        self.scale, self.qk_norm = config.attention_scale, config.qk_norm
        self.act = config.hidden_act
        self.input_norm = rms_norm(config, hidden, dtype)
        self.q_proj = linear(hidden, config.num_heads * head_dim, config.qkv_bias, dtype, rngs)
        self.k_proj = linear(hidden, config.num_kv_heads * head_dim, config.qkv_bias, dtype, rngs)
        self.v_proj = linear(hidden, config.num_kv_heads * head_dim, config.qkv_bias, dtype, rngs)
        self.o_proj = linear(config.num_heads * head_dim, hidden, config.out_bias, dtype, rngs)
        if config.qk_norm:
            self.q_norm = rms_norm(config, head_dim, dtype)
            self.k_norm = rms_norm(config, head_dim, dtype)
        self.post_attention_norm = rms_norm(config, hidden, dtype)
        self.gate_proj = linear(hidden, config.intermediate_size, config.mlp_bias, dtype, rngs)
        self.up_proj = linear(hidden, config.intermediate_size, config.mlp_bias, dtype, rngs)
        self.down_proj = linear(config.intermediate_size, hidden, config.mlp_bias, dtype, rngs)

    def __call__(self, x, positions, cache_keys, cache_values, slots, slot_positions):
        attn, cache_keys, cache_values = self.attention(
            self.input_norm(x), positions, cache_keys, cache_values, slots, slot_positions
        )
        x = x + attn
        x = x + self.mlp(self.post_attention_norm(x))
        return x, cache_keys, cache_values

    def attention(self, h, positions, cache_keys, cache_values, slots, slot_positions):
        """Self-attention of normed `h [B, L, H]` over the cache → (`[B, L, H]`, keys, values)."""
        batch, block, _ = h.shape
        q = self.q_proj(h).reshape(batch, block, self.num_heads, self.head_dim)
        k = self.k_proj(h).reshape(batch, block, self.num_kv_heads, self.head_dim)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        inv_freq = jnp.asarray(self.inv_freq, jnp.float32)
        q, k = apply_rope(q, positions, inv_freq), apply_rope(k, positions, inv_freq)
        v = self.v_proj(h).reshape(batch, block, self.num_kv_heads, self.head_dim)
        attn, cache_keys, cache_values = append_and_attend(
            q,
            k,
            v,
            cache_keys,
            cache_values,
            slots,
            positions,
            slot_positions,
            self.window,
            self.scale,
        )
        return self.o_proj(attn.reshape(batch, block, -1)), cache_keys, cache_values

    def mlp(self, h):
        """Gated MLP: down(act(gate(h)) · up(h))."""
        return self.down_proj(activation(self.act)(self.gate_proj(h)) * self.up_proj(h))


class Decoder(CausalLM):
    """Token embedding → layers → RMSNorm → LM head (tied to the embedding when configured)."""

    layer_class = DecoderLayer

    def __init__(self, config: ModelConfig, *, dtype=jnp.float32, rngs: nnx.Rngs):
        self.config = config
        self.embedding = nnx.Embed(
            config.vocab_size,
            config.hidden_size,
            dtype=dtype,
            param_dtype=dtype,
            embedding_init=nnx.initializers.normal(0.02),
            rngs=rngs,
        )
        self.layers = nnx.List(
            [self.layer_class(config, i, dtype=dtype, rngs=rngs) for i in range(config.num_layers)]
        )
        self.norm = rms_norm(config, config.hidden_size, dtype)
        if not config.tie_word_embeddings:
            self.lm_head = linear(config.hidden_size, config.vocab_size, False, dtype, rngs)
