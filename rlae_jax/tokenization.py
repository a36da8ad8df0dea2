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
    """GPT-2-style byte-level BPE (all 256 bytes in the alphabet); EOS `<|endoftext|>`, also the pad."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[BYTE_LEVEL_EOS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(list(texts), trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token=BYTE_LEVEL_EOS, pad_token=BYTE_LEVEL_EOS)


def train_metaspace_unigram(texts: Iterable[str], vocab_size: int = 300) -> PreTrainedTokenizerFast:
    """SentencePiece-style Unigram: `▁` for spaces, `<0xNN>` byte fallback (set on the model: the
    trainer's own flag is ignored), specials `<unk>`, `<s>`, `</s>` (EOS, also the pad)."""
    specials = ["<unk>", "<s>", "</s>"]
    trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=specials, unk_token="<unk>",
                                      initial_alphabet=[], show_progress=False)
    tokenizer = Tokenizer(models.Unigram())
    tokenizer.normalizer = normalizers.Replace(" ", "\u2581")
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first", split=True)
    tokenizer.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()])
    tokenizer.train_from_iterator(list(texts), trainer)
    vocab = [tuple(entry) for entry in json.loads(tokenizer.to_str())["model"]["vocab"]]
    known = {piece for piece, _ in vocab}
    vocab += [(f"<0x{b:02X}>", -100.0) for b in range(256) if f"<0x{b:02X}>" not in known]
    with_bytes = Tokenizer(models.Unigram(vocab, unk_id=0, byte_fallback=True))
    with_bytes.normalizer = tokenizer.normalizer
    with_bytes.pre_tokenizer = tokenizer.pre_tokenizer
    with_bytes.decoder = tokenizer.decoder
    with_bytes.add_special_tokens(specials)
    return PreTrainedTokenizerFast(tokenizer_object=with_bytes, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                   pad_token="</s>")
