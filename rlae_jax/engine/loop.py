"""The ensemble decode loop: prefill every member, then a `lax.while_loop` of `step`s that mix the
members' next-token distributions in the union vocabulary, pick one union token per row and feed it
back to every member in its own tokens, growing a member's KV cache when its re-spellings need more
room. `decode` is pure and jittable (the RL train step calls it); `decode_jit` is it compiled with
the decode-loop options (`runtime.compile_options`); `decode_growing` runs the same loop from the
host, growing only what is needed; `generate` is the host API around it."""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from rlae_jax.align import Alignment
from rlae_jax.runtime.compile_options import decode_loop_options
from rlae_jax.engine.features import (
    MemberDistributions,
    SpanFeatures,
    member_distributions,
    span_features,
    usable_rows,
)
from rlae_jax.engine.strategies import Selection, resolve_strategy
from rlae_jax.models.kv_cache import KVCache
from rlae_jax.models.member import Member
from rlae_jax.models.prompts import check_context, encode_prompts, left_pad, pad_id_of
from rlae_jax.models.sampling import first_argmax, select_from, select_tokens

RUNNING, STOP_EOS, STOP_LENGTH, STOP_CONTEXT_WINDOW, STOP_NONFINITE, STOP_ROOM = range(6)
STOP_REASONS = {
    RUNNING: "running",
    STOP_EOS: "eos",
    STOP_LENGTH: "length",
    STOP_CONTEXT_WINDOW: "context_window",
    STOP_NONFINITE: "nonfinite_logits",
    STOP_ROOM: "room",
}
NO_TOKEN = -1  # union-id buffer padding after a row stops


@dataclasses.dataclass(frozen=True)
class DecodeConfig:
    """Static settings of one compiled decode. `expansion_budget`: the cache slots per union token a
    decode starts with past the prompt (a size hint: a member that needs more grows its cache, see
    `room_ladder`, at the cost of one more compiled loop); `room_per_token`: the most cache slots
    per union token past the prompt the in-graph `decode` compiles, because it cannot grow caches at
    run time and its largest caches are every batch's memory; a row whose re-spellings would
    overflow them stops with stop reason 'room' (`to_host` warns; `decode_growing` and `generate`
    grow instead and ignore it); `first_pass_tokens`: member tokens every
    row appends in each step's first pass (re-spellings that fit need no second pass; `generate`
    picks it with `default_first_pass_tokens`); `respell_chunk`: member tokens appended per extra
    pass for the rest of longer re-spellings (a larger chunk means fewer passes but more padded work
    per pass; a last chunk of one token gets a one-token pass); `respell_slots` = S: when that
    should cost less (`plan_packing`), a member's re-spellings go in one-token passes of B + S
    tokens packed from any rows (0: always the first pass and whole-batch chunks; `generate` picks
    it with `default_respell_slots`); `stop_at_eos=False` always runs max_new_tokens steps
    (benchmarks); `record_features` keeps every span's SpanFeatures in the result (RL needs them;
    without it features the weight_fn ignores are never computed)."""

    max_new_tokens: int = 64
    span_length: int = 1
    selection: Selection = Selection()
    candidates_per_member: int = 0
    expansion_budget: int = 2
    room_per_token: int = 4
    first_pass_tokens: int = 1
    respell_chunk: int = 4
    respell_slots: int = 0
    stop_at_eos: bool = True
    record_features: bool = True

    def __post_init__(self):
        for name in (
            "span_length",
            "expansion_budget",
            "room_per_token",
            "first_pass_tokens",
            "respell_chunk",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.respell_slots < 0:
            raise ValueError(
                f"respell_slots must be >= 0 (0: whole-batch chunks), got {self.respell_slots}"
            )

    @property
    def num_spans(self) -> int:
        return -(-self.max_new_tokens // self.span_length)

    @property
    def uses_candidates(self) -> bool:
        """Selection from member top-k candidates (UniTE, or the certified shortcut): needs `[B, N,
        V]`."""
        return self.selection.mode == "topk" or self.candidates_per_member > 0


class PromptBatch(NamedTuple):
    """Each member's left-padded tokenisation of the same prompts: per member `[B, T_n]` int32."""

    input_ids: tuple[jax.Array, ...]
    attention_mask: tuple[jax.Array, ...]


@struct.dataclass
class SpanState:
    """What a span start changes: `weights [B, N]` current mixing weights, the weight_fn's carry and
    the per-span records `span_weights [B, S, N]`, `span_features` (leaves `[B, S, ...]`),
    `span_valid [B, S]`, `weight_fallback [B]`; `started` the last span index started (int32 [],
    −1 before the first), so a step redone after the caches grow does not start its span twice."""

    weights: jax.Array
    weight_carry: Any
    span_weights: jax.Array
    span_features: SpanFeatures | None
    span_valid: jax.Array
    weight_fallback: jax.Array
    started: jax.Array


@struct.dataclass
class DecodeState:
    """Loop carry. Per member: `hidden [B, H]` the final hidden state at its last ingested token
    (the next-token logits are computed from it at the top of each step, so no `[B, V]` array is
    carried or selected per row) and its KV cache; `union_ids [B, T_new]` (NO_TOKEN after a stop);
    `needs_room` (bool [N]) the members whose caches a step did not fit (the step was not taken;
    `grow` them and run on). The span start's `lax.cond` uses only `spans`, `hidden` and `done`, so
    the KV caches never pass through it."""

    step: jax.Array
    hidden: tuple[jax.Array, ...]
    caches: tuple[KVCache, ...]
    union_ids: jax.Array
    done: jax.Array
    stop_reason: jax.Array
    window_member: jax.Array
    spans: SpanState
    needs_room: jax.Array


class DecodeResult(NamedTuple):
    """Device-side result. union_ids [B, T_new]; lengths [B]; stop_reason [B]; span_weights [B, S,
    N]; span_features (leaves [B, S, ...]; None unless config.record_features); span_valid [B, S]
    spans that started before the row stopped; weight_carry: the weight_fn's final carry (e.g. an RL
    policy's log-probs); weight_fallback [B]: rows where the weight_fn returned invalid weights
    (replaced by uniform); ingested [B, N]: member tokens each member took in for the generated
    union tokens; window_member [B]: the member whose context window ('context_window') or compiled
    cache ('room') stopped the row, else −1."""

    union_ids: jax.Array
    lengths: jax.Array
    stop_reason: jax.Array
    span_weights: jax.Array
    span_features: SpanFeatures | None
    span_valid: jax.Array
    weight_carry: Any
    weight_fallback: jax.Array
    ingested: jax.Array
    window_member: jax.Array


def sanitize_weights(weights: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Normalise `[B, N]` weights; rows with NaN/inf, negatives or zero sum become uniform. →
    (weights, bad [B])."""
    bad = (
        ~jnp.all(jnp.isfinite(weights), -1) | jnp.any(weights < 0, -1) | (jnp.sum(weights, -1) <= 0)
    )
    weights = jnp.where(bad[:, None], 1.0, weights)
    return weights / weights.sum(-1, keepdims=True), bad


def top_candidates(probs: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
    """Each member's top-k `(probs, ids)` `[B, N, k]` by k argmax-and-mask passes: inside the decode
    loop XLA:CPU lowers `lax.top_k` to a full sort of `[B, N, V]` (benchmarks/RESULTS-ARCHIVE.md);
    large k (the UniTE k=V check) uses `lax.top_k`."""
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
    key: jax.Array,
    step: jax.Array,
    temperature: jax.Array,
    top_p: jax.Array,
) -> jax.Array:
    """One union id per row `[B]` from Σ_n weights[:, n] · P_n over the whole union, scaled from the
    unnormalised member distributions (no normalised copy): greedy takes `Alignment.mixed_argmax`
    (exact, no `[B, U]` array), sampling draws from the mixed union's logits."""
    scales = weights / dists.normalizer
    return select_from(
        lambda: alignment.mixed_argmax(dists.exp_logits, scales),
        lambda: union_logits(alignment.mix(dists.exp_logits, scales), alignment),
        key,
        step,
        temperature,
        top_p,
    )


def choose_union_tokens(
    dists: MemberDistributions,
    probs: jax.Array | None,
    weights: jax.Array,
    alignment: Alignment,
    key: jax.Array,
    step: jax.Array,
    temperature: jax.Array,
    top_p: jax.Array,
    config: DecodeConfig,
) -> jax.Array:
    """One union id per row `[B]` from the members' distributions mixed with `weights [B, N]`
    (sampling draws with key fold_in(key, step)); `probs`: `dists.probabilities()`, needed (only)
    when `config.uses_candidates`.

    'full' picks from the whole union (`choose_from_full_union`): exact, and on XLA:CPU cheaper than
    any top-k (benchmarks/RESULTS-ARCHIVE.md). With `candidates_per_member = k > 0`, greedy decoding
    first tries candidates from every member's top-k, scored exactly, and uses the best one when it
    is certified: its mixed probability beats the bound Σ_n w_n · min(D · p_n^(k), 1 − Σ_top-k p_n)
    on any token outside the candidates (D = most ids sharing one byte string); otherwise the full
    union decides. 'topk' (UniTE) picks only among the candidates.
    """

    def full_union():
        return choose_from_full_union(dists, weights, alignment, key, step, temperature, top_p)

    if not config.uses_candidates:
        return full_union()
    k = config.selection.top_k if config.selection.mode == "topk" else config.candidates_per_member
    top_probs, top_ids = top_candidates(probs, min(k, probs.shape[-1]))
    candidates = alignment.top_k_union(probs, top_ids, weights)
    usable = candidates.valid & alignment.union_complete[candidates.union_ids]
    scores = jnp.where(usable, candidates.scores, -jnp.inf)

    def pick_candidate(scores_or_logits):
        index = select_tokens(scores_or_logits, key, step, temperature, top_p)
        return jnp.take_along_axis(candidates.union_ids, index[:, None], axis=1)[:, 0]

    if config.selection.mode == "topk":
        return pick_candidate(jnp.where(usable, jnp.log(jnp.maximum(scores, 1e-38)), -jnp.inf))

    duplicates = alignment.union_member_ids.shape[-1]
    outside = jnp.minimum(
        duplicates * top_probs[..., -1], jnp.maximum(1.0 - top_probs.sum(-1), 0.0)
    )
    certified = scores.max(-1) > jnp.einsum("bn,bn->b", weights, outside)
    use_candidates = (temperature <= 0.0) & jnp.all(certified)
    return jax.lax.cond(use_candidates, lambda: pick_candidate(scores), full_union)


def append_block(
    member: Member, cache: KVCache, previous: jax.Array, block: jax.Array, counts: jax.Array
) -> tuple[jax.Array, KVCache]:
    """Append the first `counts[b]` tokens of `block [B, L]` to each row → (final hidden `[B, H]`,
    cache); rows appending nothing (done rows, specials a member lacks) keep `previous` and their
    cursor."""
    hidden, cache = member.append(cache, block, counts)
    return jnp.where((counts > 0)[:, None], hidden, previous), cache


def append_passes(
    member: Member,
    cache: KVCache,
    previous: jax.Array,
    tokens: jax.Array,
    counts: jax.Array,
    width: int,
    passes: jax.Array,
) -> tuple[jax.Array, KVCache]:
    """Append the first `counts[b]` of `tokens [B, L]` in `passes` (int32 [], may be 0) blocks of
    `width` tokens; rows that append nothing keep `previous` (hidden `[B, H]`)."""
    padded = jnp.pad(tokens, ((0, 0), (0, -tokens.shape[1] % width)))

    def body(carry):
        index, hidden, cache = carry
        block = jax.lax.dynamic_slice_in_dim(padded, index * width, width, axis=1)
        hidden, cache = append_block(
            member, cache, hidden, block, jnp.clip(counts - index * width, 0, width)
        )
        return index + 1, hidden, cache

    _, hidden, cache = jax.lax.while_loop(
        lambda c: c[0] < passes, body, (jnp.int32(0), previous, cache)
    )
    return hidden, cache


def append_chunked(
    member: Member,
    cache: KVCache,
    previous: jax.Array,
    tokens: jax.Array,
    counts: jax.Array,
    chunk: int,
) -> tuple[jax.Array, KVCache]:
    """Append the first `counts[b]` of `tokens [B, L]` in chunks of `chunk` tokens (as many chunks
    as the longest row needs, so the cost follows the actual re-spelling length, not L), except that
    a last chunk holding a single token goes in a one-token pass: never more passes than chunks, and
    on a CPU a one-token pass is a matrix-vector product, much cheaper than a wider one at batch 1
    (benchmarks/RESULTS-ARCHIVE.md). Rows that append nothing keep `previous` (hidden `[B, H]`)."""
    chunk = min(chunk, tokens.shape[1])
    wide, tail = chunked_passes(counts, chunk)
    hidden, cache = append_passes(member, cache, previous, tokens, counts, chunk, wide)
    done = wide * chunk
    last = jax.lax.dynamic_slice_in_dim(jnp.pad(tokens, ((0, 0), (0, 1))), done, 1, axis=1)
    return append_passes(member, cache, hidden, last, jnp.clip(counts - done, 0, 1), 1, tail)


def chunked_passes(counts: jax.Array, chunk: int) -> tuple[jax.Array, jax.Array]:
    """(wide, tail): the `chunk`-token passes `append_chunked` runs for `counts [B]` (until at most
    one token is left) and its one-token passes after them (0 or 1)."""
    wide = jnp.maximum((jnp.max(counts) + chunk - 2) // chunk, 0)
    return wide, jnp.max(jnp.clip(counts - wide * chunk, 0, 1))


def append_packed_passes(
    member: Member,
    cache: KVCache,
    previous: jax.Array,
    tokens: jax.Array,
    counts: jax.Array,
    slots_per_pass: int,
) -> tuple[jax.Array, KVCache]:
    """Append the first `counts[b]` of `tokens [B, L]` to each row in one-token passes of
    `slots_per_pass` tokens packed from any rows, row after row (a row's tokens go in order and may
    share a pass): as many passes as the total count needs (0 when it is 0), each a
    `slots_per_pass`-row pass over those rows' caches. Rows that append nothing keep `previous`
    (hidden `[B, H]`)."""
    batch, width = tokens.shape
    valid = (jnp.arange(width)[None, :] < counts[:, None]).reshape(-1)
    total = counts.sum()
    # row · width + offset, valid ones first
    entries = jnp.argsort(~valid, stable=True).astype(jnp.int32)
    entries = jnp.pad(entries, (0, -entries.shape[0] % slots_per_pass))
    flat_tokens = tokens.reshape(-1)

    def one_pass(carry):
        index, hidden, cache = carry
        start = index * slots_per_pass
        entry = jax.lax.dynamic_slice_in_dim(entries, start, slots_per_pass)
        ok = start + jnp.arange(slots_per_pass) < total
        rows, offsets = entry // width, entry % width
        out, cache = member.append_packed(cache, flat_tokens[entry], rows, offsets, ok)
        last = ok & (offsets == counts[rows] - 1)  # a row keeps its last token's hidden state
        return index + 1, hidden.at[jnp.where(last, rows, batch)].set(out, mode="drop"), cache

    passes = (total + slots_per_pass - 1) // slots_per_pass
    _, hidden, cache = jax.lax.while_loop(
        lambda c: c[0] < passes, one_pass, (jnp.int32(0), previous, cache)
    )
    return hidden, cache.advance(counts)


def plan_packing(
    counts: jax.Array, first: int, chunk: int, extra_slots: int
) -> tuple[jax.Array, jax.Array]:
    """How `feed_member` appends re-spellings of `counts [B]` tokens when passes may be packed from
    any rows → (packed bool `[]`, tail int32 `[B]`). Packed: each row's first `counts − tail` tokens
    go in passes of W = B + `extra_slots` tokens packed from any rows, then its last `tail` (≤
    `first`) in one whole-batch `first`-token pass; tails take the T mod W tokens (T = Σ counts)
    that would otherwise need one more packed pass, mostly empty, when a whole-batch pass costs less
    and they fit, and are 0 otherwise. Not packed: the whole-batch layout, a `first`-token pass,
    then `chunk`-token ones and a one-token tail (`chunked_passes`). The cheaper is picked, a pass
    taken to cost its row-tokens plus `extra_slots` (on a 2-core CPU a ~100M member's pass took ~17
    ms plus ~1.6 ms per row-token: a fixed cost of ~10 row-tokens, `extra_slots` = 8 at batch 16).
    """
    batch = counts.shape[0]
    wide, tail_passes = chunked_passes(jnp.maximum(counts - first, 0), chunk)
    whole_cost = (
        batch * (first + wide * chunk + tail_passes) + (1 + wide + tail_passes) * extra_slots
    )
    width = batch + extra_slots
    total = counts.sum()
    left = total % width
    room = jnp.minimum(counts, first)
    use_tail = (left > 0) & (left <= room.sum()) & (batch * first < width)
    packed_passes = total // width + ((left > 0) & ~use_tail).astype(jnp.int32)
    packed_cost = packed_passes * (width + extra_slots) + jnp.where(
        use_tail, batch * first + extra_slots, 0
    )
    packed = packed_cost < whole_cost
    return packed, jnp.where(
        packed & use_tail, jnp.clip(left - (jnp.cumsum(room) - room), 0, room), 0
    )


def feed_member(
    member: Member,
    cache: KVCache,
    previous: jax.Array,
    tokens: jax.Array,
    counts: jax.Array,
    first_pass_tokens: int,
    respell_chunk: int,
    respell_slots: int,
) -> tuple[jax.Array, KVCache]:
    """Append each row's re-spelling, the first `counts [B]` of `tokens [B, L]`, to one member: up
    to `first_pass_tokens` of every row in one pass, then the rest of longer re-spellings in chunks
    of `respell_chunk` over the whole batch (`append_chunked`, loops that run zero times when no row
    needs more); or, when `respell_slots` = S > 0 and `plan_packing` says so, the tokens in
    one-token passes of B + S packed from any rows (`append_packed_passes`), except that the few
    left past the last full one may go, as some rows' last tokens, in a whole-batch pass after them:
    with distinct prompts a few rows re-spell in several tokens, and one pass a little wider than
    the batch then takes them all. Each layout is a loop that runs zero times when unused: no
    `lax.cond`, through which XLA:CPU copies a KV cache on every step. Rows ingesting nothing keep
    `previous` (hidden `[B, H]`) and their cursor. → (hidden, cache)."""
    first = min(first_pass_tokens, tokens.shape[1])
    chunk = max(min(respell_chunk, tokens.shape[1] - first), 1)
    if respell_slots > 0:
        packed, tail = plan_packing(counts, first, chunk, respell_slots)
        head = jnp.where(packed, counts - tail, 0)
        hidden, cache = append_packed_passes(
            member, cache, previous, tokens, head, tokens.shape[0] + respell_slots
        )
        offsets = jnp.minimum(head[:, None] + jnp.arange(first)[None, :], tokens.shape[1] - 1)
        hidden, cache = append_passes(
            member,
            cache,
            hidden,
            jnp.take_along_axis(tokens, offsets, axis=1),
            jnp.where(packed, tail, jnp.minimum(counts, first)),
            first,
            jnp.where(packed, jnp.any(tail > 0), True).astype(jnp.int32),
        )
        counts = jnp.where(packed, 0, counts)
    else:
        hidden, cache = append_block(
            member, cache, previous, tokens[:, :first], jnp.minimum(counts, first)
        )
    if tokens.shape[1] > first:
        hidden, cache = append_chunked(
            member, cache, hidden, tokens[:, first:], jnp.maximum(counts - first, 0), chunk
        )
    return hidden, cache


def feed_members(
    members: Sequence[Member],
    hidden,
    caches,
    tokens: jax.Array,
    counts: jax.Array,
    first_pass_tokens: int,
    respell_chunk: int,
    respell_slots: int = 0,
):
    """`feed_member` for every member: `tokens [B, N, L]`, `counts [B, N]` → (hidden per member `[B,
    H]`, caches)."""
    fed = [
        feed_member(
            member,
            caches[index],
            hidden[index],
            tokens[:, index],
            counts[:, index],
            first_pass_tokens,
            respell_chunk,
            respell_slots,
        )
        for index, member in enumerate(members)
    ]
    return tuple(h for h, _ in fed), tuple(c for _, c in fed)


def prompt_nll(member: Member, input_ids: jax.Array, attention_mask: jax.Array) -> jax.Array:
    """Mean negative log-likelihood `[B]` of each row's prompt tokens after its first."""
    logits = member.logits(input_ids, attention_mask)[:, :-1]
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    token_log_probs = jnp.take_along_axis(log_probs, input_ids[:, 1:, None], axis=-1)[..., 0]
    scored = (attention_mask[:, 1:] * attention_mask[:, :-1]).astype(jnp.float32)
    return -(token_log_probs * scored).sum(-1) / jnp.maximum(scored.sum(-1), 1.0)


@struct.dataclass
class DecodeContext:
    """What stays fixed during one decode: the members, the alignment, the weight_fn, the sampling
    key, `temperature` and `top_p` (float32 []), each member's prompt summary `[B, H_n]` and prompt
    NLL `[B, N]`, the static config, and `bounded_room`: True where the caches cannot grow (the
    last compiled caches of `decode`), so a row they cannot hold stops ('room')."""

    members: tuple[Member, ...]
    alignment: Alignment
    weight_fn: Any
    key: jax.Array
    temperature: jax.Array
    top_p: jax.Array
    summaries: tuple[jax.Array, ...]
    prompt_nll: jax.Array
    config: DecodeConfig = struct.field(pytree_node=False)
    bounded_room: bool = struct.field(pytree_node=False, default=False)

    def features(
        self, dists: MemberDistributions, hidden, span_index, previous_weights
    ) -> SpanFeatures:
        needs = getattr(self.weight_fn, "optional_features", ())
        return span_features(
            dists,
            hidden,
            self.summaries,
            span_index,
            previous_weights,
            self.prompt_nll,
            self.alignment,
            "js_divergence" in needs,
        )


def room_ladder(
    members: Sequence[Member],
    alignment: Alignment,
    prompts: PromptBatch,
    config: DecodeConfig,
    room_per_token: int | None = None,
) -> list[tuple[int, ...]]:
    """Cache lengths per member for each growth of a decode, smallest first: the prompt's slots plus
    `expansion_budget` slots per union token, doubled at each rung up to what the member can ever
    need (its longest re-spelling L_n per union token, or its context window), or to
    `room_per_token` slots per union token when given (the in-graph `decode`). Without that bound
    the last rung never runs out of room."""
    check_members(members, alignment)  # static shapes: checked while tracing, free at run time
    spelling_lengths = alignment.vocab.union_to_member_len.max(axis=1)
    firsts, caps = [], []
    for index, (member, ids) in enumerate(zip(members, prompts.input_ids)):
        per_token = max(int(spelling_lengths[index]), 1)
        if room_per_token is not None:
            per_token = min(per_token, room_per_token)
        cap = min(config.max_new_tokens * per_token, member.config.max_position_embeddings)
        firsts.append(min(config.max_new_tokens * config.expansion_budget, cap))
        caps.append(cap)
    rungs = [tuple(firsts)]
    while rungs[-1] != tuple(caps):
        rungs.append(tuple(min(2 * room, cap) for room, cap in zip(rungs[-1], caps)))
    return [
        tuple(ids.shape[1] + room for ids, room in zip(prompts.input_ids, rung)) for rung in rungs
    ]


def prefill(
    context: DecodeContext, prompts: PromptBatch, lengths: Sequence[int]
) -> tuple[tuple[jax.Array, ...], jax.Array, DecodeState]:
    """Prefill every member into caches of `lengths` slots → (prompt summaries, prompt NLL, the
    loop's first state): the context's prompt records (`with_prompt`), and no copy of the members.
    """
    members, config = context.members, context.config
    batch, num_members = prompts.input_ids[0].shape[0], len(members)
    filled = [
        m.prefill(ids, mask, length) for m, ids, mask, length in zip(members, *prompts, lengths)
    ]
    nll = jnp.zeros((batch, num_members), jnp.float32)
    if "prompt_nll" in getattr(context.weight_fn, "optional_features", ()):
        nll = jnp.stack(
            [prompt_nll(m, ids, mask) for m, ids, mask in zip(members, *prompts)], axis=1
        )
    context = context.replace(summaries=tuple(s for _, s, _ in filled), prompt_nll=nll)
    hidden = tuple(out.hidden for out, _, _ in filled)
    uniform = jnp.full((batch, num_members), 1.0 / num_members, jnp.float32)
    records = None
    if config.record_features:
        dists = member_distributions([out.logits for out, _, _ in filled], context.alignment)
        template = context.features(dists, hidden, jnp.int32(0), uniform)
        records = jax.tree.map(
            lambda x: jnp.zeros((batch, config.num_spans) + x.shape[1:], x.dtype), template
        )
    spans = SpanState(
        weights=uniform,
        weight_carry=context.weight_fn.init_carry(batch, config.num_spans),
        span_weights=jnp.zeros((batch, config.num_spans, num_members), jnp.float32),
        span_features=records,
        span_valid=jnp.zeros((batch, config.num_spans), bool),
        weight_fallback=jnp.zeros((batch,), bool),
        started=jnp.int32(-1),
    )
    state = DecodeState(
        step=jnp.zeros((), jnp.int32),
        hidden=hidden,
        caches=tuple(c for _, _, c in filled),
        union_ids=jnp.full((batch, config.max_new_tokens), NO_TOKEN, jnp.int32),
        done=jnp.zeros((batch,), bool),
        stop_reason=jnp.zeros((batch,), jnp.int32),
        window_member=jnp.full((batch,), -1, jnp.int32),
        spans=spans,
        needs_room=jnp.zeros((num_members,), bool),
    )
    return context.summaries, context.prompt_nll, state


def with_prompt(
    context: DecodeContext, prompts: PromptBatch, lengths: Sequence[int], prefill_fn=None
) -> tuple[DecodeContext, DecodeState]:
    """`prefill_fn` (default `prefill`) → (context with the prompt records, first state)."""
    summaries, nll, state = (prefill_fn or prefill)(context, prompts, lengths)
    return context.replace(summaries=summaries, prompt_nll=nll), state


def start_span(context: DecodeContext, s: DecodeState, dists: MemberDistributions) -> SpanState:
    """The span starting at this step: the weight_fn's weights for it and the span's records."""
    span = s.step // context.config.span_length
    spans = s.spans
    features = context.features(dists, s.hidden, span, spans.weights)
    weights, weight_carry = context.weight_fn(features, spans.weight_carry)
    weights, bad = sanitize_weights(weights)
    live = ~s.done
    return spans.replace(
        weights=weights,
        weight_carry=weight_carry,
        span_features=None
        if spans.span_features is None
        else jax.tree.map(lambda rec, x: rec.at[:, span].set(x), spans.span_features, features),
        span_weights=spans.span_weights.at[:, span].set(weights),
        span_valid=spans.span_valid.at[:, span].set(live),
        weight_fallback=spans.weight_fallback | (live & bad),
        started=span,
    )


def fit_rows(
    context: DecodeContext, caches: Sequence[KVCache], counts: jax.Array, live: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array, jax.Array]:
    """Which `live [B]` rows can feed their re-spellings of `counts [B, N]` tokens → (live, counts
    (0 off live rows), stop [B] (STOP_CONTEXT_WINDOW, STOP_ROOM or RUNNING), stop_member [B] (the
    member that stopped the row, else −1), needs_room bool [N]). A row a member cannot take within
    its context window stops; one a member's cache cannot hold makes that member need room, or
    stops ('room') with `context.bounded_room`."""
    positions = jnp.stack([cache.next_position for cache in caches], axis=1) + counts  # [B, N]
    windows = jnp.asarray([m.config.max_position_embeddings for m in context.members], jnp.int32)
    past = positions > windows
    beyond = live & jnp.any(past, axis=1)
    live = live & ~beyond
    overflow = jnp.stack(  # [B, N]
        [live & (c.cursor + counts[:, n] > c.length) for n, c in enumerate(caches)], axis=1
    )
    out_of_room = jnp.any(overflow, axis=1) & context.bounded_room
    needs_room = jnp.any(overflow, axis=0) & (not context.bounded_room)
    live = live & ~out_of_room & ~jnp.any(needs_room)
    stop = jnp.select([beyond, out_of_room], [STOP_CONTEXT_WINDOW, STOP_ROOM], RUNNING)
    stop_member = jnp.select(
        [beyond, out_of_room], [first_argmax(past), first_argmax(overflow)], -1
    )
    return live, jnp.where(live[:, None], counts, 0), stop, stop_member, needs_room


def step(context: DecodeContext, s: DecodeState) -> DecodeState:
    """One union token per live row: mix the members' next-token distributions, choose, re-spell the
    choice into each member's tokens and feed them. A row a member cannot take the re-spelling into
    within its context window stops ('context_window'). When some re-spelling does not fit a
    member's cache the step is not taken (its span start is kept) and `needs_room` names the members
    to grow; with `context.bounded_room` that row stops instead ('room')."""
    members, alignment, config = context.members, context.alignment, context.config
    dists = member_distributions(
        [m.next_token_logits(h) for m, h in zip(members, s.hidden)], alignment
    )
    # only selection from top-k candidates needs [B, N, V]
    probs = dists.probabilities() if config.uses_candidates else None
    span = s.step // config.span_length
    spans = jax.lax.cond(
        span > s.spans.started, lambda: start_span(context, s, dists), lambda: s.spans
    )
    # NaN/inf (or all −inf) logits in some member
    nonfinite = ~s.done & ~usable_rows(dists.normalizer)
    chosen = choose_union_tokens(
        dists,
        probs,
        spans.weights,
        alignment,
        context.key,
        s.step,
        context.temperature,
        context.top_p,
        config,
    )
    tokens, counts = alignment.retokenize(jnp.maximum(chosen, 0))  # [B, N, L], [B, N]
    live, counts, stop, stop_member, needs_room = fit_rows(
        context, s.caches, counts, ~s.done & ~nonfinite
    )
    fits = ~jnp.any(needs_room)
    hidden, caches = feed_members(
        members,
        s.hidden,
        s.caches,
        tokens,
        counts,
        config.first_pass_tokens,
        config.respell_chunk,
        config.respell_slots,
    )
    is_eos = live & (chosen == alignment.eos_union_id) & config.stop_at_eos
    stopped = fits & (is_eos | nonfinite | (stop != RUNNING))
    return s.replace(
        step=s.step + fits.astype(jnp.int32),
        hidden=hidden,
        caches=caches,
        spans=spans,
        union_ids=s.union_ids.at[:, s.step].set(jnp.where(live, chosen, NO_TOKEN)),
        done=s.done | stopped,
        stop_reason=jnp.select(
            [is_eos, fits & nonfinite, fits & (stop != RUNNING)],
            [STOP_EOS, STOP_NONFINITE, stop],
            s.stop_reason,
        ),
        window_member=jnp.where(fits & (stop_member >= 0), stop_member, s.window_member),
        needs_room=needs_room,
    )


def run(context: DecodeContext, state: DecodeState) -> DecodeState:
    """Steps until every row stops, `max_new_tokens` are made or some member needs more room."""

    def keep_going(s: DecodeState):
        return (s.step < context.config.max_new_tokens) & ~jnp.all(s.done) & ~jnp.any(s.needs_room)

    return jax.lax.while_loop(keep_going, lambda s: step(context, s), state)


def grow(state: DecodeState, lengths: Sequence[int]) -> DecodeState:
    """The state with member n's cache grown to `lengths[n]` slots (the new ones empty); room needs
    cleared, so `run` redoes the step that did not fit (same state, same key: the same choice)."""
    caches = tuple(
        c if c.length == length else c.grow(length) for c, length in zip(state.caches, lengths)
    )
    return state.replace(caches=caches, needs_room=jnp.zeros_like(state.needs_room))


def finish(state: DecodeState, prompts: PromptBatch) -> DecodeResult:
    """The loop's final state → DecodeResult."""
    lengths = jnp.sum(state.union_ids != NO_TOKEN, axis=1)
    stop_reason = jnp.where(state.stop_reason == RUNNING, STOP_LENGTH, state.stop_reason)
    ingested = jnp.stack(
        [
            cache.next_position - mask.sum(-1)
            for cache, mask in zip(state.caches, prompts.attention_mask)
        ],
        axis=1,
    )
    spans = state.spans
    return DecodeResult(
        state.union_ids,
        lengths,
        stop_reason,
        spans.span_weights,
        spans.span_features,
        spans.span_valid,
        spans.weight_carry,
        spans.weight_fallback,
        ingested,
        state.window_member,
    )


def new_context(members, alignment, weight_fn, key, temperature, top_p, config) -> DecodeContext:
    """A DecodeContext before prefill (prompt records empty)."""
    return DecodeContext(
        tuple(members),
        alignment,
        weight_fn,
        key,
        temperature,
        top_p,
        (),
        jnp.zeros((0,), jnp.float32),
        config,
    )


def decode(
    members: Sequence[Member],
    alignment: Alignment,
    prompts: PromptBatch,
    weight_fn,
    key: jax.Array,
    temperature: jax.Array,
    top_p: jax.Array,
    config: DecodeConfig,
) -> DecodeResult:
    """Generate up to `config.max_new_tokens` union tokens for a batch; pure and jittable.

    One program holds all its buffers, so its peak memory is that of the largest caches it may need:
    the last rung of `room_ladder` bounded by `config.room_per_token` slots per union token. The
    loop runs with the first rung's caches (less attention per step) while they suffice, then with
    the last (`compiled_rungs`), where a row a member's cache cannot hold stops ('room').
    `decode_growing` grows from the host instead, only what is needed, and never stops a row so."""
    ladder = room_ladder(members, alignment, prompts, config, config.room_per_token)
    rungs = compiled_rungs(ladder)
    context, state = with_prompt(
        new_context(members, alignment, weight_fn, key, temperature, top_p, config),
        prompts,
        rungs[0],
    )
    for lengths in rungs[1:]:
        state = grow(run(context, state), lengths)
    return finish(run(context.replace(bounded_room=True), state), prompts)


def compiled_rungs(ladder: Sequence[tuple[int, ...]]) -> list[tuple[int, ...]]:
    """The cache lengths `decode` compiles a loop for: the ladder's first and last rung, or only the
    last where the first saves no member 64 slots and a third of its attention (each loop costs
    compile time)."""
    first, last = ladder[0], ladder[-1]
    if all(full - start < max(64, full / 3) for start, full in zip(first, last)):
        return [last]
    return [first, last]


# JAX takes compile options only on a top-level jit: inside your own jit, call `decode`.
decode_jit = jax.jit(decode, static_argnames=("config",), compiler_options=decode_loop_options())
prefill_jit = jax.jit(prefill, static_argnames=("lengths",), compiler_options=decode_loop_options())
run_jit = jax.jit(run, compiler_options=decode_loop_options())


def decode_growing(
    members: Sequence[Member],
    alignment: Alignment,
    prompts: PromptBatch,
    weight_fn,
    key: jax.Array,
    temperature: jax.Array,
    top_p: jax.Array,
    config: DecodeConfig,
) -> DecodeResult:
    """`decode` driven from the host: the loop runs with the first rung's caches, and when it stops
    because members need room, only those members' caches double (to their rung cap), and it goes
    on. Each new set of cache lengths compiles the loop once more (at most log2 of a member's growth
    times); memory follows what the generation uses. Same result as `decode_jit`."""
    ladder = room_ladder(members, alignment, prompts, config)
    context, state = with_prompt(
        new_context(members, alignment, weight_fn, key, temperature, top_p, config),
        prompts,
        ladder[0],
        lambda *args: prefill_jit(*args[:2], lengths=args[2]),
    )
    lengths = list(ladder[0])
    while True:
        state = run_jit(context, state)
        needs_room = np.flatnonzero(np.asarray(state.needs_room))
        if not len(needs_room):
            return finish(state, prompts)
        if any(lengths[n] == ladder[-1][n] for n in needs_room):
            raise RuntimeError(
                f"members {needs_room.tolist()} need more than their largest cache {lengths}"
            )
        for n in needs_room:
            prompt_slots = prompts.input_ids[n].shape[1]
            lengths[n] = min(prompt_slots + 2 * (lengths[n] - prompt_slots), ladder[-1][n])
        state = grow(state, lengths)


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
    strings, else `prompts[n]` for member n (e.g. `models.prompts.member_prompts`, each question
    in each member's own chat template)."""
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
) -> PromptBatch:
    """Every member's own tokenisation of the prompts, left-padded to its length bucket. `prompts`:
    B strings for every member, or one list of B strings per member (`prompts_per_member`)."""
    own = prompts_per_member(prompts, len(members))
    token_lists = [encode_prompts(m.tokenizer, p) for m, p in zip(members, own)]
    return batch_of_token_lists(members, token_lists, max_new_tokens)


def batch_of_token_lists(
    members: Sequence[Member], token_lists: Sequence[Sequence[list[int]]], max_new_tokens: int
) -> PromptBatch:
    """`token_lists[n][b]`: member n's prompt ids of row b → each member's left-padded `[B, T_n]`
    ids and mask; ValueError when a prompt plus `max_new_tokens` exceeds a member's context."""
    input_ids, masks = [], []
    for member, lists in zip(members, token_lists):
        check_context(
            max(map(len, lists)),
            max_new_tokens,
            member.config.max_position_embeddings,
            member.name or member.config.model_type,
        )
        ids, mask = left_pad(lists, pad_id_of(member.tokenizer))
        input_ids.append(jnp.asarray(ids))
        masks.append(jnp.asarray(mask))
    return PromptBatch(tuple(input_ids), tuple(masks))


def check_members(members: Sequence[Member], alignment: Alignment) -> None:
    """Raise when the alignment was not built for these members' vocabularies."""
    if len(members) != alignment.num_members:
        raise ValueError(
            f"alignment has {alignment.num_members} members but {len(members)} members were given"
        )
    for index, member in enumerate(members):
        if member.config.vocab_size != alignment.vocab_sizes[index]:
            raise ValueError(
                f"member {index} ({member.name}) has a {member.config.vocab_size}-row embedding "
                f"but the alignment was built for {alignment.vocab_sizes[index]}: rebuild it "
                "with vocab_sizes from the members"
            )


def default_first_pass_tokens(batch_rows: int) -> int:
    """`first_pass_tokens` for a decode of `batch_rows` rows on this backend: 4 on a GPU at batch 1,
    where one 4-wide pass costs about what a 1-wide one does, so whole re-spellings in one pass skip
    the extra pass; else 1, since a 4-wide first pass was slower on that GPU at batch 16 and on a
    2-core CPU (benchmarks/RESULTS-ARCHIVE.md). Measured on no TPU: 1 there."""
    return 4 if batch_rows == 1 and jax.default_backend() == "gpu" else 1


def default_respell_slots(batch_rows: int, members: Sequence[Member]) -> int:
    """`respell_slots` for a decode of `batch_rows` rows: on a CPU, half the batch (at least 1) when
    some member has at least 50M parameters, whose passes cost about their row-tokens
    (benchmarks/RESULTS-ARCHIVE.md, random ~100M members); else 0 (tiny members on a CPU, where
    packing was slower). Measured on no GPU or TPU: 0 there."""
    large = max(member.num_params for member in members) >= 50_000_000
    return max(batch_rows // 2, 1) if jax.default_backend() == "cpu" and large else 0


def generate(
    members: Sequence[Member],
    alignment: Alignment,
    prompts: Sequence[str] | Sequence[Sequence[str]],
    strategy: Any = "uniform",
    max_new_tokens: int = 64,
    span_length: int = 1,
    seed: int = 0,
    temperature: float = 0.0,
    top_p: float = 1.0,
    weights: Sequence[float] | None = None,
    threshold: float = 0.5,
    primary: int = 0,
    top_k: int = 4,
    packllm_temperature: float = 1.0,
    candidates_per_member: int = 0,
    expansion_budget: int = 2,
    first_pass_tokens: int | None = None,
    respell_chunk: int = 4,
    respell_slots: int | None = None,
    record_features: bool = True,
    stop_at_eos: bool = True,
) -> EnsembleOutput:
    """Ensemble-generate continuations of `prompts` (B strings, or one list of B per member).

    strategy: "uniform", "fixed" (with `weights`), "single" (member `primary` alone), "threshold"
    (GaC gating on member `primary` with `threshold`), "topk" (UniTE with `top_k`), "packllm", or a
    weight_fn object (see `rlae_jax.engine.strategies`). The weight_fn is called every `span_length`
    generated tokens. A row ends at EOS, after `max_new_tokens`, or when a member's context window
    is full (stop reason 'context_window', with a warning naming the member); caches grow as needed
    (`decode_growing`). `record_features=False` skips keeping per-span features (faster);
    `expansion_budget` (initial cache room), `first_pass_tokens` (None:
    `default_first_pass_tokens`), `respell_chunk`, `respell_slots` (None: `default_respell_slots`)
    and `stop_at_eos` as in `DecodeConfig`.
    """
    members = list(members)
    weight_fn, selection = resolve_strategy(
        strategy, len(members), weights, threshold, primary, top_k, packllm_temperature
    )
    batch = tokenize_for_members(members, prompts, max_new_tokens)
    rows = batch.input_ids[0].shape[0]
    config = DecodeConfig(
        max_new_tokens=max_new_tokens,
        span_length=span_length,
        selection=selection,
        candidates_per_member=candidates_per_member,
        expansion_budget=expansion_budget,
        first_pass_tokens=(
            default_first_pass_tokens(rows) if first_pass_tokens is None else first_pass_tokens
        ),
        respell_chunk=respell_chunk,
        respell_slots=(
            default_respell_slots(rows, members) if respell_slots is None else respell_slots
        ),
        record_features=record_features,
        stop_at_eos=stop_at_eos,
    )
    result = decode_growing(
        members,
        alignment,
        batch,
        weight_fn,
        jax.random.key(seed),
        jnp.float32(temperature),
        jnp.float32(top_p),
        config=config,
    )
    return to_host(result, alignment, config, [m.name or m.config.model_type for m in members])


def to_host(
    result: DecodeResult,
    alignment: Alignment,
    config: DecodeConfig,
    member_names: Sequence[str] | None = None,
) -> EnsembleOutput:
    """Decode union ids to text and gather per-row records on the host (warnings name the rows that
    stopped early, and `member_names` the members whose context window or cache stopped them)."""
    union_ids = np.asarray(result.union_ids)
    lengths = np.asarray(result.lengths)
    span_valid = np.asarray(result.span_valid)
    span_weights = np.asarray(result.span_weights)
    rows = [union_ids[b, : lengths[b]].tolist() for b in range(len(lengths))]
    stop_reason = np.asarray(result.stop_reason)
    stopped_nonfinite = np.flatnonzero(stop_reason == STOP_NONFINITE)
    window_member = np.asarray(result.window_member)
    for member in np.unique(window_member[window_member >= 0]):
        name = member_names[member] if member_names else f"member {member}"
        for reason, why in (
            (STOP_CONTEXT_WINDOW, "within its context window (max_position_embeddings)"),
            (
                STOP_ROOM,
                f"within the caches the in-graph decode compiled (DecodeConfig.room_per_token="
                f"{config.room_per_token}: raise it, or decode with `decode_growing`/`generate`)",
            ),
        ):
            rows_stopped = np.flatnonzero((window_member == member) & (stop_reason == reason))
            if len(rows_stopped):
                warnings.warn(
                    f"rows {rows_stopped.tolist()} stopped early (stop reason "
                    f"'{STOP_REASONS[reason]}'): member {name!r} cannot take the next token {why}"
                )
    if len(stopped_nonfinite):
        warnings.warn(
            f"rows {stopped_nonfinite.tolist()} stopped early: a member produced NaN/inf logits "
            "(or all −inf; stop reason 'nonfinite_logits'; bf16 overflow or broken weights?)"
        )
    if np.asarray(result.weight_fallback).any():
        rows_fallen_back = np.flatnonzero(np.asarray(result.weight_fallback)).tolist()
        warnings.warn(
            f"the weight_fn returned NaN/negative/all-zero weights for rows {rows_fallen_back}; "
            "those spans used uniform weights"
        )
    return EnsembleOutput(
        texts=[alignment.decode(ids) for ids in rows],
        union_ids=rows,
        stop_reasons=[STOP_REASONS[int(r)] for r in stop_reason],
        span_weights=[span_weights[b, span_valid[b]] for b in range(len(rows))],
        result=result,
    )
