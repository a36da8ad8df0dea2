"""Single-member generation: prefill + one jitted `lax.while_loop` (greedy or sampled, EOS per
row)."""

from __future__ import annotations

import os
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from rlae_jax.runtime.compile_options import decode_loop_options
from rlae_jax.models.kv_cache import KVCache
from rlae_jax.models.member import Member
from rlae_jax.models.prompts import check_context, encode_prompts, left_pad, pad_id_of
from rlae_jax.models.sampling import select_tokens


class DecodeCarry(NamedTuple):
    step: jax.Array  # [] int32
    logits: jax.Array  # [B, V] next-token logits
    cache: KVCache
    tokens: jax.Array  # [B, max_new_tokens] generated ids (pad after EOS)
    done: jax.Array  # [B] bool


def eos_ids_of(member: Member) -> np.ndarray:
    """All ids that end a row: the tokenizer's EOS and the config's eos_token_id(s). int32 `[E]`."""
    ids = set(member.config.eos_token_ids)
    if member.tokenizer is not None and member.tokenizer.eos_token_id is not None:
        ids.add(int(member.tokenizer.eos_token_id))
    if not ids:
        raise ValueError(
            f"member {member.name!r} has no EOS token (neither its tokenizer nor its config "
            "names one)"
        )
    return np.array(sorted(ids), np.int32)


def generate_ids(
    member: Member,
    input_ids: jax.Array,
    attention_mask: jax.Array,
    key: jax.Array,
    temperature: jax.Array,
    top_p: jax.Array,
    eos_ids: jax.Array,
    pad_id: jax.Array,
    max_new_tokens: int,
) -> tuple[jax.Array, jax.Array]:
    """Generate from a left-padded batch `[B, T]`; pure and jittable (`generate_ids_jit` is it
    compiled with the decode-loop options). Returns ids `[B, max_new_tokens]` (pad_id after a row's
    EOS) and per-row lengths `[B]` (EOS included)."""
    batch = input_ids.shape[0]
    filled = member.prefill(input_ids, attention_mask, input_ids.shape[1] + max_new_tokens)
    first, cache = filled.step, filled.cache
    carry = DecodeCarry(
        step=jnp.zeros((), jnp.int32),
        logits=first.logits,
        cache=cache,
        tokens=jnp.full((batch, max_new_tokens), pad_id, jnp.int32),
        done=jnp.zeros((batch,), bool),
    )

    def keep_going(c: DecodeCarry):
        return (c.step < max_new_tokens) & ~jnp.all(c.done)

    def body(c: DecodeCarry) -> DecodeCarry:
        token = jnp.where(c.done, pad_id, select_tokens(c.logits, key, c.step, temperature, top_p))
        tokens = c.tokens.at[:, c.step].set(token)
        done = c.done | jnp.isin(token, eos_ids)
        out, cache = member.step(c.cache, token)
        return DecodeCarry(c.step + 1, out.logits, cache, tokens, done)

    final = jax.lax.while_loop(keep_going, body, carry)
    not_pad = jnp.arange(max_new_tokens)[None, :] < final.step
    ended = (
        jnp.cumsum(jnp.isin(final.tokens, eos_ids), axis=1) - jnp.isin(final.tokens, eos_ids) > 0
    )
    lengths = jnp.sum(not_pad & ~ended, axis=1)
    return final.tokens, lengths


# JAX takes compile options only on a top-level jit: inside your own jit, call `generate_ids`.
generate_ids_jit = jax.jit(
    generate_ids, static_argnames=("max_new_tokens",), compiler_options=decode_loop_options()
)


def generate_from_ids(
    member: Member,
    token_lists: Sequence[Sequence[int]],
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    seed: int,
) -> list[list[int]]:
    """Generated token ids (EOS included when reached) after each prompt's ids."""
    check_context(
        max(map(len, token_lists)),
        max_new_tokens,
        member.config.max_position_embeddings,
        member.name or member.config.model_type,
    )
    pad_id = pad_id_of(member.tokenizer)
    ids, mask = left_pad(token_lists, pad_id)
    tokens, lengths = generate_ids_jit(
        member,
        jnp.asarray(ids),
        jnp.asarray(mask),
        jax.random.key(seed),
        jnp.float32(temperature),
        jnp.float32(top_p),
        jnp.asarray(eos_ids_of(member)),
        jnp.int32(pad_id),
        max_new_tokens=max_new_tokens,
    )
    tokens, lengths = np.asarray(tokens), np.asarray(lengths)
    return [tokens[row, : lengths[row]].tolist() for row in range(len(token_lists))]


def encode_for(member: Member, prompts: Sequence[str], add_special_tokens: bool) -> list[list[int]]:
    """The member's token ids of every prompt (raises when it has no tokenizer)."""
    if member.tokenizer is None:
        raise ValueError(
            "member has no tokenizer; load it with from_pretrained(..., tokenizer=...)"
        )
    return encode_prompts(member.tokenizer, prompts, add_special_tokens)


def generate_tokens(
    member: Member,
    prompts: Sequence[str],
    max_new_tokens: int = 64,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int = 0,
    add_special_tokens: bool = True,
) -> list[list[int]]:
    """Generated token ids per prompt (EOS included when reached)."""
    token_lists = encode_for(member, prompts, add_special_tokens)
    return generate_from_ids(member, token_lists, max_new_tokens, temperature, top_p, seed)


def continuation_text(tokenizer, prompt_ids: Sequence[int], new_ids: Sequence[int]) -> str:
    """The text `new_ids` add after `prompt_ids`: the decoded whole sequence minus the decoded
    prompt (special tokens removed), so a SentencePiece piece keeps its leading space, which
    decoding the new ids on their own drops. Where the decoder changes text across the boundary, the
    part of the whole sequence past its common prefix with the prompt's."""
    options = dict(skip_special_tokens=True, clean_up_tokenization_spaces=False)
    head = tokenizer.decode(list(prompt_ids), **options)
    whole = tokenizer.decode(list(prompt_ids) + list(new_ids), **options)
    return whole[len(os.path.commonprefix([head, whole])) :]


def generate_member(
    member: Member,
    prompts: Sequence[str],
    max_new_tokens: int = 64,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int = 0,
    add_special_tokens: bool = True,
) -> list[str]:
    """Continue every prompt with one member (`rlae_jax.engine.generate` runs an ensemble). Each
    text is the exact continuation: the decoded prompt + it is the decoded whole sequence (special
    tokens removed), leading spaces included."""
    token_lists = encode_for(member, prompts, add_special_tokens)
    outputs = generate_from_ids(member, token_lists, max_new_tokens, temperature, top_p, seed)
    return [continuation_text(member.tokenizer, ids, new) for ids, new in zip(token_lists, outputs)]


def read_prompts(prompts: str | Sequence[str], prompts_file: str = "") -> list[str]:
    """The prompts a launch config names: `prompts_file` (one a line) when given, else `prompts`,
    one string (`--config.prompts="Once upon a time"`) or several (`--config.prompts="('A', 'B')"`).
    """
    if prompts_file:
        with open(prompts_file) as f:
            return [line.rstrip("\n") for line in f if line.strip()]
    if isinstance(prompts, (tuple, list)):
        return [str(p) for p in prompts]
    return [str(prompts)]
