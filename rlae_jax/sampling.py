"""Next-token selection shared by single-member generation and the ensemble engine."""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp


def first_argmax(scores: jax.Array) -> jax.Array:
    """`jnp.argmax(scores, -1)` (first index of the maximum) as int32, computed as a max and a min
    over indices: XLA:CPU lowers argmax to a scalar (value, index) reduction 2-5x slower than
    these two vectorised passes (benchmarks/union_ops.py). A row whose maximum is NaN gives 0
    (`jnp.argmax` would give the NaN's index)."""
    best = scores.max(axis=-1, keepdims=True)
    index = jax.lax.broadcasted_iota(jnp.int32, scores.shape, scores.ndim - 1)
    first = jnp.min(jnp.where(scores == best, index, scores.shape[-1]), axis=-1)
    return jnp.where(first < scores.shape[-1], first, 0)


def top_p_filter(logits: jax.Array, top_p: jax.Array) -> jax.Array:
    """Mask `logits [B, V]` outside the smallest set whose probability reaches `top_p` (nucleus)."""
    sorted_logits = jnp.sort(logits, axis=-1)[:, ::-1]
    cumulative = jnp.cumsum(jax.nn.softmax(sorted_logits, axis=-1), axis=-1)
    # keep a token while the mass *before* it is < top_p; the top token is always kept
    kept = (cumulative - jax.nn.softmax(sorted_logits, axis=-1)) < top_p
    threshold = jnp.min(jnp.where(kept, sorted_logits, jnp.inf), axis=-1, keepdims=True)
    return jnp.where(logits >= threshold, logits, -jnp.inf)


def select_from(greedy_scores: Callable[[], jax.Array], sampling_logits: Callable[[], jax.Array], key: jax.Array,
                step: jax.Array, temperature: jax.Array, top_p: jax.Array) -> jax.Array:
    """One id per row, int32 `[B]`: the first argmax of `greedy_scores()` when temperature == 0, else a
    draw from softmax(sampling_logits() / temperature) restricted to the top-p nucleus, with key
    `fold_in(key, step)`. Each callable is traced only inside its own branch, so greedy decoding
    never computes the sampling logits nor touches the PRNG."""

    def sample():
        scaled = sampling_logits() / jnp.maximum(temperature, 1e-6)
        scaled = jax.lax.cond(top_p < 1.0, lambda s: top_p_filter(s, top_p), lambda s: s, scaled)
        return jax.random.categorical(jax.random.fold_in(key, step), scaled, axis=-1).astype(jnp.int32)

    return jax.lax.cond(temperature > 0.0, sample, lambda: first_argmax(greedy_scores()))


def select_tokens(logits: jax.Array, key: jax.Array, step: jax.Array, temperature: jax.Array,
                  top_p: jax.Array) -> jax.Array:
    """`select_from` with the same `logits [B, V]` for both modes."""
    return select_from(lambda: logits, lambda: logits, key, step, temperature, top_p)
