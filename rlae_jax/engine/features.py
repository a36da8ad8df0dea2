"""Per-span features handed to a weight_fn: what the members say now and what the prompt was."""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from rlae_jax.align import Alignment
from rlae_jax.sampling import first_argmax


@struct.dataclass
class SpanFeatures:
    """Features at a span boundary (B rows, N members, H_n hidden size of member n).

    span_index: int32 [B]; hidden / prompt_summary: per member [B, H_n] (current last hidden
    state; mean-pooled prefill hidden states); entropy, max_prob: [B, N] of each member's own
    next-token distribution; top1_agreement: [B] fraction of member pairs whose top-1 tokens are
    the same union token; js_divergence: [B] generalised Jensen-Shannon divergence (uniform
    member weights) in union space, zeros unless requested; prompt_nll: [B, N] mean prompt
    negative log-likelihood of each member, zeros unless requested; previous_weights: [B, N].
    """

    span_index: jax.Array
    hidden: tuple[jax.Array, ...]
    prompt_summary: tuple[jax.Array, ...]
    entropy: jax.Array
    max_prob: jax.Array
    top1_agreement: jax.Array
    js_divergence: jax.Array
    prompt_nll: jax.Array
    previous_weights: jax.Array


def entropy_of(probs: jax.Array) -> jax.Array:
    """Shannon entropy (nats) over the last axis; zero-probability entries contribute 0."""
    return -jnp.sum(jnp.where(probs > 0, probs * jnp.log(jnp.where(probs > 0, probs, 1.0)), 0.0), axis=-1)


def js_divergence(union_probs: jax.Array) -> jax.Array:
    """Generalised JS divergence of N distributions `[B, N, U]` with equal weights → `[B]`."""
    return entropy_of(union_probs.mean(axis=1)) - entropy_of(union_probs).mean(axis=1)


def top1_agreement(probs: jax.Array, alignment: Alignment) -> jax.Array:
    """Fraction of member pairs `[B]` whose argmax tokens have the same bytes (same union id)."""
    members = probs.shape[1]
    top1 = first_argmax(probs)  # [B, N]
    union_top1 = alignment.member_to_union[jnp.arange(members)[None, :], top1]
    same = union_top1[:, :, None] == union_top1[:, None, :]
    pairs = max(members * (members - 1) // 2, 1)
    return jnp.triu(same, k=1).sum(axis=(1, 2)) / pairs


def span_features(probs: jax.Array, hidden: tuple[jax.Array, ...], prompt_summary: tuple[jax.Array, ...],
                  span_index: jax.Array, previous_weights: jax.Array, prompt_nll: jax.Array,
                  alignment: Alignment, with_divergence: bool) -> SpanFeatures:
    """Assemble SpanFeatures from member probabilities `probs [B, N, V]` (padded to the widest vocab)."""
    batch = probs.shape[0]
    divergence = js_divergence(alignment.project(probs)) if with_divergence else jnp.zeros((batch,), jnp.float32)
    return SpanFeatures(
        span_index=jnp.broadcast_to(span_index, (batch,)).astype(jnp.int32),
        hidden=tuple(h.astype(jnp.float32) for h in hidden),
        prompt_summary=prompt_summary,
        entropy=entropy_of(probs),
        max_prob=probs.max(axis=-1),
        top1_agreement=top1_agreement(probs, alignment),
        js_divergence=divergence,
        prompt_nll=prompt_nll,
        previous_weights=previous_weights,
    )
