"""Alignment of the real fixture tokenizers (GPT-2, NeoX, Llama 2/3, Mistral v1/v3)."""

import itertools
import time
import unicodedata

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings

from rlae_jax.align import Alignment, build_alignment, member_vocab
from rlae_jax.models.sampling import first_argmax
from conftest import fixture_path
from tokenizer_fixtures import REAL_TOKENIZERS, load_real_tokenizer, unicode_text

NAMES = list(REAL_TOKENIZERS)
SENTENCEPIECE = {"llama2", "mistral_v1", "mistral_v3"}
EXPANSION_CAP = (
    32  # keeps [6, U≈147k, L] at 113 MB; Llama 3's 128-space token needs 128 GPT-2 tokens
)


@pytest.fixture(scope="module")
def tokenizers():
    return {
        name: load_real_tokenizer(name, fixture_path("tokenizers", folder))
        for name, folder in REAL_TOKENIZERS.items()
    }


@pytest.fixture(scope="module")
def alignment(tokenizers) -> Alignment:
    with pytest.warns(
        UserWarning, match="cannot spell"
    ):  # NeoX's byte alphabet lacks 0xC0, 0xC1, 0xF5..0xFF
        return build_alignment(
            [tokenizers[n] for n in NAMES], use_cache=False, max_expansion=EXPANSION_CAP
        )


def text_bytes(name: str, text: str) -> bytes:
    """Bytes a member's encoding of ``text`` should spell: NFC for NeoX; for SentencePiece its dummy
    prefix and a literal '▁' (U+2581, its own space marker) read as a space."""
    if name == "neox":
        text = unicodedata.normalize("NFC", text)
    if name in SENTENCEPIECE:
        text = text.replace("\u2581", " ")
        if text and not text.startswith(" "):
            text = " " + text
    return text.encode()


@pytest.mark.parametrize(
    "name, duplicates",
    # NeoX: the model vocab has none; its 23 added whitespace runs duplicate 'ĠĠ...' pieces
    [
        ("gpt2", 0),
        ("neox", 23),
        ("llama2", 96),
        ("mistral_v1", 125),
        ("mistral_v3", 125),
        ("llama3", 0),
    ],
)
def test_duplicate_byte_strings(tokenizers, name, duplicates):
    vocab = member_vocab(tokenizers[name])
    assert vocab.duplicate_count() == duplicates
    if name in SENTENCEPIECE:
        assert len(vocab.byte_fallback_ids) == 256
        spellings = [i for i, b in enumerate(vocab.token_bytes) if b == b"!"]
        assert len(spellings) == 2  # the piece '!' and the byte token <0x21>
        piece = next(i for i in spellings if i not in vocab.byte_fallback_ids)
        assert vocab.preferred_ids()[b"!"] == piece


def test_hello_world_bytes(tokenizers):
    expected = {
        "gpt2": [15496, 995],
        "neox": [12092, 1533],
        "llama2": [15043, 3186],
        "mistral_v1": [22557, 1526],
        "mistral_v3": [23325, 2294],
        "llama3": [9906, 1917],
    }
    for name, ids in expected.items():
        assert tokenizers[name].encode("Hello world", add_special_tokens=False) == ids
        assert member_vocab(tokenizers[name]).decode(ids) == text_bytes(name, "Hello world")


def test_leading_space_convention(tokenizers, alignment):
    """Raw SentencePiece spells ' Hello' as [▁, ▁Hello]; transformers 5 as [▁Hello]. Token bytes are
    literal."""
    sentencepiece = pytest.importorskip("sentencepiece")
    model_file = fixture_path("tokenizers", "llama2-spm", "tokenizer.model")
    raw = sentencepiece.SentencePieceProcessor(model_file=str(model_file))
    llama2 = NAMES.index("llama2")
    assert raw.encode(" Hello") == [29871, 15043]
    assert tokenizers["llama2"].encode(" Hello", add_special_tokens=False) == [15043]
    assert alignment.member_bytes(llama2, [29871, 15043]) == b"  Hello"
    assert alignment.member_bytes(llama2, [15043]) == b" Hello"
    gpt2 = NAMES.index("gpt2")
    assert alignment.from_union(gpt2, alignment.to_union(llama2, [15043])) == [18435]  # 'ĠHello'


def test_build_time_two_real_vocabularies(tokenizers):
    start = time.perf_counter()
    built = build_alignment([tokenizers["gpt2"], tokenizers["llama2"]], use_cache=False)
    seconds = time.perf_counter() - start
    print(
        f"build_alignment(gpt2, llama2): U={built.num_union} L={built.max_expansion} "
        f"in {seconds:.2f} s"
    )
    assert seconds < 30 and bool(built.union_complete.all())
    assert built.max_expansion == 64  # GPT-2's 'ÃÂ' × 32 token needs 64 Llama 2 tokens


def test_neox_cannot_spell_invalid_utf8_bytes(tokenizers):
    """NeoX's alphabet lacks bytes never in UTF-8; Mistral's <0xC0> etc. stay unselectable."""
    with pytest.warns(UserWarning, match="cannot spell") as caught:
        built = build_alignment([tokenizers["neox"], tokenizers["mistral_v1"]], use_cache=False)
    assert "member 0: 13 tokens" in str(caught[0].message)
    missing = built.unspellable(0)
    assert sorted(missing) == sorted([bytes([b]) for b in [0xC0, 0xC1, *range(0xF5, 0x100)]])
    byte_c0 = built.to_union(
        1, [member_vocab(tokenizers["mistral_v1"]).token_bytes.index(b"\xc0")]
    )[0]
    assert not bool(built.union_complete[byte_c0]) and built.from_union(0, [byte_c0]) == []
    with pytest.raises(ValueError, match="cannot spell"):
        build_alignment(
            [tokenizers["neox"], tokenizers["mistral_v1"]], use_cache=False, strict=True
        )


def test_tables_are_consistent(tokenizers, alignment):
    assert alignment.member_to_union.shape == (len(NAMES), 128256)
    union_bytes = np.array(alignment.vocab.union_bytes, dtype=object)
    regular = [b for b in alignment.vocab.union_bytes if b]
    assert len(set(regular)) == len(regular)
    for n, name in enumerate(NAMES):
        vocab = member_vocab(tokenizers[name])
        table = alignment.vocab.member_to_union[n, : vocab.size]
        # identical bytes ⇒ the same union id in every member (union bytes are unique)
        assert list(union_bytes[table]) == [b or b"" for b in vocab.token_bytes]
        assert table[vocab.eos_id] == alignment.eos_union_id
        assert not alignment.member_valid[n, vocab.size :].any()
    spellable_everywhere = np.asarray(alignment.union_complete)
    assert spellable_everywhere.mean() > 0.99


class Members:
    """Tokenizers + alignment under a short repr (hypothesis prints arguments of failing cases)."""

    def __init__(self, tokenizers, alignment):
        self.tokenizers, self.alignment = tokenizers, alignment

    def __repr__(self):
        return f"Members({NAMES})"


@pytest.fixture(scope="module")
def members(tokenizers, alignment):
    return Members(tokenizers, alignment)


@settings(
    max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(text=unicode_text())
def test_round_trip_between_real_members(members, text):
    tokenizers, alignment = members.tokenizers, members.alignment
    complete = alignment.vocab.union_to_member_len > 0
    encoded = {name: tokenizers[name].encode(text, add_special_tokens=False) for name in NAMES}
    for name in NAMES:
        assert alignment.member_bytes(NAMES.index(name), encoded[name]) == text_bytes(name, text)
    for a, b in itertools.permutations(range(len(NAMES)), 2):
        union_ids = alignment.to_union(a, encoded[NAMES[a]])
        assume(
            complete[b, union_ids].all()
        )  # only tokens longer than EXPANSION_CAP member-b tokens fail
        ids_b = alignment.from_union(b, union_ids)
        assert alignment.member_bytes(b, ids_b) == alignment.member_bytes(a, encoded[NAMES[a]])


def test_real_projection_conserves_mass(alignment):
    logits = (
        jax.random.normal(jax.random.key(0), (2, len(NAMES), alignment.member_to_union.shape[1]))
        * 4
    )
    probs = jnp.exp(alignment.masked_log_softmax(logits))
    projected = jax.jit(Alignment.project)(alignment, probs)
    assert projected.shape == (2, len(NAMES), alignment.num_union)
    np.testing.assert_allclose(projected.sum(-1), 1.0, atol=1e-5)
    weights = jnp.full((2, len(NAMES)), 1 / len(NAMES))
    np.testing.assert_allclose(alignment.mix(probs, weights).sum(-1), 1.0, atol=1e-5)


def test_real_top_k_union_matches_full_mix(alignment):
    logits = (
        jax.random.normal(jax.random.key(1), (2, len(NAMES), alignment.member_to_union.shape[1]))
        * 4
    )
    probs = jnp.exp(alignment.masked_log_softmax(logits))
    weights = jax.nn.softmax(jax.random.normal(jax.random.key(2), (2, len(NAMES))))
    _, top_ids = jax.lax.top_k(probs, 5)
    candidates = jax.jit(Alignment.top_k_union)(alignment, probs, top_ids, weights)
    full = alignment.mix(probs, weights)
    valid = np.asarray(candidates.valid)
    ids = np.asarray(candidates.union_ids)
    for row in range(2):
        np.testing.assert_allclose(
            candidates.scores[row][valid[row]], full[row, ids[row][valid[row]]], rtol=1e-5
        )


def test_real_mixed_argmax_is_the_full_union_first_argmax(alignment):
    logits = jnp.round(
        jax.random.normal(jax.random.key(3), (3, len(NAMES), alignment.member_to_union.shape[1]))
    )
    probs = jnp.exp(alignment.masked_log_softmax(logits))  # integer logits: many exact ties
    weights = jax.nn.softmax(jax.random.normal(jax.random.key(4), (3, len(NAMES)))).at[0].set(1.0)
    member_probs = [probs[:, n, :size] for n, size in enumerate(alignment.vocab_sizes)]
    full = first_argmax(
        jnp.where(alignment.union_complete, alignment.mix(member_probs, weights), -1.0)
    )
    np.testing.assert_array_equal(
        jax.jit(Alignment.mixed_argmax)(alignment, member_probs, weights), full
    )
    assert 0 < alignment.shared_union_ids.shape[0] < alignment.num_union
