"""Parity of the Flax ports with transformers' PyTorch models, KV-cache exactness, load errors."""

import json
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip(
    "torch", reason="torch==2.13.0 (CPU) is the parity reference: pip install -e '.[test]'"
)

import rlae_jax  # noqa: E402
from rlae_jax.models.generate import generate_ids_jit  # noqa: E402
from rlae_jax.models import Member, build_model, config_from_hf, from_pretrained, param_count  # noqa: E402
from rlae_jax.models.presets import PRESETS, PUBLISHED_PARAM_COUNTS, preset_hf_config  # noqa: E402
from rlae_jax.models.prompts import left_pad  # noqa: E402
from rlae_jax.models.sampling import first_argmax  # noqa: E402
from tiny_models import (  # noqa: E402
    hf_config,
    prefill_jit,
    save_tiny_model,
    train_byte_level_tokenizer,
)

FAMILIES = ["llama3", "mistral", "qwen2", "gpt2", "qwen3", "qwen3_tied", "gemma3"]
# the decode loop's sampling and recompilation do not depend on the port: checked on the first four
LOOP_FAMILIES = FAMILIES[:4]
# Three prompts of different lengths; the longest exceeds the sliding windows (Mistral 6, Qwen 3 6,
# Gemma 3 5) several times.
PROMPTS = [
    "The quick brown fox jumps over the lazy dog; 12 + 30 = 42. Alice and Bob",
    "Hello world!",
    "Once upon a time there was a little robot",
]


@pytest.fixture(scope="module")
def tokenizer():
    return train_byte_level_tokenizer()


@pytest.fixture(scope="module", params=FAMILIES)
def tiny(request, tokenizer, tmp_path_factory):
    """(family, torch reference model, our Member) loaded from a save_pretrained folder."""
    folder = tmp_path_factory.mktemp(request.param)
    reference = save_tiny_model(request.param, folder, tokenizer)
    return request.param, reference, from_pretrained(str(folder))


def reference_logits(reference, ids: list[int]) -> np.ndarray:
    with torch.no_grad():
        return reference(torch.tensor([ids])).logits[0].numpy()


def test_logits_match_transformers_on_left_padded_batch(tiny, tokenizer):
    family, reference, member = tiny
    token_lists = [tokenizer.encode(p) for p in PROMPTS]
    ids, mask = left_pad(token_lists, tokenizer.pad_token_id)
    ours = np.asarray(member.logits(jnp.asarray(ids), jnp.asarray(mask)))
    for row, tokens in enumerate(token_lists):
        expected = reference_logits(reference, tokens)
        got = ours[row, ids.shape[1] - len(tokens) :]
        assert np.abs(got - expected).max() < 1e-4, f"{family} row {row}"
    assert len(token_lists[0]) > 3 * 6  # the Mistral case really slides its window


def test_greedy_continuations_match_transformers_generate(tiny, tokenizer):
    family, reference, member = tiny
    ours = rlae_jax.generate_tokens(member, PROMPTS, max_new_tokens=24)
    for prompt, got in zip(PROMPTS, ours):
        ids = torch.tensor([tokenizer.encode(prompt)])
        with torch.no_grad():
            expected = reference.generate(
                ids, attention_mask=torch.ones_like(ids), max_new_tokens=24, do_sample=False
            )[0, ids.shape[1] :].tolist()
        assert got == expected, f"{family}: {prompt!r}"


def test_cached_decode_equals_full_forward(tiny, tokenizer):
    """Prefill, then one-token steps and multi-token steps with row-varying counts (0..3), must give
    the logits the full forward gives on the whole sequence of each row."""
    family, _, member = tiny
    rng = np.random.RandomState(1)
    token_lists = [tokenizer.encode(p) for p in PROMPTS]
    ids, mask = left_pad(token_lists, tokenizer.pad_token_id)
    filled = prefill_jit(member, jnp.asarray(ids), jnp.asarray(mask), ids.shape[1] + 40)
    out, cache = filled.step, filled.cache
    logits = out.logits
    sequences = [list(t) for t in token_lists]
    step = jax.jit(lambda c, t: member.step(c, t))
    append = jax.jit(lambda c, t, n: member.append(c, t, n))
    next_token_logits = jax.jit(member.next_token_logits)
    full_forward = jax.jit(member.logits)
    multi_counts = iter([np.array([3, 1, 0]), np.array([2, 3, 1]), np.array([1, 0, 3])])
    for kind in ["one", "multi", "one", "multi", "multi", "one"]:
        if kind == "one":
            new = rng.randint(0, len(tokenizer), size=len(PROMPTS))
            out, cache = step(cache, jnp.asarray(new, jnp.int32))
            logits = out.logits
            counts = np.ones(len(PROMPTS), int)
            block = new[:, None]
        else:
            block = rng.randint(0, len(tokenizer), size=(len(PROMPTS), 3))
            counts = next(multi_counts)
            last, cache = append(
                cache, jnp.asarray(block, jnp.int32), jnp.asarray(counts, jnp.int32)
            )
            # rows with count 0 keep their previous output
            logits = jnp.where((jnp.asarray(counts) > 0)[:, None], next_token_logits(last), logits)
        for row in range(len(PROMPTS)):
            sequences[row] += list(block[row, : counts[row]])
        # full forward of every row's whole sequence, right-padded to one static shape
        ids = np.zeros((len(sequences), 80), np.int32)
        mask = np.zeros_like(ids)
        for row, sequence in enumerate(sequences):
            ids[row, : len(sequence)], mask[row, : len(sequence)] = sequence, 1
        full = np.asarray(full_forward(jnp.asarray(ids), jnp.asarray(mask)))
        for row, sequence in enumerate(sequences):
            error = np.abs(np.asarray(logits[row]) - full[row, len(sequence) - 1]).max()
            assert error < 1e-4, f"{family} {kind} row {row}"
    assert not bool(cache.overflowed.any())


def test_bfloat16_loading(tiny, tokenizer, tmp_path):
    family, reference, member = tiny
    folder = tmp_path / "m"
    reference.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    half = from_pretrained(str(folder), dtype="bfloat16")
    assert all(leaf.dtype == jnp.bfloat16 for leaf in jax.tree.leaves(half.state))
    ids = jnp.asarray([tokenizer.encode(PROMPTS[2])])
    full = np.asarray(member.logits(ids, jnp.ones_like(ids)))
    low = np.asarray(half.logits(ids, jnp.ones_like(ids)))
    assert low.dtype == np.float32
    assert np.abs(low - full).max() < 0.1 * np.abs(full).max()
    assert (low.argmax(-1) == full.argmax(-1)).mean() > 0.8


@pytest.mark.parametrize("name", list(PRESETS))
def test_full_size_param_counts_without_allocating(name):
    config = config_from_hf(preset_hf_config(name))
    assert param_count(config) == PUBLISHED_PARAM_COUNTS[name]


def test_preset_counts_agree_with_transformers_on_meta_device():
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(preset_hf_config("gpt2"))
    assert sum(p.numel() for p in model.parameters()) == PUBLISHED_PARAM_COUNTS["gpt2"]


@pytest.mark.parametrize("tiny", LOOP_FAMILIES, indirect=True)
def test_same_bucket_does_not_recompile(tiny):
    _, _, member = tiny
    rlae_jax.generate_member(member, ["Hello world!", "A"], max_new_tokens=8)
    compiled = generate_ids_jit._cache_size()
    rlae_jax.generate_member(member, ["Once upon a time", "The quick brown fox"], max_new_tokens=8)
    assert generate_ids_jit._cache_size() == compiled


@pytest.mark.parametrize("batch", [1, 3])
def test_decode_loop_copies_no_kv_cache(batch):
    # with a [B, H, S, D] cache XLA:CPU copied every layer's cache 4x per step at batch 1 (a bitcast
    # between the in-place cache write and the attention dot); the loop must update caches in place
    config = config_from_hf(hf_config("gpt2", 384, 0))
    member = Member.from_model(build_model(config))
    prompt, new_tokens = 16, 8
    args = (
        member,
        jnp.full((batch, prompt), 5, jnp.int32),
        jnp.ones((batch, prompt), jnp.int32),
        jax.random.key(0),
        jnp.float32(0.0),
        jnp.float32(1.0),
        jnp.asarray([-1], jnp.int32),
        jnp.int32(0),
    )
    text = generate_ids_jit.lower(*args, max_new_tokens=new_tokens).compile().as_text()
    # one layer, any layout
    cache_elements = batch * config.num_kv_heads * (prompt + new_tokens) * config.head_dim
    loop_copies, computation = [], None
    for line in text.splitlines():
        if line and not line.startswith(" ") and line.endswith("{"):
            computation = line.split()[0]  # "ENTRY" for the program outside the loop
        copied = re.search(r"= f32\[([\d,]+)\]\S* copy\(", line)
        if (
            copied
            and math.prod(map(int, copied.group(1).split(","))) == cache_elements
            and computation != "ENTRY"
        ):
            loop_copies.append(line.strip())
    assert not loop_copies, f"KV cache copied inside the decode loop: {loop_copies[:2]}"


@pytest.mark.parametrize("tiny", LOOP_FAMILIES, indirect=True)
def test_sampling_is_seeded_and_top_p_zero_is_greedy(tiny):
    _, _, member = tiny
    prompts = ["Hello world!"] * 4
    first = rlae_jax.generate_tokens(member, prompts, max_new_tokens=12, temperature=1.5, seed=3)
    again = rlae_jax.generate_tokens(member, prompts, max_new_tokens=12, temperature=1.5, seed=3)
    other = rlae_jax.generate_tokens(member, prompts, max_new_tokens=12, temperature=1.5, seed=4)
    assert first == again and first != other
    assert len({tuple(t) for t in first}) > 1  # rows draw independent samples
    greedy = rlae_jax.generate_tokens(member, prompts[:1], max_new_tokens=12)
    nucleus_of_one = rlae_jax.generate_tokens(
        member, prompts[:1], max_new_tokens=12, temperature=1.0, top_p=1e-6
    )
    assert nucleus_of_one == greedy


def test_gemma3_config_reads_every_gemma_knob(tokenizer):
    config = config_from_hf(hf_config("gemma3", len(tokenizer), tokenizer.eos_token_id))
    assert config.family == "gemma3" and config.hidden_act == "gelu_pytorch_tanh"
    assert config.layer_windows == (5, 5, None) and config.tie_word_embeddings
    assert config.qk_norm and config.norm_plus_one and config.attention_scale == 24**-0.5
    assert config.layer_rope(0) == ("default", 100.0, {})
    assert config.layer_rope(2) == ("linear", 10000.0, {"factor": 2.0})


def test_gemma3_final_logit_softcap_matches_transformers(tokenizer, tmp_path):
    """final_logit_softcapping (None in released Gemma 3 configs) caps logits in (-3, 3) here,
    changing them; our logits match transformers', and save_pretrained keeps the cap."""
    from transformers import AutoConfig

    from rlae_jax.models.loading import save_pretrained

    reference = save_tiny_model("gemma3_softcap", tmp_path / "hf", tokenizer)
    member = from_pretrained(str(tmp_path / "hf"))
    token_lists = [tokenizer.encode(p) for p in PROMPTS]
    ids, mask = left_pad(token_lists, tokenizer.pad_token_id)
    ours = np.asarray(member.logits(jnp.asarray(ids), jnp.asarray(mask)))
    for row, tokens in enumerate(token_lists):
        expected = reference_logits(reference, tokens)
        assert np.abs(ours[row, ids.shape[1] - len(tokens) :] - expected).max() < 1e-4, row
    reference.config.final_logit_softcapping = None
    uncapped = reference_logits(reference, token_lists[0])
    capped = ours[0, ids.shape[1] - len(token_lists[0]) :]
    assert np.abs(uncapped - capped).max() > 0.3  # the cap bites
    save_pretrained(member, tmp_path / "ours")
    assert AutoConfig.from_pretrained(tmp_path / "ours").final_logit_softcapping == 3.0


def test_gemma3_options_transformers_does_not_run_are_refused(tokenizer):
    config = hf_config("gemma3", len(tokenizer), tokenizer.eos_token_id)
    config.attn_logit_softcapping = 50.0
    with pytest.raises(ValueError, match="attn_logit_softcapping=50.0 is not supported"):
        config_from_hf(config)


def test_first_argmax_equals_argmax_with_ties_and_infinities():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 4, size=(64, 37)).astype(np.float32)  # many ties for the maximum
    scores[3] = -np.inf
    scores[5, 10:] = np.inf
    scores[7, :] = 2.0
    got = jax.jit(first_argmax)(jnp.asarray(scores))
    assert got.dtype == jnp.int32
    np.testing.assert_array_equal(got, np.argmax(scores, axis=-1))
    scores[9, 4] = np.nan
    # an in-range id; decode loops stop NaN rows
    assert int(first_argmax(jnp.asarray(scores))[9]) == 0


# ---- bad input -------------------------------------------------------------------------------


@pytest.fixture
def llama_folder(tokenizer, tmp_path):
    save_tiny_model("llama", tmp_path, tokenizer)
    return tmp_path


def test_unsupported_model_type_names_it_and_the_supported_list(llama_folder):
    config = json.loads((llama_folder / "config.json").read_text())
    from transformers import BertConfig

    BertConfig(vocab_size=config["vocab_size"]).save_pretrained(llama_folder)
    supported = "llama, mistral, qwen2, qwen3, gemma3_text, gpt2"
    with pytest.raises(ValueError, match=rf"'bert'.*{supported}"):
        from_pretrained(str(llama_folder))


def test_missing_tensor_is_named(llama_folder):
    from safetensors.numpy import load_file, save_file

    path = llama_folder / "model.safetensors"
    tensors = load_file(path)
    del tensors["model.layers.1.mlp.up_proj.weight"]
    save_file(tensors, path, metadata={"format": "pt"})
    with pytest.raises(KeyError, match="model.layers.1.mlp.up_proj.weight"):
        from_pretrained(str(llama_folder))


def test_mismatched_tensor_is_named(llama_folder):
    from safetensors.numpy import load_file, save_file

    path = llama_folder / "model.safetensors"
    tensors = load_file(path)
    tensors["model.layers.0.self_attn.k_proj.weight"] = tensors[
        "model.layers.0.self_attn.k_proj.weight"
    ][:-1]
    save_file(tensors, path, metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"model.layers.0.self_attn.k_proj.weight.*shape"):
        from_pretrained(str(llama_folder))


def test_sharded_checkpoint_loads(tokenizer, tmp_path):
    reference = save_tiny_model("llama", tmp_path / "one", tokenizer)
    reference.save_pretrained(tmp_path / "sharded", max_shard_size="50KB")
    tokenizer.save_pretrained(tmp_path / "sharded")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").exists()
    one, sharded = (
        from_pretrained(str(tmp_path / "one")),
        from_pretrained(str(tmp_path / "sharded")),
    )
    for a, b in zip(jax.tree.leaves(one.state), jax.tree.leaves(sharded.state)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_prompt_longer_than_context_is_refused(llama_folder):
    member = from_pretrained(str(llama_folder))
    with pytest.raises(ValueError, match="context is 256"):
        rlae_jax.generate_member(member, ["Hello world! " * 60], max_new_tokens=32)


def test_empty_prompt_list_is_refused(llama_folder):
    member = from_pretrained(str(llama_folder))
    with pytest.raises(ValueError, match="empty prompt list"):
        rlae_jax.generate_member(member, [], max_new_tokens=4)


def test_tokenizer_larger_than_embedding_is_refused(tokenizer, tmp_path):
    import torch as _torch
    from transformers import AutoModelForCausalLM

    _torch.manual_seed(0)
    small = hf_config("llama", len(tokenizer) - 10, tokenizer.eos_token_id)
    AutoModelForCausalLM.from_config(small).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    with pytest.raises(
        ValueError, match=r"tokenizer has \d+ tokens but the model embedding has only"
    ):
        from_pretrained(str(tmp_path))


def test_embedding_rows_beyond_the_tokenizer_are_never_generated(tokenizer, tmp_path):
    """A padded embedding (vocab 512 > tokenizer's ids) whose extra rows would win the argmax."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(hf_config("llama", 512, tokenizer.eos_token_id))
    with torch.no_grad():
        model.lm_head.weight[len(tokenizer) :] *= 50.0
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    member = from_pretrained(str(tmp_path))
    ids = jnp.asarray([tokenizer.encode("Hello world!")])
    assert int(member.logits(ids, jnp.ones_like(ids))[0, -1].argmax()) >= len(tokenizer)
    generated = rlae_jax.generate_tokens(member, ["Hello world!"], max_new_tokens=16)[0]
    assert max(generated) < len(tokenizer)


def test_unknown_model_type_in_config_from_hf():
    class Fake:
        model_type = "falcon"

    with pytest.raises(ValueError, match="unsupported model_type 'falcon'"):
        config_from_hf(Fake())


def test_offline_hub_id_gives_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OSError, match="could not fetch 'nobody/no-such-model'"):
        from_pretrained("nobody/no-such-model")


def test_save_pretrained_round_trip_loads_in_both_frameworks(tiny, tokenizer, tmp_path):
    """Our export is a real HF folder: we load it back bit-exactly, and transformers runs it."""
    from transformers import AutoModelForCausalLM

    from rlae_jax.models.loading import save_pretrained

    family, _, member = tiny
    save_pretrained(member, tmp_path)
    again = from_pretrained(str(tmp_path))
    assert again.config == member.config
    for a, b in zip(jax.tree.leaves(member.state), jax.tree.leaves(again.state)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    ids = tokenizer.encode(PROMPTS[0])
    exported = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    ours = np.asarray(member.logits(jnp.asarray([ids]), jnp.ones((1, len(ids)), jnp.int32)))[0]
    assert np.abs(reference_logits(exported, ids) - ours).max() < 1e-4, family


def test_a_folder_keeps_its_own_tokenizer_json(tiny, tokenizer):
    """transformers may swap in a model-specific tokenizer class (e.g. Qwen2Tokenizer for a qwen2
    folder) that re-splits text; from_pretrained uses the folder's tokenizer.json as is."""
    _, _, member = tiny
    assert "Qwen2" not in type(member.tokenizer).__name__
    for prompt in PROMPTS + [" leading space", "tabs\tand\nnew lines  "]:
        assert member.tokenizer.encode(prompt) == tokenizer.encode(prompt)
