"""The host API of the ensemble engine: prompts to each member's token batch, `generate` (strings
in, texts out) and `to_host` (a DecodeResult to texts and per-row records, with warnings)."""

from __future__ import annotations

import dataclasses
import warnings
from typing import TYPE_CHECKING, Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from rlae_jax.align import Alignment
from rlae_jax.engine.loop import decode_growing
from rlae_jax.engine.prefix import encode_prompts_once
from rlae_jax.engine.state import (
    STOP_CONTEXT_WINDOW,
    STOP_NONFINITE,
    STOP_REASONS,
    STOP_ROOM,
    DecodeConfig,
    DecodeResult,
    PromptBatch,
)
from rlae_jax.engine.strategies import resolve_strategy
from rlae_jax.models.member import Member
from rlae_jax.models.prompts import encode_prompts

if TYPE_CHECKING:  # rlae_jax.ensemble imports the engine
    from rlae_jax.ensemble import Ensemble

# `generate` keywords that configure a strategy given by name (see `resolve_strategy`)
STRATEGY_OPTIONS = ("weights", "threshold", "primary", "top_k", "packllm_temperature")


@dataclasses.dataclass
class EnsembleOutput:
    """Host-side result of `generate`: texts, union ids, stop reasons, and per-span weights
    (`span_weights[b]` is `[spans_b, N]`, only the spans row b actually started)."""

    texts: list[str]
    union_ids: list[list[int]]
    stop_reasons: list[str]
    span_weights: list[np.ndarray]
    result: DecodeResult


def prompts_per_member(
    prompts: Sequence[str] | Sequence[Sequence[str]], num_members: int
) -> list[Sequence[str]]:
    """One list of B prompt strings per member: `prompts` for every member when it is one list of
    strings, else `prompts[n]` for member n (e.g. each question in each member's chat template)."""
    if isinstance(prompts, str) or all(isinstance(p, str) for p in prompts):
        return [prompts] * num_members  # `encode_prompts` refuses one string or an empty list
    if any(isinstance(p, str) for p in prompts):
        raise TypeError("prompts: give one list of strings, or one list of strings per member")
    if len(prompts) != num_members:
        raise ValueError(
            f"{len(prompts)} prompt lists for {num_members} members: give one list per member"
        )
    sizes = [len(p) for p in prompts]
    if len(set(sizes)) > 1:
        raise ValueError(
            f"per-member prompt lists have different lengths {sizes}: every member needs the same "
            "B prompts"
        )
    return list(prompts)


def tokenize_for_members(
    members: Sequence[Member],
    prompts: Sequence[str] | Sequence[Sequence[str]],
    max_new_tokens: int,
    lengths: Sequence[int] | None = None,
) -> PromptBatch:
    """Every member's own tokenisation of the prompts, left-padded to its length bucket. `prompts`:
    B strings for every member, or one list of B strings per member (`prompts_per_member`).
    `lengths`: as in `batch_of_token_lists`."""
    own = prompts_per_member(prompts, len(members))
    token_lists = [encode_prompts(m.tokenizer, p) for m, p in zip(members, own)]
    return batch_of_token_lists(members, token_lists, max_new_tokens, lengths)


def batch_of_token_lists(
    members: Sequence[Member],
    token_lists: Sequence[Sequence[list[int]]],
    max_new_tokens: int,
    lengths: Sequence[int] | None = None,
) -> PromptBatch:
    """`token_lists[n][b]`: member n's prompt ids of row b → each member's left-padded `[B, T_n]`
    ids and mask; ValueError when a prompt plus `max_new_tokens` exceeds a member's context.
    `lengths[n]`: pad member n to at least this many positions, so batches of differently long
    prompts share one compiled shape."""
    no_prefix = [0] * len(members)
    encoded = encode_prompts_once(members, token_lists, max_new_tokens, no_prefix, lengths)
    rows = range(len(encoded))
    ids, masks = zip(*(encoded.padded(n, rows) for n in range(len(members))))
    return PromptBatch(tuple(map(jnp.asarray, ids)), tuple(map(jnp.asarray, masks)))


def generate(
    ensemble: Ensemble,
    prompts: Sequence[str] | Sequence[Sequence[str]],
    strategy: Any = "uniform",
    max_new_tokens: int = 64,
    *,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int = 0,
    **options,
) -> EnsembleOutput:
    """Ensemble-generate continuations of `prompts` (B strings, or one list of B per member) with
    `ensemble` (an `rlae_jax.Ensemble`; `Ensemble.generate` does the same and prefills the prompts'
    shared prefix once).

    `strategy`: a weight_fn object (`FixedWeights`, `ThresholdGating`, `PackLLMWeights`, an RL
    agent, see `rlae_jax.engine.strategies`) or a name: "uniform", "fixed" (with `weights=[...]`),
    "single" (member `primary` alone), "threshold" (GaC gating on member `primary` with
    `threshold`), "topk" (UniTE with `top_k`), "packllm" (with `packllm_temperature`). Other
    `options` are `DecodeConfig` fields (`span_length`, `candidates_per_member`,
    `expansion_budget`, `record_features`, `stop_at_eos`). A row ends at EOS, after
    `max_new_tokens`, or when a member's context window is full (stop reason 'context_window', with
    a warning naming the member); caches grow as needed (`decode_growing`).
    """
    batch = tokenize_for_members(ensemble.members, prompts, max_new_tokens)
    return generate_from_batch(
        ensemble,
        batch,
        strategy,
        max_new_tokens,
        temperature=temperature,
        top_p=top_p,
        seed=seed,
        **options,
    )


def generate_from_batch(
    ensemble: Ensemble,
    batch: PromptBatch,
    strategy: Any = "uniform",
    max_new_tokens: int = 64,
    *,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int = 0,
    **options,
) -> EnsembleOutput:
    """`generate` on an already tokenised PromptBatch (e.g. `Ensemble.batch`, with a shared
    prefix)."""
    named = {k: options.pop(k) for k in STRATEGY_OPTIONS if k in options}
    weight_fn = resolve_strategy(strategy, len(ensemble.members), **named)
    config = DecodeConfig(max_new_tokens=max_new_tokens, **options)
    result = decode_growing(
        ensemble,
        batch,
        weight_fn,
        jax.random.key(seed),
        jnp.float32(temperature),
        jnp.float32(top_p),
        config=config,
    )
    return to_host(result, ensemble.alignment, config, ensemble.names)


def warn_early_stops(result: DecodeResult, config: DecodeConfig, member_names=None) -> None:
    """Warn about the rows that stopped before EOS or the length limit, naming the member whose
    context window or compiled cache stopped them, and about weight_fn fallbacks."""
    stop_reason = np.asarray(result.stop_reason)
    window_member = np.asarray(result.window_member)
    room = (
        f"within the caches the in-graph decode compiled (DecodeConfig.room_per_token="
        f"{config.room_per_token}: raise it, or decode with `decode_growing`/`generate`)"
    )
    window = "within its context window (max_position_embeddings)"
    for member in np.unique(window_member[window_member >= 0]):
        name = member_names[member] if member_names else f"member {member}"
        for reason, why in ((STOP_CONTEXT_WINDOW, window), (STOP_ROOM, room)):
            rows = np.flatnonzero((window_member == member) & (stop_reason == reason))
            if len(rows):
                warnings.warn(
                    f"rows {rows.tolist()} stopped early (stop reason "
                    f"'{STOP_REASONS[reason]}'): member {name!r} cannot take the next token {why}"
                )
    nonfinite = np.flatnonzero(stop_reason == STOP_NONFINITE)
    if len(nonfinite):
        warnings.warn(
            f"rows {nonfinite.tolist()} stopped early: a member produced NaN/inf logits "
            "(or all −inf; stop reason 'nonfinite_logits'; bf16 overflow or broken weights?)"
        )
    fallback = np.flatnonzero(np.asarray(result.weight_fallback))
    if len(fallback):
        warnings.warn(
            f"the weight_fn returned NaN/negative/all-zero weights for rows {fallback.tolist()}; "
            "those spans used uniform weights"
        )


def to_host(
    result: DecodeResult,
    alignment: Alignment,
    config: DecodeConfig,
    member_names: Sequence[str] | None = None,
) -> EnsembleOutput:
    """Decode union ids to text and gather per-row records on the host (`warn_early_stops` names
    the rows that stopped early and, by `member_names`, the members that stopped them)."""
    union_ids = np.asarray(result.union_ids)
    lengths = np.asarray(result.lengths)
    span_valid = np.asarray(result.span_valid)
    span_weights = np.asarray(result.span_weights)
    rows = [union_ids[b, : lengths[b]].tolist() for b in range(len(lengths))]
    warn_early_stops(result, config, member_names)
    return EnsembleOutput(
        texts=[alignment.decode(ids) for ids in rows],
        union_ids=rows,
        stop_reasons=[STOP_REASONS[int(r)] for r in np.asarray(result.stop_reason)],
        span_weights=[span_weights[b, span_valid[b]] for b in range(len(rows))],
        result=result,
    )
