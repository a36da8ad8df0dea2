"""Log-likelihood math for the harness backend: each member's exact log-probability of a
continuation in its own tokens (tokenised as lm-eval's HFLM does), and the sequence-level mixture
of them (`ensemble_ll="sequence"`; the default for an ensemble is the token-level mixture the engine
generates with, `rlae_jax.harness.mixture`):

    log p(continuation | context) = log Σ_i w_i · p_i(continuation | context)

where p_i is member i's probability of the continuation *string*, each member scoring it in its own
tokenisation, and w the weights the strategy gives the context's first span. It is a proper
distribution over strings, needs no alignment and is exactly a member's value under one-hot
weights, but it is not the model the engine generates with (that mixes token by token).
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from rlae_jax.models.member import Member
from rlae_jax.models.prompts import bucket_length, left_pad, pad_id_of

MIN_CONTINUATION_BUCKET = 8
POSITIONS_PER_BLOCK = 64  # lm-head positions computed at once: bounds the [B, P, V] logits


def encode(tokenizer, text: str, add_special_tokens: bool | None = None) -> list[int]:
    """Token ids of `text` as HFLM's `tok_encode` makes them: the tokenizer's own special tokens
    (e.g. a BOS) unless `add_special_tokens` says otherwise or the text already starts with the
    tokenizer's BOS string (a chat-templated prompt)."""
    if add_special_tokens is None:
        bos = tokenizer.bos_token
        add_special_tokens = not (bos and text.startswith(bos))
    return tokenizer.encode(text, add_special_tokens=add_special_tokens)


def prefix_token_id(tokenizer) -> int:
    """The token an empty context is replaced by (HFLM: BOS, else EOS)."""
    token = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if token is None:
        raise ValueError(
            "the tokenizer has neither a BOS nor an EOS token to stand for an empty context"
        )
    return int(token)


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """(context ids, continuation ids) as lm-eval's `TemplateLM.loglikelihood` makes them for a
    causal model: trailing spaces of the context move to the continuation; the continuation's tokens
    are those of `encode(context + continuation)` past `len(encode(context))` (so a token straddling
    the boundary is scored as the model would see the whole text); an empty context becomes the
    prefix token (BOS, else EOS) and the continuation is encoded without special tokens."""
    if context == "":
        continuation_ids = encode(tokenizer, continuation, add_special_tokens=False)
        prefix = prefix_token_id(tokenizer)
        if continuation_ids and continuation_ids[0] == prefix:
            return continuation_ids[:1], continuation_ids[1:]
        return [prefix], continuation_ids
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = encode(tokenizer, context + continuation)
    context_ids = encode(tokenizer, context)
    return context_ids, whole[len(context_ids) :]


def rolling_windows(tokenizer, text: str, max_length: int) -> list[tuple[list[int], list[int]]]:
    """(context ids, continuation ids) windows that score every token of `text` once, each with as
    much context as fits in `max_length` (lm-eval's rolling windows, as HFLM builds them)."""
    from lm_eval import utils

    windows = utils.get_rolling_token_windows(
        token_list=encode(tokenizer, text),
        prefix_token=prefix_token_id(tokenizer),
        max_seq_len=max_length,
        context_len=1,
    )
    return [utils.make_disjoint_window(w) for w in windows]


def continuation_scores(
    member: Member,
    input_ids: jax.Array,
    attention_mask: jax.Array,
    targets: jax.Array,
    target_mask: jax.Array,
) -> tuple[jax.Array, jax.Array]:
    """Sum of log-probabilities and greedy flags of right-aligned continuations; pure and jittable.

    input_ids, attention_mask `[B, T]`: LEFT-padded `(context + continuation)[:-1]`; targets,
    target_mask `[B, C]` (C ≤ T): each row's continuation ids right-aligned, so position T − C + j
    of the input predicts target j. Logits are the full forward's, unmasked (as transformers'),
    made for the last C positions only, 64 at a time (`Member.token_scores`). → (log-prob `[B]`
    float32, is_greedy `[B]`: every target is its position's argmax)."""
    hidden, _ = member.model(input_ids, attention_mask.astype(bool))
    width = targets.shape[1]
    log_probs, greedy = member.token_scores(
        hidden[:, -width:], targets, min(width, POSITIONS_PER_BLOCK)
    )
    valid = target_mask.astype(bool)
    return jnp.where(valid, log_probs, 0.0).sum(-1), jnp.all(greedy | ~valid, axis=-1)


def score_batch(
    member: Member, pairs: Sequence[tuple[list[int], list[int]]], rows: int, scorer
) -> tuple[np.ndarray, np.ndarray]:
    """Score up to `rows` (context ids, continuation ids) pairs with `scorer` (a jitted
    `continuation_scores`) as one batch padded to `rows` rows, the input to its power-of-two length
    bucket and the continuations to theirs (≥ 8). → (log-probs `[len(pairs)]`, greedy flags)."""
    inputs = [(context + continuation)[:-1] for context, continuation in pairs]
    inputs += [inputs[-1]] * (rows - len(pairs))
    continuations = [c for _, c in pairs] + [pairs[-1][1]] * (rows - len(pairs))
    ids, mask = left_pad(inputs, pad_id_of(member.tokenizer))
    width = bucket_length(max(map(len, continuations)), MIN_CONTINUATION_BUCKET)
    targets, target_mask = left_pad(continuations, 0, width)
    log_probs, greedy = scorer(
        member, jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(targets), jnp.asarray(target_mask)
    )
    return np.asarray(log_probs)[: len(pairs)], np.asarray(greedy)[: len(pairs)]


def check_scorable(
    name: str, index: int, context: int, continuation: int, fed: int, max_length: int
) -> None:
    """Raise, naming request `index` and member `name`, when its `context` or `continuation` (token
    counts) is empty or the context plus the `fed` tokens read before the last one scored exceed
    `max_length` positions."""
    if not context or not continuation:
        part = "context" if not context else "continuation"
        raise ValueError(f"request {index}: the {part} encodes to no tokens ({name})")
    if context + fed > max_length:
        raise ValueError(
            f"request {index}: the context and the continuation's tokens before its last take "
            f"{context + fed} positions, more than max_length={max_length} ({name}); "
            "ensemble_ll='sequence' scores long texts in rolling windows"
        )


def member_loglikelihoods(
    member: Member, pairs: Sequence[tuple[list[int], list[int]]], max_length: int, rows: int, scorer
) -> tuple[np.ndarray, np.ndarray]:
    """Every pair's log-probability and greedy flag for one member, `[R]` each, batched `rows` at a
    time in order of input length (so a batch spans few length buckets)."""
    for index, (context, continuation) in enumerate(pairs):
        check_scorable(
            member.name, index, len(context), len(continuation), len(continuation) - 1, max_length
        )
    order = sorted(range(len(pairs)), key=lambda i: len(pairs[i][0]) + len(pairs[i][1]))
    log_probs, greedy = np.zeros(len(pairs), np.float64), np.zeros(len(pairs), bool)
    for start in range(0, len(order), rows):
        chunk = order[start : start + rows]
        log_probs[chunk], greedy[chunk] = score_batch(
            member, [pairs[i] for i in chunk], rows, scorer
        )
    return log_probs, greedy


def mixture_loglikelihood(
    log_probs: np.ndarray, greedy: np.ndarray, weights: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """log Σ_i w_i · p_i from members' log-probs `[R, N]` and weights `[R, N]` (rows summing to 1),
    and the mixture's greedy flag: true when every member with positive weight would produce the
    continuation greedily in its own tokens (a continuation all weighted members agree on is the one
    a greedy mixture decode is expected to produce; for one-hot weights it is that member's flag). →
    (log-prob `[R]`, is_greedy `[R]`)."""
    with np.errstate(divide="ignore"):
        terms = np.log(weights) + log_probs
    peak = terms.max(axis=1, keepdims=True)
    mixed = peak[:, 0] + np.log(np.exp(terms - peak).sum(axis=1))
    return mixed, np.all(greedy | (weights <= 0), axis=1)
