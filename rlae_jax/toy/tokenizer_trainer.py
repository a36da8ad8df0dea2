"""Tokenizers the project trains itself (with the `tokenizers` library), in the two styles RLAE must
bridge: GPT-2-style byte-level BPE (`Ġ`) and SentencePiece-style `▁` Unigram with `<0xNN>` byte
fallback. Used by the embedded demo and by tests; real members bring their own tokenizers."""

from __future__ import annotations

import json
from typing import Iterable

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

BYTE_LEVEL_EOS = "<|endoftext|>"


def train_byte_level_bpe(texts: Iterable[str], vocab_size: int = 400) -> PreTrainedTokenizerFast:
    """GPT-2-style byte-level BPE (all 256 bytes in the alphabet); EOS `<|endoftext|>` also pads."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[BYTE_LEVEL_EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(list(texts), trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, eos_token=BYTE_LEVEL_EOS, pad_token=BYTE_LEVEL_EOS
    )


METASPACE_SPECIALS = ["<unk>", "<s>", "</s>"]
BYTE_PIECES = [f"<0x{b:02X}>" for b in range(256)]


def metaspace_pipeline(model) -> Tokenizer:
    """A SentencePiece-style tokenizer around `model`: spaces become `▁` (one prepended to the
    text), words split before `▁`, decoding maps `▁` back to spaces and `<0xNN>` pieces back to
    bytes."""
    tokenizer = Tokenizer(model)
    tokenizer.normalizer = normalizers.Replace(" ", "\u2581")
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(
        replacement="\u2581", prepend_scheme="first", split=True
    )
    tokenizer.decoder = decoders.Sequence(
        [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()]
    )
    return tokenizer


def metaspace_fast(tokenizer: Tokenizer) -> PreTrainedTokenizerFast:
    tokenizer.add_special_tokens(METASPACE_SPECIALS)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="</s>",
    )


def train_metaspace_bpe(texts: Iterable[str], vocab_size: int = 400) -> PreTrainedTokenizerFast:
    """Llama-2-style BPE: `▁` for spaces, `<0xNN>` byte fallback pieces appended to the trained
    vocabulary (given to the trainer they would become special tokens), specials `<unk>`, `<s>`,
    `</s>` (EOS, also the pad)."""
    tokenizer = metaspace_pipeline(models.BPE(unk_token="<unk>"))
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=METASPACE_SPECIALS, show_progress=False
    )
    tokenizer.train_from_iterator(list(texts), trainer)
    model = json.loads(tokenizer.to_str())["model"]
    vocab = dict(model["vocab"])
    for piece in BYTE_PIECES:
        vocab.setdefault(piece, len(vocab))
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    return metaspace_fast(
        metaspace_pipeline(models.BPE(vocab, merges, unk_token="<unk>", byte_fallback=True))
    )


def train_metaspace_unigram(texts: Iterable[str], vocab_size: int = 300) -> PreTrainedTokenizerFast:
    """SentencePiece-style Unigram with `<0xNN>` byte fallback (set on the model: the trainer's own
    flag is ignored) and the same specials as `train_metaspace_bpe`. Note: with word splitting, the
    `tokenizers` Unigram trainer learns single characters only; prefer the BPE for real use."""
    tokenizer = metaspace_pipeline(models.Unigram())
    trainer = trainers.UnigramTrainer(
        vocab_size=vocab_size,
        special_tokens=METASPACE_SPECIALS,
        unk_token="<unk>",
        initial_alphabet=[],
        show_progress=False,
    )
    tokenizer.train_from_iterator(list(texts), trainer)
    vocab = [tuple(entry) for entry in json.loads(tokenizer.to_str())["model"]["vocab"]]
    specials, pieces = vocab[: len(METASPACE_SPECIALS)], vocab[len(METASPACE_SPECIALS) :]
    # the trainer breaks ties between equally frequent pieces in a hash order that changes from run
    # to run (their scores then differ by ~1e-4): rounded to 3 decimals, ties ordered by piece, the
    # same texts give the same tokenizer
    vocab = specials + sorted(
        ((piece, round(score, 3)) for piece, score in pieces), key=lambda e: (-e[1], e[0])
    )
    known = {piece for piece, _ in vocab}
    vocab += [(piece, -100.0) for piece in BYTE_PIECES if piece not in known]
    return metaspace_fast(metaspace_pipeline(models.Unigram(vocab, unk_id=0, byte_fallback=True)))
