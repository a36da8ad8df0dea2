"""The ensemble decode loop: prefill every member, then a `lax.while_loop` of `step`s, each mixing
the members' next-token distributions, choosing one union token per row and feeding it back to
every member in its own tokens. `decode` is pure and jittable (the RL train step calls it);
`decode_jit` is it compiled with the decode-loop options; `decode_growing` runs the same loop from
the host and grows a member's KV cache when its re-spellings need more room."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from rlae_jax.align import Alignment
from rlae_jax.engine.features import (
    SpanFeatures,
    member_distributions,
    prompt_nll,
    span_features,
    usable_rows,
)
from rlae_jax.engine.feed import feed_members, fit_rows
from rlae_jax.engine.mixing import choose_union_tokens, sanitize_weights
from rlae_jax.engine.room import compiled_rungs, room_ladder
from rlae_jax.engine.strategies import check_weight_fn
from rlae_jax.engine.state import (
    NO_TOKEN,
    RUNNING,
    STOP_EOS,
    STOP_LENGTH,
    STOP_NONFINITE,
    DecodeConfig,
    DecodeResult,
    DecodeState,
    PromptBatch,
    Sampling,
    SpanState,
)
from rlae_jax.models.member import Member
from rlae_jax.runtime.compile_options import decode_loop_options

if TYPE_CHECKING:  # rlae_jax.ensemble imports the engine
    from rlae_jax.ensemble import Ensemble


@struct.dataclass
class DecodeContext:
    """What stays fixed during one decode: the members, the alignment, the weight_fn, the sampling
    settings, each member's prompt summary `[B, H_n]` and prompt NLL `[B, N]`, the static config,
    and `bounded_room`: True where the caches cannot grow (the last caches `decode` compiled), so a
    row they cannot hold stops ('room')."""

    members: tuple[Member, ...]
    alignment: Alignment
    weight_fn: Any
    sampling: Sampling
    summaries: tuple[jax.Array, ...] = ()
    prompt_nll: jax.Array | None = None
    config: DecodeConfig = struct.field(pytree_node=False, default=DecodeConfig())
    bounded_room: bool = struct.field(pytree_node=False, default=False)

    @classmethod
    def start(
        cls, ensemble: Ensemble, weight_fn, sampling: Sampling, config: DecodeConfig
    ) -> DecodeContext:
        """The context of a decode of `ensemble` (an `rlae_jax.Ensemble`: its members and alignment)
        before its prefill, which adds the prompt summaries and NLL."""
        return cls(tuple(ensemble.members), ensemble.alignment, weight_fn, sampling, config=config)

    def features(self, dists, hidden, span_index, previous_weights) -> SpanFeatures:
        return span_features(
            dists,
            hidden,
            self.summaries,
            span_index,
            previous_weights,
            self.prompt_nll,
            self.alignment,
            "js_divergence" in self.weight_fn.optional_features,
        )


def first_spans(context: DecodeContext, logits, hidden, batch: int) -> SpanState:
    """The span records before the first span: uniform weights, empty `[B, S, ...]` records."""
    config, num_members = context.config, len(context.members)
    uniform = jnp.full((batch, num_members), 1.0 / num_members, jnp.float32)
    records = None
    if config.record_features:
        shapes = jax.eval_shape(
            lambda: context.features(
                member_distributions(logits, context.alignment), hidden, jnp.int32(0), uniform
            )
        )
        records = jax.tree.map(
            lambda x: jnp.zeros((batch, config.num_spans) + x.shape[1:], x.dtype), shapes
        )
    return SpanState(
        weights=uniform,
        weight_carry=context.weight_fn.init_carry(batch, config.num_spans),
        span_weights=jnp.zeros((batch, config.num_spans, num_members), jnp.float32),
        span_features=records,
        span_valid=jnp.zeros((batch, config.num_spans), bool),
        weight_fallback=jnp.zeros((batch,), bool),
        started=jnp.int32(-1),
    )


def reads_prompt_nll(weight_fn) -> bool:
    return "prompt_nll" in weight_fn.optional_features


def prefill(
    context: DecodeContext,
    prompts: PromptBatch,
    lengths: Sequence[int],
    with_prompt_nll: bool | None = None,
):
    """Prefill every member into caches of `lengths` slots (from the prompts' shared prefix when
    they have one) → (context with the prompt summaries and NLL, the loop's first state). Each row
    is repeated `config.samples_per_prompt` times after the prefill. The prompt NLL comes from the
    prefill's own hidden states, computed when `with_prompt_nll` (default: when the weight_fn reads
    it), else zeros."""
    members, samples = context.members, context.config.samples_per_prompt
    if with_prompt_nll is None:
        with_prompt_nll = reads_prompt_nll(context.weight_fn)
    prefixes = prompts.prefix or (None,) * len(members)
    filled = [
        m.prefill(ids, mask, n, prefix)
        for m, ids, mask, n, prefix in zip(
            members, prompts.input_ids, prompts.attention_mask, lengths, prefixes
        )
    ]
    batch = prompts.input_ids[0].shape[0]
    nll = jnp.zeros((batch, len(members)), jnp.float32)
    if with_prompt_nll:
        parts = zip(members, filled, prompts.input_ids, prompts.attention_mask, prefixes)
        nll = jnp.stack([prompt_nll(m, f.hidden_states, *rest) for m, f, *rest in parts], 1)

    def repeat(x):  # each prompt's row, `samples` times
        return jnp.repeat(x, samples, axis=0)

    context = context.replace(
        summaries=tuple(repeat(f.summary) for f in filled), prompt_nll=repeat(nll)
    )
    hidden = tuple(repeat(f.step.hidden) for f in filled)
    logits = [repeat(f.step.logits) for f in filled]
    batch *= samples
    state = DecodeState(
        step=jnp.zeros((), jnp.int32),
        hidden=hidden,
        caches=tuple(f.cache.repeat_rows(samples) for f in filled),
        union_ids=jnp.full((batch, context.config.max_new_tokens), NO_TOKEN, jnp.int32),
        done=jnp.zeros((batch,), bool),
        stop_reason=jnp.zeros((batch,), jnp.int32),
        window_member=jnp.full((batch,), -1, jnp.int32),
        spans=first_spans(context, logits, hidden, batch),
        needs_room=jnp.zeros((len(members),), bool),
    )
    return context, state


def start_span(context: DecodeContext, s: DecodeState, dists) -> SpanState:
    """The span starting at this step: the weight_fn's weights for it and the span's records."""
    span = s.step // context.config.span_length
    spans = s.spans
    features = context.features(dists, s.hidden, span, spans.weights)
    weights, weight_carry = context.weight_fn(features, spans.weight_carry)
    weights, bad = sanitize_weights(weights)
    live = ~s.done
    records = spans.span_features
    if records is not None:
        records = jax.tree.map(lambda rec, x: rec.at[:, span].set(x), records, features)
    return spans.replace(
        weights=weights,
        weight_carry=weight_carry,
        span_features=records,
        span_weights=spans.span_weights.at[:, span].set(weights),
        span_valid=spans.span_valid.at[:, span].set(live),
        weight_fallback=spans.weight_fallback | (live & bad),
        started=span,
    )


def step(context: DecodeContext, s: DecodeState) -> DecodeState:
    """One union token per live row: mix the members' distributions, choose, re-spell the choice
    into each member's tokens and feed them. A row whose re-spelling a member cannot take within its
    context window stops ('context_window'). When a re-spelling does not fit a member's cache the
    step is not taken and `needs_room` names the members to grow (with `context.bounded_room` the
    row stops with 'room' instead)."""
    members, alignment, config = context.members, context.alignment, context.config
    logits = [m.next_token_logits(h) for m, h in zip(members, s.hidden)]
    dists = member_distributions(logits, alignment)
    span = s.step // config.span_length
    spans = jax.lax.cond(
        span > s.spans.started, lambda: start_span(context, s, dists), lambda: s.spans
    )
    nonfinite = ~s.done & ~usable_rows(dists.normalizer)  # NaN/inf (or all −inf) logits
    selection = context.weight_fn.selection
    chosen = choose_union_tokens(
        dists, spans.weights, alignment, context.sampling, s.step, selection, config
    )
    tokens, counts = alignment.retokenize(jnp.maximum(chosen, 0))  # [B, N, L], [B, N]
    live, counts, stop, stop_member, needs_room = fit_rows(
        members, s.caches, counts, ~s.done & ~nonfinite, context.bounded_room
    )
    hidden, caches = feed_members(members, s.hidden, s.caches, tokens, counts)
    fits = ~jnp.any(needs_room)
    is_eos = live & (chosen == alignment.eos_union_id) & config.stop_at_eos
    stopped = fits & (stop != RUNNING)
    return s.replace(
        step=s.step + fits.astype(jnp.int32),
        hidden=hidden,
        caches=caches,
        spans=spans,
        union_ids=s.union_ids.at[:, s.step].set(jnp.where(live, chosen, NO_TOKEN)),
        done=s.done | (fits & (is_eos | nonfinite)) | stopped,
        stop_reason=jnp.select(
            [is_eos, fits & nonfinite, stopped], [STOP_EOS, STOP_NONFINITE, stop], s.stop_reason
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
    """The state with member n's cache grown to `lengths[n]` slots (the new ones empty) and room
    needs cleared, so `run` redoes the step that did not fit (same state and key: same choice)."""
    caches = tuple(
        c if c.length == length else c.grow(length) for c, length in zip(state.caches, lengths)
    )
    return state.replace(caches=caches, needs_room=jnp.zeros_like(state.needs_room))


def finish(state: DecodeState, prompts: PromptBatch) -> DecodeResult:
    """The loop's final state → DecodeResult."""
    samples = state.done.shape[0] // prompts.input_ids[0].shape[0]
    ingested = [
        c.next_position - jnp.repeat(prompts.prompt_lengths(n), samples)
        for n, c in enumerate(state.caches)
    ]
    spans = state.spans
    return DecodeResult(
        union_ids=state.union_ids,
        lengths=jnp.sum(state.union_ids != NO_TOKEN, axis=1),
        stop_reason=jnp.where(state.stop_reason == RUNNING, STOP_LENGTH, state.stop_reason),
        span_weights=spans.span_weights,
        span_features=spans.span_features,
        span_valid=spans.span_valid,
        weight_carry=spans.weight_carry,
        weight_fallback=spans.weight_fallback,
        ingested=jnp.stack(ingested, axis=1),
        window_member=state.window_member,
    )


def decode(
    ensemble: Ensemble, prompts: PromptBatch, weight_fn, key, temperature, top_p, config
) -> DecodeResult:
    """Generate up to `config.max_new_tokens` union tokens for `prompts` (a PromptBatch) with the
    members of `ensemble` (an `rlae_jax.Ensemble`, a pytree: pass it into jit); pure and
    jittable. Its caches are bounded by `config.room_per_token` slots per union token: it runs with
    the first rung's caches while they suffice, then with the last (`compiled_rungs`), where a row
    a member's cache cannot hold stops ('room'); `decode_growing` grows instead."""
    check_weight_fn(weight_fn, "decode")
    ladder = room_ladder(ensemble, prompts, config, config.room_per_token)
    rungs = compiled_rungs(ladder)
    context = DecodeContext.start(ensemble, weight_fn, Sampling(key, temperature, top_p), config)
    context, state = prefill(context, prompts, rungs[0])
    for lengths in rungs[1:]:
        state = grow(run(context, state), lengths)
    return finish(run(context.replace(bounded_room=True), state), prompts)


# JAX takes compile options only on a top-level jit: inside your own jit, call `decode`.
decode_jit = jax.jit(decode, static_argnames=("config",), compiler_options=decode_loop_options())
prefill_jit = jax.jit(
    prefill,
    static_argnames=("lengths", "with_prompt_nll"),
    compiler_options=decode_loop_options(),
)
run_jit = jax.jit(run, compiler_options=decode_loop_options())


def decode_growing(
    ensemble: Ensemble, prompts: PromptBatch, weight_fn, key, temperature, top_p, config
) -> DecodeResult:
    """`decode` driven from the host: the loop runs with the first rung's caches and, when it stops
    because members need room, only those members' caches double (up to their rung cap) and it goes
    on. Each new set of cache lengths compiles the loop once more (at most log2 of a member's
    growth times); memory follows what the generation uses. Same result as `decode_jit`."""
    check_weight_fn(weight_fn, "decode_growing")
    ladder = room_ladder(ensemble, prompts, config)
    context = DecodeContext.start(ensemble, weight_fn, Sampling(key, temperature, top_p), config)
    context, state = prefill_jit(context, prompts, lengths=ladder[0])
    return run_growing(context, state, prompts, ladder)


def run_growing(context: DecodeContext, state: DecodeState, prompts: PromptBatch, ladder):
    """Run a prefilled `state` to the end from the host, doubling a member's cache (up to its last
    rung of `ladder`) whenever it needs room → DecodeResult."""
    lengths = [cache.length for cache in state.caches]
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
            slots = prompts.prompt_slots(n)
            lengths[n] = min(slots + 2 * (lengths[n] - slots), ladder[-1][n])
        state = grow(state, lengths)


def restart(
    context: DecodeContext,
    state: DecodeState,
    weight_fn,
    config: DecodeConfig,
) -> tuple[DecodeContext, DecodeState]:
    """A prefilled (context, state) made ready to decode with another `weight_fn` and `config` (same
    `max_new_tokens`): fresh span records. One prefill then serves every strategy evaluated on the
    same prompts (prefill with `with_prompt_nll=True` when one of them reads the prompt NLL)."""
    context = context.replace(weight_fn=weight_fn, config=config)
    logits = [m.next_token_logits(h) for m, h in zip(context.members, state.hidden)]
    batch = state.done.shape[0]
    return context, state.replace(spans=first_spans(context, logits, state.hidden, batch))


restart_jit = jax.jit(restart, static_argnames=("config",), compiler_options=decode_loop_options())
