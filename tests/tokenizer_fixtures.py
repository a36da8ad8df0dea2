"""Real fixture tokenizers (and small trained ones) as transformers tokenizers, for tests.

Loaders take the fixture folder (from conftest.fixture_path, which skips when it is absent).
"""

from __future__ import annotations

import pathlib

from hypothesis import strategies as st

from transformers import AutoTokenizer, LlamaTokenizer, PreTrainedTokenizerFast
from transformers.convert_slow_tokenizer import TikTokenConverter

from rlae_jax.toy import tokenizer_trainer

LLAMA3_PATTERN = (  # the split regex of meta-llama's tokenizer.py
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
LLAMA3_SPECIALS = [
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|reserved_special_token_0|>",
    "<|reserved_special_token_1|>",
    "<|finetune_right_pad_id|>",
    "<|step_id|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eom_id|>",
    "<|eot_id|>",
    "<|python_tag|>",
] + [f"<|reserved_special_token_{i}|>" for i in range(2, 247)]

# fixture name → folder under tokenizers/ (the file each loader reads must exist there)
REAL_TOKENIZERS = {
    "gpt2": "gpt2",
    "neox": "gpt-neox-20b",
    "llama2": "llama2-spm",
    "mistral_v1": "mistral-v1-spm",
    "mistral_v3": "mistral-v3-spm",
    "llama3": "llama3-tiktoken",
}


def load_real_tokenizer(name: str, folder: pathlib.Path):
    """One of REAL_TOKENIZERS from its fixture folder as a `tokenizers`-backed transformers one."""
    if name == "gpt2":
        return AutoTokenizer.from_pretrained(folder)
    if name == "neox":
        return PreTrainedTokenizerFast(
            tokenizer_file=str(folder / "tokenizer.json"), eos_token="<|endoftext|>"
        )
    if name in ("llama2", "mistral_v1", "mistral_v3"):
        return LlamaTokenizer.from_pretrained(folder)
    if name == "llama3":
        converted = TikTokenConverter(
            vocab_file=str(folder / "tokenizer.model"),
            pattern=LLAMA3_PATTERN,
            extra_special_tokens=LLAMA3_SPECIALS,
        ).converted()
        return PreTrainedTokenizerFast(
            tokenizer_object=converted, bos_token="<|begin_of_text|>", eos_token="<|end_of_text|>"
        )
    raise KeyError(name)


TRAINING_TEXT = [
    "Once upon a time there was a little robot who liked numbers like 42 and 1234.",
    "The quick brown fox jumps over the lazy dog!  Tabs\tand\nnew lines too.",
    "Ensembles of language models mix their next-token distributions in one vocabulary.",
    "数字と日本語のテキスト、そして中文句子。 Emoji: 🙂🚀 café naïve résumé.",
] * 20


def train_byte_level_bpe(vocab_size: int = 400) -> PreTrainedTokenizerFast:
    """GPT-2-style byte-level BPE trained on TRAINING_TEXT."""
    return tokenizer_trainer.train_byte_level_bpe(TRAINING_TEXT, vocab_size)


def train_metaspace_unigram(vocab_size: int = 300) -> PreTrainedTokenizerFast:
    """SentencePiece-style `▁` Unigram with byte fallback trained on TRAINING_TEXT."""
    return tokenizer_trainer.train_metaspace_unigram(TRAINING_TEXT, vocab_size)


def unicode_text():
    """Hypothesis strategy: text mixing any code points, emoji, CJK, whitespace runs, digits."""
    pieces = st.one_of(
        st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=6),
        st.sampled_from(
            ["🙂", "🚀", "👩‍👩‍👧", "🇯🇵", "日本語", "中文句子", "한국어", "café", "naïve"]
        ),
        st.text(st.sampled_from(" \t\n\r\u00a0"), min_size=1, max_size=9),
        st.from_regex(r"[0-9]{1,7}", fullmatch=True),
        st.sampled_from([" the", " Hello", " world", "ing", ".", "!", "Once upon a time"]),
    )
    return st.lists(pieces, max_size=8).map("".join)
