"""rlae_jax.models.gguf against transformers' own GGUF loader on the real stories260K checkpoint."""

import gguf
import numpy as np
import pytest
import torch
import transformers

from conftest import fixture_path
from rlae_jax.models.gguf import load_gguf_tokenizer, read_gguf

STORIES_PARTS = ("models", "stories260K", "stories260K.gguf")
PROMPT = "Once upon a time"
PROMPT_IDS = [1, 403, 407, 261, 378]
# transformers' greedy continuation of PROMPT, 24 new tokens: "<s> Once upon a time, there was a little girl
# named Lily. She loved to play outside in the p" (the first 16 as in the fixture's SOURCES.md)
GREEDY_24 = [432, 383, 286, 261, 376, 298, 315, 421, 395, 317, 426, 338,
             401, 396, 267, 337, 410, 408, 419, 292, 411, 322, 265, 282]
# stories260K.gguf writes "no such token" as 0xFFFFFFFF, which transformers' loader cannot take.
UNSET_TOKEN_ID_KEYS = ("tokenizer.ggml.padding_token_id", "tokenizer.ggml.seperator_token_id")
ROUND_TRIP_TEXTS = [
    "Once upon a time", "The cat sat.\nThen it ran!", "Héllo wörld 🙂 日本語", "tab\there", "x  y   z"
]


def rewrite_gguf(source, destination, dropped_keys=(), tensor_dtype=None) -> None:
    """Rewrite a GGUF file without some metadata keys, optionally casting its tensors (F32 -> F16)."""
    reader = gguf.GGUFReader(source)
    writer = gguf.GGUFWriter(destination, arch=reader.get_field("general.architecture").contents())
    for field in reader.fields.values():
        if field.name in dropped_keys or field.name == "general.architecture" or field.name.startswith("GGUF."):
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
    """(LlamaForCausalLM, tokenizer) from transformers' own GGUF loader for stories260K, float32, eval mode.

    Works around the file's 0xFFFFFFFF pad/separator ids: a copy without those keys, and pad_token_id=None.
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
    assert (config["hidden_size"], config["num_hidden_layers"], config["vocab_size"]) == (64, 5, 512)
    assert (config["num_attention_heads"], config["num_key_value_heads"], config["intermediate_size"]) == (8, 4, 172)
    assert config["rope_parameters"] == {"rope_type": "default", "rope_theta": 10000.0}
    assert (config["bos_token_id"], config["eos_token_id"], config["pad_token_id"]) == (1, 2, None)
    assert config["tie_word_embeddings"] is False
    ours = transformers.LlamaConfig(**config)
    theirs = reference[0].config
    for key in ("max_position_embeddings", "rms_norm_eps", "head_dim", "hidden_act", "rope_parameters"):
        assert getattr(ours, key) == getattr(theirs, key), key


def test_tensors_equal_transformers_state_dict(checkpoint, reference):
    state_dict = reference[0].state_dict()
    assert set(checkpoint.tensors) == set(state_dict)
    for name, weights in checkpoint.tensors.items():
        assert weights.dtype == np.float32, name
        np.testing.assert_array_equal(weights, state_dict[name].numpy(), err_msg=name)


def test_model_from_checkpoint_generates_reference_continuation(checkpoint, reference):
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**checkpoint.config))
    model.load_state_dict({name: torch.from_numpy(weights) for name, weights in checkpoint.tensors.items()})
    prompt = torch.tensor([PROMPT_IDS])
    for candidate in (model.eval(), reference[0]):
        output = candidate.generate(prompt, max_new_tokens=24, do_sample=False, pad_token_id=2)
        assert output[0, len(PROMPT_IDS):].tolist() == GREEDY_24


def test_reads_f16_tensors(checkpoint, tmp_path):
    path = tmp_path / "stories260K_f16.gguf"
    rewrite_gguf(fixture_path(*STORIES_PARTS), path, tensor_dtype=np.float16)
    half = read_gguf(path)
    assert half.config == checkpoint.config
    for name, weights in checkpoint.tensors.items():
        assert half.tensors[name].dtype == np.float32, name
        np.testing.assert_array_equal(half.tensors[name], weights.astype(np.float16).astype(np.float32), err_msg=name)


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


def write_tiny_gguf(path, architecture, tensor_type):
    """A one-tensor GGUF with the given architecture; Q8_0 is written as raw blocks."""
    writer = gguf.GGUFWriter(path, arch=architecture)
    values = np.ones((4, 32), dtype=np.float32)
    if tensor_type == gguf.GGMLQuantizationType.Q8_0:
        writer.add_tensor("token_embd.weight", gguf.quantize(values, tensor_type), raw_dtype=tensor_type)
    else:
        writer.add_tensor("token_embd.weight", values)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_rejects_other_architecture(tmp_path):
    path = tmp_path / "gpt2.gguf"
    write_tiny_gguf(path, "gpt2", gguf.GGMLQuantizationType.F32)
    with pytest.raises(ValueError, match=r"architecture 'gpt2' is not supported; only 'llama'"):
        read_gguf(path)


def test_rejects_quantized_tensors(tmp_path):
    path = tmp_path / "q8.gguf"
    write_tiny_gguf(path, "llama", gguf.GGMLQuantizationType.Q8_0)
    with pytest.raises(ValueError, match=r"token_embd.weight': 'Q8_0'.*only F32, F16"):
        read_gguf(path)


def test_jax_member_from_gguf_matches_transformers(reference):
    """The real pretrained stories260K through our loader and port: same logits and greedy story."""
    import jax.numpy as jnp

    import rlae_jax

    member = rlae_jax.from_pretrained(str(fixture_path(*STORIES_PARTS)))
    assert member.config.vocab_size == 512 and member.usable_vocab == 512
    prompt = torch.tensor([PROMPT_IDS])
    with torch.no_grad():
        expected_logits = reference[0](prompt).logits[0].numpy()
        expected_tokens = reference[0].generate(prompt, max_new_tokens=24, do_sample=False, pad_token_id=2)
    ids = jnp.asarray([PROMPT_IDS])
    assert np.abs(np.asarray(member.logits(ids, jnp.ones_like(ids)))[0] - expected_logits).max() < 1e-4
    ours = rlae_jax.generate_tokens(member, [PROMPT], max_new_tokens=24)[0]
    assert ours == expected_tokens[0, len(PROMPT_IDS):].tolist() == GREEDY_24
    story = rlae_jax.generate(member, [PROMPT], max_new_tokens=24)[0]
    assert story.startswith(", there was a little girl named Lily")
