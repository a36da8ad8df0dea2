"""The embedded demo's two members, trained by the project itself (no downloads) and cached:

- "reverser": GPT-2 architecture with a byte-level BPE tokenizer (`Ġ` style);
- "capitalizer": Llama architecture with a Llama-2-style `▁` BPE tokenizer with byte fallback.

Each learns the synthetic task (rlae_jax/tasks/synthetic.py) with its own, partly wrong, skill.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import shutil
import tempfile
import warnings

from rlae_jax.models import Member, ModelConfig, build_model, from_pretrained, save_pretrained
from rlae_jax.models import installed
from rlae_jax.tasks.synthetic import member_corpus, tokenizer_corpus
from rlae_jax.toy.tokenizer_trainer import train_byte_level_bpe, train_metaspace_bpe
from rlae_jax.toy.train_lm import train_lm

DEFAULT_CACHE = installed.cache_dir()  # $RLAE_CACHE, else ~/.cache/rlae_jax
MEMBER_STYLES = {"reverser": ("gpt2", "byte_level"), "capitalizer": ("llama", "metaspace")}
RECIPE_VERSION = 3  # bump when the recipe below changes, so cached members are retrained


def demo_model_config(
    model_type: str, tokenizer, hidden_size: int = 64, num_layers: int = 2
) -> ModelConfig:
    """A tiny member config of the given family sized to the tokenizer."""
    gpt2 = model_type == "gpt2"
    return ModelConfig(
        model_type=model_type,
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=4 * hidden_size if gpt2 else 3 * hidden_size,
        num_layers=num_layers,
        num_heads=4,
        num_kv_heads=4 if gpt2 else 2,
        head_dim=hidden_size // 4,
        max_position_embeddings=128,
        norm_eps=1e-5,
        hidden_act="gelu_new" if gpt2 else "silu",
        tie_word_embeddings=gpt2,
        qkv_bias=gpt2,
        out_bias=gpt2,
        mlp_bias=gpt2,
        layer_windows=(None,) * num_layers,
        eos_token_ids=(tokenizer.eos_token_id,),
        bos_token_id=tokenizer.bos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def train_demo_member(
    skill: str, steps: int = 1500, seed: int = 0, progress: bool = True
) -> Member:
    """Train one demo member from scratch (tokenizer + model) on its own skill's corpus."""
    if skill not in MEMBER_STYLES:
        raise ValueError(f"unknown demo member {skill!r}; known: {', '.join(MEMBER_STYLES)}")
    model_type, style = MEMBER_STYLES[skill]
    texts = tokenizer_corpus()
    tokenizer = (
        train_byte_level_bpe(texts, 300)
        if style == "byte_level"
        else train_metaspace_bpe(texts, 120)
    )
    member = Member.from_model(
        build_model(demo_model_config(model_type, tokenizer), seed=seed), tokenizer, name=skill
    )
    member, _ = train_lm(
        member,
        member_corpus(skill, 4000, seed=seed + 7),
        steps=steps,
        length=32,
        seed=seed,
        progress=progress,
    )
    return member


def demo_member(
    skill: str,
    steps: int = 1500,
    seed: int = 0,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
) -> Member:
    """A demo member from the cache (an HF-format folder) or freshly trained and cached. The folder
    exists only complete (`save_atomically`); one that does not load is reported and rebuilt."""
    recipe = dict(skill=skill, steps=steps, seed=seed, version=RECIPE_VERSION)
    key = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]
    folder = pathlib.Path(cache_dir or DEFAULT_CACHE) / "demo_members" / f"{skill}-{key}"
    if folder.exists():
        try:
            return from_pretrained(str(folder), name=skill)
        except Exception as error:  # any unreadable file: the folder is rebuilt, not trusted
            warnings.warn(
                f"cached demo member {folder} does not load ({type(error).__name__}: {error}); "
                "deleting it and training the member again"
            )
            shutil.rmtree(folder)
    save_atomically(train_demo_member(skill, steps, seed, progress), folder)
    return from_pretrained(str(folder), name=skill)


def save_atomically(member: Member, folder: pathlib.Path) -> None:
    """`save_pretrained` into a temporary sibling folder, then one rename to `folder`: a process
    killed while saving leaves no `folder` (a `.partial` sibling at most). When another process
    renamed its copy first, that one is kept."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    partial = pathlib.Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.partial-"))
    try:
        save_pretrained(member, partial)
        os.replace(partial, folder)
    except OSError:
        if not (folder / "config.json").exists():
            raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)


def load_members(
    spec: str,
    dtype: str = "float32",
    member_steps: int = 1500,
    cache_dir: str | os.PathLike | None = None,
) -> list[Member]:
    """Members from a spec: "demo" (the two demo members) or comma-separated HF folders / hub ids /
    .gguf files."""
    if spec == "demo":
        return [
            demo_member(skill, steps=member_steps, cache_dir=cache_dir) for skill in MEMBER_STYLES
        ]
    paths = [p for p in spec.split(",") if p]
    if not paths:
        raise ValueError(
            "no members given: use 'demo' or comma-separated checkpoint paths / hub ids"
        )
    return [from_pretrained(path, dtype=dtype) for path in paths]
