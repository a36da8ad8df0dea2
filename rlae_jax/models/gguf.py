"""Read a llama.cpp GGUF checkpoint (llama architecture, F32/F16) into Hugging Face Llama form.

`read_gguf(path)` returns the `transformers.LlamaConfig` keyword arguments, the weights as float32
numpy arrays under Hugging Face Llama names and layouts, and the tokenizer the file describes.
"""
import dataclasses
import os

import gguf
import numpy as np
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

SUPPORTED_ARCHITECTURE = "llama"
SUPPORTED_TENSOR_TYPES = (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16)
DEFAULT_ROPE_THETA = 10000.0  # llama.cpp's value when `llama.rope.freq_base` is absent

GLOBAL_TENSOR_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
LAYER_TENSOR_NAMES = {
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "attn_norm.weight": "input_layernorm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
}
TOKEN_TYPE_CONTROL, TOKEN_TYPE_USER_DEFINED = 3, 4  # llama.cpp's token type ids


@dataclasses.dataclass(frozen=True)
class GGUFCheckpoint:
    """A GGUF llama checkpoint in Hugging Face form.

    config: keyword arguments for `transformers.LlamaConfig`.
    tensors: Hugging Face Llama parameter name -> float32 array; linear weights are [out, in],
      embeddings [vocab, hidden], norms [hidden]; Q/K rows are in the rotate-half RoPE layout.
    tokenizer: the tokenizer built from the file's metadata (see `load_gguf_tokenizer`).
    """

    config: dict
    tensors: dict[str, np.ndarray]
    tokenizer: PreTrainedTokenizerFast


def read_gguf(path: str | os.PathLike) -> GGUFCheckpoint:
    """Config, weights and tokenizer of a llama GGUF file with F32/F16 tensors; ValueError otherwise."""
    reader = gguf.GGUFReader(path)
    check_supported(reader, path)
    config = llama_config(reader)
    tensors = {}
    for tensor in reader.tensors:
        hf_name = hf_tensor_name(tensor.name, path)
        weights = np.array(tensor.data, dtype=np.float32)  # the reader already gives torch/numpy order
        if hf_name.endswith("q_proj.weight"):
            weights = unpermute_rope_rows(weights, config["num_attention_heads"])
        elif hf_name.endswith("k_proj.weight"):
            weights = unpermute_rope_rows(weights, config["num_key_value_heads"])
        tensors[hf_name] = weights
    return GGUFCheckpoint(config=config, tensors=tensors, tokenizer=tokenizer_from_reader(reader))


def load_gguf_tokenizer(path: str | os.PathLike) -> PreTrainedTokenizerFast:
    """The SentencePiece-style (BPE with byte fallback) tokenizer stored in a GGUF file's metadata."""
    return tokenizer_from_reader(gguf.GGUFReader(path))


def check_supported(reader: gguf.GGUFReader, path) -> None:
    """Raise ValueError unless the file is a llama model whose tensors are all F32 or F16."""
    architecture = field_value(reader, "general.architecture")
    if architecture != SUPPORTED_ARCHITECTURE:
        raise ValueError(
            f"{path}: GGUF architecture {architecture!r} is not supported; only {SUPPORTED_ARCHITECTURE!r} is."
        )
    unsupported = {t.name: t.tensor_type.name for t in reader.tensors if t.tensor_type not in SUPPORTED_TENSOR_TYPES}
    if unsupported:
        supported = ", ".join(t.name for t in SUPPORTED_TENSOR_TYPES)
        raise ValueError(
            f"{path}: tensors stored as quantized or unsupported types {unsupported}; only {supported} are supported."
        )


def llama_config(reader: gguf.GGUFReader) -> dict:
    """`transformers.LlamaConfig` keyword arguments from the file's `llama.*` and tokenizer metadata."""
    vocab_size = field_value(reader, "llama.vocab_size") or len(field_value(reader, "tokenizer.ggml.tokens"))
    hidden_size = field_value(reader, "llama.embedding_length")
    num_attention_heads = field_value(reader, "llama.attention.head_count")
    head_dim = field_value(reader, "llama.attention.key_length") or hidden_size // num_attention_heads
    rope_dim = field_value(reader, "llama.rope.dimension_count") or head_dim
    if rope_dim != head_dim:
        raise ValueError(f"partial rotary embeddings (rope dim {rope_dim}, head dim {head_dim}) are not supported.")
    if field_value(reader, "llama.rope.scaling.type") not in (None, "none"):
        raise ValueError(f"RoPE scaling {field_value(reader, 'llama.rope.scaling.type')!r} is not supported.")
    return dict(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=field_value(reader, "llama.feed_forward_length"),
        num_hidden_layers=field_value(reader, "llama.block_count"),
        num_attention_heads=num_attention_heads,
        num_key_value_heads=field_value(reader, "llama.attention.head_count_kv") or num_attention_heads,
        head_dim=head_dim,
        hidden_act="silu",
        rms_norm_eps=field_value(reader, "llama.attention.layer_norm_rms_epsilon"),
        max_position_embeddings=field_value(reader, "llama.context_length"),
        rope_parameters={
            "rope_type": "default",
            "rope_theta": float(field_value(reader, "llama.rope.freq_base") or DEFAULT_ROPE_THETA),
        },
        tie_word_embeddings=all(tensor.name != "output.weight" for tensor in reader.tensors),
        bos_token_id=token_id(reader, "bos", vocab_size),
        eos_token_id=token_id(reader, "eos", vocab_size),
        pad_token_id=token_id(reader, "padding", vocab_size),
    )


def hf_tensor_name(gguf_name: str, path) -> str:
    """Hugging Face Llama parameter name of a GGUF tensor name ('blk.3.attn_q.weight' -> ...)."""
    if gguf_name in GLOBAL_TENSOR_NAMES:
        return GLOBAL_TENSOR_NAMES[gguf_name]
    prefix, layer, *rest = gguf_name.split(".", 2)
    if prefix == "blk" and layer.isdigit() and rest and rest[0] in LAYER_TENSOR_NAMES:
        return f"model.layers.{layer}.{LAYER_TENSOR_NAMES[rest[0]]}"
    raise ValueError(f"{path}: tensor {gguf_name!r} has no counterpart in a Hugging Face Llama model.")


def unpermute_rope_rows(weights: np.ndarray, num_heads: int) -> np.ndarray:
    """[num_heads * head_dim, in] Q/K weight from llama.cpp's interleaved-pair RoPE row order
    (per head: x0, y0, x1, y1, ...) to Hugging Face's rotate-half order (x0, x1, ..., y0, y1, ...)."""
    half_head_dim = weights.shape[0] // num_heads // 2
    by_pair = weights.reshape(num_heads, half_head_dim, 2, *weights.shape[1:])
    return by_pair.swapaxes(1, 2).reshape(weights.shape)


def tokenizer_from_reader(reader: gguf.GGUFReader) -> PreTrainedTokenizerFast:
    """Llama SentencePiece tokenizer as transformers builds it for a GGUF: BPE over the stored vocabulary
    with merges ranked by piece score, byte fallback, '▁' metaspace (prefixed to the first word only),
    control tokens as special tokens, and BOS (not EOS) added unless the metadata says otherwise."""
    tokenizer_model = field_value(reader, "tokenizer.ggml.model")
    if tokenizer_model != "llama":
        raise ValueError(f"GGUF tokenizer model {tokenizer_model!r} is not supported; only 'llama' is.")
    tokens = field_value(reader, "tokenizer.ggml.tokens")
    scores = field_value(reader, "tokenizer.ggml.scores")
    token_types = field_value(reader, "tokenizer.ggml.token_type")
    vocab = {token: index for index, token in enumerate(tokens)}
    special = {
        role: tokens[index] if index is not None else None
        for role, index in (
            ("bos_token", token_id(reader, "bos", len(tokens))),
            ("eos_token", token_id(reader, "eos", len(tokens))),
            ("unk_token", token_id(reader, "unknown", len(tokens))),
            ("pad_token", token_id(reader, "padding", len(tokens))),
        )
    }
    backend = Tokenizer(
        models.BPE(
            vocab=vocab,
            merges=merges_from_scores(vocab, dict(zip(tokens, scores))),
            unk_token=special["unk_token"],
            fuse_unk=True,
            byte_fallback=True,
        )
    )
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    backend.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(content=" ", left=1)]
    )
    backend.add_special_tokens(
        [
            AddedToken(token, normalized=False, special=True)
            for token, kind in zip(tokens, token_types)
            if kind == TOKEN_TYPE_CONTROL
        ]
    )
    backend.add_tokens(
        [
            AddedToken(token, normalized=False, special=False)
            for token, kind in zip(tokens, token_types)
            if kind == TOKEN_TYPE_USER_DEFINED
        ]
    )
    add_bos = field_value(reader, "tokenizer.ggml.add_bos_token")
    add_eos = field_value(reader, "tokenizer.ggml.add_eos_token")
    add_bos = True if add_bos is None else bool(add_bos)
    add_eos = bool(add_eos)
    backend.post_processor = template_processor(special["bos_token"], special["eos_token"], vocab, add_bos, add_eos)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        clean_up_tokenization_spaces=False,
        add_bos_token=add_bos,
        add_eos_token=add_eos,
        **{role: token for role, token in special.items() if token is not None},
    )


def merges_from_scores(vocab: dict[str, int], scores: dict[str, float]) -> list[tuple[str, str]]:
    """BPE merges implied by a SentencePiece vocabulary (as transformers' `generate_merges` derives them):
    every split of a piece into two known pieces, best merged-piece score first."""
    candidates = []
    for piece, score in scores.items():
        splits = [(piece[:cut], piece[cut:]) for cut in range(1, len(piece))]
        known = sorted(
            ((left, right) for left, right in splits if left in vocab and right in vocab),
            key=lambda pair: (vocab[pair[0]], vocab[pair[1]]),
        )
        candidates.extend((left, right, score) for left, right in known)
    candidates.sort(key=lambda merge: (merge[2], len(merge[0]), len(merge[1])), reverse=True)
    return [(left, right) for left, right, _ in candidates]


def template_processor(bos: str | None, eos: str | None, vocab: dict[str, int], add_bos: bool, add_eos: bool):
    """Post-processor adding BOS / EOS around each sequence, as transformers' `update_post_processor` does."""
    bos = bos if add_bos else None
    eos = eos if add_eos else None
    single = " ".join(part for part in (bos and f"{bos}:0", "$A:0", eos and f"{eos}:0") if part)
    pair = " ".join(part for part in (single, bos and f"{bos}:1", "$B:1", eos and f"{eos}:1") if part)
    special_tokens = [(token, vocab[token]) for token in {bos, eos} if token]
    return processors.TemplateProcessing(single=single, pair=pair, special_tokens=special_tokens)


def token_id(reader: gguf.GGUFReader, role: str, vocab_size: int) -> int | None:
    """`tokenizer.ggml.{role}_token_id`, or None when absent or out of range (files write 0xFFFFFFFF for 'none')."""
    index = field_value(reader, f"tokenizer.ggml.{role}_token_id")
    return index if index is not None and 0 <= index < vocab_size else None


def field_value(reader: gguf.GGUFReader, key: str):
    """A metadata value as a Python scalar, str or list; None when the key is absent."""
    field = reader.get_field(key)
    return None if field is None else field.contents()
