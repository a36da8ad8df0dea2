"""Per-span features handed to a weight_fn: what the members say now and what the prompt was."""

from __future__ import annotations

from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
from flax import struct

from rlae_jax.align import Alignment
from rlae_jax.models.member import Member, PrefixState
from rlae_jax.models.sampling import first_argmax


class MemberDistributions(NamedTuple):
    """Each member's next-token distribution, unnormalised: `exp_logits` per member `[B, V_n]`
    (exp(logit − row max); 0 on ids its tokenizer lacks), their row sums `normalizer [B, N]` (NaN or
    inf when a member's logits hold a NaN or +inf, 0 when they are all −inf: `usable_rows`), and the
    `logits` and `row_max [B, N]` they came from (−inf logits on ids the tokenizer lacks)."""

    exp_logits: tuple[jax.Array, ...]
    normalizer: jax.Array
    logits: tuple[jax.Array, ...]
    row_max: jax.Array

    def probabilities(self) -> jax.Array:
        """Normalised and zero-padded to the widest vocabulary: `[B, N, V]`."""
        width = max(e.shape[-1] for e in self.exp_logits)
        return jnp.stack(
            [
                jnp.pad(e / self.normalizer[:, n, None], ((0, 0), (0, width - e.shape[-1])))
                for n, e in enumerate(self.exp_logits)
            ],
            axis=1,
        )

    def entropy(self) -> jax.Array:
        """Shannon entropy (nats) `[B, N]` of each member's distribution, as log Z − Σ e·(logit −
        max) / Z: no elementwise log (−Σ p log p takes one per vocabulary entry)."""
        weighted = jnp.stack(
            [
                jnp.sum(jnp.where(e > 0, e * (logits - self.row_max[:, n, None]), 0.0), axis=-1)
                for n, (e, logits) in enumerate(zip(self.exp_logits, self.logits))
            ],
            axis=1,
        )
        return jnp.log(self.normalizer) - weighted / self.normalizer

    def max_probability(self) -> jax.Array:
        """`[B, N]` each member's largest probability: 1 / Z, since the largest exp(logit − max) is
        1."""
        return 1.0 / self.normalizer

    def top1(self) -> jax.Array:
        """int32 `[B, N]` each member's most likely id (the first of equals)."""
        return jnp.stack([first_argmax(e) for e in self.exp_logits], axis=1)


def usable_rows(normalizer: jax.Array) -> jax.Array:
    """bool `[B]`: rows where every member's normaliser `[B, N]` is finite and positive (no NaN or
    +inf logit, not every logit −inf)."""
    return jnp.all(jnp.isfinite(normalizer) & (normalizer > 0), axis=-1)


def member_distributions(
    member_logits: Sequence[jax.Array], alignment: Alignment
) -> MemberDistributions:
    """Softmax numerators and normalisers of every member's logits `[B, V_n]` (ids outside its
    tokenizer masked; members whose every id is valid skip the mask, a pass over `[B, V_n]` per
    step)."""
    masked, exp_logits, row_max = [], [], []
    for index, logits in enumerate(member_logits):
        if not alignment.all_ids_valid[index]:
            logits = jnp.where(alignment.member_valid[index, : logits.shape[-1]], logits, -jnp.inf)
        top = logits.max(axis=-1)
        masked.append(logits)
        row_max.append(top)
        # a non-finite max shifts by 0: the normaliser then shows it (NaN, inf or 0). The select
        # also keeps XLA:CPU from fusing the max into the exp pass, a fusion 5-10% slower per
        # ensemble step (benchmarks/RESULTS-ARCHIVE.md)
        shift = jnp.where(jnp.isfinite(top), top, 0.0)
        exp_logits.append(jnp.exp(logits - shift[:, None]))
    return MemberDistributions(
        tuple(exp_logits),
        jnp.stack([e.sum(-1) for e in exp_logits], axis=1),
        tuple(masked),
        jnp.stack(row_max, axis=1),
    )


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


def top1_agreement(top1: jax.Array, alignment: Alignment) -> jax.Array:
    """Fraction of member pairs `[B]` whose most likely ids `top1 [B, N]` have the same bytes (same
    union id)."""
    members = top1.shape[1]
    union_top1 = alignment.member_to_union[jnp.arange(members)[None, :], top1]
    same = union_top1[:, :, None] == union_top1[:, None, :]
    pairs = max(members * (members - 1) // 2, 1)
    return jnp.triu(same, k=1).sum(axis=(1, 2)) / pairs


def span_features(
    dists: MemberDistributions,
    hidden: tuple[jax.Array, ...],
    prompt_summary: tuple[jax.Array, ...],
    span_index: jax.Array,
    previous_weights: jax.Array,
    prompt_nll: jax.Array,
    alignment: Alignment,
    with_divergence: bool,
) -> SpanFeatures:
    """Assemble SpanFeatures from the members' distributions."""
    batch = dists.normalizer.shape[0]
    divergence = (
        alignment.js_divergence(dists.exp_logits, dists.normalizer)
        if with_divergence
        else jnp.zeros((batch,), jnp.float32)
    )
    return SpanFeatures(
        span_index=jnp.broadcast_to(span_index, (batch,)).astype(jnp.int32),
        hidden=tuple(h.astype(jnp.float32) for h in hidden),
        prompt_summary=prompt_summary,
        entropy=dists.entropy(),
        max_prob=dists.max_probability(),
        top1_agreement=top1_agreement(dists.top1(), alignment),
        js_divergence=divergence,
        prompt_nll=prompt_nll,
        previous_weights=previous_weights,
    )


def token_log_probs(
    member: Member, input_ids: jax.Array, attention_mask: jax.Array, chunk: int = 16
) -> jax.Array:
    """`[B, T-1]` log-probability of every token of a padded batch `[B, T]` after the first (one
    full forward, then `Member.token_log_probs` in blocks of `chunk` positions)."""
    hidden, _ = member.model(input_ids, attention_mask.astype(bool))
    return member.token_log_probs(hidden[:, :-1], input_ids[:, 1:], chunk)


def prompt_nll(
    member: Member,
    hidden_states: jax.Array,
    input_ids: jax.Array,
    attention_mask: jax.Array,
    prefix: PrefixState | None = None,
) -> jax.Array:
    """Mean negative log-likelihood `[B]` of each row's prompt tokens after its first, from the
    prefill's own final hidden states `hidden_states [B, T, H]` of the left-padded rows `[B, T]`
    (no second pass through the model). After a shared `prefix`, a row's first token is predicted
    by the prefix's last hidden state and the prefix's own NLL is added."""
    mask = attention_mask.astype(bool)
    previous = jnp.pad(mask[:, :-1], ((0, 0), (1, 0)))  # [B, T]: token t-1 is the row's
    predictors = jnp.pad(hidden_states[:, :-1], ((0, 0), (1, 0), (0, 0)))
    if prefix is None:
        scored, nll, count = mask & previous, 0.0, 0
    else:
        last = prefix.last_hidden.astype(predictors.dtype)
        predictors = jnp.where(previous[..., None], predictors, last)
        scored, nll, count = mask, prefix.nll_sum, prefix.tokens - 1
    log_probs = member.token_log_probs(predictors, input_ids)
    total = nll - jnp.where(scored, log_probs, 0.0).sum(-1)
    return total / jnp.maximum(scored.sum(-1) + count, 1)
