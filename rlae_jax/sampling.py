"""Next-token selection shared by single-member generation and the ensemble engine."""
from __future__ import annotations

import jax
import jax.numpy as jnp


def top_p_filter(logits: jax.Array, top_p: jax.Array) -> jax.Array:
    """Mask `logits [B, V]` outside the smallest set whose probability reaches `top_p` (nucleus)."""
    sorted_logits = jnp.sort(logits, axis=-1)[:, ::-1]
    cumulative = jnp.cumsum(jax.nn.softmax(sorted_logits, axis=-1), axis=-1)
    # keep a token while the mass *before* it is < top_p; the top token is always kept
    kept = (cumulative - jax.nn.softmax(sorted_logits, axis=-1)) < top_p
    threshold = jnp.min(jnp.where(kept, sorted_logits, jnp.inf), axis=-1, keepdims=True)
    return jnp.where(logits >= threshold, logits, -jnp.inf)


def select_tokens(logits: jax.Array, key: jax.Array, temperature: jax.Array, top_p: jax.Array) -> jax.Array:
    """Pick one id per row from `logits [B, V]`: argmax when temperature == 0, else sample from
    softmax(logits / temperature) restricted to the top-p nucleus. Returns int32 `[B]`."""

    def sample(_):
        scaled = logits / jnp.maximum(temperature, 1e-6)
        scaled = jax.lax.cond(top_p < 1.0, lambda s: top_p_filter(s, top_p), lambda s: s, scaled)
        return jax.random.categorical(key, scaled, axis=-1).astype(jnp.int32)

    def greedy(_):
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)

    return jax.lax.cond(temperature > 0.0, sample, greedy, None)
