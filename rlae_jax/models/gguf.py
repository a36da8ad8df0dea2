"""Read a llama.cpp GGUF checkpoint (llama, qwen2, qwen3 or gemma3; float or quantized tensors) into
Hugging Face form, as transformers' own GGUF loader does.

`read_gguf(path)` gives the transformers model type, its config keyword arguments and the weights as
float32 numpy arrays under the Hugging Face names of that family, dequantized on access with the
`gguf` package's `gguf.quants.dequantize`. `load_gguf_tokenizer(path)` builds the tokenizer the
metadata describes with transformers' `convert_gguf_tokenizer`. Neither needs torch.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import mmap
import os
import struct
from collections.abc import Iterator, Mapping

import gguf
import numpy as np

Q = gguf.GGMLQuantizationType
SUPPORTED_TENSOR_TYPES = (
    Q.F32,
    Q.F16,
    Q.BF16,
    Q.Q4_0,
    Q.Q4_1,
    Q.Q5_0,
    Q.Q5_1,
    Q.Q8_0,
    Q.Q2_K,
    Q.Q3_K,
    Q.Q4_K,
    Q.Q5_K,
    Q.Q6_K,
)
# GGUF architecture -> transformers model type (a gemma3 file holds only the text backbone)
MODEL_TYPES = {"llama": "llama", "qwen2": "qwen2", "qwen3": "qwen3", "gemma3": "gemma3_text"}
# Hugging Face tensors of one decoder layer, per architecture; GGUF names come from gguf's own map
DECODER_LAYER = (
    "self_attn.q_proj.weight",
    "self_attn.k_proj.weight",
    "self_attn.v_proj.weight",
    "self_attn.o_proj.weight",
    "input_layernorm.weight",
    "post_attention_layernorm.weight",
    "mlp.gate_proj.weight",
    "mlp.up_proj.weight",
    "mlp.down_proj.weight",
)
QK_NORMS = ("self_attn.q_norm.weight", "self_attn.k_norm.weight")
LAYER_TENSORS = {
    "llama": DECODER_LAYER,
    "qwen2": DECODER_LAYER
    + ("self_attn.q_proj.bias", "self_attn.k_proj.bias", "self_attn.v_proj.bias"),
    "qwen3": DECODER_LAYER + QK_NORMS,
    "gemma3": DECODER_LAYER
    + QK_NORMS
    + ("pre_feedforward_layernorm.weight", "post_feedforward_layernorm.weight"),
}
GLOBAL_TENSORS = ("model.embed_tokens.weight", "model.norm.weight", "lm_head.weight")
IGNORED_TENSORS = ("rope_freqs.weight",)  # llama 3 frequency factors, which transformers skips too
DEFAULT_ROPE_THETA = 10000.0  # llama.cpp's value when `{arch}.rope.freq_base` is absent
# where head_dim is stated (qwen2 has none: hidden / heads); transformers ignores qwen3's and takes
# Qwen3Config's default, 128, which every Qwen 3 checkpoint has
HEAD_DIM_KEYS = {
    "llama": "rope.dimension_count",
    "qwen3": "attention.key_length",
    "gemma3": "attention.key_length",
}
TOKEN_ROLES = (("bos", "bos"), ("eos", "eos"), ("unk", "unknown"), ("pad", "padding"))  # HF, GGUF
DEQUANTIZE_CHUNK = 1 << 20  # values per `dequantize` call: temporaries stay in cache (4x faster)


@dataclasses.dataclass(frozen=True)
class TensorInfo:
    """Where one tensor's bytes lie in the file; `shape` is in numpy (row-major) order."""

    shape: tuple[int, ...]
    tensor_type: int
    offset: int  # from the start of the file


@dataclasses.dataclass(frozen=True)
class GGUFFile:
    """A GGUF file's metadata (key -> Python value) and tensor table, over a read-only mmap."""

    path: str
    metadata: dict
    tensors: dict[str, TensorInfo]
    data: np.ndarray  # the whole file as uint8

    def type_name(self, name: str) -> str:
        kind = self.tensors[name].tensor_type
        return Q(kind).name if kind in Q._value2member_map_ else f"type {kind}"

    def read(self, name: str) -> np.ndarray:
        """Tensor `name` dequantized to a new float32 array."""
        info = self.tensors[name]
        block_size, type_size = gguf.GGML_QUANT_SIZES[Q(info.tensor_type)]
        row_bytes = info.shape[-1] // block_size * type_size
        rows = math.prod(info.shape[:-1])
        raw = self.data[info.offset : info.offset + rows * row_bytes].reshape(rows, row_bytes)
        out = np.empty((rows, info.shape[-1]), np.float32)
        step = max(1, DEQUANTIZE_CHUNK // info.shape[-1])
        for start in range(0, rows, step):
            out[start : start + step] = gguf.quants.dequantize(
                raw[start : start + step], Q(info.tensor_type)
            )
        return out.reshape(info.shape)


def open_gguf(path: str | os.PathLike) -> GGUFFile:
    """Parse a GGUF file's header (metadata and tensor table); tensor data is only mapped."""
    with open(path, "rb") as handle:
        buffer = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
    if buffer[:4] != b"GGUF":
        raise ValueError(f"{path}: not a GGUF file (no GGUF magic bytes)")
    version, tensor_count, key_count = struct.unpack_from("<IQQ", buffer, 4)
    if version not in (2, 3):
        raise ValueError(f"{path}: GGUF version {version} is not supported; only 2 and 3 are")
    reader = _HeaderReader(buffer, 24)
    metadata = {}
    for _ in range(key_count):
        key = reader.string()
        metadata[key] = reader.value(reader.scalar("<I"))
    table = []
    for _ in range(tensor_count):
        name = reader.string()
        dims = [reader.scalar("<Q") for _ in range(reader.scalar("<I"))]
        table.append((name, tuple(reversed(dims)), reader.scalar("<I"), reader.scalar("<Q")))
    alignment = metadata.get("general.alignment", gguf.GGUF_DEFAULT_ALIGNMENT)
    data_start = -(-reader.position // alignment) * alignment
    tensors = {
        name: TensorInfo(shape, kind, data_start + offset) for name, shape, kind, offset in table
    }
    return GGUFFile(str(path), metadata, tensors, np.frombuffer(buffer, np.uint8))


class _HeaderReader:
    """Sequential little-endian reads of GGUF metadata values from a buffer."""

    NUMBERS = {
        0: "B",
        1: "b",
        2: "H",
        3: "h",
        4: "I",
        5: "i",
        6: "f",
        7: "?",
        10: "Q",
        11: "q",
        12: "d",
    }  # struct formats of the fixed-size GGUF value types

    def __init__(self, buffer, position: int):
        self.buffer, self.position = buffer, position

    def scalar(self, fmt: str):
        (value,) = struct.unpack_from(fmt, self.buffer, self.position)
        self.position += struct.calcsize(fmt)
        return value

    def string(self) -> str:
        length = self.scalar("<Q")
        self.position += length
        return self.buffer[self.position - length : self.position].decode("utf-8", errors="replace")

    def value(self, kind: int):
        """One value of GGUF value type `kind`; arrays become lists."""
        if kind == gguf.GGUFValueType.STRING:
            return self.string()
        if kind != gguf.GGUFValueType.ARRAY:
            return self.scalar("<" + self.NUMBERS[kind])
        element, count = self.scalar("<I"), self.scalar("<Q")
        if element == gguf.GGUFValueType.STRING:
            return [self.string() for _ in range(count)]
        if element == gguf.GGUFValueType.ARRAY:
            return [self.value(element) for _ in range(count)]
        dtype = np.dtype("<" + self.NUMBERS[element])
        values = np.frombuffer(self.buffer, dtype, count, self.position)
        self.position += count * dtype.itemsize
        return values.tolist()


@dataclasses.dataclass(frozen=True)
class GGUFCheckpoint:
    """A GGUF checkpoint in Hugging Face form.

    model_type: the transformers model type ('llama', 'qwen2', 'qwen3', 'gemma3_text').
    config: keyword arguments for `transformers.AutoConfig.for_model(model_type, **config)`.
    tensors: Hugging Face parameter name -> float32 array, dequantized when read; linear weights are
      [out, in], embeddings [vocab, hidden], norms [hidden]; llama Q/K rows in rotate-half order.
    """

    model_type: str
    config: dict
    tensors: Mapping[str, np.ndarray]


def read_gguf(path: str | os.PathLike) -> GGUFCheckpoint:
    """Config and (lazily dequantized) weights of a GGUF file; ValueError if it is not supported."""
    file = open_gguf(path)
    check_supported(file)
    config = model_config(file)
    architecture = file.metadata["general.architecture"]
    tensors = HFTensors(file, hf_names(file), config)
    return GGUFCheckpoint(MODEL_TYPES[architecture], config, tensors)


def check_supported(file: GGUFFile) -> None:
    """Raise a one-line ValueError unless the architecture and every tensor type are supported."""
    architecture = file.metadata.get("general.architecture")
    if architecture not in MODEL_TYPES:
        raise ValueError(
            f"{file.path}: GGUF architecture {architecture!r} is not supported; "
            f"supported: {', '.join(MODEL_TYPES)}"
        )
    supported = {int(kind) for kind in SUPPORTED_TENSOR_TYPES}
    counts = collections.Counter(
        file.type_name(name)
        for name, info in file.tensors.items()
        if info.tensor_type not in supported
    )
    if counts:
        found = ", ".join(f"{kind} ({count})" for kind, count in sorted(counts.items()))
        raise ValueError(
            f"{file.path}: unsupported tensor types {found}; supported: "
            f"{', '.join(kind.name for kind in SUPPORTED_TENSOR_TYPES)}"
        )


def model_config(file: GGUFFile) -> dict:
    """transformers config keyword arguments from the `{arch}.*` and tokenizer metadata, with the
    keys and defaults transformers' GGUF loader uses."""
    metadata, architecture = file.metadata, file.metadata["general.architecture"]

    def key(name):
        return metadata.get(f"{architecture}.{name}")

    if key("rope.scaling.type") not in (None, "none"):
        raise ValueError(f"{file.path}: RoPE scaling {key('rope.scaling.type')!r} is not supported")
    vocab_size = (
        key("vocab_size")
        or len(metadata.get("tokenizer.ggml.tokens", ()))
        or file.tensors["token_embd.weight"].shape[0]
    )
    config = dict(
        vocab_size=vocab_size,
        hidden_size=key("embedding_length"),
        intermediate_size=key("feed_forward_length"),
        num_hidden_layers=key("block_count"),
        num_attention_heads=key("attention.head_count"),
        num_key_value_heads=key("attention.head_count_kv") or key("attention.head_count"),
        rms_norm_eps=key("attention.layer_norm_rms_epsilon"),
        max_position_embeddings=key("context_length"),
        rope_theta=float(key("rope.freq_base") or DEFAULT_ROPE_THETA),
        tie_word_embeddings="output.weight" not in file.tensors,
    )
    for role, gguf_role in TOKEN_ROLES:  # absent ones keep the config class's default
        if token_id(metadata, gguf_role, vocab_size) is not None:
            config[f"{role}_token_id"] = token_id(metadata, gguf_role, vocab_size)
    if architecture in HEAD_DIM_KEYS and key(HEAD_DIM_KEYS[architecture]) is not None:
        config["head_dim"] = key(HEAD_DIM_KEYS[architecture])
    if architecture == "gemma3" and key("attention.sliding_window") is not None:
        config["sliding_window"] = key("attention.sliding_window")
    return config


def hf_names(file: GGUFFile) -> dict[str, str]:
    """GGUF tensor name -> Hugging Face name, through gguf's own name map (as transformers does);
    ValueError for a tensor with no counterpart."""
    architecture = file.metadata["general.architecture"]
    layers = file.metadata[f"{architecture}.block_count"]
    arch = next(a for a, name in gguf.MODEL_ARCH_NAMES.items() if name == architecture)
    name_map = gguf.get_tensor_name_map(arch, layers)
    hf = [
        *GLOBAL_TENSORS,
        *(f"model.layers.{i}.{t}" for i in range(layers) for t in LAYER_TENSORS[architecture]),
    ]
    mapping = {}
    for name in hf:
        module, suffix = name.rsplit(".", 1)
        mapping[f"{name_map.get_name(module)}.{suffix}"] = name
    unknown = sorted(set(file.tensors) - set(mapping) - set(IGNORED_TENSORS))
    if unknown:
        raise ValueError(
            f"{file.path}: tensors with no counterpart in a Hugging Face {architecture} "
            f"model: {', '.join(unknown[:5])}" + (" ..." if len(unknown) > 5 else "")
        )
    return {name: hf_name for name, hf_name in mapping.items() if name in file.tensors}


class HFTensors(Mapping):
    """Hugging Face name -> float32 weights, dequantized when read, with llama.cpp's value changes
    undone as transformers undoes them: llama Q/K rows back to rotate-half order, gemma3 norms
    (stored as 1 + w) minus 1."""

    def __init__(self, file: GGUFFile, names: dict[str, str], config: dict):
        self.file, self.config = file, config
        self.gguf_names = {hf_name: name for name, hf_name in names.items()}

    def __getitem__(self, hf_name: str) -> np.ndarray:
        name = self.gguf_names[hf_name]
        weights = self.file.read(name)
        architecture = self.file.metadata["general.architecture"]
        if architecture == "llama" and ".attn_q." in name:
            weights = unpermute_rope_rows(weights, self.config["num_attention_heads"])
        elif architecture == "llama" and ".attn_k." in name:
            weights = unpermute_rope_rows(weights, self.config["num_key_value_heads"])
        elif architecture == "gemma3" and name.endswith("norm.weight"):
            weights -= 1.0
        return weights

    def __iter__(self) -> Iterator[str]:
        return iter(self.gguf_names)

    def __len__(self) -> int:
        return len(self.gguf_names)


def unpermute_rope_rows(weights: np.ndarray, num_heads: int) -> np.ndarray:
    """[num_heads * head_dim, in] Q/K weight from llama.cpp's interleaved-pair RoPE row order
    (per head: x0, y0, x1, y1, ...) to Hugging Face's rotate-half order (x0, x1, ..., y0, y1,
    ...)."""
    half_head_dim = weights.shape[0] // num_heads // 2
    by_pair = weights.reshape(num_heads, half_head_dim, 2, *weights.shape[1:])
    return by_pair.swapaxes(1, 2).reshape(weights.shape)


def load_gguf_tokenizer(path: str | os.PathLike):
    """The tokenizer a GGUF file's metadata describes (gpt2-style byte-level BPE with its
    pre-tokenizer split, or SentencePiece-style BPE with byte fallback), built by transformers' own
    `convert_gguf_tokenizer`, with the file's chat template; ValueError if the file holds none."""
    from transformers import PreTrainedTokenizerFast
    from transformers.integrations.gguf.gguf_tokenizer_mapping import (
        GGUF_TOKENIZER_MAPPING,
        convert_gguf_tokenizer,
    )

    file = open_gguf(path)
    metadata = file.metadata
    if "tokenizer.ggml.tokens" not in metadata or "tokenizer.ggml.model" not in metadata:
        raise ValueError(
            f"{path}: the GGUF metadata holds no tokenizer (tokenizer.ggml.model/tokens); "
            "pass tokenizer=... to from_pretrained"
        )
    stated = {
        group: {
            name: metadata[f"tokenizer.{key}"]
            for key, name in keys.items()
            if f"tokenizer.{key}" in metadata
        }
        for group, keys in GGUF_TOKENIZER_MAPPING.items()
    }
    tokenizer_dict, tokenizer_config = stated["tokenizer"], stated["tokenizer_config"]
    if tokenizer_dict["tokenizer_type"] == "llama":  # llama.cpp adds BOS unless the file says not
        tokenizer_config.setdefault("add_bos_token", True)
    tokens = tokenizer_dict["tokens"]
    for role, gguf_role in TOKEN_ROLES:
        index = token_id(metadata, gguf_role, len(tokens))
        tokenizer_config[f"{role}_token"] = None if index is None else tokens[index]
    backend, extra = convert_gguf_tokenizer(metadata["general.architecture"], tokenizer_dict)
    return PreTrainedTokenizerFast(tokenizer_object=backend, **tokenizer_config, **extra)


def token_id(metadata: dict, role: str, vocab_size: int) -> int | None:
    """`tokenizer.ggml.{role}_token_id`, or None when absent or out of range (files write 0xFFFFFFFF
    for 'none')."""
    index = metadata.get(f"tokenizer.ggml.{role}_token_id")
    return index if index is not None and 0 <= index < vocab_size else None
