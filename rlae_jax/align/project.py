"""Device-side projection between member vocabularies and the union vocabulary (jit/vmap safe).

Shapes: B batch rows, N members, V = V_max (padded member vocabulary), U union size,
k per-member candidates, D most member ids sharing one byte string (2 for SentencePiece).
Invalid member ids (beyond a member's tokenizer, or padding) map to the sentinel U; the union
side gathers from the member distributions, so those ids contribute nothing.
"""

from __future__ import annotations

import functools
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp

from rlae_jax.models.sampling import max_and_first_key


def masked_log_softmax(member_logits: jax.Array, member_valid: jax.Array) -> jax.Array:
    """log-probabilities [B, N, V] with invalid ids at -inf (zero probability).

    member_logits: [B, N, V]; member_valid: bool [N, V].
    """
    masked = jnp.where(member_valid[None], member_logits, -jnp.inf)
    return jax.nn.log_softmax(masked, axis=-1)


def gather_union(member_probs: jax.Array, spellers: jax.Array) -> jax.Array:
    """One member's distribution in union space, [B, V_n] → [B, U]: union token u gets the summed
    probability of the member ids with its bytes (the exact marginal over byte strings).

    spellers: int32 [U, D_n] member ids per union token; padding (any id ≥ V_n) contributes 0.
    One gather per column: on XLA:CPU 1.9x cheaper than a scatter-add into [B, U] at batch 16,
    slightly dearer at batch 1 (benchmarks/RESULTS-ARCHIVE.md).
    """
    columns = [
        jnp.take(member_probs, spellers[:, d], axis=1, mode="fill", fill_value=0)
        for d in range(spellers.shape[1])
    ]
    return functools.reduce(jnp.add, columns)


def project(
    member_probs: jax.Array, union_member_ids: jax.Array, widths: Sequence[int]
) -> jax.Array:
    """Each member's distribution in union space, [B, N, V] → [B, N, U] (mass on ids outside the
    member's tokenizer is dropped). widths[n] = D_n, the columns of union_member_ids member n
    uses."""
    return jnp.stack(
        [
            gather_union(member_probs[:, n], union_member_ids[n, :, :width])
            for n, width in enumerate(widths)
        ],
        axis=1,
    )


def mix(
    member_probs: Sequence[jax.Array],
    weights: jax.Array,
    union_member_ids: jax.Array,
    widths: Sequence[int],
) -> jax.Array:
    """Weighted union distribution Σ_n weights[b, n] · P_n → [B, U], from N per-member
    distributions `[B, V_n]` (any widths) and `weights [B, N]`."""
    return functools.reduce(
        jnp.add,
        [
            weights[:, n, None] * gather_union(probs, union_member_ids[n, :, :width])
            for n, (probs, width) in enumerate(zip(member_probs, widths))
        ],
    )


def mixed_argmax(
    member_probs: Sequence[jax.Array],
    weights: jax.Array,
    member_to_union: jax.Array,
    exclusive: jax.Array,
    shared_union_ids: jax.Array,
    shared_member_ids: jax.Array,
    widths: Sequence[int],
) -> jax.Array:
    """int32 `[B]`: the first argmax over complete union tokens of `mix(member_probs, weights)` —
    the same id, bit for bit — without building `[B, U]`. A union token spelled by exactly one
    member id in all members (`exclusive [N, V]`) scores weights[:, n] · p_n(id) in that member's
    own vocabulary; only the `shared_union_ids [C]` (spelled by several ids: `shared_member_ids
    [N, C, D]`) are gathered. Ties go to the smallest union id, as in `first_argmax`.
    (GPT-2 + Llama 2: C = 18k of U = 64k; 4-4.5x cheaper than mix + first_argmax at batch 16 on a
    2-core CPU, benchmarks/RESULTS-ARCHIVE.md.)"""
    best, keys = [], []
    for n, probs in enumerate(member_probs):
        vocab = probs.shape[-1]
        scores = jnp.where(exclusive[n, :vocab], weights[:, n, None] * probs, -1.0)
        value, key = max_and_first_key(scores, member_to_union[n, :vocab])
        best.append(value)
        keys.append(key)
    if shared_union_ids.shape[0]:
        value, key = max_and_first_key(
            mix(member_probs, weights, shared_member_ids, widths), shared_union_ids
        )
        best.append(value)
        keys.append(key)
    _, key = max_and_first_key(jnp.stack(best, axis=-1), jnp.stack(keys, axis=-1))
    return jnp.where(key < jnp.iinfo(jnp.int32).max, key, 0)


def js_divergence(
    exp_logits: Sequence[jax.Array],
    normalizer: jax.Array,
    exclusive: jax.Array,
    gathered_member_ids: Sequence[jax.Array],
    widths: Sequence[int],
) -> jax.Array:
    """`[B]` generalised Jensen-Shannon divergence, equal weights, of the members' distributions in
    union space, H(mean_n P_n) − mean_n H(P_n), without building `[B, N, U]`. exp_logits: N arrays
    `[B, V_n]` (unnormalised, row sums `normalizer [B, N]`). A union token spelled by one id of one
    member (`exclusive [N, V]`) has mean probability p/N and contributes (p/N)·log N, so each
    member's exclusive mass is one masked sum; every other union token is gathered
    (`gathered_member_ids`: arrays `[N, C_i, D]` of member ids per union token, padding ≥ V_n) and
    contributes mean_n P_n log P_n − m log m, m = mean_n P_n."""
    members = len(exp_logits)
    exclusive_mass = sum(
        jnp.sum(jnp.where(exclusive[n, : e.shape[-1]], e, 0.0), axis=-1) / normalizer[:, n]
        for n, e in enumerate(exp_logits)
    )
    divergence = exclusive_mass * jnp.log(members) / members

    def x_log_x(x):
        return jnp.where(x > 0, x * jnp.log(jnp.where(x > 0, x, 1.0)), 0.0)

    for member_ids in gathered_member_ids:
        per_member = [
            gather_union(e, member_ids[n, :, :width]) / normalizer[:, n, None]
            for n, (e, width) in enumerate(zip(exp_logits, widths))
        ]  # N × [B, C_i]
        mean = functools.reduce(jnp.add, per_member) / members
        divergence += (
            functools.reduce(jnp.add, map(x_log_x, per_member)) / members - x_log_x(mean)
        ).sum(-1)
    return divergence


class TopKUnion(NamedTuple):
    """Candidate union tokens from every member's top-k.

    union_ids: int32 [B, N·k] candidate union ids (member-major order; repeats marked invalid).
    member_probs: [B, N, N·k] each member's full probability of each candidate (all its ids with
        those bytes summed — not only its own top-k).
    scores: [B, N·k] mixed probability sum_n weights[b, n] · member_probs[b, n, c]; -inf where
    invalid.
    valid: bool [B, N·k] first occurrence of a real union id.
    """

    union_ids: jax.Array
    member_probs: jax.Array
    scores: jax.Array
    valid: jax.Array

    def best(self) -> jax.Array:
        """int32 [B]: the highest-scoring candidate union id."""
        pick = jnp.argmax(self.scores, axis=-1)
        return jnp.take_along_axis(self.union_ids, pick[:, None], axis=-1)[:, 0]


def top_k_union(
    member_probs: jax.Array,
    member_top_ids: jax.Array,
    weights: jax.Array,
    member_to_union: jax.Array,
    union_member_ids: jax.Array,
    num_union: int,
) -> TopKUnion:
    """UniTE-style candidates without materialising [B, U] (memory O(B·N²·k·D)).

    member_probs: [B, N, V]; member_top_ids: int32 [B, N, k] member-local ids, from any selector
    (``lax.top_k`` measured 0.44 ms at [8, 50257], k=10 on a 2-core CPU with jax 0.10.2;
    ``lax.approx_max_k`` is the TPU-friendly alternative); weights: [B, N];
    union_member_ids: int32 [N, U, D] every member id spelling each union token (padding = V).
    """
    batch, members, vocab = member_probs.shape
    member_index = jnp.arange(members)[None, :, None]
    candidates = member_to_union[member_index, member_top_ids].reshape(batch, -1)
    real = candidates < num_union
    safe = jnp.where(real, candidates, 0)
    spelled_by = union_member_ids[:, safe]  # [N, B, C, D]
    spelled_by = jnp.moveaxis(spelled_by, 0, 1).reshape(batch, members, -1)
    gathered = jnp.take_along_axis(member_probs, spelled_by, axis=-1, mode="fill", fill_value=0)
    candidate_probs = gathered.reshape(batch, members, candidates.shape[1], -1).sum(-1)
    candidate_probs = jnp.where(real[:, None, :], candidate_probs, 0)
    earlier_same = jnp.tril(candidates[:, :, None] == candidates[:, None, :], k=-1).any(-1)
    valid = real & ~earlier_same
    scores = jnp.einsum("bn,bnc->bc", weights, candidate_probs)
    return TopKUnion(candidates, candidate_probs, jnp.where(valid, scores, -jnp.inf), valid)
