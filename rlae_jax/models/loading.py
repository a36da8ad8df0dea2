"""Load Hugging Face checkpoints (local folder, hub id, `.gguf` file or installed preset) into a
Member.

Weights are placed through one declarative table per family: our parameter path (with `{i}` for
the layer index) → the Hugging Face tensor name and whether the `[out, in]` matrix is transposed.
No torch is needed.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import warnings

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rlae_jax.models.config import ModelConfig, config_from_hf
from rlae_jax.models.member import Member, build_model, resolve_dtype

TRANSPOSE = True  # HF nn.Linear stores [out, in]; nnx.Linear kernels are [in, out]

DECODER_WEIGHTS = {
    "embedding.embedding": ("model.embed_tokens.weight", False),
    "layers.{i}.input_norm.scale": ("model.layers.{i}.input_layernorm.weight", False),
    "layers.{i}.q_proj.kernel": ("model.layers.{i}.self_attn.q_proj.weight", TRANSPOSE),
    "layers.{i}.q_proj.bias": ("model.layers.{i}.self_attn.q_proj.bias", False),
    "layers.{i}.k_proj.kernel": ("model.layers.{i}.self_attn.k_proj.weight", TRANSPOSE),
    "layers.{i}.k_proj.bias": ("model.layers.{i}.self_attn.k_proj.bias", False),
    "layers.{i}.v_proj.kernel": ("model.layers.{i}.self_attn.v_proj.weight", TRANSPOSE),
    "layers.{i}.v_proj.bias": ("model.layers.{i}.self_attn.v_proj.bias", False),
    "layers.{i}.o_proj.kernel": ("model.layers.{i}.self_attn.o_proj.weight", TRANSPOSE),
    "layers.{i}.o_proj.bias": ("model.layers.{i}.self_attn.o_proj.bias", False),
    "layers.{i}.q_norm.scale": ("model.layers.{i}.self_attn.q_norm.weight", False),
    "layers.{i}.k_norm.scale": ("model.layers.{i}.self_attn.k_norm.weight", False),
    "layers.{i}.post_attention_norm.scale": (
        "model.layers.{i}.post_attention_layernorm.weight",
        False,
    ),
    "layers.{i}.gate_proj.kernel": ("model.layers.{i}.mlp.gate_proj.weight", TRANSPOSE),
    "layers.{i}.gate_proj.bias": ("model.layers.{i}.mlp.gate_proj.bias", False),
    "layers.{i}.up_proj.kernel": ("model.layers.{i}.mlp.up_proj.weight", TRANSPOSE),
    "layers.{i}.up_proj.bias": ("model.layers.{i}.mlp.up_proj.bias", False),
    "layers.{i}.down_proj.kernel": ("model.layers.{i}.mlp.down_proj.weight", TRANSPOSE),
    "layers.{i}.down_proj.bias": ("model.layers.{i}.mlp.down_proj.bias", False),
    "norm.scale": ("model.norm.weight", False),
    "lm_head.kernel": ("lm_head.weight", TRANSPOSE),
}

GPT2_WEIGHTS = {  # GPT-2's Conv1D weights are already [in, out]
    "embedding.embedding": ("transformer.wte.weight", False),
    "position_embedding.embedding": ("transformer.wpe.weight", False),
    "layers.{i}.ln_1.scale": ("transformer.h.{i}.ln_1.weight", False),
    "layers.{i}.ln_1.bias": ("transformer.h.{i}.ln_1.bias", False),
    "layers.{i}.c_attn.kernel": ("transformer.h.{i}.attn.c_attn.weight", False),
    "layers.{i}.c_attn.bias": ("transformer.h.{i}.attn.c_attn.bias", False),
    "layers.{i}.c_proj.kernel": ("transformer.h.{i}.attn.c_proj.weight", False),
    "layers.{i}.c_proj.bias": ("transformer.h.{i}.attn.c_proj.bias", False),
    "layers.{i}.ln_2.scale": ("transformer.h.{i}.ln_2.weight", False),
    "layers.{i}.ln_2.bias": ("transformer.h.{i}.ln_2.bias", False),
    "layers.{i}.c_fc.kernel": ("transformer.h.{i}.mlp.c_fc.weight", False),
    "layers.{i}.c_fc.bias": ("transformer.h.{i}.mlp.c_fc.bias", False),
    "layers.{i}.mlp_proj.kernel": ("transformer.h.{i}.mlp.c_proj.weight", False),
    "layers.{i}.mlp_proj.bias": ("transformer.h.{i}.mlp.c_proj.bias", False),
    "norm.scale": ("transformer.ln_f.weight", False),
    "norm.bias": ("transformer.ln_f.bias", False),
    "lm_head.kernel": ("lm_head.weight", TRANSPOSE),
}

GEMMA3_WEIGHTS = {
    **DECODER_WEIGHTS,
    "layers.{i}.pre_feedforward_norm.scale": (
        "model.layers.{i}.pre_feedforward_layernorm.weight",
        False,
    ),
    "layers.{i}.post_feedforward_norm.scale": (
        "model.layers.{i}.post_feedforward_layernorm.weight",
        False,
    ),
}

WEIGHT_TABLES = {"decoder": DECODER_WEIGHTS, "gemma3": GEMMA3_WEIGHTS, "gpt2": GPT2_WEIGHTS}
# Prefixes some checkpoints omit (the original GPT-2 files store `h.0...` rather than
# `transformer.h.0...`).
OPTIONAL_PREFIXES = ("transformer.", "model.")
# Buffers saved by some checkpoints that are not parameters.
IGNORED_TENSORS = re.compile(r"(\.attn\.bias|\.attn\.masked_bias|rotary_emb\.inv_freq)$")


def hf_tensor_name(family: str, param_path: str) -> tuple[str, bool]:
    """Map our parameter path (e.g. 'layers.3.q_proj.kernel') to (HF tensor name, transpose?)."""
    match = re.match(r"^layers\.(\d+)\.(.+)$", param_path)
    key = f"layers.{{i}}.{match.group(2)}" if match else param_path
    table = WEIGHT_TABLES[family]
    if key not in table:
        raise KeyError(
            f"no Hugging Face tensor is mapped to parameter {param_path!r} for family {family!r}"
        )
    name, transpose = table[key]
    return (name.format(i=match.group(1)) if match else name), transpose


class TensorSource:
    """Read-by-name access to a checkpoint's tensors (safetensors shards or an in-memory dict)."""

    def __init__(self, tensors: dict | None = None, files: dict[str, str] | None = None):
        self._tensors = tensors or {}
        self._files = files or {}  # tensor name -> safetensors file

    @classmethod
    def from_folder(cls, folder: pathlib.Path) -> "TensorSource":
        index = folder / "model.safetensors.index.json"
        if index.exists():
            weight_map = json.loads(index.read_text())["weight_map"]
            return cls(files={name: str(folder / shard) for name, shard in weight_map.items()})
        single = folder / "model.safetensors"
        if not single.exists():
            raise FileNotFoundError(
                f"{folder} has neither model.safetensors nor model.safetensors.index.json "
                "(only safetensors checkpoints are supported; re-save with save_pretrained)"
            )
        from safetensors import safe_open

        with safe_open(single, framework="flax") as f:
            return cls(files={name: str(single) for name in f.keys()})

    def names(self) -> set[str]:
        return set(self._tensors) | set(self._files)

    def resolve(self, name: str) -> str | None:
        """The stored name for `name`, allowing for an omitted optional prefix."""
        if name in self._tensors or name in self._files:
            return name
        for prefix in OPTIONAL_PREFIXES:
            if name.startswith(prefix) and name[len(prefix) :] in self.names():
                return name[len(prefix) :]
        return None

    def read(self, name: str) -> jax.Array:
        if name in self._tensors:
            return jnp.asarray(self._tensors[name])
        from safetensors import safe_open

        with safe_open(self._files[name], framework="flax") as f:
            return f.get_tensor(name)


def load_state(
    config: ModelConfig, source: TensorSource, dtype="float32"
) -> tuple[nnx.GraphDef, nnx.State]:
    """Build the model's (graphdef, state) with every parameter read from `source` via the table."""
    dtype = resolve_dtype(dtype)
    abstract = nnx.eval_shape(lambda: build_model(config, dtype))
    graphdef, abstract_state = nnx.split(abstract)
    used, filled = set(), []
    for path, variable in nnx.to_flat_state(abstract_state):
        param_path = ".".join(str(p) for p in path)
        hf_name, transpose = hf_tensor_name(config.family, param_path)
        stored = source.resolve(hf_name)
        if stored is None:
            raise KeyError(
                f"checkpoint is missing tensor {hf_name!r} (needed for parameter {param_path})"
            )
        tensor = source.read(stored)
        tensor = tensor.T if transpose else tensor
        if tuple(tensor.shape) != tuple(variable.shape):
            raise ValueError(
                f"tensor {hf_name!r} has shape {tuple(tensor.shape)} but parameter {param_path} "
                f"needs {tuple(variable.shape)}: the checkpoint does not match its config"
            )
        used.add(stored)
        filled.append((path, variable.replace(jnp.asarray(tensor, dtype))))
    unused = sorted(n for n in source.names() - used if not IGNORED_TENSORS.search(n))
    if config.tie_word_embeddings:
        unused = [n for n in unused if not n.endswith("lm_head.weight")]
    if unused:
        warnings.warn(
            f"checkpoint tensors not used by the {config.model_type} port: {unused[:8]}"
            + (" ..." if len(unused) > 8 else "")
        )
    return graphdef, nnx.from_flat_state(filled)


TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")


def load_tokenizer(folder: pathlib.Path):
    """The folder's own tokenizer, or a `.gguf` file's (from its metadata). A `tokenizer.json` is
    used as is (AutoTokenizer could swap in a model-specific class, e.g. Qwen2Tokenizer, that
    re-splits text differently)."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    if folder.suffix == ".gguf":
        from rlae_jax.models.gguf import load_gguf_tokenizer

        return load_gguf_tokenizer(folder)
    if (folder / "tokenizer.json").exists():
        return PreTrainedTokenizerFast.from_pretrained(str(folder))
    if not any((folder / f).exists() for f in TOKENIZER_FILES):
        raise FileNotFoundError(
            f"{folder} holds no tokenizer ({', '.join(TOKENIZER_FILES)}); "
            "pass tokenizer=... to from_pretrained"
        )
    return AutoTokenizer.from_pretrained(str(folder))


def resolve_checkpoint(path_or_repo_id: str) -> pathlib.Path:
    """A local folder/file, an installed offline preset (`rlae_jax.models.installed.PRESETS`), or a
    hub snapshot downloaded on demand (clear error when offline or not installed)."""
    from rlae_jax.models.installed import PRESETS, installed_gguf

    path = pathlib.Path(os.path.expanduser(str(path_or_repo_id)))
    if path.exists():
        return path
    if str(path_or_repo_id) in PRESETS:
        return installed_gguf(str(path_or_repo_id))
    if str(path_or_repo_id).startswith((".", "/", "~")) or str(path_or_repo_id).count("/") != 1:
        raise FileNotFoundError(
            f"no checkpoint at {path_or_repo_id!r}: not a local path, an installed preset "
            f"({', '.join(PRESETS)}) nor an 'org/name' hub id"
        )
    from huggingface_hub import snapshot_download

    try:
        return pathlib.Path(
            snapshot_download(
                str(path_or_repo_id),
                allow_patterns=[
                    "*.json",
                    "*.safetensors",
                    "tokenizer*",
                    "*.model",
                    "*.tiktoken",
                    "merges.txt",
                ],
            )
        )
    except Exception as error:  # network, auth, missing repo: all end the same way for the user
        raise OSError(
            f"could not fetch {path_or_repo_id!r} from the Hugging Face hub "
            f"({type(error).__name__}: {error}). If this machine is offline, download the "
            "checkpoint elsewhere and pass its local folder."
        ) from error


def from_pretrained(
    path_or_repo_id: str, dtype="float32", name: str | None = None, tokenizer=None
) -> Member:
    """Load a Member from a local HF folder (config.json + safetensors, sharded or not), a hub id,
    a `.gguf` file (llama, qwen2, qwen3, gemma3; float or llama.cpp-quantized tensors, dequantized
    on load) or an installed preset name ("smollm2-135m-instruct", "gemma-3-270m").
    `dtype` is "float32" or "bfloat16" (parameters and compute). `tokenizer` overrides the
    checkpoint's own (a transformers tokenizer, or a folder or `.gguf` file holding one)."""
    from transformers import AutoConfig

    from rlae_jax.models.installed import PRESETS

    path = resolve_checkpoint(path_or_repo_id)
    if name is None:
        preset = str(path_or_repo_id) in PRESETS
        name = (
            str(path_or_repo_id) if preset else path.stem if path.suffix == ".gguf" else path.name
        )
    if path.suffix == ".gguf":
        from rlae_jax.models.gguf import read_gguf

        checkpoint = read_gguf(path)
        config = config_from_hf(AutoConfig.for_model(checkpoint.model_type, **checkpoint.config))
        graphdef, state = load_state(config, TensorSource(tensors=checkpoint.tensors), dtype)
    else:
        if not (path / "config.json").exists():
            raise FileNotFoundError(
                f"{path} has no config.json: not a Hugging Face checkpoint folder"
            )
        config = config_from_hf(AutoConfig.from_pretrained(str(path)))
        graphdef, state = load_state(config, TensorSource.from_folder(path), dtype)
    tokenizer = load_tokenizer(path) if tokenizer is None else tokenizer
    if isinstance(tokenizer, (str, os.PathLike)):
        tokenizer = load_tokenizer(pathlib.Path(tokenizer))
    model = nnx.merge(graphdef, state)
    return Member.from_model(model, tokenizer=tokenizer, name=name)


def to_hf_config(config: ModelConfig):
    """The transformers config object describing `config` (inverse of `config_from_hf`)."""
    from transformers import AutoConfig

    tokens = dict(
        bos_token_id=config.bos_token_id,
        pad_token_id=config.pad_token_id,
        eos_token_id=list(config.eos_token_ids)
        if len(config.eos_token_ids) > 1
        else (config.eos_token_ids[0] if config.eos_token_ids else None),
    )
    if config.model_type == "gpt2":
        return AutoConfig.for_model(
            "gpt2",
            vocab_size=config.vocab_size,
            n_positions=config.max_position_embeddings,
            n_embd=config.hidden_size,
            n_layer=config.num_layers,
            n_head=config.num_heads,
            n_inner=config.intermediate_size,
            layer_norm_epsilon=config.norm_eps,
            activation_function=config.hidden_act,
            tie_word_embeddings=config.tie_word_embeddings,
            **tokens,
        )
    return AutoConfig.for_model(
        config.model_type,
        vocab_size=config.vocab_size,
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads,
        num_key_value_heads=config.num_kv_heads,
        head_dim=config.head_dim,
        max_position_embeddings=config.max_position_embeddings,
        rms_norm_eps=config.norm_eps,
        tie_word_embeddings=config.tie_word_embeddings,
        **_family_hf_fields(config),
        **tokens,
    )


def _family_hf_fields(config: ModelConfig) -> dict:
    """The Llama-style families' own transformers fields: activation, RoPE, sliding windows,
    biases, Gemma 3's scalars (ValueError for windows a family's config cannot express)."""
    windows = {w for w in config.layer_windows if w is not None}
    if len(windows) > 1:
        raise ValueError(f"layers with sliding windows {sorted(windows)} cannot be exported")
    window = windows.pop() if windows else None
    layer_types = [
        "full_attention" if w is None else "sliding_attention" for w in config.layer_windows
    ]
    rope = dict(rope_type=config.rope_type, rope_theta=config.rope_theta, **config.rope_options)
    extra = dict(hidden_act=config.hidden_act, rope_parameters=rope)
    if config.model_type == "mistral":
        extra["sliding_window"] = window
    elif config.model_type in ("qwen2", "qwen3"):
        extra.update(
            use_sliding_window=window is not None, sliding_window=window, layer_types=layer_types
        )
    elif config.model_type == "gemma3_text":
        extra = dict(
            hidden_activation=config.hidden_act,
            sliding_window=window,
            layer_types=layer_types,
            query_pre_attn_scalar=config.query_pre_attn_scalar,
            final_logit_softcapping=config.final_logit_softcap,
            rope_parameters={
                "full_attention": rope,
                "sliding_attention": dict(config.local_rope or rope),
            },
        )
    elif window is not None:
        raise ValueError(f"{config.model_type} configs with sliding windows cannot be exported")
    if config.model_type in ("llama", "qwen3", "gemma3_text"):
        extra.update(attention_bias=config.qkv_bias)
    if config.model_type == "llama":
        extra.update(mlp_bias=config.mlp_bias)
    return extra


def save_pretrained(member: Member, folder: str | os.PathLike) -> pathlib.Path:
    """Write `member` as a Hugging Face folder (config.json, model.safetensors, tokenizer files)
    that `from_pretrained` — and transformers' PyTorch classes — load back."""
    from safetensors.flax import save_file

    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    to_hf_config(member.config).save_pretrained(folder)
    tensors = {}
    for path, value in nnx.to_flat_state(member.state):
        name, transpose = hf_tensor_name(member.config.family, ".".join(str(p) for p in path))
        array = value.get_value() if hasattr(value, "get_value") else value.value
        tensors[name] = jnp.asarray(array.T if transpose else array)
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    if member.tokenizer is not None:
        member.tokenizer.save_pretrained(folder)
    return folder


def param_count(config: ModelConfig) -> int:
    """Number of parameters of a config, computed with `jax.eval_shape` (nothing is allocated)."""
    abstract = nnx.eval_shape(lambda: build_model(config))
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(nnx.state(abstract))))
