"""Shared helpers for the benchmarks: machine info, tokenizers (real fixtures or trained fallbacks),
member configs of the benchmark sizes, and a median timer."""

from __future__ import annotations

import os
import pathlib
import platform
import time

import jax

from rlae_jax.models import ModelConfig
from rlae_jax.toy import tokenizer_trainer

REPO = pathlib.Path(__file__).resolve().parents[1]

PROMPT = "Once upon a time there was a little robot who liked to count"
PROMPTS = [
    PROMPT,
    "The quick brown fox",
    "Hello world! This is",
    "Alice and Bob exchanged 7 messages,",
    "Ensembles of language models",
    "12 + 30 =",
    "Question: Natalia sold clips to 48 of her friends in April.",
    "The capital of France is",
    "def fibonacci(n):",
    "In 1905, Albert Einstein published",
    "Q: What is 7 times 8? A:",
    "Dear diary, today I",
    "Ingredients: two eggs, flour, milk and",
    "The mitochondria is the",
    "Translate to French: good morning ->",
    "Janet's ducks lay 16 eggs per day. She eats three for breakfast",
]


def batch_prompts(batch: int, distinct: bool = True) -> list[str]:
    """`batch` prompts: PROMPT repeated (`distinct=False`: rows in lockstep), or PROMPTS in turn
    (rows of different lengths whose generations diverge, as in a dataset batch)."""
    return [PROMPTS[row % len(PROMPTS)] if distinct else PROMPT for row in range(batch)]


def task_prompts(batch: int) -> list[str]:
    """`batch` real-task prompts for the real members: reasoning-gym `gsm_symbolic` word problems
    (seed 0, GSM8K-style) in the plain "Question: ...\nAnswer:" format, cycled over the rows."""
    import reasoning_gym

    questions = [
        item["question"] for item in reasoning_gym.create_dataset("gsm_symbolic", size=8, seed=0)
    ]
    return [f"Question: {questions[row % len(questions)]}\nAnswer:" for row in range(batch)]


def machine_info() -> str:
    """One line: CPU model, cores, Python/jax/jaxlib versions and backend devices."""
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"CPU: {cpu}, {os.cpu_count()} cores | python {platform.python_version()} | jax "
        f"{jax.__version__} | backend {jax.default_backend()} "
        f"({', '.join(d.device_kind for d in jax.devices())})"
    )


def fixtures_root() -> pathlib.Path:
    """Tokenizer fixtures folder: $RLAE_FIXTURES or ../shared/fixtures relative to the repo root."""
    return (
        pathlib.Path(os.environ.get("RLAE_FIXTURES", REPO.parent / "shared" / "fixtures"))
        / "tokenizers"
    )


def real_tokenizers():
    """(GPT-2 50k byte-level BPE, Llama 2 32k SentencePiece, source note). Falls back to large
    trained tokenizers of the same two styles when the fixtures are absent, and says so."""
    root = fixtures_root()
    if (root / "gpt2" / "vocab.json").exists() and (
        root / "llama2-spm" / "tokenizer.model"
    ).exists():
        from transformers import AutoTokenizer, LlamaTokenizer

        return (
            AutoTokenizer.from_pretrained(root / "gpt2"),
            LlamaTokenizer.from_pretrained(root / "llama2-spm"),
            f"real GPT-2 50k + Llama 2 32k tokenizers from {root}",
        )
    return (
        *trained_tokenizers(8000, 4000),
        f"FALLBACK: fixtures not found under {root}; using tokenizers trained here (byte-level BPE "
        "8k + metaspace Unigram 4k)",
    )


def trained_tokenizers(bpe_size: int = 384, unigram_size: int = 200):
    """Small tokenizers of both styles trained on the benchmark prompts (byte-level BPE, `▁` Unigram
    + bytes)."""
    corpus = PROMPTS * 20
    return (
        tokenizer_trainer.train_byte_level_bpe(corpus, bpe_size),
        tokenizer_trainer.train_metaspace_unigram(corpus, unigram_size),
    )


def tiny_config(model_type: str, vocab_size: int, eos_id: int) -> ModelConfig:
    """2-layer, hidden-64 member config (GPT-2 style or Llama style)."""
    gpt2 = model_type == "gpt2"
    return ModelConfig(
        model_type=model_type,
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_layers=2,
        num_heads=4,
        num_kv_heads=4 if gpt2 else 2,
        head_dim=16,
        max_position_embeddings=1024,
        norm_eps=1e-5,
        hidden_act="gelu_new" if gpt2 else "silu",
        tie_word_embeddings=gpt2,
        qkv_bias=gpt2,
        out_bias=gpt2,
        mlp_bias=gpt2,
        layer_windows=(None, None),
        eos_token_ids=(eos_id,),
    )


def gpt2_124m_config() -> ModelConfig:
    """The GPT-2 124M preset."""
    from rlae_jax.models.config import config_from_hf
    from rlae_jax.models.presets import preset_hf_config

    return config_from_hf(preset_hf_config("gpt2"))


def llama_100m_config(vocab_size: int = 32000, eos_id: int = 2) -> ModelConfig:
    """A Llama-style ~106M member: hidden 768, 8 layers, SwiGLU 2048, untied head, 32k vocab."""
    return ModelConfig(
        model_type="llama",
        vocab_size=vocab_size,
        hidden_size=768,
        intermediate_size=2048,
        num_layers=8,
        num_heads=12,
        num_kv_heads=12,
        head_dim=64,
        max_position_embeddings=2048,
        norm_eps=1e-5,
        hidden_act="silu",
        tie_word_embeddings=False,
        layer_windows=(None,) * 8,
        bos_token_id=1,
        eos_token_ids=(eos_id,),
    )


def best_time(fn, repeats: int) -> float:
    """Fastest wall seconds of `repeats` calls of `fn()` (which must block until its result is
    ready): on shared cores other load only ever adds time, so the minimum is the least disturbed
    measurement."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def block(tree):
    """Wait for every array in a pytree."""
    return jax.tree.map(lambda x: x.block_until_ready() if isinstance(x, jax.Array) else x, tree)


def fmt_row(values, widths) -> str:
    return "  ".join(
        str(v).rjust(w) if i else str(v).ljust(w) for i, (v, w) in enumerate(zip(values, widths))
    )
