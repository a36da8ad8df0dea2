"""Host-side prompt preparation: tokenise once, left-pad to a length bucket (so jitted loops see
few distinct shapes), and check the result fits the model's context."""
from __future__ import annotations

from typing import Sequence

import numpy as np

MIN_BUCKET = 16


def bucket_length(length: int, minimum: int = MIN_BUCKET) -> int:
    """Smallest power of two >= length (and >= minimum)."""
    bucket = minimum
    while bucket < length:
        bucket *= 2
    return bucket


def left_pad(token_lists: Sequence[Sequence[int]], pad_id: int, length: int | None = None
             ) -> tuple[np.ndarray, np.ndarray]:
    """Left-pad id lists to `length` (default: their bucket). Returns ids and mask, int32 `[B, T]`."""
    longest = max(len(t) for t in token_lists)
    length = length or bucket_length(longest)
    ids = np.full((len(token_lists), length), pad_id, np.int32)
    mask = np.zeros((len(token_lists), length), np.int32)
    for row, tokens in enumerate(token_lists):
        if len(tokens):
            ids[row, length - len(tokens):] = tokens
            mask[row, length - len(tokens):] = 1
    return ids, mask


def encode_prompts(tokenizer, prompts: Sequence[str], add_special_tokens: bool = True) -> list[list[int]]:
    """Token ids of every prompt; raises on an empty prompt list or a prompt that encodes to nothing."""
    if isinstance(prompts, str):
        raise TypeError("prompts must be a list of strings, not one string")
    if len(prompts) == 0:
        raise ValueError("empty prompt list: give at least one prompt")
    token_lists = [tokenizer.encode(p, add_special_tokens=add_special_tokens) for p in prompts]
    for row, tokens in enumerate(token_lists):
        if not tokens:
            raise ValueError(f"prompt {row} ({prompts[row]!r}) encodes to no tokens")
    return token_lists


def check_context(longest_prompt: int, max_new_tokens: int, context: int, who: str) -> None:
    """Raise a clear error when prompt + generation cannot fit the model's context window."""
    if longest_prompt + max_new_tokens > context:
        raise ValueError(
            f"{who}: longest prompt has {longest_prompt} tokens; with max_new_tokens={max_new_tokens} that needs "
            f"{longest_prompt + max_new_tokens} positions but the model's context is {context}. "
            "Shorten the prompt or lower max_new_tokens.")


def pad_id_of(tokenizer) -> int:
    """The id used for left padding (never attended to): pad, else EOS, else 0."""
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return int(candidate)
    return 0
