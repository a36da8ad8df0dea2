"""The `Alignment` pytree: device index tables + host-side union vocabulary.

Shapes: N members, V = V_max (largest model vocabulary), U union tokens, L = max_expansion
(most member tokens one union token needs), D most member ids sharing one byte string.
"""

from __future__ import annotations

from typing import Sequence

import chex
import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from jax.experimental import sparse

from rlae_jax.align import project as ops


class UnionVocab:
    """Host-side union vocabulary and numpy copies of the tables (hashed by fingerprint).

    union_bytes[u]: bytes of union token u (b"" for specials); special_names: union id → content
    string of each special token (the union EOS included).
    """

    def __init__(
        self,
        fingerprint: str,
        union_bytes: Sequence[bytes],
        special_names: dict[int, str],
        member_to_union: np.ndarray,
        union_to_member: np.ndarray,
        union_to_member_len: np.ndarray,
    ):
        self.fingerprint = fingerprint
        self.union_bytes = tuple(union_bytes)
        self.special_names = dict(special_names)
        self.member_to_union = member_to_union
        self.union_to_member = union_to_member
        self.union_to_member_len = union_to_member_len

    def __hash__(self) -> int:
        return hash(self.fingerprint)

    def __eq__(self, other) -> bool:
        return isinstance(other, UnionVocab) and other.fingerprint == self.fingerprint


@struct.dataclass
class Alignment:
    """Union vocabulary of N members; arrays are pytree leaves, sizes are static.

    member_to_union: int32 [N, V] union id of each member id; invalid ids → num_union (sentinel).
    member_valid: bool [N, V] ids the member's tokenizer defines (model-only ids are False).
    union_to_member: int32 [N, U, L] member ids re-spelling each union token (padding 0).
    union_to_member_len: int32 [N, U] how many of those are used (0: member lacks that special).
    union_member_ids: int32 [N, U, D] every member id with the union token's bytes (padding V).
    union_complete: bool [U] every member can ingest the token exactly within L tokens (specials
        always: they carry no bytes); the engine should never select the others.
    exclusive: bool [N, V] member ids that are the only id, in any member, spelling a complete union
        token (their mixed score needs no gather).
    shared_union_ids: int32 [C] the other complete union tokens, ascending.
    shared_member_ids: int32 [N, C, D] union_member_ids of the shared tokens.
    incomplete_member_ids: int32 [N, I, D] union_member_ids of the tokens left out of union_complete
        (the JS divergence feature gathers them with the shared ones).
    duplicate_widths: D_n per member, the columns of union_member_ids member n uses (1 unless some
        of its ids share bytes).
    all_ids_valid: per member, whether member_valid holds for all its V_n model ids (then its
        logits need no mask).
    """

    member_to_union: jax.Array
    member_valid: jax.Array
    union_to_member: jax.Array
    union_to_member_len: jax.Array
    union_member_ids: jax.Array
    union_complete: jax.Array
    exclusive: jax.Array
    shared_union_ids: jax.Array
    shared_member_ids: jax.Array
    incomplete_member_ids: jax.Array
    eos_union_id: int = struct.field(pytree_node=False)
    num_union: int = struct.field(pytree_node=False)
    max_expansion: int = struct.field(pytree_node=False)
    vocab_sizes: tuple[int, ...] = struct.field(pytree_node=False)
    duplicate_widths: tuple[int, ...] = struct.field(pytree_node=False)
    all_ids_valid: tuple[bool, ...] = struct.field(pytree_node=False)
    vocab: UnionVocab = struct.field(pytree_node=False)

    @property
    def num_members(self) -> int:
        return len(self.vocab_sizes)

    def check_stacked(self, method: str, member_arrays: jax.Array) -> None:
        """chex check (at trace time) that a device method got `[B, N, V]` (V = V_max)."""
        expected = (None, self.num_members, self.member_to_union.shape[1])
        chex.assert_shape(
            member_arrays, expected, custom_message=f"Alignment.{method} takes [B, N, V]"
        )

    def check_per_member(self, method: str, member_arrays: Sequence, weights: jax.Array) -> None:
        """chex checks (at trace time) that a device method got N arrays `[B, V_n]`, each covering
        member n's model ids, and `[B, N]` weights (or normalisers)."""
        message = f"Alignment.{method} takes N={self.num_members} arrays [B, V_n] and [B, N]"
        chex.assert_equal(len(member_arrays), self.num_members, custom_message=message)
        chex.assert_rank(list(member_arrays), 2, custom_message=message)
        for n, array in enumerate(member_arrays):
            chex.assert_axis_dimension_gteq(array, 1, self.vocab_sizes[n], custom_message=message)
        expected = (member_arrays[0].shape[0], self.num_members)
        chex.assert_shape(weights, expected, custom_message=message)

    # ---- device side (jit / vmap) ----
    def masked_log_softmax(self, member_logits: jax.Array) -> jax.Array:
        """[B, N, V] logits → log-probs with ids outside each tokenizer at -inf."""
        self.check_stacked("masked_log_softmax", member_logits)
        return ops.masked_log_softmax(member_logits, self.member_valid)

    def project(self, member_probs: jax.Array) -> jax.Array:
        """[B, N, V] member probabilities → [B, N, U] union probabilities (mass conserved)."""
        self.check_stacked("project", member_probs)
        return ops.project(member_probs, self.union_member_ids, self.duplicate_widths)

    def mix(self, member_probs: jax.Array | Sequence[jax.Array], weights: jax.Array) -> jax.Array:
        """Probabilities `[B, N, V]` (or N arrays `[B, V_n]`), weights `[B, N]` → `[B, U]` mixed
        union distribution Σ_n weights[:, n] · P_n (unnormalised inputs give the same mixture
        scaled)."""
        if not isinstance(member_probs, (list, tuple)):
            self.check_stacked("mix", member_probs)
            member_probs = [member_probs[:, n] for n in range(member_probs.shape[1])]
        self.check_per_member("mix", member_probs, weights)
        return ops.mix(member_probs, weights, self.union_member_ids, self.duplicate_widths)

    def mixed_argmax(self, member_probs: Sequence[jax.Array], weights: jax.Array) -> jax.Array:
        """int32 `[B]`: first argmax of `mix(member_probs, weights)` over complete union tokens,
        without building `[B, U]` (see project.mixed_argmax); member_probs: N arrays `[B, V_n]`."""
        self.check_per_member("mixed_argmax", member_probs, weights)
        return ops.mixed_argmax(
            member_probs,
            weights,
            self.member_to_union,
            self.exclusive,
            self.shared_union_ids,
            self.shared_member_ids,
            self.duplicate_widths,
        )

    def js_divergence(self, exp_logits: Sequence[jax.Array], normalizer: jax.Array) -> jax.Array:
        """`[B]` equal-weight Jensen-Shannon divergence of the members' distributions in union
        space, from unnormalised `exp_logits` (N arrays `[B, V_n]`) and their row sums
        `normalizer [B, N]`, without building `[B, N, U]` (see project.js_divergence)."""
        self.check_per_member("js_divergence", exp_logits, normalizer)
        return ops.js_divergence(
            exp_logits,
            normalizer,
            self.exclusive,
            (self.shared_member_ids, self.incomplete_member_ids),
            self.duplicate_widths,
        )

    def top_k_union(
        self, member_probs: jax.Array, member_top_ids: jax.Array, weights: jax.Array
    ) -> ops.TopKUnion:
        """Candidates from member top-k ids [B, N, k] scored without [B, U] (see
        project.top_k_union)."""
        self.check_stacked("top_k_union", member_probs)
        message = "Alignment.top_k_union takes [B, N, V], ids [B, N, k] and weights [B, N]"
        chex.assert_rank(member_top_ids, 3, custom_message=message)
        chex.assert_equal_shape_prefix((member_probs, member_top_ids), 2, custom_message=message)
        chex.assert_shape(weights, member_probs.shape[:2], custom_message=message)
        return ops.top_k_union(
            member_probs,
            member_top_ids,
            weights,
            self.member_to_union,
            self.union_member_ids,
            self.num_union,
        )

    def retokenize(self, union_ids: jax.Array) -> tuple[jax.Array, jax.Array]:
        """int32 [B] union ids → (member tokens int32 [B, N, L], counts int32 [B, N])."""
        tokens = jnp.moveaxis(self.union_to_member[:, union_ids], 0, 1)
        counts = jnp.moveaxis(self.union_to_member_len[:, union_ids], 0, 1)
        return tokens, counts

    def projection_matrix(self, member: int) -> sparse.BCOO:
        """One-hot projection of member ``member``: BCOO [V_i, U] (V_i its model vocab)."""
        table = self.vocab.member_to_union[member, : self.vocab_sizes[member]]
        rows = np.flatnonzero(table < self.num_union)
        indices = np.stack([rows, table[rows]], axis=1).astype(np.int32)
        data = np.ones(len(rows), np.float32)
        return sparse.BCOO(
            (jnp.asarray(data), jnp.asarray(indices)),
            shape=(self.vocab_sizes[member], self.num_union),
        )

    # ---- host side ----
    def to_union(self, member: int, member_ids: Sequence[int]) -> list[int]:
        """Member token ids → union ids, one for one (raises on ids the tokenizer lacks)."""
        union_ids = [int(self.vocab.member_to_union[member, i]) for i in member_ids]
        if self.num_union in union_ids:
            bad = [i for i, u in zip(member_ids, union_ids) if u == self.num_union]
            raise ValueError(f"member {member} ids {bad} are not tokens of its tokenizer")
        return union_ids

    def from_union(self, member: int, union_ids: Sequence[int]) -> list[int]:
        """Union ids → member ``member``'s token ids spelling the same bytes."""
        tokens = self.vocab.union_to_member[member]
        lengths = self.vocab.union_to_member_len[member]
        return [int(t) for u in union_ids for t in tokens[u, : lengths[u]]]

    def union_bytes(self, union_id: int) -> bytes:
        """Bytes of a union token (b"" for special tokens)."""
        return self.vocab.union_bytes[union_id]

    def special_name(self, union_id: int) -> str | None:
        """Content string of a special union token, None for byte tokens."""
        return self.vocab.special_names.get(union_id)

    def decode_bytes(self, union_ids: Sequence[int]) -> bytes:
        """Concatenated bytes of union ids (specials contribute nothing)."""
        return b"".join(self.vocab.union_bytes[u] for u in union_ids)

    def decode(self, union_ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        """Union ids → text: bytes joined, UTF-8 decoded with errors='replace'."""
        if skip_special_tokens:
            return self.decode_bytes(union_ids).decode("utf-8", errors="replace")
        return b"".join(
            self.vocab.special_names[u].encode()
            if u in self.vocab.special_names
            else self.vocab.union_bytes[u]
            for u in union_ids
        ).decode("utf-8", errors="replace")

    def byte_table(self) -> tuple[np.ndarray, np.ndarray]:
        """Bytes of every union token as int32 `[U, Lb]` (zero-padded) and their lengths int32
        `[U]`, for device-side rewards over union ids."""
        lengths = np.array([len(b) for b in self.vocab.union_bytes], np.int32)
        table = np.zeros((self.num_union, max(int(lengths.max()), 1)), np.int32)
        for union_id, data in enumerate(self.vocab.union_bytes):
            table[union_id, : len(data)] = list(data)
        return table, lengths

    def unspellable(self, member: int) -> list[bytes]:
        """Bytes of the non-special union tokens member ``member`` cannot spell within L tokens."""
        lengths = self.vocab.union_to_member_len[member]
        return [b for b, length in zip(self.vocab.union_bytes, lengths) if b and length == 0]

    def member_bytes(self, member: int, member_ids: Sequence[int]) -> bytes:
        """Concatenated canonical bytes of member token ids (specials contribute nothing)."""
        return self.decode_bytes(self.to_union(member, member_ids))
