"""Tiny random Hugging Face models of every supported family, saved with `save_pretrained`, with a
small byte-level BPE tokenizer trained here by the `tokenizers` library (no downloads)."""

from __future__ import annotations

import pathlib

import jax

from rlae_jax.align import build_alignment
from rlae_jax.ensemble import Ensemble
from rlae_jax.models import Member, ModelConfig, build_model
from rlae_jax.toy.tokenizer_trainer import train_byte_level_bpe

# Member.prefill compiled (eagerly, each of the model's ops compiles on its own: hundreds of them)
prefill_jit = jax.jit(Member.prefill, static_argnums=3)

CORPUS = [
    "Once upon a time there was a little robot who liked to count numbers.",
    "The quick brown fox jumps over the lazy dog; 12 + 30 = 42.",
    "Hello world! This is a tiny corpus for a tiny tokenizer, with some punctuation: ,.;?",
    "Alice and Bob exchanged 7 messages, then 11 more, before the meeting at 5 pm.",
] * 20


def train_byte_level_tokenizer(vocab_size: int = 384):
    """A byte-level BPE tokenizer trained on CORPUS, with EOS (also used as pad)."""
    return train_byte_level_bpe(CORPUS, vocab_size)


def hf_config(family: str, vocab_size: int, eos_token_id: int):
    """A 2-layer random config; GQA where the family has it. Families: llama3 (llama3 rope scaling),
    mistral (sliding window 6), qwen2 (q/k/v bias, tied embeddings), gpt2, llama (plain),
    qwen3 (untied; head_dim 32 != hidden/heads; layer 1 slides a window of 6), qwen3_tied, gemma3:
    local, local, global layers (window 5), local RoPE base 100 and linear-scaled global base 10^4,
    query_pre_attn_scalar 24 != head_dim 32; gemma3_softcap adds final logit soft-capping at 3."""
    from transformers import (
        GPT2Config,
        Gemma3TextConfig,
        LlamaConfig,
        MistralConfig,
        Qwen2Config,
        Qwen3Config,
    )

    common = dict(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=112,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        eos_token_id=eos_token_id,
        bos_token_id=None,
        pad_token_id=eos_token_id,
        initializer_range=0.1,
    )
    if family == "llama":
        return LlamaConfig(**common)
    if family == "llama3":
        return LlamaConfig(
            **common,
            rope_parameters=dict(
                rope_type="llama3",
                rope_theta=500000.0,
                factor=8.0,
                low_freq_factor=1.0,
                high_freq_factor=4.0,
                original_max_position_embeddings=32,
            ),
        )
    if family == "mistral":
        return MistralConfig(**common, sliding_window=6)
    if family == "qwen2":
        return Qwen2Config(**common, tie_word_embeddings=True)
    if family == "qwen3":
        return Qwen3Config(
            **common,
            head_dim=32,
            tie_word_embeddings=False,
            use_sliding_window=True,
            sliding_window=6,
            max_window_layers=1,
        )
    if family == "qwen3_tied":
        return Qwen3Config(**common, head_dim=32, tie_word_embeddings=True)
    if family.startswith("gemma3"):
        common.update(num_hidden_layers=3, head_dim=32)
        return Gemma3TextConfig(
            **common,
            query_pre_attn_scalar=24,
            sliding_window=5,
            layer_types=["sliding_attention", "sliding_attention", "full_attention"],
            rope_parameters={
                "sliding_attention": dict(rope_type="default", rope_theta=100.0),
                "full_attention": dict(rope_type="linear", rope_theta=10000.0, factor=2.0),
            },
            final_logit_softcapping=3.0 if family == "gemma3_softcap" else None,
        )
    if family == "gpt2":
        return GPT2Config(
            vocab_size=vocab_size,
            n_positions=256,
            n_embd=64,
            n_layer=2,
            n_head=4,
            bos_token_id=eos_token_id,
            eos_token_id=eos_token_id,
            initializer_range=0.1,
        )
    raise KeyError(family)


def save_tiny_model(family: str, folder: pathlib.Path, tokenizer, seed: int = 0):
    """Build, save (model + tokenizer) and return the eval-mode torch model."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    config = hf_config(family, len(tokenizer), tokenizer.eos_token_id)
    model = AutoModelForCausalLM.from_config(config).eval()
    if family.startswith(("qwen3", "gemma3")):  # norms start at 1 (Gemma: 0); make them matter
        with torch.no_grad():
            for name, weight in model.named_parameters():
                if "norm" in name:
                    weight.add_(0.5 * torch.randn_like(weight))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return model


def random_member(model_type: str, tokenizer, seed: int, name: str, context: int = 512) -> Member:
    """A 2-layer random member whose LM head is scaled up so its distributions are peaked (no
    near-ties)."""
    config = ModelConfig(
        model_type=model_type,
        vocab_size=len(tokenizer),
        hidden_size=48,
        intermediate_size=96,
        num_layers=2,
        num_heads=4,
        num_kv_heads=4 if model_type == "gpt2" else 2,
        head_dim=12,
        max_position_embeddings=context,
        norm_eps=1e-5,
        hidden_act="gelu_new" if model_type == "gpt2" else "silu",
        tie_word_embeddings=False,
        qkv_bias=model_type == "gpt2",
        out_bias=model_type == "gpt2",
        mlp_bias=model_type == "gpt2",
        layer_windows=(None, None),
        eos_token_ids=(tokenizer.eos_token_id,),
    )
    member = Member.from_model(build_model(config, seed=seed), tokenizer, name=name)
    state = jax.tree_util.tree_map_with_path(
        lambda path, x: x * 40.0 if "lm_head" in jax.tree_util.keystr(path) else x, member.state
    )
    return member.replace(state=state)


def uncached_ensemble(members) -> Ensemble:
    """The members with their alignment built here (never read from or written to the cache)."""
    return Ensemble(
        members,
        build_alignment(
            [m.tokenizer for m in members],
            vocab_sizes=[m.config.vocab_size for m in members],
            use_cache=False,
        ),
    )
