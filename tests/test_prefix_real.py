"""Shared-prefix prefill on the real pair (SmolLM2-135M-Instruct, Gemma-3-270M): the same logits as
a full prefill and the same greedy ensemble answers, with a row past Gemma's 512-token sliding
window (slow job)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlae_jax import Ensemble
from rlae_jax.engine import DecodeConfig, FixedWeights, decode_jit, tokenize_for_members
from rlae_jax.models.installed import installed_gguf
from tiny_models import prefill_jit

pytestmark = pytest.mark.slow

PRESETS = ("smollm2-135m-instruct", "gemma-3-270m")
SHOT = (
    "Consider these statements:\n1. All cats are animals\n2. Some animals are pets\n\n"
    "Does it logically follow that: Some cats are pets? Answer Yes or No."
)
QUESTIONS = [
    "What is 17 + 25?",
    "Name the largest planet of the solar system and say why it is so large. " * 2,
    # past Gemma 3's 512-token local window, prefix included
    "Summarise: " + "The quick brown fox jumps over the lazy dog while counting sheep. " * 40,
]


@pytest.fixture(scope="module")
def ensemble():
    for preset in PRESETS:
        try:
            installed_gguf(preset)
        except FileNotFoundError as error:
            pytest.skip(str(error))
    return Ensemble.from_pretrained(PRESETS)


def member_prompts(ensemble):
    messages = [
        [
            {"role": "user", "content": SHOT},
            {"role": "assistant", "content": "No"},
            {"role": "user", "content": q},
        ]
        for q in QUESTIONS
    ]
    return [[m.chat_prompt(msgs) for msgs in messages] for m in ensemble.members]


def without_padding_columns(ids, mask):
    """`[B, T]` left-padded ids and mask without the columns no row uses (the bucket's slack)."""
    start = int(np.argmax(np.asarray(mask).any(0)))
    return ids[:, start:], mask[:, start:]


def test_real_members_prefix_prefill_and_greedy_answers_equal_the_full_prefill(ensemble):
    prompts = member_prompts(ensemble)
    encoded = ensemble.encode_texts(prompts, 32)
    shared = ensemble.batch(encoded, range(len(QUESTIONS)))
    whole = tokenize_for_members(ensemble.members, prompts, 32)
    assert int(np.asarray(whole.attention_mask[1]).sum(1).max()) > 512  # crosses the window
    for n, member in enumerate(ensemble.members):
        prefix = shared.prefix_of(n)
        assert prefix.slots > 30, member.name
        ids, mask = without_padding_columns(whole.input_ids[n], whole.attention_mask[n])
        full = prefill_jit(member, ids, mask, ids.shape[1]).step.logits
        rest, rest_mask = without_padding_columns(shared.input_ids[n], shared.attention_mask[n])
        slots = prefix.slots + rest.shape[1]
        part = prefill_jit(member, rest, rest_mask, slots, prefix).step.logits
        # float32 noise of batching itself: each row prefilled alone against the batch (both
        # members carry activations of 1e4-1e5 on a few tokens, so it is ~5e-5, not 1e-6)
        alone = [
            prefill_jit(member, ids[r : r + 1], mask[r : r + 1], ids.shape[1]).step.logits[0]
            for r in range(ids.shape[0])
        ]
        noise = max(float(np.abs(np.asarray(a) - np.asarray(f)).max()) for a, f in zip(alone, full))
        gap = float(np.abs(np.asarray(part) - np.asarray(full)).max())
        print(f"{member.name}: prefix vs full {gap:.2e}, batch vs alone {noise:.2e}")
        assert gap <= max(1e-5, 2 * noise), (member.name, gap, noise)
    config = DecodeConfig(max_new_tokens=32, span_length=4)
    uniform = FixedWeights(jnp.array([0.5, 0.5]))
    answers = [
        decode_jit(
            ensemble,
            batch,
            uniform,
            jax.random.key(0),
            jnp.float32(0.0),
            jnp.float32(1.0),
            config,
        )
        for batch in (whole, shared)
    ]
    np.testing.assert_array_equal(answers[1].union_ids, answers[0].union_ids)
