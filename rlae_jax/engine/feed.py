"""Feeding a chosen union token back to every member in its own tokens: which rows fit, and the
cached passes that append each row's re-spelling (1..L member tokens) to the member's KV cache."""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

from rlae_jax.engine.state import RUNNING, STOP_CONTEXT_WINDOW, STOP_ROOM
from rlae_jax.models.kv_cache import KVCache
from rlae_jax.models.member import Member
from rlae_jax.models.sampling import first_argmax


def feed_member(
    member: Member, cache: KVCache, hidden: jax.Array, tokens: jax.Array, counts: jax.Array
) -> tuple[jax.Array, KVCache]:
    """Append the first `counts[b]` of `tokens [B, L]` to each row of one member's cache, one token
    column per cached pass, as many passes as the longest re-spelling in the batch (rows with fewer
    tokens are masked in the later passes) → (hidden `[B, H]` at each row's last appended token,
    cache). Rows appending nothing (done rows, specials a member lacks) keep `hidden` and their
    cursor."""

    def one_column(carry):
        column, hidden, cache = carry
        takes = counts > column
        out, cache = member.append(
            cache, jax.lax.dynamic_slice_in_dim(tokens, column, 1, axis=1), takes.astype(jnp.int32)
        )
        return column + 1, jnp.where(takes[:, None], out, hidden), cache

    passes = jnp.max(counts)
    _, hidden, cache = jax.lax.while_loop(
        lambda carry: carry[0] < passes, one_column, (jnp.int32(0), hidden, cache)
    )
    return hidden, cache


def feed_members(
    members: Sequence[Member], hidden, caches, tokens: jax.Array, counts: jax.Array
) -> tuple[tuple[jax.Array, ...], tuple[KVCache, ...]]:
    """`feed_member` for every member: `tokens [B, N, L]`, `counts [B, N]` → (hidden per member
    `[B, H_n]`, caches)."""
    fed = [
        feed_member(member, caches[n], hidden[n], tokens[:, n], counts[:, n])
        for n, member in enumerate(members)
    ]
    return tuple(h for h, _ in fed), tuple(c for _, c in fed)


def fit_rows(
    members: Sequence[Member],
    caches: Sequence[KVCache],
    counts: jax.Array,
    live: jax.Array,
    bounded_room: bool,
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array, jax.Array]:
    """Which `live [B]` rows can take their re-spellings of `counts [B, N]` tokens → (live, counts
    (0 off live rows), stop [B] (STOP_CONTEXT_WINDOW, STOP_ROOM or RUNNING), stop_member [B] (the
    member that stopped the row, else −1), needs_room bool [N]). A row a member cannot take within
    its context window stops; one a member's cache cannot hold makes that member need room, or,
    with `bounded_room` (caches that cannot grow), stops with 'room'."""
    positions = jnp.stack([cache.next_position for cache in caches], axis=1) + counts  # [B, N]
    windows = jnp.asarray([m.config.max_position_embeddings for m in members], jnp.int32)
    past = positions > windows
    beyond = live & jnp.any(past, axis=1)
    live = live & ~beyond
    overflow = jnp.stack(  # [B, N]
        [live & (c.cursor + counts[:, n] > c.length) for n, c in enumerate(caches)], axis=1
    )
    out_of_room = jnp.any(overflow, axis=1) & bounded_room
    needs_room = jnp.any(overflow, axis=0) & (not bounded_room)
    live = live & ~out_of_room & ~jnp.any(needs_room)
    stop = jnp.select([beyond, out_of_room], [STOP_CONTEXT_WINDOW, STOP_ROOM], RUNNING)
    stop_member = jnp.select(
        [beyond, out_of_room], [first_argmax(past), first_argmax(overflow)], -1
    )
    return live, jnp.where(live[:, None], counts, 0), stop, stop_member, needs_room
