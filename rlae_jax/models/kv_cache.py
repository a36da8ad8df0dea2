"""Static-length KV cache pytree with per-row write cursors and positions.

Every write appends a block of L tokens per row, some of which may be invalid (left padding
in a prefill, or the unused tail of a multi-token step whose row-varying count is < L).
Invalid slots are marked with position -1 and never attended to; a row's cursor only moves
past its last valid token, so an unused tail is overwritten by the next write.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

EMPTY = -1  # slot position of an unwritten or padding slot


@struct.dataclass
class KVCache:
    """keys/values: per layer `[B·H_kv, S, D]`, one row per (batch row, KV head), batch-major:
    decode attention is a matmul batched over that one dimension, reading the cache array itself (a
    `[B, H_kv, S, D]` cache at B=1 reached the dot through a bitcast, and XLA:CPU then duplicated
    the in-place cache write and copied every layer's cache several times per step,
    benchmarks/RESULTS-ARCHIVE.md); slot_positions `[B, S]` (EMPTY if unused); cursor `[B]` next
    slot to write; next_position `[B]` position id of the next token."""

    keys: tuple[jax.Array, ...]
    values: tuple[jax.Array, ...]
    slot_positions: jax.Array
    cursor: jax.Array
    next_position: jax.Array

    @classmethod
    def init(
        cls, num_layers: int, batch: int, length: int, num_kv_heads: int, head_dim: int, dtype
    ) -> "KVCache":
        shape = (batch * num_kv_heads, length, head_dim)
        return cls(
            keys=tuple(jnp.zeros(shape, dtype) for _ in range(num_layers)),
            values=tuple(jnp.zeros(shape, dtype) for _ in range(num_layers)),
            slot_positions=jnp.full((batch, length), EMPTY, jnp.int32),
            cursor=jnp.zeros((batch,), jnp.int32),
            next_position=jnp.zeros((batch,), jnp.int32),
        )

    @property
    def length(self) -> int:
        return self.slot_positions.shape[1]

    def block_positions(self, valid: jax.Array) -> jax.Array:
        """Position ids `[B, L]` of a block of new tokens with validity mask `valid [B, L]`."""
        return self.next_position[:, None] + jnp.cumsum(valid.astype(jnp.int32), axis=1) - 1

    def write_slots(self, block_len: int) -> jax.Array:
        """Slot indices `[B, L]` a block of `block_len` tokens goes to (>= S means dropped)."""
        return self.cursor[:, None] + jnp.arange(block_len, dtype=jnp.int32)[None, :]

    def with_block_positions(self, positions: jax.Array, valid: jax.Array) -> "KVCache":
        """Record the positions of a new block `[B, L]` (EMPTY where invalid) in the slot map."""
        slots = self.write_slots(positions.shape[1])
        rows = jnp.arange(positions.shape[0])[:, None]
        slot_positions = self.slot_positions.at[rows, slots].set(
            jnp.where(valid, positions, EMPTY), mode="drop"
        )
        return self.replace(slot_positions=slot_positions)

    def finish_block(self, valid: jax.Array) -> "KVCache":
        """Advance cursors past each row's last valid token and positions by its valid count."""
        valid = valid.astype(jnp.int32)
        offsets = jnp.arange(1, valid.shape[1] + 1, dtype=jnp.int32)[None, :]
        advance = jnp.max(valid * offsets, axis=1)
        return self.replace(
            cursor=self.cursor + advance, next_position=self.next_position + valid.sum(axis=1)
        )

    def grow(self, length: int) -> "KVCache":
        """The same cache with `length` >= S slots (the new ones empty)."""
        extra = length - self.length

        def pad(x):
            return jnp.pad(x, ((0, 0), (0, extra), (0, 0)))

        return self.replace(
            keys=tuple(map(pad, self.keys)),
            values=tuple(map(pad, self.values)),
            slot_positions=jnp.pad(
                self.slot_positions, ((0, 0), (0, extra)), constant_values=EMPTY
            ),
        )

    def repeat_rows(self, times: int) -> "KVCache":
        """Each batch row repeated `times` times in place (rows b·times … b·times + times − 1 are
        copies of row b): one prefill serves several rows."""
        batch = self.slot_positions.shape[0]

        def repeat(x):  # [B·H, S, D] -> [B·times·H, S, D], batch-major
            grouped = x.reshape((batch, -1) + x.shape[1:])
            return jnp.repeat(grouped, times, axis=0).reshape((-1,) + x.shape[1:])

        return self.replace(
            keys=tuple(map(repeat, self.keys)),
            values=tuple(map(repeat, self.values)),
            slot_positions=jnp.repeat(self.slot_positions, times, axis=0),
            cursor=jnp.repeat(self.cursor, times, axis=0),
            next_position=jnp.repeat(self.next_position, times, axis=0),
        )

    @property
    def overflowed(self) -> jax.Array:
        """`[B]` True where a row wrote past the cache end (its newest tokens were dropped)."""
        return self.cursor > self.length


def write_layer(cache_array: jax.Array, block: jax.Array, slots: jax.Array) -> jax.Array:
    """Scatter `block [B, L, H, D]` into `cache_array [B·H, S, D]` at `slots [B, L]` (out of range
    dropped)."""
    batch, _, heads, _ = block.shape
    kv_rows = jnp.arange(batch)[:, None] * heads + jnp.arange(heads)[None, :]  # [B, H]
    return cache_array.at[kv_rows[:, :, None], slots[:, None, :]].set(
        block.transpose(0, 2, 1, 3).astype(cache_array.dtype), mode="drop"
    )
