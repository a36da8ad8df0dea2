"""The ensemble decode loop: prefill every member, then one `lax.while_loop` that mixes the members'
next-token distributions in the union vocabulary, picks one union token per row and feeds it back
to every member in its own tokens. `decode` is pure and jittable (the RL train step calls it);
`generate` is the host API around it."""
from __future__ import annotations

import dataclasses
import warnings
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from rlae_jax.align import Alignment
from rlae_jax.engine.features import SpanFeatures, span_features
from rlae_jax.engine.strategies import Selection, resolve_strategy
from rlae_jax.models.kv_cache import KVCache
from rlae_jax.models.member import Member, StepOutput
from rlae_jax.prompts import check_context, encode_prompts, left_pad, pad_id_of
from rlae_jax.sampling import select_tokens

RUNNING, STOP_EOS, STOP_LENGTH, STOP_CACHE_FULL, STOP_NONFINITE = 0, 1, 2, 3, 4
STOP_REASONS = {RUNNING: "running", STOP_EOS: "eos", STOP_LENGTH: "length", STOP_CACHE_FULL: "cache_full",
                STOP_NONFINITE: "nonfinite_logits"}
NO_TOKEN = -1  # union-id buffer padding after a row stops


@dataclasses.dataclass(frozen=True)
class DecodeConfig:
    """Static settings of one compiled decode. `expansion_budget`: cache slots reserved per generated
    union token in each member (a row whose member cache fills up stops with reason 'cache_full');
    `stop_at_eos=False` always runs max_new_tokens steps (benchmarks); `record_features` keeps every
    span's SpanFeatures in the result (RL needs them; without it features the weight_fn ignores are
    never computed)."""

    max_new_tokens: int = 64
    span_length: int = 1
    selection: Selection = Selection()
    candidates_per_member: int = 0
    expansion_budget: int = 4
    stop_at_eos: bool = True
    record_features: bool = True

    @property
    def num_spans(self) -> int:
        return -(-self.max_new_tokens // self.span_length)


class PromptBatch(NamedTuple):
    """Each member's own left-padded tokenisation of the same prompts: per member `[B, T_n]` int32."""

    input_ids: tuple[jax.Array, ...]
    attention_mask: tuple[jax.Array, ...]


@struct.dataclass
class DecodeState:
    """Loop carry. `outputs`/`caches` per member; `union_ids [B, T_new]` (NO_TOKEN after a stop);
    `weights [B, N]` current mixing weights; span records `[B, S, ...]`."""

    step: jax.Array
    outputs: tuple[StepOutput, ...]
    caches: tuple[KVCache, ...]
    union_ids: jax.Array
    done: jax.Array
    stop_reason: jax.Array
    weights: jax.Array
    weight_carry: Any
    span_weights: jax.Array
    span_features: SpanFeatures | None
    span_valid: jax.Array
    weight_fallback: jax.Array
    key: jax.Array


class DecodeResult(NamedTuple):
    """Device-side result. union_ids [B, T_new]; lengths [B]; stop_reason [B]; span_weights [B, S, N];
    span_features (leaves [B, S, ...]; None unless config.record_features); span_valid [B, S] spans that started before the row stopped;
    weight_carry: the weight_fn's final carry (e.g. an RL policy's log-probs); weight_fallback [B]:
    rows where the weight_fn returned invalid weights (replaced by uniform); ingested [B, N]: member
    tokens each member took in for the generated union tokens."""

    union_ids: jax.Array
    lengths: jax.Array
    stop_reason: jax.Array
    span_weights: jax.Array
    span_features: SpanFeatures | None
    span_valid: jax.Array
    weight_carry: Any
    weight_fallback: jax.Array
    ingested: jax.Array


def member_probabilities(outputs: Sequence[StepOutput], alignment: Alignment) -> jax.Array:
    """Each member's next-token distribution, zero-padded to the widest vocabulary: `[B, N, V]`."""
    width = alignment.member_valid.shape[1]
    probs = []
    for index, out in enumerate(outputs):
        vocab = out.logits.shape[-1]
        logits = jnp.where(alignment.member_valid[index, :vocab], out.logits, -jnp.inf)
        probs.append(jnp.pad(jax.nn.softmax(logits, axis=-1), ((0, 0), (0, width - vocab))))
    return jnp.stack(probs, axis=1)


def sanitize_weights(weights: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Normalise `[B, N]` weights; rows with NaN/inf, negatives or zero sum become uniform. → (weights, bad [B])."""
    bad = ~jnp.all(jnp.isfinite(weights), -1) | jnp.any(weights < 0, -1) | (jnp.sum(weights, -1) <= 0)
    weights = jnp.where(bad[:, None], 1.0, weights)
    return weights / weights.sum(-1, keepdims=True), bad


def top_candidates(probs: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
    """Each member's top-k `(probs, ids)` `[B, N, k]` by k argmax-and-mask passes: inside the decode
    loop XLA:CPU lowers `lax.top_k` to a full sort of `[B, N, V]` (benchmarks/RESULTS.md); large k
    (the UniTE k=V check) uses `lax.top_k`."""
    if k > 16:
        values, ids = jax.lax.top_k(probs, k)
        return values, ids.astype(jnp.int32)

    def pick(remaining, _):
        index = jnp.argmax(remaining, axis=-1)
        value = jnp.take_along_axis(remaining, index[..., None], axis=-1)[..., 0]
        remaining = jnp.where(jnp.arange(remaining.shape[-1]) == index[..., None], -1.0, remaining)
        return remaining, (value, index.astype(jnp.int32))

    _, (values, ids) = jax.lax.scan(pick, probs, None, length=k)
    return jnp.moveaxis(values, 0, -1), jnp.moveaxis(ids, 0, -1)


def full_union_logits(probs: jax.Array, weights: jax.Array, alignment: Alignment) -> jax.Array:
    """log of the mixed union distribution `[B, U]`; tokens some member cannot ingest get -inf."""
    mixed = alignment.mix(probs, weights)
    return jnp.where(alignment.union_complete & (mixed > 0), jnp.log(jnp.where(mixed > 0, mixed, 1.0)), -jnp.inf)


def choose_union_tokens(probs: jax.Array, weights: jax.Array, alignment: Alignment, key: jax.Array,
                        temperature: jax.Array, top_p: jax.Array, config: DecodeConfig) -> jax.Array:
    """One union id per row `[B]` from member probabilities `[B, N, V]` mixed with `weights [B, N]`.

    'full' mixes into the whole union `[B, U]` (one scatter-add) and picks from it: exact, and on
    XLA:CPU cheaper than any top-k (benchmarks/RESULTS.md). With `candidates_per_member = k > 0`,
    greedy decoding first tries candidates from every member's top-k, scored exactly, and uses the
    best one when it is certified: its mixed probability beats the bound
    Σ_n w_n · min(D · p_n^(k), 1 − Σ_top-k p_n) on any token outside the candidates (D = most ids
    sharing one byte string); otherwise the full union decides. 'topk' (UniTE) picks only among
    the candidates.
    """
    def full_union():
        return select_tokens(full_union_logits(probs, weights, alignment), key, temperature, top_p)

    if config.selection.mode == "full" and config.candidates_per_member == 0:
        return full_union()
    k = config.selection.top_k if config.selection.mode == "topk" else config.candidates_per_member
    top_probs, top_ids = top_candidates(probs, min(k, probs.shape[-1]))
    candidates = alignment.top_k_union(probs, top_ids, weights)
    usable = candidates.valid & alignment.union_complete[candidates.union_ids]
    scores = jnp.where(usable, candidates.scores, -jnp.inf)

    def pick_candidate(scores_or_logits):
        index = select_tokens(scores_or_logits, key, temperature, top_p)
        return jnp.take_along_axis(candidates.union_ids, index[:, None], axis=1)[:, 0]

    if config.selection.mode == "topk":
        return pick_candidate(jnp.where(usable, jnp.log(jnp.maximum(scores, 1e-38)), -jnp.inf))

    duplicates = alignment.union_member_ids.shape[-1]
    outside = jnp.minimum(duplicates * top_probs[..., -1], jnp.maximum(1.0 - top_probs.sum(-1), 0.0))
    certified = scores.max(-1) > jnp.einsum("bn,bn->b", weights, outside)
    use_candidates = (temperature <= 0.0) & jnp.all(certified)
    return jax.lax.cond(use_candidates, lambda: pick_candidate(scores), full_union)


MULTI_STEP_CHUNK = 4  # member tokens appended per multi-token step; longer re-spellings loop over chunks


def multi_step_chunked(member: Member, cache: KVCache, previous: StepOutput, tokens: jax.Array, counts: jax.Array
                       ) -> tuple[StepOutput, KVCache]:
    """Append the first `counts[b]` of `tokens [B, L]` in chunks of MULTI_STEP_CHUNK (as many chunks as
    the longest row needs, so the cost follows the actual re-spelling length, not L). Rows that
    append nothing keep `previous`."""
    length = tokens.shape[1]
    chunk = min(MULTI_STEP_CHUNK, length)
    padded = jnp.pad(tokens, ((0, 0), (0, -length % chunk)))
    num_chunks = (jnp.max(counts) + chunk - 1) // chunk

    def body(carry):
        index, out, cache = carry
        block = jax.lax.dynamic_slice_in_dim(padded, index * chunk, chunk, axis=1)
        block_counts = jnp.clip(counts - index * chunk, 0, chunk)
        new_out, cache = member.multi_step(cache, block, block_counts)
        fed = (block_counts > 0)[:, None]
        return index + 1, jax.tree.map(lambda new, old: jnp.where(fed, new, old), new_out, out), cache

    _, out, cache = jax.lax.while_loop(lambda c: c[0] < num_chunks, body, (jnp.int32(0), previous, cache))
    return out, cache


def feed_members(members: Sequence[Member], outputs, caches, union_ids: jax.Array, live: jax.Array,
                 alignment: Alignment):
    """Re-tokenise the chosen union ids into every member and append them (one-token fast path when
    every live row needs exactly one token). Rows ingesting nothing keep their previous output."""
    tokens, counts = alignment.retokenize(union_ids)  # [B, N, L], [B, N]
    counts = jnp.where(live[:, None], counts, 0)
    new_outputs, new_caches = [], []
    for index, member in enumerate(members):
        member_tokens, member_counts = tokens[:, index], counts[:, index]

        def one_token(cache, previous, m=member, t=member_tokens, n=member_counts):
            out, new_cache = m.step(cache, t[:, 0])
            fed = n > 0  # rows that ingest nothing (done rows, specials it lacks) keep output and cursor
            out = jax.tree.map(lambda new, old: jnp.where(fed[:, None], new, old), out, previous)
            return out, new_cache.replace(cursor=jnp.where(fed, new_cache.cursor, cache.cursor),
                                          next_position=jnp.where(fed, new_cache.next_position, cache.next_position))

        def several(cache, previous, m=member, t=member_tokens, n=member_counts):
            return multi_step_chunked(m, cache, previous, t, n)

        out, cache = jax.lax.cond(jnp.all(member_counts <= 1), one_token, several, caches[index], outputs[index])
        new_outputs.append(out)
        new_caches.append(cache)
    return tuple(new_outputs), tuple(new_caches)


def prompt_nll(member: Member, input_ids: jax.Array, attention_mask: jax.Array) -> jax.Array:
    """Mean negative log-likelihood `[B]` of each row's prompt tokens after its first."""
    logits = member.logits(input_ids, attention_mask)[:, :-1]
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    token_log_probs = jnp.take_along_axis(log_probs, input_ids[:, 1:, None], axis=-1)[..., 0]
    scored = (attention_mask[:, 1:] * attention_mask[:, :-1]).astype(jnp.float32)
    return -(token_log_probs * scored).sum(-1) / jnp.maximum(scored.sum(-1), 1.0)


def decode(members: Sequence[Member], alignment: Alignment, prompts: PromptBatch, weight_fn, key: jax.Array,
           temperature: jax.Array, top_p: jax.Array, config: DecodeConfig) -> DecodeResult:
    """Generate up to `config.max_new_tokens` union tokens for a batch; pure and jittable."""
    members = tuple(members)
    num_members = len(members)
    batch = prompts.input_ids[0].shape[0]
    outputs, summaries, caches = [], [], []
    for member, ids, mask in zip(members, prompts.input_ids, prompts.attention_mask):
        cache_length = ids.shape[1] + config.max_new_tokens * config.expansion_budget
        out, summary, cache = member.prefill(ids, mask, cache_length)
        outputs.append(out)
        summaries.append(summary)
        caches.append(cache)
    needs = set(getattr(weight_fn, "optional_features", ()))
    if "prompt_nll" in needs:
        nll = jnp.stack([prompt_nll(m, i, a) for m, i, a in zip(members, *prompts)], axis=1)
    else:
        nll = jnp.zeros((batch, num_members), jnp.float32)
    uniform = jnp.full((batch, num_members), 1.0 / num_members, jnp.float32)

    def features_of(probs, state_outputs, span_index, previous_weights):
        return span_features(probs, tuple(o.hidden for o in state_outputs), tuple(summaries), span_index,
                             previous_weights, nll, alignment, "js_divergence" in needs)

    records = None
    if config.record_features:
        template = features_of(member_probabilities(outputs, alignment), outputs, jnp.int32(0), uniform)
        records = jax.tree.map(lambda x: jnp.zeros((batch, config.num_spans) + x.shape[1:], x.dtype), template)
    state = DecodeState(
        step=jnp.zeros((), jnp.int32), outputs=tuple(outputs), caches=tuple(caches),
        union_ids=jnp.full((batch, config.max_new_tokens), NO_TOKEN, jnp.int32),
        done=jnp.zeros((batch,), bool), stop_reason=jnp.zeros((batch,), jnp.int32), weights=uniform,
        weight_carry=weight_fn.init_carry(batch, config.num_spans),
        span_weights=jnp.zeros((batch, config.num_spans, num_members), jnp.float32), span_features=records,
        span_valid=jnp.zeros((batch, config.num_spans), bool), weight_fallback=jnp.zeros((batch,), bool), key=key)

    def keep_going(s: DecodeState):
        return (s.step < config.max_new_tokens) & ~jnp.all(s.done)

    def body(s: DecodeState) -> DecodeState:
        span = s.step // config.span_length
        live = ~s.done
        probs = member_probabilities(s.outputs, alignment)

        def start_span(s: DecodeState) -> DecodeState:
            features = features_of(probs, s.outputs, span, s.weights)
            weights, weight_carry = weight_fn(features, s.weight_carry)
            weights, bad = sanitize_weights(weights)
            return s.replace(
                weights=weights, weight_carry=weight_carry,
                span_features=None if records is None else jax.tree.map(
                    lambda rec, x: rec.at[:, span].set(x), s.span_features, features),
                span_weights=s.span_weights.at[:, span].set(weights),
                span_valid=s.span_valid.at[:, span].set(live), weight_fallback=s.weight_fallback | (live & bad))

        s = jax.lax.cond(s.step % config.span_length == 0, start_span, lambda s: s, s)
        key, sample_key = jax.random.split(s.key)
        nonfinite = live & jnp.any(~jnp.isfinite(probs.sum(-1)), axis=-1)  # NaN/inf logits in some member
        live = live & ~nonfinite
        chosen = choose_union_tokens(probs, s.weights, alignment, sample_key, temperature, top_p, config)
        chosen = jnp.where(live, chosen, NO_TOKEN)
        outputs, caches = feed_members(members, s.outputs, s.caches, jnp.maximum(chosen, 0), live, alignment)
        overflow = live & jnp.any(jnp.stack([c.overflowed for c in caches]), axis=0)
        is_eos = live & (chosen == alignment.eos_union_id) & config.stop_at_eos
        return s.replace(
            step=s.step + 1, outputs=outputs, caches=caches, union_ids=s.union_ids.at[:, s.step].set(chosen),
            done=s.done | is_eos | overflow | nonfinite,
            stop_reason=jnp.select([is_eos, overflow, nonfinite], [STOP_EOS, STOP_CACHE_FULL, STOP_NONFINITE],
                                   s.stop_reason),
            key=key)

    final = jax.lax.while_loop(keep_going, body, state)
    lengths = jnp.sum(final.union_ids != NO_TOKEN, axis=1)
    stop_reason = jnp.where(final.stop_reason == RUNNING, STOP_LENGTH, final.stop_reason)
    ingested = jnp.stack([cache.next_position - mask.sum(-1) for cache, mask in
                          zip(final.caches, prompts.attention_mask)], axis=1)
    return DecodeResult(final.union_ids, lengths, stop_reason, final.span_weights, final.span_features,
                        final.span_valid, final.weight_carry, final.weight_fallback, ingested)


decode_jit = jax.jit(decode, static_argnames=("config",))


@dataclasses.dataclass
class EnsembleOutput:
    """Host-side result of `generate`: texts, union ids, stop reasons, and per-span weights
    (`span_weights[b]` is `[spans_b, N]`, only the spans row b actually started)."""

    texts: list[str]
    union_ids: list[list[int]]
    stop_reasons: list[str]
    span_weights: list[np.ndarray]
    result: DecodeResult


def tokenize_for_members(members: Sequence[Member], prompts: Sequence[str], max_new_tokens: int) -> PromptBatch:
    """Every member's own tokenisation of the prompts, left-padded to its length bucket."""
    input_ids, masks = [], []
    for member in members:
        token_lists = encode_prompts(member.tokenizer, prompts)
        check_context(max(map(len, token_lists)), max_new_tokens, member.config.max_position_embeddings,
                      member.name or member.config.model_type)
        ids, mask = left_pad(token_lists, pad_id_of(member.tokenizer))
        input_ids.append(jnp.asarray(ids))
        masks.append(jnp.asarray(mask))
    return PromptBatch(tuple(input_ids), tuple(masks))


def check_members(members: Sequence[Member], alignment: Alignment) -> None:
    """Raise when the alignment was not built for these members' vocabularies."""
    if len(members) != alignment.num_members:
        raise ValueError(f"alignment has {alignment.num_members} members but {len(members)} members were given")
    for index, member in enumerate(members):
        if member.config.vocab_size != alignment.vocab_sizes[index]:
            raise ValueError(
                f"member {index} ({member.name}) has a {member.config.vocab_size}-row embedding but the alignment "
                f"was built for {alignment.vocab_sizes[index]}: rebuild it with vocab_sizes from the members")


def generate(members: Sequence[Member], alignment: Alignment, prompts: Sequence[str], strategy: Any = "uniform",
             max_new_tokens: int = 64, span_length: int = 1, seed: int = 0, temperature: float = 0.0,
             top_p: float = 1.0, weights: Sequence[float] | None = None, threshold: float = 0.5, primary: int = 0,
             top_k: int = 4, packllm_temperature: float = 1.0, candidates_per_member: int = 0,
             expansion_budget: int = 4, record_features: bool = True) -> EnsembleOutput:
    """Ensemble-generate continuations of `prompts`.

    strategy: "uniform", "fixed" (with `weights`), "single" (member `primary` alone), "threshold"
    (GaC gating on member `primary` with `threshold`), "topk" (UniTE with `top_k`), "packllm", or a
    weight_fn object (see `rlae_jax.engine.strategies`). The weight_fn is called every `span_length`
    generated tokens. `record_features=False` skips keeping per-span features (faster).
    """
    members = list(members)
    check_members(members, alignment)
    if span_length < 1:
        raise ValueError(f"span_length must be >= 1, got {span_length}")
    weight_fn, selection = resolve_strategy(strategy, len(members), weights, threshold, primary, top_k,
                                            packllm_temperature)
    batch = tokenize_for_members(members, prompts, max_new_tokens)
    config = DecodeConfig(max_new_tokens=max_new_tokens, span_length=span_length, selection=selection,
                          candidates_per_member=candidates_per_member, expansion_budget=expansion_budget,
                          record_features=record_features)
    result = decode_jit(members, alignment, batch, weight_fn, jax.random.key(seed), jnp.float32(temperature),
                        jnp.float32(top_p), config=config)
    return to_host(result, alignment, config)


def to_host(result: DecodeResult, alignment: Alignment, config: DecodeConfig) -> EnsembleOutput:
    """Decode union ids to text and gather per-row records on the host."""
    union_ids = np.asarray(result.union_ids)
    lengths = np.asarray(result.lengths)
    span_valid = np.asarray(result.span_valid)
    span_weights = np.asarray(result.span_weights)
    rows = [union_ids[b, :lengths[b]].tolist() for b in range(len(lengths))]
    stopped_nonfinite = np.flatnonzero(np.asarray(result.stop_reason) == STOP_NONFINITE)
    if len(stopped_nonfinite):
        warnings.warn(f"rows {stopped_nonfinite.tolist()} stopped early: a member produced NaN/inf logits "
                      "(stop reason 'nonfinite_logits'; bf16 overflow or broken weights?)")
    if np.asarray(result.weight_fallback).any():
        warnings.warn(f"the weight_fn returned NaN/negative/all-zero weights for rows "
                      f"{np.flatnonzero(np.asarray(result.weight_fallback)).tolist()}; those spans used uniform weights")
    return EnsembleOutput(
        texts=[alignment.decode(ids) for ids in rows],
        union_ids=rows,
        stop_reasons=[STOP_REASONS[int(r)] for r in np.asarray(result.stop_reason)],
        span_weights=[span_weights[b, span_valid[b]] for b in range(len(rows))],
        result=result)
