"""Shared-prefix prefill and K samples per prompt: exactly what a full prefill and separate episodes
give, and a prefix is never reused for other token ids."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import struct

from rlae_jax.engine import (
    DecodeConfig,
    FixedWeights,
    Selection,
    decode_jit,
    tokenize_for_members,
)
from rlae_jax.engine.features import prompt_nll, token_log_probs
from rlae_jax.engine.prefix import (
    EncodedPrompts,
    PrefixStates,
    encode_prompts_once,
    encode_splits,
    shared_prefix_length,
)
from rlae_jax.models import from_pretrained
from rlae_jax.models.prompts import encode_prompts, left_pad
from rlae_jax.rl.distributions import Dirichlet
from rlae_jax.toy.tokenizer_trainer import train_byte_level_bpe, train_metaspace_unigram
from tiny_models import (
    CORPUS,
    prefill_jit,
    random_member,
    save_tiny_model,
    train_byte_level_tokenizer,
    uncached_ensemble,
)

SHARED = "You answer briefly.\n\nExample: what is 2 + 2? The answer is 4.\n\nQuestion: "
QUESTIONS = [
    "What is 3 + 5, and why do you say so? Think of the quick brown fox first.",
    "Hi",
    "Tell me about the little robot who liked to count numbers.",
]
PROMPTS = [SHARED + q for q in QUESTIONS]


def test_encoded_prompts_must_hold_one_row_per_example():
    encoded = EncodedPrompts((np.zeros(0, np.int32),), (((1, 2), (3,)),), (16,), (0,), (0,))
    assert encoded.check_count(2) is encoded and len(encoded.head(1)) == 1
    with pytest.raises(ValueError, match="encoded prompts hold 2 rows for 3 examples"):
        encoded.check_count(3)


def test_shared_prefix_length_leaves_every_row_a_token():
    assert shared_prefix_length([[1, 2, 3, 4], [1, 2, 3, 5], [1, 2, 3, 4, 9]]) == 3
    assert shared_prefix_length([[1, 2, 3], [1, 2, 3, 4]]) == 2  # row 0 keeps its last token
    assert shared_prefix_length([[1, 2], [1, 3]]) == 0  # one shared token is no prefix


@pytest.fixture(scope="module")
def tokenizer():
    return train_byte_level_tokenizer()


# every family's attention: GQA, sliding windows (Mistral 6, Qwen 3 6, Gemma 3 5: the prompts cross
# them many times), Gemma 3's local/global layers, GPT-2's learned positions
@pytest.mark.parametrize(
    "family",
    [
        pytest.param("llama3", marks=pytest.mark.slow),  # the plain decoder: mistral covers it
        pytest.param("mistral", marks=pytest.mark.slow),  # Gemma 3's local layers cover windows
        pytest.param("qwen3", marks=pytest.mark.slow),
        "gpt2",
        "gemma3",
    ],
)
def test_prefix_prefill_equals_the_full_prefill(family, tokenizer, tmp_path):
    """Next-token logits, prompt summary, prompt NLL and the next decode step after a shared-prefix
    prefill equal a full prefill of the same left-padded rows of different lengths (≤ 1e-5); the
    prefix itself left-padded by 7 slots (as `encode_splits` pads splits' prefixes to one shape)."""
    save_tiny_model(family, tmp_path, tokenizer)
    member = from_pretrained(str(tmp_path))
    token_lists = encode_prompts(member.tokenizer, PROMPTS)
    encoded = encode_prompts_once([member], [token_lists], 8)
    assert len(encoded.prefix_ids[0]) > 20
    encoded = dataclasses.replace(encoded, prefix_slots=(len(encoded.prefix_ids[0]) + 7,))
    batch = PrefixStates([member]).batch(encoded, range(len(PROMPTS)))
    ids, mask = map(jnp.asarray, left_pad(token_lists, member.tokenizer.pad_token_id))
    full = prefill_jit(member, ids, mask, ids.shape[1] + 8)
    rows, rows_mask, prefix = batch.input_ids[0], batch.attention_mask[0], batch.prefix[0]
    part = prefill_jit(member, rows, rows_mask, batch.prompt_slots(0) + 8, prefix)
    close = dict(atol=1e-5, rtol=0)
    np.testing.assert_allclose(part.step.logits, full.step.logits, **close)
    np.testing.assert_allclose(part.summary, full.summary, **close)
    np.testing.assert_array_equal(part.cache.next_position, full.cache.next_position)
    token = jnp.argmax(full.step.logits, -1)
    step = jax.jit(lambda cache: member.step(cache, token)[0].logits)
    np.testing.assert_allclose(step(part.cache), step(full.cache), **close)
    scored = np.asarray(mask[:, 1:] * mask[:, :-1], np.float32)
    log_probs = np.asarray(jax.jit(token_log_probs)(member, ids, mask))
    two_pass = -(log_probs * scored).sum(-1) / scored.sum(-1)
    nll = jax.jit(prompt_nll)
    np.testing.assert_allclose(nll(member, full.hidden_states, ids, mask), two_pass, **close)
    after_prefix = nll(member, part.hidden_states, rows, rows_mask, prefix)
    np.testing.assert_allclose(after_prefix, two_pass, **close)


@pytest.fixture(scope="module")
def ensemble():
    """A byte-level BPE member and a `▁` Unigram member with byte fallback: different tokenizers,
    so union tokens are re-spelled into several member tokens."""
    members = [
        random_member("gpt2", train_byte_level_bpe(CORPUS, 384), 0, "bpe"),
        random_member("llama", train_metaspace_unigram(CORPUS, 200), 1, "unigram"),
    ]
    return uncached_ensemble(members)


def decode_greedy(ensemble, batch, weight_fn, config, key=0, temperature=0.0):
    return decode_jit(
        ensemble,
        batch,
        weight_fn,
        jax.random.key(key),
        jnp.float32(temperature),
        jnp.float32(1.0),
        config,
    )


def test_greedy_ensemble_answers_are_identical_with_a_shared_prefix(ensemble):
    config = DecodeConfig(max_new_tokens=32, span_length=4)
    uniform = FixedWeights(jnp.array([0.5, 0.5]))
    whole = tokenize_for_members(ensemble.members, PROMPTS, 32)
    encoded = ensemble.encode_texts(PROMPTS, 32)
    assert all(len(ids) > 10 for ids in encoded.prefix_ids)
    shared = ensemble.batch(encoded, range(len(PROMPTS)))
    want, got = (
        decode_greedy(ensemble, whole, uniform, config),
        decode_greedy(ensemble, shared, uniform, config),
    )
    np.testing.assert_array_equal(got.union_ids, want.union_ids)
    np.testing.assert_array_equal(got.ingested, want.ingested)
    assert int(np.asarray(want.lengths).max()) == 32  # a row that runs the whole length
    np.testing.assert_allclose(
        got.span_features.prompt_summary[1], want.span_features.prompt_summary[1], atol=1e-5
    )


def test_splits_encoded_together_share_one_shape_and_decode_as_each_alone(ensemble):
    """Two splits whose prompts share prefixes of different lengths: each keeps its whole prefix
    (left-padded to one slot count per member), the rests one padded length, every row is exactly
    its prefix + rest, and greedy answers equal the split's own encoding without padding."""
    splits = [PROMPTS, ["Worked examples differ here. " * 3 + p for p in PROMPTS[:2]]]
    token_lists = [
        [encode_prompts(m.tokenizer, texts) for m in ensemble.members] for texts in splits
    ]
    encoded = encode_splits(ensemble.members, token_lists, 8)
    for n in range(len(ensemble)):
        assert len({len(e.padded_prefix(n)[0]) for e in encoded}) == 1
        assert len({e.lengths[n] for e in encoded}) == 1
        for split, e in zip(token_lists, encoded):
            assert len(e.prefix_ids[n]) == shared_prefix_length(split[n]) > 10
            for row, rest in zip(split[n], e.rest[n]):
                assert list(e.prefix_ids[n]) + list(rest) == row
    assert len(encoded[1].prefix_ids[0]) > len(encoded[0].prefix_ids[0])  # split 0's is padded
    config = DecodeConfig(max_new_tokens=8, span_length=2)
    uniform = FixedWeights(jnp.array([0.5, 0.5]))
    rows = range(len(PROMPTS))
    alone = encode_prompts_once(ensemble.members, token_lists[0], 8)
    want = decode_greedy(ensemble, ensemble.batch(alone, rows), uniform, config)
    got = decode_greedy(ensemble, ensemble.batch(encoded[0], rows), uniform, config)
    np.testing.assert_array_equal(got.union_ids, want.union_ids)
    assert int(np.asarray(want.lengths).min()) > 0


def test_a_prefix_is_reused_for_equal_ids_and_never_for_other_ids(ensemble):
    """Same shots: the kept prefix state is reused. Other shots or another member format change the
    token ids, hence the key: a new prefix is prefilled."""
    first = ensemble.encode_texts(PROMPTS, 8)
    ensemble.batch(first, [0, 1])
    before = ensemble.prefixes.prefills
    ensemble.batch(ensemble.encode_texts(PROMPTS, 8), [2, 0])
    assert ensemble.prefixes.prefills == before
    other_shots = [p.replace("2 + 2? The answer is 4", "1 + 2? The answer is 3") for p in PROMPTS]
    changed = ensemble.encode_texts(other_shots, 8)
    batch = ensemble.batch(changed, [0, 1])
    assert ensemble.prefixes.prefills == before + 2
    kept = ensemble.batch(first, [0, 1]).prefix
    assert not np.array_equal(batch.prefix[0].ids, kept[0].ids)
    other_format = [["<|user|> " + p for p in PROMPTS], PROMPTS]  # member 0 in another template
    ensemble.batch(ensemble.encode_texts(other_format, 8), [0])
    assert ensemble.prefixes.prefills == before + 3  # member 0's prefix only


@struct.dataclass
class DirichletWeights:
    """A sampling weight_fn: independent Dirichlet(1, 1) weights per row and span."""

    optional_features: tuple = struct.field(pytree_node=False, default=())
    selection = Selection()

    def init_carry(self, batch, num_spans):
        return jax.random.key(7)

    def __call__(self, features, key):
        key, draw = jax.random.split(key)
        alpha = jnp.ones_like(features.previous_weights)
        return Dirichlet(alpha).sample(draw), key


def test_k_samples_per_prompt_decode_what_separate_episodes_decode(ensemble):
    """One prefill, rows repeated K times: each row decodes exactly what the same row prefilled on
    its own (the prompt repeated K times in the batch) decodes with the same weight draws."""
    samples, new = 3, 12
    encoded = ensemble.encode_texts(PROMPTS, new)
    config = DecodeConfig(max_new_tokens=new, span_length=4, samples_per_prompt=samples)
    once = decode_greedy(ensemble, ensemble.batch(encoded, range(3)), DirichletWeights(), config)
    repeated = ensemble.batch(encoded, np.repeat(np.arange(3), samples))
    separate = decode_greedy(
        ensemble, repeated, DirichletWeights(), DecodeConfig(max_new_tokens=new, span_length=4)
    )
    np.testing.assert_array_equal(once.union_ids, separate.union_ids)
    np.testing.assert_allclose(once.span_weights, separate.span_weights, atol=1e-6)
    weights = np.asarray(once.span_weights)[:, 0, 0].reshape(3, samples)
    assert np.all(np.ptp(weights, axis=1) > 1e-3), "the K rows of a prompt drew the same weights"
    answers = np.asarray(once.union_ids).reshape(3, samples, new)
    assert any(len({a.tobytes() for a in group}) > 1 for group in answers)
