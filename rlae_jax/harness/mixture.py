"""An ensemble's log-likelihood as its engine generates it (`ensemble_ll="token"`, the default): the
continuation teacher-forced through the token-level mixture, one union token per step.

Spelling rule: the continuation is spelled in union tokens as the member the strategy weighs most
for the first span (ties: the lowest index) tokenises it — that member's own continuation ids
(`scoring.encode_pair`, HFLM's convention), each of its ids being one union token. The rule is
applied per row inside the compiled loop, once the first span's weights are known.

Per union token u_j, with the weights w of the span it falls in (the weight_fn's, called at every
span start on the state reached so far, as in `engine.loop.step`):

    p(u_j) = Σ_n w_n P_n(u_j) / Σ_n w_n P_n(complete)

P_n(u) is member n's next-token distribution projected into the union (its ids with u's bytes
summed; ids outside its tokenizer masked), renormalised over the union tokens the engine may pick
(`Alignment.union_complete`) as its temperature-1 draw is (an incomplete u_j has probability 0:
the engine never picks it). Every member is then fed its own re-spelling of u_j
(`Alignment.retokenize`, the engine's `feed_members`). log p(continuation) = Σ_j log p(u_j);
is_greedy: every u_j is the mixture's argmax (`Alignment.mixed_argmax`, the engine's greedy
choice).

Why a teacher-forced loop over KV caches rather than one forward per member over its re-spelled
sequence: the weights come from the weight_fn at each span start, from the hidden states, the
members' distributions and a carry of the state reached so far, and the spelling is only known
once the first span's weights are. The loop reuses the engine's prefill, span start and feed, so
the weights and what each member reads are the engine's by construction; a full forward would
recompute every span's features from gathered positions. It costs one cached step per union
token, as generating the continuation does.

What it is not: the probability that the ensemble generates the string summed over all its union
spellings (each spelling feeds the members differently: exponentially many paths). It scores one
spelling, a lower bound of that sum. With one-hot weights on member i it is member i's own
log-likelihood of its own tokens except where (a) several of its ids spell the same bytes (their
probabilities are summed, e.g. Gemma's byte-fallback <0x0A> and its "\n") or (b) some of its mass
is on ids outside its tokenizer or on union tokens another member cannot spell (dropped and the
rest renormalised); both only raise the value.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from rlae_jax.align import Alignment
from rlae_jax.engine.features import MemberDistributions, member_distributions
from rlae_jax.engine.feed import feed_members
from rlae_jax.engine.loop import DecodeContext, prefill, start_span
from rlae_jax.engine.state import DecodeState, PromptBatch
from rlae_jax.models.sampling import first_argmax


def mixed_log_prob(
    dists: MemberDistributions,
    weights: jax.Array,
    union_ids: jax.Array,
    alignment: Alignment,
    incomplete: Sequence[jax.Array],
) -> jax.Array:
    """log p(u) `[B]` of `union_ids [B]` under the mixture with `weights [B, N]` (rows summing to
    1), renormalised over the complete union tokens (−inf for an incomplete u: the engine never
    picks it); `incomplete[n]` bool `[V_n]` marks member n's ids whose union token is not complete.
    Computed in log space, so a probability under float32's smallest stays finite."""
    shift = jnp.where(jnp.isfinite(dists.row_max), dists.row_max, 0.0)  # as member_distributions
    per_member, outside = [], 0.0
    for n, (logits, exp_logits) in enumerate(zip(dists.logits, dists.exp_logits)):
        spellers = alignment.union_member_ids[n, union_ids, : alignment.duplicate_widths[n]]
        picked = jnp.take_along_axis(logits, spellers, axis=1, mode="fill", fill_value=-jnp.inf)
        log_normalizer = jnp.log(dists.normalizer[:, n])
        per_member.append(jax.nn.logsumexp(picked - shift[:, n, None], axis=1) - log_normalizer)
        lost = jnp.sum(jnp.where(incomplete[n], exp_logits, 0.0), axis=1) / dists.normalizer[:, n]
        outside = outside + weights[:, n] * lost
    mixed = jax.nn.logsumexp(jnp.log(weights) + jnp.stack(per_member, axis=1), axis=1)
    mixed = jnp.where(alignment.union_complete[union_ids], mixed, -jnp.inf)
    return mixed - jnp.log1p(-outside)


@struct.dataclass
class ForcedState:
    """The teacher-forced loop's carry: the engine's DecodeState, each row's spelling member
    `primary [B]` and its length in union tokens `row_length [B]` (the longest spelling before the
    first span), and the running `log_prob [B]` and `greedy [B]`."""

    decode: DecodeState
    primary: jax.Array
    row_length: jax.Array
    log_prob: jax.Array
    greedy: jax.Array


def forced_step(
    context: DecodeContext,
    spellings: jax.Array,
    lengths: jax.Array,
    incomplete: Sequence[jax.Array],
    carry: ForcedState,
) -> ForcedState:
    """Score union token `step` of every row's spelling and feed it to every member (the last token
    of a row is scored, not fed). spellings `[B, N, J]`: the continuation in union ids as member n
    spells it; lengths `[B, N]`: how many of those are used."""
    s, alignment = carry.decode, context.alignment
    dists = member_distributions(
        [m.next_token_logits(h) for m, h in zip(context.members, s.hidden)], alignment
    )
    spans = jax.lax.cond(
        s.step // context.config.span_length > s.spans.started,
        lambda: start_span(context, s, dists),
        lambda: s.spans,
    )
    rows = jnp.arange(spellings.shape[0])
    primary = jnp.where(s.step == 0, first_argmax(spans.weights), carry.primary)
    row_length = lengths[rows, primary]
    live = s.step < row_length
    union_ids = spellings[rows, primary, jnp.minimum(s.step, spellings.shape[2] - 1)]
    log_p = mixed_log_prob(dists, spans.weights, union_ids, alignment, incomplete)
    greedy = alignment.mixed_argmax(dists.exp_logits, spans.weights / dists.normalizer) == union_ids
    tokens, counts = alignment.retokenize(union_ids)
    feeds = live & (s.step + 1 < row_length)
    hidden, caches = feed_members(
        context.members, s.hidden, s.caches, tokens, jnp.where(feeds[:, None], counts, 0)
    )
    return carry.replace(
        decode=s.replace(step=s.step + 1, hidden=hidden, caches=caches, spans=spans, done=~feeds),
        primary=primary,
        row_length=row_length,
        log_prob=carry.log_prob + jnp.where(live, log_p, 0.0),
        greedy=carry.greedy & (greedy | ~live),
    )


def token_mixture_scores(
    context: DecodeContext,
    prompts: PromptBatch,
    spellings: jax.Array,
    lengths: jax.Array,
    cache_lengths: Sequence[int],
) -> tuple[jax.Array, jax.Array]:
    """Teacher-forced token-level mixture log-likelihoods; pure and jittable (`cache_lengths`
    static). prompts: each member's left-padded contexts `[B, T_n]`; spellings `[B, N, J]` int32
    and lengths `[B, N]` (≥ 1) as in `forced_step`; cache_lengths[n]: slots for member n's context
    and the most tokens any spelling feeds it. `context.config.max_new_tokens` ≥ J sizes the span
    records. → (log-prob `[B]` float32, is_greedy `[B]`)."""
    context, state = prefill(context, prompts, cache_lengths)
    alignment = context.alignment
    incomplete = [
        jnp.take(
            ~alignment.union_complete,
            alignment.member_to_union[n, :size],
            mode="fill",
            fill_value=False,
        )
        for n, size in enumerate(alignment.vocab_sizes)
    ]
    batch = spellings.shape[0]
    carry = ForcedState(
        decode=state,
        primary=jnp.zeros((batch,), jnp.int32),
        row_length=lengths.max(axis=1),
        log_prob=jnp.zeros((batch,), jnp.float32),
        greedy=jnp.ones((batch,), bool),
    )
    carry = jax.lax.while_loop(
        lambda c: c.decode.step < c.row_length.max(),
        lambda c: forced_step(context, spellings, lengths, incomplete, c),
        carry,
    )
    return carry.log_prob, carry.greedy


def spell(alignment: Alignment, continuations: Sequence[Sequence[int]]) -> list[list[int]]:
    """Each member's continuation ids (`continuations[n]`) as union ids: its own spelling."""
    return [alignment.to_union(n, ids) for n, ids in enumerate(continuations)]


def fed_tokens(alignment: Alignment, union_ids: Sequence[int]) -> np.ndarray:
    """int `[N]`: member tokens each member is fed for `union_ids` (all but the last, which is
    scored and not fed)."""
    return alignment.vocab.union_to_member_len[:, list(union_ids[:-1])].sum(axis=1)
