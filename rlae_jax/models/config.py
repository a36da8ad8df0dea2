"""ModelConfig: the one architecture description every port reads, from a transformers config."""

from __future__ import annotations

import dataclasses
from typing import Any

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3", "gemma3_text", "gpt2")
SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Static, hashable description of one member architecture.

    `layer_windows[i]` is the sliding-window length of layer i (None = full causal attention).
    `rope_scaling` holds the non-theta entries of HF's `rope_parameters` as sorted (key, value)
    pairs. `local_rope` holds the whole `rope_parameters` (rope_type, rope_theta, scaling entries)
    of the sliding-window layers as sorted pairs when they have their own (Gemma 3); empty = as
    global.
    `qk_norm`: RMSNorm over each head's queries and keys before RoPE (Qwen 3, Gemma 3).
    `norm_plus_one`: every RMSNorm scales by `(1 + w)`, in float32 before the cast (Gemma).
    `query_pre_attn_scalar`: attention scores are `q·k / sqrt(it)`; None = head_dim (Gemma 3).
    `final_logit_softcap`: logits become `cap · tanh(logits / cap)` when set (Gemma).
    """

    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    max_position_embeddings: int
    norm_eps: float
    hidden_act: str
    tie_word_embeddings: bool
    qkv_bias: bool = False
    out_bias: bool = False
    mlp_bias: bool = False
    rope_theta: float = 10000.0
    rope_type: str = "default"
    rope_scaling: tuple[tuple[str, Any], ...] = ()
    layer_windows: tuple[int | None, ...] = ()
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    pad_token_id: int | None = None
    qk_norm: bool = False
    norm_plus_one: bool = False
    query_pre_attn_scalar: float | None = None
    local_rope: tuple[tuple[str, Any], ...] = ()
    final_logit_softcap: float | None = None

    @property
    def family(self) -> str:
        """Which port implements this config: 'gpt2', 'gemma3' or the Llama-style 'decoder'."""
        return FAMILY_OF_MODEL_TYPE.get(self.model_type, "decoder")

    @property
    def rope_options(self) -> dict[str, Any]:
        return dict(self.rope_scaling)

    @property
    def attention_scale(self) -> float:
        """The factor multiplying q·k: `query_pre_attn_scalar ** -0.5` (head_dim by default)."""
        return (self.query_pre_attn_scalar or self.head_dim) ** -0.5

    def layer_rope(self, layer_index: int) -> tuple[str, float, dict[str, Any]]:
        """(rope_type, rope_theta, scaling options) of one layer: `local_rope` for a sliding-window
        layer when set, else the global RoPE."""
        if self.local_rope and self.layer_windows[layer_index] is not None:
            options = dict(self.local_rope)
            return options.pop("rope_type"), options.pop("rope_theta"), options
        return self.rope_type, self.rope_theta, self.rope_options


FAMILY_OF_MODEL_TYPE = {"gpt2": "gpt2", "gemma3_text": "gemma3"}


def _as_tuple(ids) -> tuple[int, ...]:
    if ids is None:
        return ()
    if isinstance(ids, int):
        return (ids,)
    return tuple(int(i) for i in ids)


def config_from_hf(hf_config) -> ModelConfig:
    """A transformers 5 `PretrainedConfig` as a ModelConfig (raises on unsupported ones)."""
    model_type = getattr(hf_config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(
            f"unsupported model_type {model_type!r}; "
            f"supported model types: {', '.join(SUPPORTED_MODEL_TYPES)}"
        )
    common = dict(
        model_type=model_type,
        vocab_size=int(hf_config.vocab_size),
        bos_token_id=hf_config.bos_token_id,
        eos_token_ids=_as_tuple(hf_config.eos_token_id),
        pad_token_id=getattr(hf_config, "pad_token_id", None),
        tie_word_embeddings=bool(getattr(hf_config, "tie_word_embeddings", False)),
    )
    if model_type == "gpt2":
        return _gpt2_config(hf_config, common)
    return _decoder_config(hf_config, common)


def _gpt2_config(hf_config, common: dict) -> ModelConfig:
    """GPT-2's fields (its own names; biases everywhere, full attention)."""
    return ModelConfig(
        **common,
        hidden_size=hf_config.n_embd,
        intermediate_size=hf_config.n_inner or 4 * hf_config.n_embd,
        num_layers=hf_config.n_layer,
        num_heads=hf_config.n_head,
        num_kv_heads=hf_config.n_head,
        head_dim=hf_config.n_embd // hf_config.n_head,
        max_position_embeddings=hf_config.n_positions,
        norm_eps=hf_config.layer_norm_epsilon,
        hidden_act=hf_config.activation_function,
        qkv_bias=True,
        out_bias=True,
        mlp_bias=True,
        layer_windows=(None,) * hf_config.n_layer,
    )


def _decoder_config(hf_config, common: dict) -> ModelConfig:
    """The Llama-style families' fields (llama, mistral, qwen2, qwen3, gemma3_text)."""
    model_type = common["model_type"]
    num_heads = hf_config.num_attention_heads
    bias = bool(getattr(hf_config, "attention_bias", False))
    gemma = model_type == "gemma3_text"
    return ModelConfig(
        **common,
        **_rope_fields(hf_config),
        hidden_size=hf_config.hidden_size,
        intermediate_size=hf_config.intermediate_size,
        num_layers=hf_config.num_hidden_layers,
        num_heads=num_heads,
        num_kv_heads=getattr(hf_config, "num_key_value_heads", None) or num_heads,
        head_dim=getattr(hf_config, "head_dim", None) or hf_config.hidden_size // num_heads,
        max_position_embeddings=hf_config.max_position_embeddings,
        norm_eps=hf_config.rms_norm_eps,
        hidden_act=hf_config.hidden_activation if gemma else hf_config.hidden_act,
        qkv_bias=True if model_type == "qwen2" else bias,
        out_bias=bias if model_type in ("llama", "qwen3", "gemma3_text") else False,
        mlp_bias=bool(getattr(hf_config, "mlp_bias", False)),
        layer_windows=_layer_windows(hf_config),
        qk_norm=model_type in ("qwen3", "gemma3_text"),
        norm_plus_one=gemma,
        query_pre_attn_scalar=hf_config.query_pre_attn_scalar if gemma else None,
        final_logit_softcap=hf_config.final_logit_softcapping if gemma else None,
    )


def _rope_fields(hf_config) -> dict[str, Any]:
    """rope_type, rope_theta, rope_scaling and (Gemma 3's sliding-window layers) local_rope."""
    if hf_config.model_type != "gemma3_text":
        rope_type, rope_theta, rope_scaling = _rope(hf_config.rope_parameters)
        return dict(rope_type=rope_type, rope_theta=rope_theta, rope_scaling=rope_scaling)
    check_gemma3(hf_config)
    rope_type, rope_theta, rope_scaling = _rope(hf_config.rope_parameters["full_attention"])
    local_type, theta, scaling = _rope(hf_config.rope_parameters["sliding_attention"])
    local = {"rope_type": local_type, "rope_theta": theta, **dict(scaling)}
    return dict(
        rope_type=rope_type,
        rope_theta=rope_theta,
        rope_scaling=rope_scaling,
        local_rope=tuple(sorted(local.items())),
    )


def _layer_windows(hf_config) -> tuple[int | None, ...]:
    """Each layer's sliding window (None: full attention), from `layer_types` when given."""
    window = getattr(hf_config, "sliding_window", None)
    layer_types = getattr(hf_config, "layer_types", None)
    if layer_types is None:
        return (window,) * hf_config.num_hidden_layers
    return tuple(window if kind == "sliding_attention" else None for kind in layer_types)


def _rope(parameters) -> tuple[str, float, tuple[tuple[str, Any], ...]]:
    """(rope_type, rope_theta, the other entries as sorted pairs) of an HF `rope_parameters`."""
    rope = dict(parameters or {})
    rope_type = rope.pop("rope_type", "default")
    if rope_type not in SUPPORTED_ROPE_TYPES:
        raise ValueError(
            f"unsupported rope_type {rope_type!r}; supported: {', '.join(SUPPORTED_ROPE_TYPES)}"
        )
    return rope_type, float(rope.pop("rope_theta", 10000.0)), tuple(sorted(rope.items()))


def check_gemma3(hf_config) -> None:
    """Refuse the Gemma 3 options transformers 5's text model does not run as configured: attention
    logit soft-capping (its attention never applies it) and bidirectional attention."""
    if getattr(hf_config, "attn_logit_softcapping", None) is not None:
        raise ValueError(
            f"gemma3_text attn_logit_softcapping={hf_config.attn_logit_softcapping} "
            "is not supported (transformers 5's Gemma 3 attention ignores it); "
            "set it to None"
        )
    if getattr(hf_config, "use_bidirectional_attention", False):
        raise ValueError(
            "gemma3_text use_bidirectional_attention=True is not supported (causal LMs only)"
        )
