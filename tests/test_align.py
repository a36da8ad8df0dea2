"""Alignment on tokenizers trained in the test (both styles) and the stories260K GGUF vocabulary."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rlae_jax.align import Alignment, build_alignment, member_vocab
from rlae_jax.align import vocab as vocab_module
from rlae_jax.models.sampling import first_argmax
from conftest import fixture_path
from tokenizer_fixtures import train_byte_level_bpe, train_metaspace_unigram, unicode_text

SETTINGS = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.fixture(scope="module")
def trained():
    return [train_byte_level_bpe(), train_metaspace_unigram()]


@pytest.fixture(scope="module")
def alignment(trained, tmp_path_factory) -> Alignment:
    return build_alignment(trained, cache_dir=tmp_path_factory.mktemp("alignments"))


def encode(tokenizer, text):
    return tokenizer.encode(text, add_special_tokens=False)


def test_trained_token_bytes(trained):
    byte_level, unigram = (member_vocab(t) for t in trained)
    assert byte_level.duplicate_count() == 0 and not byte_level.byte_fallback_ids
    for token_id, token in enumerate(byte_level.token_bytes):
        if token is not None:
            assert trained[0].decode([token_id]) == token.decode("utf-8", errors="replace")
    assert len(unigram.byte_fallback_ids) == 256
    pieces = trained[1].convert_ids_to_tokens(list(range(unigram.size)))
    for token_id, piece in enumerate(pieces):
        if token_id in unigram.byte_fallback_ids:
            assert unigram.token_bytes[token_id] == bytes([int(piece[3:5], 16)])
        elif token_id not in unigram.specials:
            assert unigram.token_bytes[token_id] == piece.replace("\u2581", " ").encode()
    # every single-character piece also has a byte-fallback twin with the same bytes
    singles = [
        i
        for i in range(unigram.size)
        if len(unigram.token_bytes[i] or b"") == 1 and i not in unigram.byte_fallback_ids
    ]
    assert unigram.duplicate_count() == len(singles) > 0
    assert all(unigram.preferred_ids()[unigram.token_bytes[i]] == i for i in singles)


def test_union_layout(trained, alignment):
    eos_ids = [t.eos_token_id for t in trained]
    assert [alignment.to_union(n, [eos]) for n, eos in enumerate(eos_ids)] == [[0], [0]]
    assert alignment.eos_union_id == 0 and alignment.special_name(0) == "<|endoftext|>"
    assert [alignment.from_union(n, [0]) for n in range(2)] == [[eos] for eos in eos_ids]
    regular = [b for b in alignment.vocab.union_bytes if b]
    assert len(set(regular)) == len(regular)
    assert regular == sorted(regular, key=lambda b: (len(b), b))
    # the unigram's <s>/<unk> are union specials the byte-level member lacks: nothing to feed
    bos = alignment.to_union(1, [trained[1].bos_token_id])[0]
    assert alignment.special_name(bos) == "<s>" and alignment.from_union(0, [bos]) == []
    assert alignment.max_expansion == int(alignment.union_to_member_len.max())
    assert bool(alignment.union_complete.all())


def test_union_order_is_independent_of_member_order(trained):
    forward = build_alignment(trained, use_cache=False)
    backward = build_alignment(trained[::-1], use_cache=False)
    assert forward.vocab.union_bytes == backward.vocab.union_bytes
    np.testing.assert_array_equal(
        forward.vocab.member_to_union[::-1], backward.vocab.member_to_union
    )


def test_identical_bytes_share_union_id(trained, alignment):
    for n, tokenizer in enumerate(trained):
        vocab = member_vocab(tokenizer)
        for token_id, token in enumerate(vocab.token_bytes):
            union_id = alignment.to_union(n, [token_id])[0]
            assert alignment.union_bytes(union_id) == (token or b"")
            if token is not None:  # re-spelling uses the regular piece, never the byte twin
                assert alignment.from_union(n, [union_id]) == [vocab.preferred_ids()[token]]


@SETTINGS
@given(text=unicode_text())
def test_round_trip_between_members(trained, alignment, text):
    for a, b in itertools.permutations(range(len(trained)), 2):
        ids_a = encode(trained[a], text)
        original = alignment.member_bytes(a, ids_a)
        ids_b = alignment.from_union(b, alignment.to_union(a, ids_a))
        assert alignment.member_bytes(b, ids_b) == original
        assert alignment.decode(alignment.to_union(b, ids_b)) == original.decode(
            "utf-8", errors="replace"
        )
    assert alignment.member_bytes(0, encode(trained[0], text)) == text.encode()


@SETTINGS
@given(seed=st.integers(0, 2**31 - 1), temperature=st.floats(0.01, 100.0), one_hot=st.booleans())
def test_projection_conserves_mass(alignment, seed, temperature, one_hot):
    batch, vocab = 3, alignment.member_to_union.shape[1]
    members = alignment.num_members
    logits = jax.random.normal(jax.random.key(seed), (batch, members, vocab)) / temperature
    if one_hot:
        logits = jnp.where(jax.nn.one_hot(jnp.argmax(logits, -1), vocab, dtype=bool), 0.0, -1e9)
    probs = jnp.exp(alignment.masked_log_softmax(logits))
    weights = jax.nn.softmax(jax.random.normal(jax.random.key(seed + 1), (batch, members)))
    projected = jax.jit(Alignment.project)(alignment, probs)
    mixed = jax.jit(Alignment.mix)(alignment, probs, weights)
    np.testing.assert_allclose(projected.sum(-1), 1.0, atol=1e-6)
    np.testing.assert_allclose(mixed.sum(-1), 1.0, atol=1e-6)
    np.testing.assert_allclose(mixed, jnp.einsum("bn,bnu->bu", weights, projected), atol=1e-6)


def test_projection_matrix_matches_project(alignment):
    probs = jax.nn.softmax(
        jax.random.normal(jax.random.key(0), (2, 2, alignment.member_to_union.shape[1]))
    )
    projected = alignment.project(probs)
    for n in range(2):
        matrix = alignment.projection_matrix(n)
        assert matrix.shape == (alignment.vocab_sizes[n], alignment.num_union)
        dense = probs[:, n, : alignment.vocab_sizes[n]] @ matrix.todense()
        np.testing.assert_allclose(dense, projected[:, n], atol=1e-6)


def test_project_under_vmap(alignment):
    probs = jax.nn.softmax(
        jax.random.normal(jax.random.key(1), (4, 2, 2, alignment.member_to_union.shape[1]))
    )
    stacked = jax.vmap(alignment.project)(probs)
    np.testing.assert_allclose(stacked[3], alignment.project(probs[3]), atol=1e-7)


def test_top_k_union_matches_full_mix(alignment):
    k = 4
    logits = jax.random.normal(jax.random.key(2), (3, 2, alignment.member_to_union.shape[1])) * 3
    probs = jnp.exp(alignment.masked_log_softmax(logits))
    weights = jnp.array([[0.5, 0.5], [0.9, 0.1], [0.2, 0.8]])
    _, top_ids = jax.lax.top_k(probs, k)
    candidates = jax.jit(Alignment.top_k_union)(alignment, probs, top_ids, weights)
    full = alignment.mix(probs, weights)
    assert candidates.union_ids.shape == (3, 2 * k)
    for row in range(3):
        ids = np.asarray(candidates.union_ids[row])[np.asarray(candidates.valid[row])]
        assert len(set(ids.tolist())) == len(ids)
        np.testing.assert_allclose(
            candidates.scores[row][candidates.valid[row]], full[row, ids], atol=1e-6
        )
        assert int(candidates.best()[row]) == int(ids[np.argmax(full[row, ids])])


def test_device_methods_refuse_wrong_shapes_at_trace_time(alignment):
    """A member vocabulary cut short would silently lose probability mass (the gathers fill
    missing ids with 0) and `[N]` weights fail deep in an index; chex names the method instead."""
    probs = jax.nn.softmax(jnp.zeros((3, 2, alignment.member_to_union.shape[1])))
    per_member = [probs[:, n, :size] for n, size in enumerate(alignment.vocab_sizes)]
    weights = jnp.full((3, 2), 0.5)
    with pytest.raises(AssertionError, match=r"Alignment.project takes \[B, N, V\]"):
        jax.jit(Alignment.project)(alignment, probs[..., :-1])
    with pytest.raises(AssertionError, match=r"Alignment.mix takes N=2 arrays"):
        alignment.mix(per_member, weights[0])
    with pytest.raises(AssertionError, match=r"Alignment.mixed_argmax takes N=2 arrays"):
        alignment.mixed_argmax([per_member[0], per_member[1][:, :-1]], weights)
    with pytest.raises(AssertionError, match=r"Alignment.js_divergence takes N=2 arrays"):
        alignment.js_divergence(per_member[:1], weights)
    with pytest.raises(AssertionError, match=r"Alignment.top_k_union takes"):
        alignment.top_k_union(probs, jnp.zeros((3, 2), jnp.int32), weights)


@SETTINGS
@given(
    seed=st.integers(0, 2**31 - 1),
    levels=st.sampled_from([2, 3, 1000]),
    zero_member=st.sampled_from([-1, 0, 1]),
)
def test_mixed_argmax_is_the_full_union_first_argmax(alignment, seed, levels, zero_member):
    # few logit levels give many exact ties (smallest union id must win); a zero weight leaves one
    # member
    keys = jax.random.split(jax.random.key(seed))
    logits = jax.random.randint(
        keys[0], (5, 2, alignment.member_to_union.shape[1]), 0, levels
    ).astype(jnp.float32)
    probs = jnp.exp(alignment.masked_log_softmax(logits))
    weights = (
        jax.random.uniform(keys[1], (5, 2)).at[0].set(0.5)
    )  # row 0: equal weights, cross-member ties
    if zero_member >= 0:
        weights = weights.at[:, zero_member].set(0.0)
    member_probs = [probs[:, n, :size] for n, size in enumerate(alignment.vocab_sizes)]
    full = first_argmax(
        jnp.where(alignment.union_complete, alignment.mix(member_probs, weights), -1.0)
    )
    np.testing.assert_array_equal(
        jax.jit(Alignment.mixed_argmax)(alignment, member_probs, weights), full
    )
    # every complete union token is scored exactly once: gathered (shared) or in its one member id
    assert alignment.shared_union_ids.shape[0] + int(alignment.exclusive.sum()) == int(
        alignment.union_complete.sum()
    )


def union_js_divergence(alignment: Alignment, member_probs) -> np.ndarray:
    """The definition: H(mean_n P_n) − mean_n H(P_n) over all of projected `[B, N, U]`, float64."""
    union = np.asarray(alignment.project(member_probs), np.float64)

    def entropy(p):
        return -np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0), axis=-1)

    return entropy(union.mean(axis=1)) - entropy(union).mean(axis=1)


@pytest.fixture(scope="module")
def variants(trained, alignment):
    """The alignment, one with union tokens left out (max_expansion 1), one with model-only ids."""
    with pytest.warns(UserWarning, match="left out of union_complete"):
        capped = build_alignment(trained, use_cache=False, max_expansion=1)
    sizes = [len(t) for t in trained]
    wide = build_alignment(trained, use_cache=False, vocab_sizes=[sizes[0] + 7, sizes[1]])
    return {"full": alignment, "capped": capped, "wide": wide}


@SETTINGS
@given(
    seed=st.integers(0, 2**31 - 1),
    scale=st.sampled_from([0.1, 1.0, 8.0, 40.0]),
    variant=st.sampled_from(["full", "capped", "wide"]),
)
def test_js_divergence_matches_the_union_space_definition(variants, seed, scale, variant):
    alignment = variants[variant]
    assert variant != "capped" or alignment.incomplete_member_ids.shape[1] > 0
    logits = (
        jax.random.normal(jax.random.key(seed), (4, 2, alignment.member_to_union.shape[1])) * scale
    )
    logits = jnp.where(alignment.member_valid, logits, -jnp.inf)
    exp_logits = [
        jnp.exp(logits[:, n, :size] - logits[:, n, :size].max(-1, keepdims=True))
        for n, size in enumerate(alignment.vocab_sizes)
    ]
    normalizer = jnp.stack([e.sum(-1) for e in exp_logits], axis=1)
    probs = jnp.stack(
        [
            jnp.pad(e / normalizer[:, n, None], ((0, 0), (0, logits.shape[-1] - e.shape[-1])))
            for n, e in enumerate(exp_logits)
        ],
        axis=1,
    )
    got = jax.jit(Alignment.js_divergence)(alignment, exp_logits, normalizer)
    np.testing.assert_allclose(got, union_js_divergence(alignment, probs), rtol=1e-4, atol=1e-5)


def test_retokenize_in_jit(alignment):
    union_ids = jnp.array([0, 5, alignment.num_union - 1])
    tokens, counts = jax.jit(Alignment.retokenize)(alignment, union_ids)
    assert tokens.shape == (3, 2, alignment.max_expansion)
    for row, union_id in enumerate(union_ids.tolist()):
        for n in range(2):
            assert tokens[row, n, : counts[row, n]].tolist() == alignment.from_union(n, [union_id])


def test_tokenizer_without_eos_is_an_error(trained):
    no_eos = train_byte_level_bpe()
    no_eos.eos_token = None
    with pytest.raises(ValueError, match="no EOS token"):
        build_alignment([trained[0], no_eos], use_cache=False)


def test_model_vocab_smaller_than_tokenizer_is_an_error(trained):
    with pytest.raises(
        ValueError, match=r"model vocab size 300 is smaller than its tokenizer's 360"
    ):
        build_alignment(trained, vocab_sizes=[400, 300], use_cache=False)


def test_model_vocab_larger_than_tokenizer_gets_zero_probability(trained):
    wide = build_alignment(trained, vocab_sizes=[400, 512], use_cache=False)
    assert wide.member_to_union.shape == (2, 512)
    assert not bool(wide.member_valid[1, 360:].any()) and not bool(wide.member_valid[0, 400:].any())
    probs = jnp.exp(wide.masked_log_softmax(jnp.zeros((1, 2, 512))))
    assert float(probs[0, 1, 360:].sum()) == 0.0
    np.testing.assert_allclose(wide.project(probs).sum(-1), 1.0, atol=1e-6)
    assert wide.projection_matrix(1).shape == (512, wide.num_union)


def test_cache_round_trip(trained, tmp_path, monkeypatch):
    built = build_alignment(trained, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("*.npz"))) == 1

    def no_rebuild(*args, **kwargs):
        raise AssertionError("the cached alignment should have been loaded")

    monkeypatch.setattr(vocab_module, "_build", no_rebuild)
    loaded = build_alignment(trained, cache_dir=tmp_path)
    assert loaded.vocab == built.vocab and loaded.vocab.union_bytes == built.vocab.union_bytes
    assert loaded.vocab.special_names == built.vocab.special_names
    for leaf_loaded, leaf_built in zip(jax.tree.leaves(loaded), jax.tree.leaves(built)):
        np.testing.assert_array_equal(leaf_loaded, leaf_built)
    for field in ("num_union", "max_expansion", "vocab_sizes", "eos_union_id"):
        assert getattr(loaded, field) == getattr(built, field)
    with pytest.raises(AssertionError, match="cached alignment"):
        build_alignment(trained, vocab_sizes=[400, 400], cache_dir=tmp_path)


def test_expansion_cap_and_strict(trained):
    with pytest.warns(UserWarning, match="left out of union_complete"):
        capped = build_alignment(trained, use_cache=False, max_expansion=1)
    assert capped.max_expansion == 1 and capped.union_to_member.shape[-1] == 1
    complete = np.asarray(capped.union_complete)
    assert not complete.all() and complete[0]
    lengths = np.asarray(capped.union_to_member_len)
    assert (lengths[:, complete] <= 1).all()
    with pytest.raises(ValueError, match="cannot spell"):
        build_alignment(trained, use_cache=False, max_expansion=1, strict=True)


def test_stories260k_gguf_vocabulary(trained):
    gguf = pytest.importorskip(
        "rlae_jax.models.gguf", reason="rlae_jax.models.gguf.load_gguf_tokenizer is missing"
    )
    stories = gguf.load_gguf_tokenizer(fixture_path("models", "stories260K", "stories260K.gguf"))
    vocab = member_vocab(stories)
    assert vocab.size == 512 and len(vocab.byte_fallback_ids) == 256
    assert stories.encode("Once upon a time") == [1, 403, 407, 261, 378]
    members = [stories, trained[0]]
    alignment = build_alignment(members, use_cache=False)
    assert bool(alignment.union_complete.all())
    for text in ["Once upon a time, Lily saw a 🐶 in 公园.", "  tabs\tand 123 digits\n"]:
        for a, b in [(0, 1), (1, 0)]:
            ids_a = encode(members[a], text)
            union_ids = alignment.to_union(a, ids_a)
            assert alignment.member_bytes(
                b, alignment.from_union(b, union_ids)
            ) == alignment.member_bytes(a, ids_a)
        # SentencePiece's dummy prefix is a real space in token bytes (added unless text starts with
        # one)
        expected = text if text.startswith(" ") else " " + text
        assert alignment.member_bytes(0, encode(stories, text)) == expected.encode()
