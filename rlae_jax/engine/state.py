"""The decode loop's settings, inputs, carry and result, and the stop reasons a row can end with."""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
from flax import struct

from rlae_jax.engine.features import SpanFeatures
from rlae_jax.engine.strategies import Selection
from rlae_jax.models.kv_cache import KVCache
from rlae_jax.models.member import PrefixState

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
    """Static settings of one compiled decode.

    `span_length`: union tokens per weight_fn call. `candidates_per_member`: see
    `mixing.choose_union_tokens` (the weight_fn's `selection` says how the token is chosen).
    `expansion_budget`: cache slots per union token past the prompt a decode starts with (a member
    that needs more grows its cache at the cost of one more compiled loop). `room_per_token`: the
    most slots per union token the in-graph `decode` compiles, because it cannot grow caches at run
    time; a row that would overflow them stops with reason 'room' (`decode_growing` and `generate`
    grow instead). `stop_at_eos=False` always runs `max_new_tokens` steps (benchmarks).
    `record_features` keeps every span's SpanFeatures in the result (RL needs them; without it,
    features the weight_fn ignores are never computed). `samples_per_prompt` K: each prompt is
    prefilled once and decoded K times (rows b·K … b·K+K−1 of the result are prompt b's; a sampling
    weight_fn draws each row's weights independently), so K RL episodes of one question cost one
    prefill.
    """

    max_new_tokens: int = 64
    span_length: int = 1
    candidates_per_member: int = 0
    expansion_budget: int = 2
    room_per_token: int = 4
    stop_at_eos: bool = True
    record_features: bool = True
    samples_per_prompt: int = 1

    def __post_init__(self):
        for name in ("span_length", "expansion_budget", "room_per_token", "samples_per_prompt"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    @property
    def num_spans(self) -> int:
        return -(-self.max_new_tokens // self.span_length)

    def candidates(self, selection: Selection) -> int:
        """Top-k candidates per member the choice reads (0: none, the full union decides): UniTE's
        `top_k` under `selection` 'topk', else `candidates_per_member` (the certified shortcut)."""
        return selection.top_k if selection.mode == "topk" else self.candidates_per_member


class PromptBatch(NamedTuple):
    """Each member's left-padded tokenisation of the same B prompts: per member `[B, T_n]` int32
    ids and mask. With `prefix` (per member a PrefixState, `engine.prefix`), every row of member n
    starts with `prefix[n]`'s tokens and `input_ids[n]` hold only the rest (the question): the
    prefix is prefilled once and every row starts from its cache."""

    input_ids: tuple[jax.Array, ...]
    attention_mask: tuple[jax.Array, ...]
    prefix: tuple[PrefixState | None, ...] | None = None

    def prefix_of(self, member: int) -> PrefixState | None:
        """Member `member`'s shared prefix (None without one)."""
        return None if self.prefix is None else self.prefix[member]

    def prompt_slots(self, member: int) -> int:
        """Cache slots member `member`'s prompts take: the prefix's plus the padded rows'."""
        prefix = self.prefix_of(member)
        return (0 if prefix is None else prefix.slots) + self.input_ids[member].shape[1]

    def prompt_lengths(self, member: int) -> jax.Array:
        """`[B]` each row's prompt tokens for member `member`, prefix included (not its padding)."""
        prefix, own = self.prefix_of(member), self.attention_mask[member].sum(-1)
        return own if prefix is None else own + prefix.tokens


def stack_groups(batches: Sequence[PromptBatch]) -> PromptBatch:
    """Several PromptBatches of one shape (e.g. one per task family, each with its own prefix) as
    one whose leaves have a leading group axis `[G, ...]`, for a `lax.map` over the groups."""
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *batches)


@struct.dataclass
class Sampling:
    """The draw's PRNG key, `temperature` (0: greedy) and `top_p`, float32 []."""

    key: jax.Array
    temperature: jax.Array
    top_p: jax.Array


@struct.dataclass
class SpanState:
    """What a span start changes: `weights [B, N]`, the weight_fn's carry and the per-span records
    `span_weights [B, S, N]`, `span_features` (leaves `[B, S, ...]` or None), `span_valid [B, S]`,
    `weight_fallback [B]`; `started` the last span index started (int32 [], −1 before the first),
    so a step redone after the caches grow does not start its span twice."""

    weights: jax.Array
    weight_carry: Any
    span_weights: jax.Array
    span_features: SpanFeatures | None
    span_valid: jax.Array
    weight_fallback: jax.Array
    started: jax.Array


@struct.dataclass
class DecodeState:
    """Loop carry. Per member: `hidden [B, H]`, the final hidden state at its last ingested token
    (logits are computed from it at the top of each step, so no `[B, V]` array is carried), and its
    KV cache. `union_ids [B, T_new]` (NO_TOKEN after a stop); `done`, `stop_reason`,
    `window_member [B]` (the member that stopped the row, else −1); `needs_room` bool `[N]`: the
    members whose caches the last step did not fit (that step was not taken; grow them, run on)."""

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
