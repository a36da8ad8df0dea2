"""Canonical bytes of every token of a tokenizer (host side, once per tokenizer).

A token's identity is the byte string it contributes to the decoded text:
- byte-level BPE (GPT-2, NeoX, Llama 3 / tiktoken converted, Qwen2): each vocabulary character
  stands for one byte (GPT-2's ``bytes_to_unicode`` table);
- SentencePiece style (Llama 2, Mistral, GGUF ``llama`` vocabularies): ``▁`` is a space and, when
  the model has byte fallback, ``<0xNN>`` is the single byte NN; other pieces are UTF-8 text;
- non-special added tokens (e.g. NeoX's 23 whitespace-run tokens) are literal UTF-8 strings;
- special tokens carry no bytes; they are kept apart under their content string.

Leading-space convention: token bytes are taken literally, so SentencePiece's dummy-prefix ``▁``
is a real space here (``[▁Hello]`` is b" Hello"). Decoders that strip it (the ``Strip`` step of
transformers' Llama decoder) are deliberately not applied: a member's token sequence always
denotes the plain concatenation of its token bytes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from typing import Any

_BYTE_FALLBACK_PIECE = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")
_METASPACE = "\u2581"


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte → printable character table."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    chars = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return {byte: chr(char) for byte, char in zip(printable, chars)}


UNICODE_TO_BYTE = {char: byte for byte, char in _bytes_to_unicode().items()}


@dataclasses.dataclass(frozen=True)
class MemberVocab:
    """Canonical view of one tokenizer.

    token_bytes: one entry per id in ``[0, size)``: the token's bytes, or None for special
        tokens and ids the tokenizer does not define.
    specials: id → content string of every special token (EOS included).
    byte_fallback_ids: ids of ``<0xNN>`` byte tokens (the last-resort spelling of a byte).
    added_ids: ids of non-special added tokens (matched before the model, so the tokenizer
        itself emits them, e.g. NeoX's whitespace runs).
    eos_id: the tokenizer's EOS id.
    """

    token_bytes: tuple[bytes | None, ...]
    specials: dict[int, str]
    byte_fallback_ids: frozenset[int]
    added_ids: frozenset[int]
    eos_id: int

    @property
    def size(self) -> int:
        """Highest defined id + 1."""
        return len(self.token_bytes)

    def preference(self, token_id: int) -> int:
        """Rank among ids with equal bytes (lower wins): added token, model piece, byte fallback."""
        return 0 if token_id in self.added_ids else 2 if token_id in self.byte_fallback_ids else 1

    def preferred_ids(self) -> dict[bytes, int]:
        """bytes → the id the tokenizer emits for them (lowest preference, then lowest id)."""
        preferred: dict[bytes, int] = {}
        for token_id, token in enumerate(self.token_bytes):
            if token is None:
                continue
            current = preferred.get(token)
            if current is None or self.preference(token_id) < self.preference(current):
                preferred[token] = token_id
        return preferred

    def duplicate_count(self) -> int:
        """How many byte strings are spelled by more than one token id."""
        seen: dict[bytes, int] = {}
        for token in self.token_bytes:
            if token is not None:
                seen[token] = seen.get(token, 0) + 1
        return sum(1 for count in seen.values() if count > 1)

    def fingerprint(self, model_vocab_size: int) -> bytes:
        """sha256 over every token's bytes, the specials, EOS and the model's vocabulary size."""
        digest = hashlib.sha256()
        digest.update(f"{self.size}:{self.eos_id}:{model_vocab_size}:".encode())
        for token in self.token_bytes:
            digest.update(b"\x00" if token is None else len(token).to_bytes(4, "little") + token)
        digest.update(json.dumps(sorted(self.specials.items())).encode())
        digest.update(json.dumps([sorted(self.byte_fallback_ids), sorted(self.added_ids)]).encode())
        return digest.digest()

    def decode(self, token_ids) -> bytes:
        """Concatenated bytes of ``token_ids`` (specials contribute nothing)."""
        return b"".join(self.token_bytes[i] or b"" for i in token_ids)


def _decoder_steps(decoder: dict[str, Any] | None) -> list[dict[str, Any]]:
    if decoder is None:
        return []
    if decoder["type"] == "Sequence":
        return [step for inner in decoder["decoders"] for step in _decoder_steps(inner)]
    return [decoder]


def _decoding_style(spec: dict[str, Any]) -> tuple[str, bool]:
    """('byte_level' | 'metaspace' | 'literal', byte_fallback) from a tokenizer.json spec."""
    steps = _decoder_steps(spec.get("decoder"))
    kinds = {step["type"] for step in steps}
    unsupported = kinds & {"WordPiece", "BPEDecoder", "CTC"}
    if unsupported:
        raise NotImplementedError(
            f"cannot map tokens to exact bytes for decoder {sorted(unsupported)}"
        )
    byte_fallback = bool(spec["model"].get("byte_fallback")) or "ByteFallback" in kinds
    if "ByteLevel" in kinds:
        return "byte_level", byte_fallback
    replaces_metaspace = any(
        step["type"] == "Replace" and step["pattern"].get("String") == _METASPACE for step in steps
    )
    if "Metaspace" in kinds or replaces_metaspace:
        return "metaspace", byte_fallback
    return "literal", byte_fallback


def _piece_bytes(piece: str, style: str) -> bytes:
    if style == "byte_level":
        try:
            return bytes(UNICODE_TO_BYTE[char] for char in piece)
        except KeyError:
            return piece.encode("utf-8")
    if style == "metaspace":
        return piece.replace(_METASPACE, " ").encode("utf-8")
    return piece.encode("utf-8")


def member_vocab(tokenizer) -> MemberVocab:
    """Canonical bytes of every token of a transformers tokenizer with a `tokenizers` backend.

    Raises ValueError when the tokenizer has no EOS token.
    """
    if tokenizer.eos_token_id is None:
        raise ValueError(
            f"{type(tokenizer).__name__} has no EOS token; set tokenizer.eos_token before aligning "
            "(every member's EOS becomes the one shared union EOS)"
        )
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise TypeError(
            f"{type(tokenizer).__name__} has no `tokenizers` backend; load it as a fast tokenizer "
            "(PreTrainedTokenizerFast / TokenizersBackend)"
        )
    spec = json.loads(backend.to_str())
    style, byte_fallback = _decoding_style(spec)
    model_vocab = backend.get_vocab(with_added_tokens=False)
    added = {token["id"]: token for token in spec.get("added_tokens", [])}
    size = max(max(model_vocab.values(), default=-1), max(added, default=-1)) + 1
    token_bytes: list[bytes | None] = [None] * size
    byte_fallback_ids = set()
    for piece, token_id in model_vocab.items():
        match = _BYTE_FALLBACK_PIECE.match(piece) if byte_fallback else None
        if match:
            token_bytes[token_id] = bytes([int(match.group(1), 16)])
            byte_fallback_ids.add(token_id)
        else:
            token_bytes[token_id] = _piece_bytes(piece, style)
    specials, added_ids = {}, set()
    for token_id, token in added.items():
        byte_fallback_ids.discard(token_id)
        if token["special"] or token_id == tokenizer.eos_token_id:
            specials[token_id] = token["content"]
            token_bytes[token_id] = None
        else:
            added_ids.add(token_id)
            token_bytes[token_id] = token["content"].encode("utf-8")
    if tokenizer.eos_token_id not in specials:
        specials[tokenizer.eos_token_id] = tokenizer.eos_token
        token_bytes[tokenizer.eos_token_id] = None
    return MemberVocab(
        tuple(token_bytes),
        specials,
        frozenset(byte_fallback_ids),
        frozenset(added_ids),
        tokenizer.eos_token_id,
    )
