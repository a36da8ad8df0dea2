"""Vocabulary alignment: union vocabulary over token bytes and batched member↔union projection."""

from rlae_jax.align.alignment import Alignment, UnionVocab
from rlae_jax.align.project import TopKUnion, masked_log_softmax, mix, project, top_k_union
from rlae_jax.align.token_bytes import MemberVocab, member_vocab
from rlae_jax.align.vocab import DEFAULT_CACHE_DIR, build_alignment, load_alignment, save_alignment

__all__ = [
    "Alignment",
    "DEFAULT_CACHE_DIR",
    "MemberVocab",
    "TopKUnion",
    "UnionVocab",
    "build_alignment",
    "load_alignment",
    "masked_log_softmax",
    "member_vocab",
    "mix",
    "project",
    "save_alignment",
    "top_k_union",
]
