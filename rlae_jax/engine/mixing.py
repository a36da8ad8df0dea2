"""Mixing the members' next-token distributions in the union vocabulary and choosing one union
token per row: exactly over the whole union, or among the members' top-k candidates."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rlae_jax.align import Alignment
from rlae_jax.engine.features import MemberDistributions
from rlae_jax.engine.state import DecodeConfig, Sampling
from rlae_jax.engine.strategies import Selection
from rlae_jax.models.sampling import first_argmax, select_from, select_tokens


def sanitize_weights(weights: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Normalise `[B, N]` weights; rows with NaN/inf, negatives or zero sum become uniform. →
    (weights, bad [B])."""
    bad = (
        ~jnp.all(jnp.isfinite(weights), -1) | jnp.any(weights < 0, -1) | (jnp.sum(weights, -1) <= 0)
    )
    weights = jnp.where(bad[:, None], 1.0, weights)
    return weights / weights.sum(-1, keepdims=True), bad


def top_candidates(probs: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
    """Each member's top-k `(probs, ids)` `[B, N, k]` from `probs [B, N, V]`, by k argmax-and-mask
    passes for small k, because XLA:CPU lowers `lax.top_k` inside a loop to a full sort."""
    if k > 16:
        values, ids = jax.lax.top_k(probs, k)
        return values, ids.astype(jnp.int32)

    def pick(remaining, _):
        index = first_argmax(remaining)
        value = jnp.take_along_axis(remaining, index[..., None], axis=-1)[..., 0]
        remaining = jnp.where(jnp.arange(remaining.shape[-1]) == index[..., None], -1.0, remaining)
        return remaining, (value, index.astype(jnp.int32))

    _, (values, ids) = jax.lax.scan(pick, probs, None, length=k)
    return jnp.moveaxis(values, 0, -1), jnp.moveaxis(ids, 0, -1)


def union_logits(mixed: jax.Array, alignment: Alignment) -> jax.Array:
    """log of a mixed union distribution `[B, U]`; tokens some member cannot ingest get -inf."""
    return jnp.where(
        alignment.union_complete & (mixed > 0), jnp.log(jnp.where(mixed > 0, mixed, 1.0)), -jnp.inf
    )


def choose_from_full_union(
    dists: MemberDistributions,
    weights: jax.Array,
    alignment: Alignment,
    sampling: Sampling,
    step: jax.Array,
) -> jax.Array:
    """One union id per row `[B]` from Σ_n weights[:, n] · P_n over the whole union, scaled from the
    unnormalised member distributions: greedy takes `Alignment.mixed_argmax` (no `[B, U]` array),
    sampling draws from the mixed union's logits with key fold_in(key, step)."""
    scales = weights / dists.normalizer
    return select_from(
        lambda: alignment.mixed_argmax(dists.exp_logits, scales),
        lambda: union_logits(alignment.mix(dists.exp_logits, scales), alignment),
        sampling.key,
        step,
        sampling.temperature,
        sampling.top_p,
    )


def choose_union_tokens(
    dists: MemberDistributions,
    weights: jax.Array,
    alignment: Alignment,
    sampling: Sampling,
    step: jax.Array,
    selection: Selection,
    config: DecodeConfig,
) -> jax.Array:
    """One union id per row `[B]` from the members' distributions mixed with `weights [B, N]`, as
    the weight_fn's `selection` says.

    Selection 'full' picks over the whole union (`choose_from_full_union`). With
    `candidates_per_member = k > 0`, greedy decoding first scores every member's top-k candidates
    exactly and takes the best one when it is certified: its mixed probability beats the bound
    Σ_n w_n · min(D · p_n^(k), 1 − Σ_top-k p_n) on any token outside the candidates (D = most ids
    sharing one byte string); otherwise the full union decides. Selection 'topk' (UniTE) picks
    only among the candidates.
    """

    def full_union():
        return choose_from_full_union(dists, weights, alignment, sampling, step)

    k = config.candidates(selection)
    if not k:
        return full_union()
    probs = dists.probabilities()
    top_probs, top_ids = top_candidates(probs, min(k, probs.shape[-1]))
    candidates = alignment.top_k_union(probs, top_ids, weights)
    usable = candidates.valid & alignment.union_complete[candidates.union_ids]
    scores = jnp.where(usable, candidates.scores, -jnp.inf)

    def pick_candidate(scores_or_logits):
        index = select_tokens(
            scores_or_logits, sampling.key, step, sampling.temperature, sampling.top_p
        )
        return jnp.take_along_axis(candidates.union_ids, index[:, None], axis=1)[:, 0]

    if selection.mode == "topk":
        return pick_candidate(jnp.where(usable, jnp.log(jnp.maximum(scores, 1e-38)), -jnp.inf))

    duplicates = alignment.union_member_ids.shape[-1]
    outside = jnp.minimum(
        duplicates * top_probs[..., -1], jnp.maximum(1.0 - top_probs.sum(-1), 0.0)
    )
    certified = scores.max(-1) > jnp.einsum("bn,bn->b", weights, outside)
    use_candidates = (sampling.temperature <= 0.0) & jnp.all(certified)
    return jax.lax.cond(use_candidates, lambda: pick_candidate(scores), full_union)
