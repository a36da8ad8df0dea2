"""Prompts encoded once per split, with the prefix their rows share.

Every problem of a task family starts with the same tokens for a member (its template header, the
system text, the worked examples). `encode_prompts_once` finds that prefix per member (the longest
common token prefix of the split's prompts, so a row's tokens are exactly prefix + rest), and pads
every row's rest to one length for the whole split, so every batch has one compiled shape.
`PrefixStates` prefills each member's prefix once at batch 1 and keeps it, keyed by its token
ids: a change of shots or template changes the ids and can never reuse a stale prefix.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from rlae_jax.engine.state import PromptBatch
from rlae_jax.models.member import Member, PrefixState
from rlae_jax.models.prompts import bucket_length, check_context, left_pad, pad_id_of


def shared_prefix_length(token_lists: Sequence[Sequence[int]]) -> int:
    """Tokens every list starts with, leaving each list at least one token of its own (a row's
    last prompt token must be prefilled with the row, to give its first next-token logits)."""
    shortest = min(map(len, token_lists))
    first = token_lists[0]
    length = 0
    while length < shortest - 1 and all(t[length] == first[length] for t in token_lists):
        length += 1
    return length if length >= 2 else 0  # a one-token prefix saves nothing


@dataclasses.dataclass(frozen=True)
class EncodedPrompts:
    """A split's prompts tokenised once for every member: `prefix_ids[n]` `[P_n]` (shared by every
    row; empty when `shared_prefix=False` or nothing is shared), `rest[n][e]` the ids after it,
    `lengths[n]` the padded length of the rests (a power of two, fixed for the split) and
    `prefix_slots[n]` the cache slots the prefix takes, left-padded (≥ P_n), so that splits with
    prefixes of different lengths share one compiled shape."""

    prefix_ids: tuple[np.ndarray, ...]
    rest: tuple[tuple[tuple[int, ...], ...], ...]
    lengths: tuple[int, ...]
    pad_ids: tuple[int, ...]
    prefix_slots: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.rest[0])

    def check_count(self, examples: int) -> "EncodedPrompts":
        """Itself when it holds one prompt per example, else a one-line ValueError."""
        if len(self) != examples:
            raise ValueError(f"encoded prompts hold {len(self)} rows for {examples} examples")
        return self

    def head(self, count: int) -> "EncodedPrompts":
        """The first `count` prompts, with the same prefix and padded lengths (same compiled
        shape)."""
        return dataclasses.replace(self, rest=tuple(r[:count] for r in self.rest))

    def padded(self, member: int, indices: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """Member `member`'s left-padded rests of rows `indices` → ids, mask `[B, T_n]` int32."""
        rows = [self.rest[member][i] for i in indices]
        return left_pad(rows, self.pad_ids[member], self.lengths[member])

    def padded_prefix(self, member: int) -> tuple[np.ndarray, np.ndarray]:
        """Member `member`'s prefix left-padded to its slots → ids int32, valid bool `[slots]`."""
        ids = self.prefix_ids[member]
        pad = self.prefix_slots[member] - len(ids)
        filler = np.full(pad, self.pad_ids[member], np.int32)
        return np.concatenate([filler, ids]).astype(np.int32), np.arange(pad + len(ids)) >= pad


def encode_prompts_once(
    members: Sequence[Member],
    token_lists: Sequence[Sequence[Sequence[int]]],
    max_new_tokens: int,
    prefix_caps: Sequence[int] | None = None,
    lengths: Sequence[int] | None = None,
) -> EncodedPrompts:
    """`token_lists[n][e]`: member n's prompt ids of problem e → EncodedPrompts. ValueError when a
    prompt plus `max_new_tokens` exceeds a member's context. `prefix_caps[n]`: member n's shared
    prefix holds at most this many tokens (0: none; None: no cap); `lengths[n]`: pad member n's
    rests to at least this many positions (so that several splits share one compiled shape)."""
    prefixes, rests, padded = [], [], []
    for index, (member, lists) in enumerate(zip(members, token_lists)):
        check_context(
            max(map(len, lists)),
            max_new_tokens,
            member.config.max_position_embeddings,
            member.name or member.config.model_type,
        )
        shared = shared_prefix_length(lists) if len(lists) > 1 else 0
        if prefix_caps is not None and prefix_caps[index] is not None:
            shared = min(shared, prefix_caps[index])
        prefixes.append(np.asarray(lists[0][:shared], np.int32))
        rests.append(tuple(tuple(t[shared:]) for t in lists))
        length = bucket_length(max(map(len, rests[-1])))
        padded.append(length if lengths is None else max(length, lengths[index]))
    pad_ids = tuple(pad_id_of(m.tokenizer) for m in members)
    slots = tuple(len(ids) for ids in prefixes)
    return EncodedPrompts(tuple(prefixes), tuple(rests), tuple(padded), pad_ids, slots)


def encode_splits(
    members: Sequence[Member], splits: Sequence[Sequence[Sequence[Sequence[int]]]], max_new_tokens
) -> list[EncodedPrompts]:
    """Several splits (`splits[s][n][e]`, as `encode_prompts_once` takes one) encoded to one
    compiled shape: each split keeps its whole shared prefix, left-padded to the longest split's
    (per member; a member with no prefix in some split gets none in any), and its rests are padded
    to the longest split's length. Every strategy then compiles once for all of them (e.g. each
    family's test split in the study), and a row prefills only its own question."""
    count = len(members)
    shares = [min(shared_prefix_length(split[n]) for split in splits) > 0 for n in range(count)]
    caps = [None if share else 0 for share in shares]
    encoded = [encode_prompts_once(members, split, max_new_tokens, caps) for split in splits]
    lengths = tuple(max(e.lengths[n] for e in encoded) for n in range(count))
    slots = tuple(max(len(e.prefix_ids[n]) for e in encoded) for n in range(count))
    return [dataclasses.replace(e, lengths=lengths, prefix_slots=slots) for e in encoded]


prefill_prefix_jit = jax.jit(lambda member, ids, valid: member.prefill_prefix(ids, valid))


class PrefixStates:
    """Each member's prefilled shared prefix, computed once and kept, keyed by (member index, the
    prefix's token ids and padding). Belongs to one set of members (an `Ensemble`)."""

    def __init__(self, members: Sequence[Member]):
        self.members = tuple(members)
        self.states: dict[tuple[int, bytes, int], PrefixState] = {}
        self.prefills = 0  # prefixes prefilled so far (tests count reuse with it)

    def get(self, encoded: EncodedPrompts) -> tuple[PrefixState | None, ...] | None:
        """The prefix states of `encoded`, per member (None where it shares no prefix; None
        when no member does)."""
        if not any(len(ids) for ids in encoded.prefix_ids):
            return None
        return tuple(self.state(encoded, n) for n in range(len(self.members)))

    def state(self, encoded: EncodedPrompts, member: int) -> PrefixState | None:
        if not len(encoded.prefix_ids[member]):
            return None
        ids, valid = encoded.padded_prefix(member)
        key = (member, encoded.prefix_ids[member].tobytes(), len(ids))
        if key not in self.states:
            self.prefills += 1
            self.states[key] = prefill_prefix_jit(
                self.members[member], jnp.asarray(ids), jnp.asarray(valid)
            )
        return self.states[key]

    def batch(self, encoded: EncodedPrompts, indices: Sequence[int]) -> PromptBatch:
        """The PromptBatch of rows `indices` of `encoded`: rests padded to the split's lengths,
        starting from the kept prefix states."""
        ids, masks = zip(*(encoded.padded(n, indices) for n in range(len(self.members))))
        return PromptBatch(
            tuple(map(jnp.asarray, ids)), tuple(map(jnp.asarray, masks)), self.get(encoded)
        )
