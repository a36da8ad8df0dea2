"""Exactness of the ensemble engine against single members, batching, strategies, and bad input."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import struct

import rlae_jax
from rlae_jax import Ensemble
from rlae_jax.align import build_alignment
from rlae_jax.runtime import compile_options
from rlae_jax.engine import (
    CallableWeightFn,
    DecodeConfig,
    FixedWeights,
    Selection,
    decode_jit,
    generate,
    loop,
    mixing,
)
from rlae_jax.models.generate import continuation_text
from rlae_jax.engine.features import top1_agreement, usable_rows
from rlae_jax.engine.features import member_distributions
from rlae_jax.engine.feed import feed_members
from rlae_jax.engine.state import STOP_EOS, STOP_LENGTH, Sampling
from rlae_jax.models.sampling import select_tokens, top_p_filter
from rlae_jax.toy.tokenizer_trainer import train_byte_level_bpe, train_metaspace_unigram
from conftest import fixture_path
from tiny_models import CORPUS, prefill_jit, random_member, uncached_ensemble
from tokenizer_fixtures import REAL_TOKENIZERS, load_real_tokenizer

PROMPTS = ["Once upon a time there was a little robot who", "Hello world!", "The quick brown fox"]
NEW_TOKENS = 20


@pytest.fixture(scope="module")
def members():
    """Member 0: byte-level BPE (no duplicate byte strings); member 1: `▁` Unigram with byte
    fallback."""
    byte_level = train_byte_level_bpe(CORPUS, 384)
    metaspace = train_metaspace_unigram(CORPUS, 200)
    return [
        random_member("gpt2", byte_level, 0, "bpe"),
        random_member("llama", metaspace, 1, "unigram"),
    ]


@pytest.fixture(scope="module")
def ensemble(members):
    return uncached_ensemble(members)


@pytest.fixture(scope="module")
def alignment(ensemble):
    return ensemble.alignment


def test_one_hot_weights_reproduce_the_member_alone_while_the_other_ingests_everything(
    ensemble, alignment, members
):
    alone = rlae_jax.generate_tokens(members[0], PROMPTS, max_new_tokens=NEW_TOKENS)
    out = generate(
        ensemble, PROMPTS, strategy="fixed", weights=[1.0, 0.0], max_new_tokens=NEW_TOKENS
    )
    for row, own_ids in enumerate(alone):
        assert out.union_ids[row] == alignment.to_union(0, own_ids)
        assert out.texts[row] == members[0].tokenizer.decode(own_ids, skip_special_tokens=True)
    ingested = np.asarray(out.result.ingested)
    expansions = []
    for row, union_ids in enumerate(out.union_ids):
        unigram_ids = alignment.from_union(1, union_ids)
        assert ingested[row, 1] == len(unigram_ids)
        assert alignment.member_bytes(1, unigram_ids) == alignment.decode_bytes(union_ids)
        expansions.append(len(unigram_ids) - len(union_ids))
    assert max(expansions) > 0, "the test should exercise multi-token steps in the unigram member"


def test_single_strategy_equals_one_hot_fixed_by_name_or_object(ensemble):
    single = generate(ensemble, PROMPTS, strategy="single", primary=1, max_new_tokens=NEW_TOKENS)
    fixed = generate(ensemble, PROMPTS, strategy="fixed", weights=[0, 1], max_new_tokens=NEW_TOKENS)
    as_object = generate(ensemble, PROMPTS, FixedWeights([0.0, 1.0]), NEW_TOKENS)
    assert single.union_ids == fixed.union_ids == as_object.union_ids


def test_duplicate_byte_strings_explain_any_divergence_from_the_member_alone(alignment, members):
    """Member 1 has byte-fallback duplicates: where the ensemble (one-hot on it) picks different
    bytes than its own greedy step, the chosen byte string's summed probability beats its top token.
    """
    # Give every byte-fallback token the LM-head column of the piece with the same bytes, so that
    # such pairs share their mass equally and the duplicate rule (summing them) matters often.
    spellers = np.asarray(alignment.union_member_ids)[1]  # [U, D]
    vocab = members[1].config.vocab_size
    pairs = [(ids[0], ids[1]) for ids in spellers if (ids < vocab).sum() == 2]
    assert len(pairs) > 20
    first, second = np.array(pairs).T

    def tie(path, x):
        return x.at[:, second].set(x[:, first]) if "lm_head" in jax.tree_util.keystr(path) else x

    divergences = 0
    for seed in (
        1,
        2,
        3,
        4,
    ):  # several random members: divergences need near-ties, which are chancy
        member = random_member("llama", members[1].tokenizer, seed, "unigram")
        member = member.replace(state=jax.tree_util.tree_map_with_path(tie, member.state))
        out = generate(
            Ensemble([members[0], member], alignment),
            PROMPTS,
            strategy="single",
            primary=1,
            max_new_tokens=NEW_TOKENS,
        )
        full_forward = jax.jit(member.logits)

        def next_token_probs(context):  # right-padded to one static shape: one compilation
            ids, mask = np.zeros((1, 128), np.int32), np.zeros((1, 128), np.int32)
            ids[0, : len(context)], mask[0, : len(context)] = context, 1
            logits = full_forward(jnp.asarray(ids), jnp.asarray(mask))[0, len(context) - 1]
            return np.asarray(jax.nn.softmax(logits))

        for row, prompt in enumerate(PROMPTS):
            context = member.tokenizer.encode(prompt)
            for union_id in out.union_ids[row]:
                probs = next_token_probs(context)
                top = int(probs.argmax())
                top_union = alignment.to_union(1, [top])[0]
                if top_union != union_id:
                    same_bytes = np.flatnonzero(
                        alignment.vocab.member_to_union[1, : len(probs)] == union_id
                    )
                    top_bytes = np.flatnonzero(
                        alignment.vocab.member_to_union[1, : len(probs)] == top_union
                    )
                    assert len(same_bytes) > 1
                    assert probs[same_bytes].sum() >= probs[top_bytes].sum() - 1e-6
                    assert probs[same_bytes].max() < probs[top]
                    divergences += 1
                context += alignment.from_union(1, [union_id])
    assert divergences > 0, (
        "the tied duplicates should make the ensemble diverge from the member somewhere"
    )


def test_two_copies_of_one_member_equal_that_member_alone(members):
    copies = [members[0], members[0].replace(name="copy")]
    alignment = build_alignment([m.tokenizer for m in copies], use_cache=False)
    alone = rlae_jax.generate_tokens(members[0], PROMPTS, max_new_tokens=NEW_TOKENS)
    for weights in ([0.5, 0.5], [0.2, 0.8], [0.9, 0.1]):
        out = generate(
            Ensemble(copies, alignment),
            PROMPTS,
            strategy="fixed",
            weights=weights,
            max_new_tokens=NEW_TOKENS,
        )
        assert out.union_ids == [alignment.to_union(0, ids) for ids in alone]


@pytest.mark.slow  # minutes on 2 cores: the slow job runs it
def test_every_batch_row_equals_its_prompt_run_alone(ensemble):
    batched = generate(
        ensemble, PROMPTS, strategy="uniform", max_new_tokens=NEW_TOKENS, span_length=3
    )
    for row, prompt in enumerate(PROMPTS):
        alone = generate(
            ensemble,
            [prompt],
            strategy="uniform",
            max_new_tokens=NEW_TOKENS,
            span_length=3,
        )
        assert alone.union_ids[0] == batched.union_ids[row]


def test_threshold_extremes(ensemble):
    """GaC gating: the primary alone where its max probability exceeds τ. τ = 0 → always alone (the
    primary's own output); τ > 1 → never alone (the ensemble). (Issue 4's must-show list states
    these two extremes the other way round; its own definition of the gate, followed here, implies
    this.)"""
    primary = generate(ensemble, PROMPTS, strategy="single", primary=0, max_new_tokens=NEW_TOKENS)
    mixed = generate(ensemble, PROMPTS, strategy="uniform", max_new_tokens=NEW_TOKENS)
    above_one = generate(
        ensemble,
        PROMPTS,
        strategy="threshold",
        threshold=1.5,
        primary=0,
        max_new_tokens=NEW_TOKENS,
    )
    zero = generate(
        ensemble,
        PROMPTS,
        strategy="threshold",
        threshold=0.0,
        primary=0,
        max_new_tokens=NEW_TOKENS,
    )
    assert above_one.union_ids == mixed.union_ids
    assert zero.union_ids == primary.union_ids
    assert primary.union_ids != mixed.union_ids  # the two extremes really differ here


def test_threshold_gates_per_row_inside_one_batch(ensemble):
    out = generate(
        ensemble,
        PROMPTS,
        strategy="threshold",
        threshold=0.6,
        primary=0,
        max_new_tokens=NEW_TOKENS,
    )
    weights = np.concatenate(out.span_weights)
    alone = np.isclose(weights[:, 0], 1.0)
    assert alone.any() and (~alone).any()
    max_prob = np.asarray(out.result.span_features.max_prob)[..., 0][
        np.asarray(out.result.span_valid)
    ]
    np.testing.assert_array_equal(alone, max_prob > 0.6)


def test_top_k_union_with_k_equal_to_the_vocabulary_equals_the_full_union(ensemble, members):
    full = generate(ensemble, PROMPTS, strategy="uniform", max_new_tokens=NEW_TOKENS)
    every = generate(
        ensemble,
        PROMPTS,
        strategy="topk",
        top_k=max(m.config.vocab_size for m in members),
        max_new_tokens=NEW_TOKENS,
    )
    narrow = generate(ensemble, PROMPTS, strategy="topk", top_k=1, max_new_tokens=NEW_TOKENS)
    assert every.union_ids == full.union_ids
    assert len(narrow.union_ids) == len(PROMPTS)


def test_packllm_weights_follow_prompt_likelihood(ensemble):
    out = generate(ensemble, PROMPTS, strategy="packllm", max_new_tokens=4)
    nll = np.asarray(out.result.span_features.prompt_nll)[:, 0]
    expected = np.exp(-nll) / np.exp(-nll).sum(-1, keepdims=True)
    np.testing.assert_allclose(np.stack([w[0] for w in out.span_weights]), expected, rtol=1e-5)
    assert np.all(nll > 0)


def test_weight_fn_is_called_every_span_with_features(ensemble):
    def by_span(features):  # member 0 on even spans, member 1 on odd spans
        odd = (features.span_index % 2).astype(jnp.float32)[:, None]
        return jnp.concatenate([1.0 - odd, odd], axis=1)

    out = generate(ensemble, PROMPTS, strategy=by_span, max_new_tokens=12, span_length=4)
    for row, weights in enumerate(out.span_weights):
        spans = -(-len(out.union_ids[row]) // 4)
        assert weights.shape == (spans, 2)
        np.testing.assert_array_equal(weights[:, 1], np.arange(spans) % 2)
    features = out.result.span_features
    assert features.hidden[0].shape == (len(PROMPTS), 3, 48)
    assert np.all(np.asarray(features.entropy) >= 0)
    assert np.all(
        (np.asarray(features.top1_agreement) >= 0) & (np.asarray(features.top1_agreement) <= 1)
    )


def test_distribution_features_match_their_definitions(members):
    """Entropy, max prob and top-1 agreement computed without `[B, N, V]` probabilities equal
    −Σ p log p, max p and the argmax union ids of the normalised distributions, also for a member
    whose model has ids its tokenizer lacks (probability 0) and for peaked and flat rows."""
    sizes = [len(m.tokenizer) for m in members]
    wide = build_alignment(
        [m.tokenizer for m in members], vocab_sizes=[sizes[0], sizes[1] + 40], use_cache=False
    )
    scales = jnp.asarray([0.1, 1.0, 5.0, 30.0])[:, None]
    logits = [
        jax.random.normal(jax.random.key(n), (4, v)) * scales
        for n, v in enumerate(wide.vocab_sizes)
    ]
    # a row of equal logits: top-1 is the first id
    logits[0] = logits[0].at[1, :].set(logits[0][1, 7])
    dists = member_distributions(logits, wide)
    probs = np.asarray(dists.probabilities(), np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        entropy = -np.sum(np.where(probs > 0, probs * np.log(probs), 0.0), axis=-1)
    np.testing.assert_allclose(np.asarray(dists.entropy()), entropy, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(
        np.asarray(dists.max_probability()), np.asarray(dists.probabilities()).max(-1)
    )
    top1 = np.argmax(probs, axis=-1)
    np.testing.assert_array_equal(np.asarray(dists.top1()), top1)
    assert top1[1, 0] == 0
    union_top1 = np.stack(
        [np.asarray(wide.member_to_union)[n, top1[:, n]] for n in range(2)], axis=1
    )
    np.testing.assert_array_equal(
        np.asarray(top1_agreement(dists.top1(), wide)),
        (union_top1[:, 0] == union_top1[:, 1]).astype(np.float32),
    )


def test_rows_without_a_usable_distribution_are_found(alignment):
    """A NaN, a +inf or all −inf logits in one member's row leave that row without a finite positive
    normaliser (the engine stops it as 'nonfinite_logits'); the other rows keep softmax exactly."""
    logits = [
        jax.random.normal(jax.random.key(n), (5, v)) for n, v in enumerate(alignment.vocab_sizes)
    ]
    logits[0] = logits[0].at[1, 3].set(jnp.nan).at[2, 3].set(jnp.inf).at[3].set(-jnp.inf)
    logits[1] = logits[1].at[4].set(-jnp.inf)
    dists = member_distributions(logits, alignment)
    np.testing.assert_array_equal(
        np.asarray(usable_rows(dists.normalizer)), [True, False, False, False, False]
    )
    np.testing.assert_allclose(
        np.asarray(dists.probabilities()[0, 1, : alignment.vocab_sizes[1]]),
        np.asarray(jax.nn.softmax(logits[1][0])),
        rtol=1e-6,
    )


def test_js_divergence_feature_when_requested(ensemble):
    weight_fn = CallableWeightFn(lambda f: f.previous_weights, optional_features=("js_divergence",))
    out = generate(ensemble, PROMPTS, strategy=weight_fn, max_new_tokens=4)
    js = np.asarray(out.result.span_features.js_divergence)[:, 0]
    assert np.all(js > 0) and np.all(js <= np.log(2) + 1e-6)


def test_sampling_is_seeded(ensemble):
    kwargs = dict(strategy="uniform", max_new_tokens=NEW_TOKENS, temperature=1.0, top_p=0.9)
    first = generate(ensemble, PROMPTS, seed=1, **kwargs)
    again = generate(ensemble, PROMPTS, seed=1, **kwargs)
    other = generate(ensemble, PROMPTS, seed=2, **kwargs)
    assert first.union_ids == again.union_ids != other.union_ids


def test_same_bucket_does_not_recompile(ensemble):
    generate(ensemble, ["Hello world!", "Once upon"], strategy="uniform", max_new_tokens=8)
    compiled = loop.run_jit._cache_size()
    generate(
        ensemble,
        ["The quick brown fox", "Alice and"],
        strategy="uniform",
        max_new_tokens=8,
    )
    generate(ensemble, ["A", "B"], strategy="fixed", weights=[0.3, 0.7], max_new_tokens=8)
    assert loop.run_jit._cache_size() == compiled


def test_a_member_context_window_stops_the_row_with_a_reason_naming_it(
    ensemble, alignment, members
):
    """The unigram member re-spells some union tokens in several tokens: with a context window that
    only holds the prompt and one token per union token, a row it cannot follow stops as
    'context_window' (a warning names the member); the others run to the length."""
    prompts = PROMPTS[1:]
    longest = max(len(members[1].tokenizer.encode(p)) for p in prompts)
    short = random_member("llama", members[1].tokenizer, 1, "short", context=longest + NEW_TOKENS)
    with pytest.warns(
        UserWarning, match="member 'short' cannot take the next token within its context"
    ):
        out = generate(
            Ensemble([members[0], short], alignment),
            prompts,
            strategy="single",
            primary=0,
            max_new_tokens=NEW_TOKENS,
        )
    assert "context_window" in out.stop_reasons
    full = generate(ensemble, prompts, strategy="single", primary=0, max_new_tokens=NEW_TOKENS)
    ingested = np.asarray(out.result.ingested)
    for row, prompt in enumerate(prompts):
        kept = len(out.union_ids[row])
        assert out.union_ids[row] == full.union_ids[row][:kept]
        held = len(members[1].tokenizer.encode(prompt)) + ingested[row, 1]
        assert held <= longest + NEW_TOKENS
        if out.stop_reasons[row] == "context_window":
            next_spelling = alignment.from_union(1, full.union_ids[row][kept : kept + 1])
            assert held + len(next_spelling) > longest + NEW_TOKENS


@struct.dataclass
class AlternatingWeights:
    """Mostly member 0 ([0.9, 0.1], then [0.7, 0.3], alternating): counts its calls in its carry, so
    a span started twice shifts every later span's weights."""

    optional_features = ()
    selection = Selection()

    def init_carry(self, batch, num_spans):
        return jnp.zeros((), jnp.int32)

    def __call__(self, features, calls):
        odd = (calls % 2).astype(jnp.float32)
        weights = jnp.stack([0.9 - 0.2 * odd, 0.1 + 0.2 * odd])
        return jnp.broadcast_to(weights, features.previous_weights.shape), calls + 1


@pytest.mark.slow  # minutes on 2 cores: the slow job runs it
def test_growing_the_caches_mid_loop_changes_nothing(members, monkeypatch):
    """A byte member needs 2-3 tokens a union token: its cache grows while the loop runs, in the
    compiled program (`decode`: from the first rung to the last) or from the host (`decode_growing`,
    only that member, doubling), and the step that did not fit is redone. Both equal a loop run with
    the largest caches throughout (ids exactly, floats to rounding), and the weight_fn starts every
    span once."""
    # ~2-3 tokens a piece
    bytes_member = random_member("gpt2", train_byte_level_bpe(CORPUS, 262), 2, "bytes")
    pair = [members[0], bytes_member]
    alignment = build_alignment(
        [m.tokenizer for m in pair],
        vocab_sizes=[m.config.vocab_size for m in pair],
        use_cache=False,
    )
    new_tokens = 24
    batch = rlae_jax.engine.tokenize_for_members(pair, PROMPTS, new_tokens)
    config = DecodeConfig(max_new_tokens=new_tokens, expansion_budget=1)
    args = (
        Ensemble(pair, alignment),
        batch,
        AlternatingWeights(),
        jax.random.key(0),
        jnp.float32(0.0),
        jnp.float32(1.0),
    )
    ladder = loop.room_ladder(args[0], batch, config)
    assert len(ladder) >= 3 and ladder[0][1] == batch.input_ids[1].shape[1] + new_tokens
    assert loop.compiled_rungs(ladder) == [ladder[0], ladder[-1]]

    grown = []
    monkeypatch.setattr(
        loop,
        "grow",
        lambda state, lengths, grow=loop.grow: grown.append(tuple(lengths)) or grow(state, lengths),
    )
    compiled = loop.run_jit._cache_size()
    from_host = loop.decode_growing(*args, config=config)
    assert loop.run_jit._cache_size() - compiled == len(grown) + 1
    assert [lengths[0] for lengths in grown] == [ladder[0][0]] * len(grown)  # member 0 never grew
    needed = int(np.asarray(from_host.ingested)[:, 1].max())
    assert len(grown) >= 1 and needed > new_tokens  # the byte member outgrew its first cache
    # and holds less than twice its tokens
    assert grown[-1][1] - batch.input_ids[1].shape[1] < 2 * needed
    assert set(np.asarray(from_host.stop_reason).tolist()) <= {STOP_EOS, STOP_LENGTH}
    assert int(from_host.weight_carry) == new_tokens  # one weight_fn call per span, none repeated

    # a fresh function each time: jax.jit(loop.decode) would reuse the first call's trace
    def run():
        return jax.jit(lambda *decode_args: loop.decode(*decode_args, config=config))(*args)

    in_graph = run()
    monkeypatch.setattr(loop, "room_ladder", lambda *a, ladder=ladder: ladder[-1:])
    largest = run()
    for result in (from_host, in_graph):
        for got, want in zip(jax.tree.leaves(result), jax.tree.leaves(largest)):
            # ids exactly; floats (hidden states, entropies) to rounding: attention sums over other
            # lengths
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def decode_args(ensemble, batch, weights):
    """Positional arguments of `decode` before the config: greedy, fixed weights."""
    return (
        ensemble,
        batch,
        FixedWeights(jnp.asarray(weights, jnp.float32)),
        jax.random.key(0),
        jnp.float32(0.0),
        jnp.float32(1.0),
    )


def test_in_graph_caches_follow_room_per_token(ensemble, alignment, members, monkeypatch):
    """The in-graph decode's largest caches hold the prompt plus `room_per_token` slots per union
    token (fewer only for a member whose longest re-spelling is shorter): its memory follows the
    knob, not the alignment's longest re-spelling."""
    batch = rlae_jax.engine.tokenize_for_members(members, PROMPTS, NEW_TOKENS)
    longest = np.asarray(alignment.vocab.union_to_member_len).max(axis=1)
    assert longest[1] >= 3
    for room in (1, 2, 3):
        lengths = []

        def recording_run(context, state, run=loop.run):
            lengths.append([(c.length, c.keys[0].shape[1]) for c in state.caches])
            return run(context, state)

        monkeypatch.setattr(loop, "run", recording_run)
        config = DecodeConfig(max_new_tokens=NEW_TOKENS, room_per_token=room, expansion_budget=1)
        jax.eval_shape(
            lambda *a: loop.decode(*a, config=config),
            *decode_args(ensemble, batch, [0.5, 0.5]),
        )
        for n, (length, key_slots) in enumerate(lengths[-1]):
            want = batch.input_ids[n].shape[1] + NEW_TOKENS * min(room, int(longest[n]))
            assert length == key_slots == want


def test_a_tiny_in_graph_room_stops_the_row_with_a_reason_and_generate_does_not(
    ensemble, alignment, members
):
    """One cache slot per union token: the unigram member re-spells some union tokens in several
    tokens, so the in-graph decode stops a row it cannot hold ('room', with a warning naming the
    member and the knob); `generate` grows the cache and runs the same row on to the length."""
    batch = rlae_jax.engine.tokenize_for_members(members, PROMPTS, NEW_TOKENS)
    config = DecodeConfig(max_new_tokens=NEW_TOKENS, room_per_token=1)
    result = decode_jit(*decode_args(ensemble, batch, [1.0, 0.0]), config=config)
    with pytest.warns(UserWarning, match=r"member 'unigram' .*room_per_token=1"):
        out = rlae_jax.engine.to_host(result, alignment, config, ["bpe", "unigram"])
    assert "room" in out.stop_reasons
    full = generate(
        ensemble,
        PROMPTS,
        strategy="fixed",
        weights=[1.0, 0.0],
        max_new_tokens=NEW_TOKENS,
    )
    assert "room" not in full.stop_reasons
    ingested = np.asarray(result.ingested)
    for row, reason in enumerate(out.stop_reasons):
        kept = len(out.union_ids[row])
        assert out.union_ids[row] == full.union_ids[row][:kept]
        assert ingested[row, 1] <= NEW_TOKENS
        if reason == "room":
            assert np.asarray(result.window_member)[row] == 1
            next_spelling = alignment.from_union(1, full.union_ids[row][kept : kept + 1])
            assert ingested[row, 1] + len(next_spelling) > NEW_TOKENS
        else:
            assert out.union_ids[row] == full.union_ids[row]


def test_each_member_can_have_its_own_prompts(ensemble, alignment, members):
    """One prompt list per member: each member tokenises its own list (one shared list: every member
    the same); with one-hot weights on member 0 the text follows member 0's prompts alone."""
    other = ["Hello there, friend.", "A cat sat.", "Once upon a time"]
    batch = rlae_jax.engine.tokenize_for_members(members, [PROMPTS, other], NEW_TOKENS)
    for n, own in enumerate([PROMPTS, other]):
        alone = rlae_jax.engine.tokenize_for_members(members[n : n + 1], own, NEW_TOKENS)
        np.testing.assert_array_equal(batch.input_ids[n], alone.input_ids[0])
        np.testing.assert_array_equal(batch.attention_mask[n], alone.attention_mask[0])
    shared = rlae_jax.engine.tokenize_for_members(members, PROMPTS, NEW_TOKENS)
    twice = rlae_jax.engine.tokenize_for_members(members, [PROMPTS, PROMPTS], NEW_TOKENS)
    for got, want in zip(jax.tree.leaves(twice), jax.tree.leaves(shared)):
        np.testing.assert_array_equal(got, want)
    with pytest.raises(ValueError, match="3 prompt lists for 2 members"):
        rlae_jax.engine.tokenize_for_members(members, [PROMPTS, other, other], NEW_TOKENS)
    with pytest.raises(ValueError, match=r"different lengths \[3, 2\]"):
        rlae_jax.engine.tokenize_for_members(members, [PROMPTS, other[:2]], NEW_TOKENS)
    with pytest.raises(TypeError, match="one list of strings per member"):
        rlae_jax.engine.tokenize_for_members(members, [PROMPTS, "A cat sat."], NEW_TOKENS)

    alone = rlae_jax.generate_tokens(members[0], PROMPTS, max_new_tokens=NEW_TOKENS)
    out = generate(
        ensemble,
        [PROMPTS, other],
        strategy="fixed",
        weights=[1.0, 0.0],
        max_new_tokens=NEW_TOKENS,
    )
    for row, own_ids in enumerate(alone):
        assert out.union_ids[row] == alignment.to_union(0, own_ids)


# ---- bad input -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "weights, message",
    [
        ([1.0], r"shape \(2,\)"),
        ([0.5, -0.5], "non-negative"),
        ([np.nan, 1.0], "NaN"),
        ([0.0, 0.0], "all zero"),
    ],
)
def test_bad_fixed_weights_are_refused(ensemble, weights, message):
    with pytest.raises(ValueError, match=message):
        generate(ensemble, PROMPTS, strategy="fixed", weights=weights, max_new_tokens=4)


def test_nan_weights_from_a_weight_fn_fall_back_to_uniform_with_a_warning(ensemble):
    def broken(features):
        return jnp.where(features.span_index[:, None] == 1, jnp.nan, jnp.asarray([[1.0, 0.0]]))

    with pytest.warns(UserWarning, match="NaN/negative/all-zero"):
        out = generate(ensemble, PROMPTS, strategy=broken, max_new_tokens=8, span_length=2)
    np.testing.assert_allclose(out.span_weights[0][1], [0.5, 0.5])
    assert np.all(np.isfinite(np.concatenate(out.span_weights)))


def test_unknown_strategy_and_empty_prompts_and_long_prompts(ensemble):
    with pytest.raises(ValueError, match="unknown strategy 'best'"):
        generate(ensemble, PROMPTS, strategy="best")
    pair = (FixedWeights(jnp.ones(2)), Selection())
    with pytest.raises(TypeError, match=r"a tuple \('FixedWeights', 'Selection'\); a weight_fn"):
        generate(ensemble, PROMPTS, strategy=pair)
    with pytest.raises(ValueError, match="empty prompt list"):
        generate(ensemble, [], strategy="uniform")
    with pytest.raises(ValueError, match="context is 512"):
        generate(ensemble, ["Hello world! " * 200], strategy="uniform", max_new_tokens=8)


def test_alignment_for_other_members_is_refused(alignment, members):
    with pytest.raises(ValueError, match="alignment has 2 members but 3"):
        Ensemble(members + members[:1], alignment)
    sizes = [len(members[0].tokenizer), len(members[1].tokenizer) + 40]
    wide = build_alignment([m.tokenizer for m in members], vocab_sizes=sizes, use_cache=False)
    embedding = r"member 1 \(unigram\) has a \d+-row embedding but the alignment was"
    with pytest.raises(ValueError, match=embedding):
        Ensemble(members, wide)
    # decode checks too, while tracing: inside jit an Ensemble is rebuilt without its checks
    unchecked = Ensemble.tree_unflatten((None, None), (members, wide))
    batch = rlae_jax.engine.tokenize_for_members(members, PROMPTS, 4)
    weight_fn = rlae_jax.engine.resolve_strategy("uniform", 2)
    with pytest.raises(ValueError, match=embedding):
        decode_jit(
            unchecked,
            batch,
            weight_fn,
            jax.random.key(0),
            jnp.float32(0),
            jnp.float32(1),
            config=rlae_jax.engine.DecodeConfig(max_new_tokens=4),
        )


def test_certified_candidate_shortcut_equals_the_full_union(ensemble):
    full = generate(
        ensemble, PROMPTS, strategy="fixed", weights=[0.3, 0.7], max_new_tokens=NEW_TOKENS
    )
    for k in (1, 4):
        shortcut = generate(
            ensemble,
            PROMPTS,
            strategy="fixed",
            weights=[0.3, 0.7],
            max_new_tokens=NEW_TOKENS,
            candidates_per_member=k,
        )
        assert shortcut.union_ids == full.union_ids


def test_nan_logits_stop_the_row_with_a_reason(alignment, members):
    """A member whose weights hold a NaN: its rows stop at once with a named reason and a
    warning."""
    broken = members[1].replace(
        state=jax.tree_util.tree_map_with_path(
            lambda path, x: (
                x.at[0, 0].set(jnp.nan) if "lm_head" in jax.tree_util.keystr(path) else x
            ),
            members[1].state,
        )
    )
    with pytest.warns(UserWarning, match="NaN/inf logits"):
        out = generate(
            Ensemble([members[0], broken], alignment), PROMPTS, strategy="uniform", max_new_tokens=4
        )
    assert out.stop_reasons == ["nonfinite_logits"] * len(PROMPTS)
    assert out.union_ids == [[]] * len(PROMPTS)


def test_ids_outside_a_tokenizer_get_no_probability(alignment, members):
    """Members whose every model id is a token skip the mask (all_ids_valid); ids beyond a tokenizer
    (a model vocabulary wider than it) get probability 0 however large their logits."""
    assert alignment.all_ids_valid == (True, True)
    sizes = [len(m.tokenizer) for m in members]
    wide = build_alignment(
        [m.tokenizer for m in members], vocab_sizes=[sizes[0], sizes[1] + 40], use_cache=False
    )
    assert wide.all_ids_valid == (True, False)
    logits = [jax.random.normal(jax.random.key(n), (2, v)) for n, v in enumerate(wide.vocab_sizes)]
    logits[1] = logits[1].at[:, sizes[1] :].set(100.0)
    probs = np.asarray(member_distributions(logits, wide).probabilities())
    assert (probs[:, 1, sizes[1] :] == 0).all()
    np.testing.assert_allclose(
        probs[:, 1, : sizes[1]], jax.nn.softmax(logits[1][:, : sizes[1]]), rtol=1e-6
    )
    np.testing.assert_allclose(probs[:, 0, : sizes[0]], jax.nn.softmax(logits[0]), rtol=1e-6)


def test_decode_loops_put_loops_in_command_buffers_on_cuda_unless_xla_flags_say_otherwise(
    monkeypatch,
):
    """Where jax has a CUDA plugin, the decode loops' compile options add loops and conditionals to
    XLA's default command buffers (a GPU then runs them without a host round trip per condition) and
    XLA accepts them; without one, or when the user's XLA_FLAGS set the command buffers, there are
    none."""
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    monkeypatch.setattr(compile_options, "cuda_plugin_installed", lambda: True)
    options = compile_options.decode_loop_options()
    assert set(options["xla_gpu_enable_command_buffer"].split(",")) >= {
        "FUSION",
        "CUBLAS",
        "WHILE",
        "CONDITIONAL",
    }
    assert (
        float(jax.jit(lambda x: x + 1, compiler_options=options)(jnp.float32(1))) == 2.0
    )  # a bad name raises
    monkeypatch.setenv("XLA_FLAGS", "--xla_gpu_enable_command_buffer=")
    assert compile_options.decode_loop_options() == {}
    monkeypatch.delenv("XLA_FLAGS")
    monkeypatch.setattr(compile_options, "cuda_plugin_installed", lambda: False)
    assert compile_options.decode_loop_options() == {}


def test_re_spellings_fed_column_by_column_equal_one_append(members):
    """feed_members with row re-spellings of 0-7 tokens, one token column per cached pass, gives
    the caches and hidden states of appending each whole re-spelling at once."""
    batch = rlae_jax.engine.tokenize_for_members(members, PROMPTS, 16)
    hidden, caches = [], []
    for member, ids, mask in zip(members, batch.input_ids, batch.attention_mask):
        filled = prefill_jit(member, ids, mask, ids.shape[1] + 16)
        out, cache = filled.step, filled.cache
        hidden.append(out.hidden)
        caches.append(cache)
    rng = np.random.RandomState(0)
    tokens = jnp.asarray(
        np.stack([rng.randint(0, len(m.tokenizer), (len(PROMPTS), 7)) for m in members], 1),
        jnp.int32,
    )
    counts = jnp.asarray([[0, 7], [1, 3], [6, 0]], jnp.int32)
    got_hidden, got_caches = jax.jit(feed_members)(
        tuple(members), tuple(hidden), tuple(caches), tokens, counts
    )
    for n, member in enumerate(members):
        want_hidden, want = jax.jit(member.append)(caches[n], tokens[:, n], counts[:, n])
        want_hidden = jnp.where((counts[:, n] > 0)[:, None], want_hidden, hidden[n])
        got = got_caches[n]
        np.testing.assert_array_equal(got.cursor, want.cursor)
        np.testing.assert_array_equal(got.next_position, want.next_position)
        np.testing.assert_array_equal(got.slot_positions, want.slot_positions)
        used = np.repeat(np.asarray(want.slot_positions) >= 0, got.keys[0].shape[0] // 3, 0)
        for got_keys, want_keys in zip(got.keys + got.values, want.keys + want.values):
            # slots past a row's cursor hold what a masked pass wrote there; only used ones count
            np.testing.assert_allclose(
                np.asarray(got_keys)[used], np.asarray(want_keys)[used], rtol=1e-5, atol=1e-5
            )
        np.testing.assert_allclose(got_hidden[n], want_hidden, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "name",
    ["span_length", "expansion_budget", "room_per_token"],
)
def test_decode_settings_below_one_are_refused(name):
    with pytest.raises(ValueError, match=f"{name} must be >= 1, got 0"):
        DecodeConfig(**{name: 0})


# ---- selection rules against NumPy references
# ------------------------------------------------------------


def numpy_nucleus(logits: np.ndarray, top_p: float) -> np.ndarray:
    """bool `[B, V]`: the smallest set of most likely ids whose probability reaches `top_p`."""
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    kept = np.zeros(logits.shape, bool)
    for row, p in enumerate(probs):
        order = np.argsort(-p, kind="stable")
        mass_before = np.cumsum(p[order]) - p[order]
        assert np.all(np.abs(mass_before - top_p) > 1e-5), "a boundary too close to call in float32"
        kept[row, order[mass_before < top_p]] = True
    return kept


@pytest.mark.parametrize("temperature, top_p", [(1.0, 0.9), (0.5, 0.5), (2.0, 0.95), (0.7, 0.2)])
def test_sampling_keeps_exactly_the_numpy_nucleus_and_draws_only_from_it(temperature, top_p):
    logits = np.asarray(jax.random.normal(jax.random.key(3), (6, 50)) * 2.0, np.float32)
    nucleus = numpy_nucleus(logits.astype(np.float64) / temperature, top_p)
    filtered = top_p_filter(jnp.asarray(logits) / temperature, jnp.float32(top_p))
    np.testing.assert_array_equal(np.isfinite(np.asarray(filtered)), nucleus)
    draw = jax.jit(
        jax.vmap(
            lambda step: select_tokens(
                jnp.asarray(logits),
                jax.random.key(0),
                step,
                jnp.float32(temperature),
                jnp.float32(top_p),
            )
        )
    )
    drawn = np.asarray(draw(jnp.arange(2000)))  # [steps, B]
    for row in range(logits.shape[0]):
        assert set(drawn[:, row].tolist()) <= set(np.flatnonzero(nucleus[row]).tolist())
        probs = np.exp(logits[row] / temperature - (logits[row] / temperature).max())
        likely = nucleus[row] & (probs / probs[nucleus[row]].sum() > 0.01)
        assert set(np.flatnonzero(likely).tolist()) <= set(drawn[:, row].tolist())


def numpy_top_k_union_choice(
    probs: list[np.ndarray], weights: np.ndarray, k: int, alignment
) -> np.ndarray:
    """UniTE's rule by brute force: the union tokens of every member's k most likely ids, each
    scored by Σ_n w_n · (member n's probability summed over all its ids with the token's bytes); the
    best wins."""
    member_to_union = np.asarray(alignment.member_to_union)
    complete = np.asarray(alignment.union_complete)
    chosen = []
    for row in range(weights.shape[0]):
        mixed = np.zeros(alignment.num_union + 1)
        for n, p in enumerate(probs):
            np.add.at(mixed, member_to_union[n, : len(p[row])], weights[row, n] * p[row])
        candidates = {
            int(member_to_union[n, i])
            for n, p in enumerate(probs)
            for i in np.argsort(-p[row], kind="stable")[:k]
        }
        candidates = [u for u in candidates if u < alignment.num_union and complete[u]]
        chosen.append(max(candidates, key=lambda u: mixed[u]))
    return np.array(chosen)


def test_unite_top_k_equals_a_brute_force_numpy_reference(alignment):
    """Small k on flat random distributions (the candidates differ from the full union's best), over
    a member with byte-fallback duplicates (their probabilities sum)."""
    batch = 32
    logits = [
        np.asarray(jax.random.normal(jax.random.key(n), (batch, v))) * 2.5
        for n, v in enumerate(alignment.vocab_sizes)
    ]
    # in half the rows a token both members spell is second to distinct tokens in each: k = 1 misses
    # it
    table = np.asarray(alignment.member_to_union)
    shared = np.intersect1d(
        table[0, : alignment.vocab_sizes[0]], table[1, : alignment.vocab_sizes[1]]
    )
    rng = np.random.RandomState(1)
    for row in range(0, batch, 2):
        second, first_0, first_1 = rng.choice(
            shared[shared < alignment.num_union], 3, replace=False
        )
        for n, top in ((0, first_0), (1, first_1)):
            logits[n][row, np.flatnonzero(table[n, : alignment.vocab_sizes[n]] == top)[0]] = 12.0
            logits[n][row, np.flatnonzero(table[n, : alignment.vocab_sizes[n]] == second)[0]] = 11.9
    logits = [jnp.asarray(x, jnp.float32) for x in logits]
    weights = jnp.asarray(np.random.RandomState(0).dirichlet([1.0, 1.0], batch), jnp.float32)
    dists = member_distributions(logits, alignment)
    probs = [np.asarray(jax.nn.softmax(x), np.float64) for x in logits]
    full = np.asarray(alignment.mixed_argmax(dists.exp_logits, weights / dists.normalizer))
    differs = 0
    for k in (1, 2, 3):
        got = jax.jit(
            lambda d, w: mixing.choose_union_tokens(
                d,
                w,
                alignment,
                Sampling(jax.random.key(0), jnp.float32(0), jnp.float32(1)),
                jnp.int32(0),
                Selection("topk", k),
                DecodeConfig(),
            )
        )(dists, weights)
        np.testing.assert_array_equal(
            np.asarray(got), numpy_top_k_union_choice(probs, np.asarray(weights), k, alignment)
        )
        differs += int((np.asarray(got) != full).sum())
    assert differs > 0, "small k should sometimes miss the full union's best token"


def test_certified_shortcut_is_taken_on_peaked_members_and_equals_the_full_union(
    ensemble, members, monkeypatch
):
    """Greedy decoding with candidates_per_member = 4: the full union decides only in steps where
    some row's best candidate is not certified (counted by a callback in that branch); peaked
    members are certified in at least half the steps, and the result equals the full union's."""
    fallbacks = []
    choose_from_full_union = mixing.choose_from_full_union

    def counted_full_union(*args):
        jax.debug.callback(lambda: fallbacks.append(1))
        return choose_from_full_union(*args)

    batch = rlae_jax.engine.tokenize_for_members(members, PROMPTS, NEW_TOKENS)
    args = (
        ensemble,
        batch,
        FixedWeights(jnp.asarray([0.4, 0.6])),
        jax.random.key(0),
        jnp.float32(0.0),
        jnp.float32(1.0),
    )
    full = jax.jit(lambda *a: loop.decode(*a, config=DecodeConfig(max_new_tokens=NEW_TOKENS)))(
        *args
    )
    monkeypatch.setattr(mixing, "choose_from_full_union", counted_full_union)
    config = DecodeConfig(max_new_tokens=NEW_TOKENS, candidates_per_member=4)
    shortcut = jax.jit(lambda *a: loop.decode(*a, config=config))(*args)
    jax.effects_barrier()
    np.testing.assert_array_equal(np.asarray(shortcut.union_ids), np.asarray(full.union_ids))
    steps = int(np.asarray(full.lengths).max())
    assert steps == NEW_TOKENS and len(fallbacks) <= steps // 2, (len(fallbacks), steps)


# ---- members with real tokenizers: byte-level BPE (GPT-2), SentencePiece with byte fallback (Llama
# 2), NeoX --

REAL_PROMPTS = [
    "The quick brown fox jumps over the lazy dog.",
    "def add(a, b):\n    return a + b\n",
    "数字と日本語のテキスト、そして中文句子。",
    "Emoji: 🙂🚀 and 👩‍👩‍👧 café",
]


@pytest.fixture(scope="module")
def real_trio():
    """Three random members (contexts of 4096) with the GPT-2, Llama 2 and NeoX fixture
    tokenizers."""
    names = ("gpt2", "llama2", "neox")
    tokenizers = [
        load_real_tokenizer(n, fixture_path("tokenizers", REAL_TOKENIZERS[n])) for n in names
    ]
    members = [
        random_member(kind, tokenizer, seed, name, context=4096)
        for kind, tokenizer, seed, name in zip(
            ("gpt2", "llama", "llama"), tokenizers, (0, 1, 2), names
        )
    ]
    with warnings.catch_warnings():
        warnings.simplefilter(
            "ignore", UserWarning
        )  # NeoX cannot spell a few bytes (test_align_real)
        alignment = build_alignment(
            tokenizers,
            vocab_sizes=[m.config.vocab_size for m in members],
            use_cache=False,
            max_expansion=32,
        )
    trio = []
    # the ensemble never picks a token some member cannot spell within max_expansion (long
    # whitespace runs, for GPT-2): the members' LM heads give those ids a logit of 0, far below
    # their best
    complete = np.append(np.asarray(alignment.union_complete), False)
    for n, member in enumerate(members):
        usable = complete[alignment.vocab.member_to_union[n, : member.config.vocab_size]].astype(
            np.float32
        )
        trio.append(
            member.replace(
                state=jax.tree_util.tree_map_with_path(
                    lambda path, x: x * usable if "lm_head" in jax.tree_util.keystr(path) else x,
                    member.state,
                )
            )
        )
    return Ensemble(trio, alignment)


def test_one_hot_weights_reproduce_each_real_member_alone_for_64_tokens(real_trio):
    """English, code, CJK and emoji prompts: the ensemble with all weight on one member gives that
    member's own greedy tokens and text (`generate_member`'s), while the others ingest every token
    (caches of 3 slots a union token: one compiled loop for all three)."""
    alignment, members = real_trio.alignment, real_trio.members
    for index, member in enumerate(members):
        alone = rlae_jax.generate_tokens(member, REAL_PROMPTS, max_new_tokens=64)
        texts = [
            continuation_text(member.tokenizer, member.tokenizer.encode(prompt), ids)
            for prompt, ids in zip(REAL_PROMPTS, alone)
        ]
        weights = np.eye(len(members))[index].tolist()
        out = generate(
            real_trio,
            REAL_PROMPTS,
            strategy="fixed",
            weights=weights,
            max_new_tokens=64,
            record_features=False,
            expansion_budget=3,
        )
        assert set(out.stop_reasons) <= {"eos", "length"}
        for row, own_ids in enumerate(alone):
            assert out.union_ids[row] == alignment.to_union(index, own_ids), (member.name, row)
            assert out.texts[row] == texts[row], (member.name, row)
            for other in range(len(members)):
                spelled = alignment.from_union(other, out.union_ids[row])
                assert np.asarray(out.result.ingested)[row, other] == len(spelled)


@pytest.mark.slow  # ~80 s of CPU: a 256-token decode with cache growth (compiles)
def test_256_tokens_of_cjk_text_finish_with_a_byte_fallback_member(real_trio):
    """The GPT-2 member, made to write only whole CJK characters, leads: Llama 2 spells its rarer
    characters in three byte tokens each. All 256 tokens come out; the caches grow where needed
    (NeoX needs over 2 tokens a union token; compiles bounded by log2 of each member's growth) and
    hold less than twice what they use."""
    alignment, members = real_trio.alignment, real_trio.members
    gpt2 = members[0]
    cjk = [
        i
        for i in range(len(gpt2.tokenizer))
        if (text := gpt2.tokenizer.decode([i])) and all("\u4e00" <= c <= "\u9fff" for c in text)
    ]
    keep = np.zeros(gpt2.config.vocab_size, np.float32)
    keep[cjk] = 1.0
    writer = gpt2.replace(
        state=jax.tree_util.tree_map_with_path(
            lambda path, x: x * keep if "lm_head" in jax.tree_util.keystr(path) else x, gpt2.state
        )
    )
    trio = [writer, *members[1:]]
    grown = []
    compiled = loop.run_jit._cache_size()
    original_grow = loop.grow
    try:
        loop.grow = lambda state, lengths: (
            grown.append(tuple(lengths)) or original_grow(state, lengths)
        )
        out = generate(
            Ensemble(trio, alignment),
            [REAL_PROMPTS[2]],
            strategy="single",
            primary=0,
            max_new_tokens=256,
            record_features=False,
        )
    finally:
        loop.grow = original_grow
    assert out.stop_reasons == ["length"] and len(out.union_ids[0]) == 256
    assert all("\u4e00" <= c <= "\u9fff" for c in out.texts[0])
    ingested = np.asarray(out.result.ingested)[0]
    llama_ids = alignment.from_union(1, out.union_ids[0])
    assert ingested[1] == len(llama_ids) > 256 and any(
        3 <= i < 259 for i in llama_ids
    )  # <0x..> bytes
    batch = rlae_jax.engine.tokenize_for_members(trio, [REAL_PROMPTS[2]], 256)
    first = loop.room_ladder(Ensemble(trio, alignment), batch, DecodeConfig(max_new_tokens=256))[0]
    rooms = [f - ids.shape[1] for f, ids in zip(first, batch.input_ids)]
    bound = 1 + sum(max(int(np.ceil(np.log2(max(i, 1) / r))), 0) for i, r in zip(ingested, rooms))
    assert 2 <= loop.run_jit._cache_size() - compiled == len(grown) + 1 <= bound
    for n, ids in enumerate(batch.input_ids):
        assert grown[-1][n] - ids.shape[1] < max(2 * ingested[n], rooms[n] + 1)


def test_member_text_is_the_exact_continuation_and_equals_the_ensemble_alone():
    """stories260K (SentencePiece): the decoded prompt + the returned text is the decoded whole
    sequence, leading space included, and equals the ensemble engine's text for the member alone."""
    member = rlae_jax.from_pretrained(
        str(fixture_path("models", "stories260K", "stories260K.gguf"))
    )
    prompts = ["The dog", "Once upon a time"]
    texts = rlae_jax.generate_member(member, prompts, max_new_tokens=12)
    assert texts[0].startswith(" was a big")
    for prompt, text, ids in zip(
        prompts, texts, rlae_jax.generate_tokens(member, prompts, max_new_tokens=12)
    ):
        whole = member.tokenizer.encode(prompt) + ids
        assert prompt + text == member.tokenizer.decode(whole, skip_special_tokens=True)
    alignment = build_alignment(
        [member.tokenizer], vocab_sizes=[member.config.vocab_size], use_cache=False
    )
    assert generate(Ensemble([member], alignment), prompts, max_new_tokens=12).texts == texts
