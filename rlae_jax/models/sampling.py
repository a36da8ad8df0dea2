"""Next-token selection shared by single-member generation and the ensemble engine."""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp


def max_and_first_key(scores: jax.Array, keys: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Row maxima of `scores [..., V]` and the smallest of `keys [..., V]` (int32, broadcastable)
    among the entries attaining them: `(best [...], key [...])`; key is int32 max where no entry
    attains the maximum (a NaN row). Two vectorised passes: XLA:CPU lowers `jnp.argmax` to a scalar
    (value, index) reduction 2-5x slower (benchmarks/RESULTS-ARCHIVE.md)."""
    best = scores.max(axis=-1)
    if jnp.issubdtype(best.dtype, jnp.floating):
        # an identity select between the max and its broadcast: without it XLA:CPU may fuse the
        # broadcast into the max's fusion and write the maxima out as a full `[..., V]` array
        # (benchmarks/RESULTS-ARCHIVE.md)
        best = jnp.where(jnp.isnan(best), jnp.nan, best)
    key = jnp.min(jnp.where(scores == best[..., None], keys, jnp.iinfo(jnp.int32).max), axis=-1)
    return best, key


def first_argmax(scores: jax.Array) -> jax.Array:
    """`jnp.argmax(scores, -1)` (first index of the maximum) as int32, via `max_and_first_key` over
    indices. A row whose maximum is NaN gives 0 (`jnp.argmax` would give the NaN's index)."""
    index = jax.lax.broadcasted_iota(jnp.int32, scores.shape, scores.ndim - 1)
    _, first = max_and_first_key(scores, index)
    return jnp.where(first < scores.shape[-1], first, 0)


def top_p_filter(logits: jax.Array, top_p: jax.Array) -> jax.Array:
    """Mask `logits [B, V]` outside the smallest set whose probability reaches `top_p` (nucleus)."""
    sorted_logits = jnp.sort(logits, axis=-1)[:, ::-1]
    cumulative = jnp.cumsum(jax.nn.softmax(sorted_logits, axis=-1), axis=-1)
    # keep a token while the mass *before* it is < top_p; the top token is always kept
    kept = (cumulative - jax.nn.softmax(sorted_logits, axis=-1)) < top_p
    threshold = jnp.min(jnp.where(kept, sorted_logits, jnp.inf), axis=-1, keepdims=True)
    return jnp.where(logits >= threshold, logits, -jnp.inf)


def select_from(
    greedy_pick: Callable[[], jax.Array],
    sampling_logits: Callable[[], jax.Array],
    key: jax.Array,
    step: jax.Array,
    temperature: jax.Array,
    top_p: jax.Array,
) -> jax.Array:
    """One id per row, int32 `[B]`: `greedy_pick()` when temperature == 0, else a
    draw from softmax(sampling_logits() / temperature) restricted to the top-p nucleus, with key
    `fold_in(key, step)`. Each callable is traced only inside its own branch, so greedy decoding
    never computes the sampling logits nor touches the PRNG."""

    def sample():
        scaled = sampling_logits() / jnp.maximum(temperature, 1e-6)
        scaled = jax.lax.cond(top_p < 1.0, lambda s: top_p_filter(s, top_p), lambda s: s, scaled)
        return jax.random.categorical(jax.random.fold_in(key, step), scaled, axis=-1).astype(
            jnp.int32
        )

    return jax.lax.cond(temperature > 0.0, sample, greedy_pick)


def select_tokens(
    logits: jax.Array, key: jax.Array, step: jax.Array, temperature: jax.Array, top_p: jax.Array
) -> jax.Array:
    """`select_from` on `logits [B, V]`: their first argmax, or a draw from them."""
    return select_from(lambda: first_argmax(logits), lambda: logits, key, step, temperature, top_p)
