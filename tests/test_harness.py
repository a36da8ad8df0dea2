"""The LM Evaluation Harness backend (rlae_jax.harness) on tiny random members saved as HF folders:
log-likelihoods equal lm-eval's own transformers model (HFLM) on the same weights, an ensemble's
token-level log-likelihood equals a brute-force NumPy computation of the mixture the engine
generates with, one-hot ensembles equal their member, generation equals the engine's, compiles are
bounded by the length buckets, and the repo's local YAML tasks run through `simple_evaluate` and the
command line."""

import json
import pathlib
import sys

import numpy as np
import pytest

pytest.importorskip("lm_eval", reason="lm-eval is not installed (pip install -e '.[harness]')")

import lm_eval  # noqa: E402
from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402

from conftest import fixture_path  # noqa: E402
from rlae_jax.ensemble import Ensemble  # noqa: E402
from rlae_jax.harness import RlaeLM  # noqa: E402
from rlae_jax.harness.backend import CHAT_MARK  # noqa: E402
from rlae_jax.harness.scoring import encode  # noqa: E402
from rlae_jax.models.prompts import bucket_length  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from tiny_models import CORPUS, save_tiny_model, train_byte_level_tokenizer  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
TASKS = REPO / "tests" / "data" / "harness"
CHAT_TEMPLATES = (
    "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}",
    "{% for m in messages %}[{{ m['role'] | upper }}] {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}[ASSISTANT]{% endif %}",
)
PAIRS = [
    ("Once upon a time", " there was"),
    ("The quick brown fox ", "jumps"),
    ("", "Hello world"),
    ("Alice and Bob exchanged 7 messages,", " then 11 more"),
    ("12 + 30 =", " 42."),
    ("Hello", " world! This is a tiny corpus for a tiny tokenizer, with some punctuation"),
]
PROMPTS = [
    "Once upon a time",
    "The quick brown fox jumps over the lazy dog; 12 + 30 =",
    "Hello",
    "Alice and Bob exchanged 7 messages, then 11 more, before the meeting at 5 pm. Once upon a",
    "7",
    "The little robot",
    "Bob",
    "Hello world! This is",
]


MAX_GEN = 16  # as the rlae_qa_gen task: tests share compiled programs


def requests(kind, arguments):
    return [Instance(kind, {}, args, index) for index, args in enumerate(arguments)]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Two tiny members with different tokenizers and chat templates: a Llama and a GPT-2."""
    root = tmp_path_factory.mktemp("harness_members")
    for name, family, vocab, template in (
        ("llama", "llama", 384, CHAT_TEMPLATES[0]),
        ("gpt2", "gpt2", 320, CHAT_TEMPLATES[1]),
    ):
        tokenizer = train_byte_level_tokenizer(vocab)
        tokenizer.chat_template = template
        save_tiny_model(family, root / name, tokenizer, seed=vocab)
    return root / "llama", root / "gpt2"


@pytest.fixture(scope="module")
def single(folders):
    return RlaeLM(members=str(folders[0]), max_batch=4)


@pytest.fixture(scope="module")
def one_hot(folders):
    return RlaeLM(
        members=f"{folders[0]}|{folders[1]}", strategy="fixed", weights="1|0", max_batch=4
    )


@pytest.fixture(scope="module")
def hflm(folders):
    from lm_eval.models.huggingface import HFLM

    return HFLM(pretrained=str(folders[0]), batch_size=4, device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def pairs(hflm):
    """PAIRS and a continuation the Llama member produces greedily."""
    prompt = "Once upon a time"
    greedy = hflm.generate_until(requests("generate_until", [(prompt, {"max_gen_toks": 3})]))[0]
    return PAIRS + [(prompt, greedy)]


@pytest.fixture(scope="module")
def mixed_pair():
    """Two tiny random members, in process: a GPT-2 with a byte-level BPE and a Llama with a
    metaspace BPE whose byte-fallback ids repeat the bytes of other ids (two ids per union token)
    and which spells some of the GPT-2's tokens in several ids."""
    from rlae_jax.models import Member, build_model
    from rlae_jax.toy.members import demo_model_config
    from rlae_jax.toy.tokenizer_trainer import train_byte_level_bpe, train_metaspace_bpe

    tokenizers = (train_byte_level_bpe(CORPUS, 384), train_metaspace_bpe(CORPUS, 300))
    return [
        Member.from_model(build_model(demo_model_config(kind, t, hidden_size=32), seed=i), t, kind)
        for i, (kind, t) in enumerate(zip(("gpt2", "llama"), tokenizers))
    ]


def union_key(vocab, token_id):
    """What member id `token_id` stands for in the union, from the tokenizer alone: its bytes, or
    the EOS (every member's EOS is the one union EOS), or the special's name."""
    data = vocab.token_bytes[token_id]
    if data is not None:
        return data
    return ("eos",) if token_id == vocab.eos_id else ("special", vocab.specials[token_id])


def numpy_next_probs(member):
    """member ids → float64 next-token probabilities after them, from the member's full forward
    (no cache), right-padded to 64 positions (one compile)."""
    import jax

    forward = jax.jit(member.logits)

    def next_probs(ids):
        padded, mask = np.zeros((1, 64), np.int32), np.zeros((1, 64), np.int32)
        padded[0, : len(ids)], mask[0, : len(ids)] = ids, 1  # right padding: same logits
        logits = np.asarray(forward(padded, mask), np.float64)[0, len(ids) - 1]
        probs = np.exp(logits - logits.max())
        return probs / probs.sum()

    return next_probs


def numpy_token_mixture(lm, pairs, weight_rule, span_length):
    """Brute-force reference of the token-level mixture, per request: each member's full forward
    over everything it has been fed at every union step (`numpy_next_probs`); the members' ids
    grouped into union tokens by their bytes (`union_key`), mixed with `weight_rule(probs)` called
    every `span_length` steps and renormalised over the complete union tokens (an incomplete one
    has probability 0); the spelling member is the first step's largest weight; every member is fed
    its re-spelling of each scored token but the last. → (log-probs, greedy flags, spelling
    member) per request."""
    from rlae_jax.align import member_vocab

    members = lm.members
    alignment = lm.ensemble.alignment
    vocabs = [member_vocab(m.tokenizer) for m in members]
    keys = [[union_key(v, i) for i in range(m.config.vocab_size)] for v, m in zip(vocabs, members)]
    union_ids = {b: u for u, b in enumerate(alignment.vocab.union_bytes) if b}
    complete = np.asarray(alignment.union_complete)
    next_probs = [numpy_next_probs(m) for m in members]
    results = []
    for r in range(len(pairs[0])):
        fed = [list(p[r][0]) for p in pairs]
        total, greedy, step, spelled = 0.0, True, 0, None
        while spelled is None or step < len(spelled):
            probs = [next_probs[n](ids) for n, ids in enumerate(fed)]
            if step % span_length == 0:
                weights = weight_rule(probs)
            if spelled is None:
                spelling = int(np.argmax(weights))
                spelled = pairs[spelling][r][1]
            mixed = {}
            for n, member_probs in enumerate(probs):
                for token_id, prob in enumerate(member_probs):
                    key = keys[n][token_id]
                    mixed[key] = mixed.get(key, 0.0) + weights[n] * prob
            allowed = {
                k: v for k, v in mixed.items() if isinstance(k, tuple) or complete[union_ids[k]]
            }
            target = keys[spelling][spelled[step]]
            if target not in allowed:  # the engine never picks it: probability 0
                total, greedy = -np.inf, False
                break
            total += np.log(mixed[target] / sum(allowed.values()))
            greedy &= max(allowed, key=allowed.get) == target
            if step + 1 < len(spelled):
                union_id = alignment.to_union(spelling, [spelled[step]])
                for n in range(len(members)):
                    respelled = alignment.from_union(n, union_id)
                    assert b"".join(keys[n][i] for i in respelled) == target
                    fed[n] += respelled
            step += 1
        results.append((total, greedy, spelling))
    return [np.array(column) for column in zip(*results)]


@pytest.mark.parametrize("strategy", ["gating", pytest.param("fixed", marks=pytest.mark.slow)])
def test_token_mixture_equals_numpy_brute_force(mixed_pair, strategy):
    """An ensemble's log-likelihoods and greedy flags (the default `ensemble_ll="token"`) equal the
    brute-force reference within 1e-5. "gating": GaC threshold gating re-weighs every 2 union
    tokens, the first member alone where it is confident, else 0.2|0.8 (both members spell some
    rows, both weightings occur), over an alignment whose re-spellings are capped at 3 member
    tokens, so 8 union tokens are incomplete (renormalised away; two rows spell one: −inf);
    "fixed": weights 0.3|0.7 (spelled by the second member)."""
    from rlae_jax.align import build_alignment
    from rlae_jax.harness.scoring import encode_pair

    pairs = [[encode_pair(m.tokenizer, c, x) for c, x in PAIRS] for m in mixed_pair]
    first_probs = numpy_next_probs(mixed_pair[0])
    confidence = np.sort([first_probs(context).max() for context, _ in pairs[0]])
    threshold = float(confidence[len(PAIRS) // 2 - 1 : len(PAIRS) // 2 + 1].mean())  # a median
    trusted = []

    def gating(probs):
        trusted.append(probs[0].max() > threshold)
        return np.array([1.0, 0.0]) if trusted[-1] else np.array([0.2, 0.8])

    options = {
        "gating": dict(strategy="threshold", threshold=threshold, weights="0.2|0.8", span_length=2),
        "fixed": dict(strategy="fixed", weights="0.3|0.7"),
    }[strategy]
    alignment = None  # built by the Ensemble
    if strategy == "gating":
        tokenizers, sizes = (
            [m.tokenizer for m in mixed_pair],
            [m.config.vocab_size for m in mixed_pair],
        )
        with pytest.warns(UserWarning, match="left out of union_complete"):
            alignment = build_alignment(tokenizers, sizes, max_expansion=3)
        assert (~np.asarray(alignment.union_complete)).sum() == 8
    lm = RlaeLM(members=Ensemble(mixed_pair, alignment), max_batch=8, **options)
    got = lm.loglikelihood(requests("loglikelihood", PAIRS))
    if strategy == "gating":
        expected, greedy, spelling = numpy_token_mixture(lm, pairs, gating, 2)
        assert set(spelling) == {0, 1} and set(trusted) == {True, False}
        assert np.isinf(expected).sum() == 2
    else:
        expected, greedy, spelling = numpy_token_mixture(
            lm, pairs, lambda _: np.array([0.3, 0.7]), 1
        )
        assert set(spelling) == {1}
    finite = np.isfinite(expected)
    difference = np.abs(np.array([lp for lp, _ in got])[finite] - expected[finite]).max()
    print(f"{strategy}: max |ours - NumPy| = {difference:.2e} over {finite.sum()} rows")
    np.testing.assert_allclose([lp for lp, _ in got], expected, atol=1e-5, rtol=0)
    assert [g for _, g in got] == greedy.tolist()


def test_loglikelihood_equals_transformers_through_hflm(single, hflm, pairs):
    """Same (context, continuation) → HFLM's tokenisation conventions and torch logits: equal within
    1e-4, same greedy flags (including an empty context and a context ending in a space)."""
    ours = single.loglikelihood(requests("loglikelihood", pairs))
    reference = hflm.loglikelihood(requests("loglikelihood", pairs))
    np.testing.assert_allclose(
        [lp for lp, _ in ours], [lp for lp, _ in reference], atol=1e-4, rtol=0
    )
    assert [g for _, g in ours] == [g for _, g in reference]
    assert ours[-1][1] and min(lp for lp, _ in ours) < -5  # a greedy continuation; real scores


def test_rolling_loglikelihood_equals_transformers_with_windows(folders, hflm):
    """Texts longer than max_length are scored in rolling windows exactly as HFLM scores them."""
    texts = [(p + c,) for p, c in PAIRS if p]
    ours = RlaeLM(members=str(folders[0]), max_batch=4, max_length=8)
    # several windows
    assert max(len(encode(ours.members[0].tokenizer, t)) for (t,) in texts) > 3 * 8
    hflm._max_length = 8
    try:
        reference = hflm.loglikelihood_rolling(requests("loglikelihood_rolling", texts))
    finally:
        hflm._max_length = None
    np.testing.assert_allclose(
        ours.loglikelihood_rolling(requests("loglikelihood_rolling", texts)),
        reference,
        atol=1e-4,
        rtol=0,
    )


@pytest.fixture(scope="module")
def one_hot_sequence(folders):
    return RlaeLM(
        members=f"{folders[0]}|{folders[1]}",
        strategy="fixed",
        weights="1|0",
        max_batch=4,
        ensemble_ll="sequence",
    )


def test_one_hot_ensemble_equals_its_member(single, one_hot, one_hot_sequence, pairs):
    """Weights 1|0 over a Llama and a GPT-2 with different byte-level tokenizers: the member's
    log-likelihoods and greedy flags. Through the token-level mixture within 1e-5 (every id of the
    member is the only one with its bytes, defined by its tokenizer, and every union token
    complete: the mixture is its own distribution; cached steps and a full forward round
    differently); through the sequence-level mixture exactly."""
    expected = single.loglikelihood(requests("loglikelihood", pairs))
    got = one_hot.loglikelihood(requests("loglikelihood", pairs))
    difference = np.abs(np.array(got)[:, 0] - np.array(expected)[:, 0]).max()
    print(f"one-hot token mixture: max |ensemble - member| = {difference:.2e}")
    assert difference < 1e-5 and [g for _, g in got] == [g for _, g in expected]
    assert expected[-1][1]  # a greedy continuation
    assert one_hot_sequence.loglikelihood(requests("loglikelihood", pairs)) == expected


@pytest.mark.slow
def test_one_hot_ensemble_equals_its_member_rolling(single, one_hot, one_hot_sequence):
    """The same for rolling log-likelihoods: the token-level mixture within a relative 1e-6 (sums
    of up to 30 float32 log-probs), the sequence-level one exactly (compiles a second token-level
    program: longer spellings)."""
    texts = requests("loglikelihood_rolling", [(p + c,) for p, c in PAIRS if p])
    expected = single.loglikelihood_rolling(texts)
    np.testing.assert_allclose(one_hot.loglikelihood_rolling(texts), expected, rtol=1e-6)
    assert one_hot_sequence.loglikelihood_rolling(texts) == expected


REAL_PAIR = ("smollm2-135m-instruct", "gemma-3-270m")
REAL_PAIRS = [
    ("The capital of France is", " Paris."),
    ("Question: What is 2 + 2?\nAnswer:", " 4"),
    ("def add(a, b):\n", "    return a + b\n"),
    ("Once upon a time, there was a little", " girl who lived in a small village.\nShe"),
    ("", "Hello world!"),
    ("Does it follow that some cats are pets? Answer Yes or No.\nAnswer:", " No"),
]


@pytest.mark.slow
def test_real_pair_one_hot_token_mixture_equals_each_member():
    """SmolLM2-135M-Instruct + Gemma-3-270M, weights one-hot on either member: the token-level
    mixture spells each continuation in that member's own tokens, and its log-likelihoods equal the
    member's own within a relative 1e-4, with the same greedy flags (SmolLM2 produces two of the
    continuations greedily). The math says equal up to float rounding (cached steps against one
    full forward): SmolLM2's ids each have their own bytes and none is an incomplete union token;
    Gemma's 110 byte-fallback ids repeat single-byte tokens ("\n" among them: their probabilities
    are summed) and 22 union tokens (bytes SmolLM2 cannot spell) are renormalised away, both far
    below that rounding here. Measured: at most 8.4e-6 (SmolLM2) and 3.9e-6 (Gemma) relative."""
    from rlae_jax.models.installed import installed_gguf

    for preset in REAL_PAIR:
        try:
            installed_gguf(preset)
        except FileNotFoundError as error:
            pytest.skip(str(error))
    scored = requests("loglikelihood", REAL_PAIRS)
    flags = []
    for index, weights in enumerate(("1|0", "0|1")):
        own = RlaeLM(members=REAL_PAIR[index], max_batch=8).loglikelihood(scored)
        ensemble = RlaeLM(
            members="|".join(REAL_PAIR), strategy="fixed", weights=weights, max_batch=8
        )
        got = ensemble.loglikelihood(scored)
        relative = np.abs(np.array(got)[:, 0] / np.array(own)[:, 0] - 1).max()
        print(f"{REAL_PAIR[index]}: max relative |ensemble - member| = {relative:.1e}")
        assert relative <= 1e-4 and [g for _, g in got] == [g for _, g in own]
        flags += [g for _, g in own]
    assert any(flags)


@pytest.mark.slow
def test_one_hot_ensemble_generates_its_members_text(single, one_hot):
    """The same through the two-member engine: byte-identical texts (compiles a two-member
    decode)."""
    gen = requests(
        "generate_until", [(p, {"until": ["\n"], "max_gen_toks": MAX_GEN}) for p in PROMPTS]
    )
    assert one_hot.generate_until(gen) == single.generate_until(gen)


def test_sequence_mixture_is_the_weighted_sum_of_member_probabilities(folders, single):
    """`ensemble_ll="sequence"`, weights 0.3|0.7: log(0.3 p_llama + 0.7 p_gpt2), each member scored
    alone; greedy only where both are."""
    mixed = RlaeLM(
        members=f"{folders[0]}|{folders[1]}",
        strategy="fixed",
        weights="0.3|0.7",
        max_batch=4,
        ensemble_ll="sequence",
    )
    gpt2 = RlaeLM(members=str(folders[1]), max_batch=4)
    first, second = (
        np.array(m.loglikelihood(requests("loglikelihood", PAIRS)), dtype=object)
        for m in (single, gpt2)
    )
    got = mixed.loglikelihood(requests("loglikelihood", PAIRS))
    expected = np.log(
        0.3 * np.exp(first[:, 0].astype(float)) + 0.7 * np.exp(second[:, 0].astype(float))
    )
    np.testing.assert_allclose([lp for lp, _ in got], expected, rtol=1e-6)
    assert [g for _, g in got] == [bool(a and b) for a, b in zip(first[:, 1], second[:, 1])]


@pytest.mark.slow
def test_threshold_strategy_weights_come_from_the_context(folders, single):
    """Sequence-level mixture with GaC gating: threshold 0 always trusts the primary member alone
    (its exact values); threshold 1 never does and mixes uniformly (compiles a two-member one-token
    decode for the first-span weights)."""
    pair = f"{folders[0]}|{folders[1]}"
    options = dict(members=pair, max_batch=4, ensemble_ll="sequence")
    always = RlaeLM(strategy="threshold", threshold=0.0, **options)
    assert always.loglikelihood(requests("loglikelihood", PAIRS)) == single.loglikelihood(
        requests("loglikelihood", PAIRS)
    )
    never = RlaeLM(strategy="threshold", threshold=1.0, **options)
    uniform = RlaeLM(strategy="uniform", **options)
    np.testing.assert_allclose(
        [lp for lp, _ in never.loglikelihood(requests("loglikelihood", PAIRS))],
        [lp for lp, _ in uniform.loglikelihood(requests("loglikelihood", PAIRS))],
        rtol=1e-6,
    )


def test_generate_until_equals_engine_cut_at_stops_and_compiles_once_per_bucket(folders):
    """Texts = `Ensemble.generate` of the same member, cut at the first stop string; one prefill and
    one loop compiled per prompt-length bucket (batches of 4 rows; max_gen_toks no other test uses;
    a single member never grows its cache), none more for sampling; sampling is seeded."""
    lm = RlaeLM(members=str(folders[0]), max_batch=4)
    until = [" the", "!"]
    got = lm.generate_until(
        requests("generate_until", [(p, {"until": until, "max_gen_toks": 10}) for p in PROMPTS])
    )
    member = lm.members[0]
    lengths = sorted(len(encode(member.tokenizer, p)) for p in PROMPTS)
    buckets = {bucket_length(max(lengths[i : i + 4])) for i in range(0, len(lengths), 4)}
    assert len(buckets) == 2 and lm.compile_count == 2 * len(buckets)
    sampled = [(p, {"max_gen_toks": 10, "do_sample": True, "temperature": 1.0}) for p in PROMPTS]
    first = lm.generate_until(requests("generate_until", sampled))
    assert lm.compile_count == 2 * len(buckets)  # temperature is an input, not a new program
    again = RlaeLM(members=str(folders[0]), max_batch=4)
    assert first != got and again.generate_until(requests("generate_until", sampled)) == first
    engine = lm.ensemble.generate(PROMPTS, max_new_tokens=10).texts
    assert got == [text.split(" the")[0].split("!")[0] for text in engine]
    assert any(g != e for g, e in zip(got, engine))  # some stop string did cut


def test_chat_template_per_member(folders, single):
    """A marked chat renders with each member's own template (a base model without one: the plain
    format); requests are answered for the rendered text."""
    pair = RlaeLM(members=f"{folders[0]}|{folders[1]}", max_batch=4)
    messages = [{"role": "user", "content": "Hello"}]
    marked = pair.apply_chat_template(messages)
    assert marked.startswith(CHAT_MARK) and single.apply_chat_template(messages) == marked
    assert pair.render(0, marked) == "<user>Hello\n<assistant>"
    assert pair.render(1, marked) == "[USER] Hello\n[ASSISTANT]"
    prefill = pair.apply_chat_template(messages + [{"role": "assistant", "content": "Hi"}], False)
    assert pair.render(1, prefill) == "[USER] Hello\n[ASSISTANT] Hi"
    stories = RlaeLM(members=str(fixture_path("models", "stories260K", "stories260K.gguf")))
    assert stories.render(0, marked) == "Hello\nAnswer:"
    with pytest.raises(ValueError, match="no chat template"):
        stories.render(0, prefill)
    rendered = pair.render(0, marked)
    gen = [(marked, {"max_gen_toks": MAX_GEN}), (rendered, {"max_gen_toks": MAX_GEN})]
    first, second = single.generate_until(requests("generate_until", gen))
    assert first == second
    scored = single.loglikelihood(requests("loglikelihood", [(marked, " Hi"), (rendered, " Hi")]))
    assert scored[0] == scored[1]


def test_bad_arguments_are_named(folders):
    """Wrong model_args, generation arguments and requests: a ValueError naming the problem."""
    with pytest.raises(ValueError, match="weights"):
        RlaeLM(members=f"{folders[0]}|{folders[1]}", strategy="fixed", weights="1|0|0")
    with pytest.raises(ValueError, match="no members"):
        RlaeLM(members="")
    with pytest.raises(ValueError, match="ensemble_ll='tokens': give one of token, sequence"):
        RlaeLM(members=str(folders[0]), ensemble_ll="tokens")
    with pytest.raises(ValueError, match="unknown rlae_jax model_args"):
        RlaeLM(members=str(folders[0]), temperature=1.0)
    lm = RlaeLM(members=str(folders[0]), max_batch=2)
    with pytest.raises(ValueError, match="unsupported generation arguments"):
        lm.generate_until(requests("generate_until", [("Hi", {"top_k": 5})]))
    with pytest.raises(ValueError, match="max_length"):
        RlaeLM(members=str(folders[0]), max_length=8).loglikelihood(
            requests("loglikelihood", [PAIRS[5]])
        )
    pair = RlaeLM(members=f"{folders[0]}|{folders[1]}", max_length=8)
    with pytest.raises(ValueError, match="more than max_length=8.*ensemble_ll='sequence'"):
        pair.loglikelihood_rolling(requests("loglikelihood_rolling", [("".join(PAIRS[5]),)]))
    with pytest.raises(ValueError, match="context encodes to no tokens"):
        lm.loglikelihood(requests("loglikelihood", [("  ", "Hello")]))
    with pytest.raises(ValueError, match="checkpoint, not both"):
        RlaeLM(members=str(folders[0]), strategy="uniform", checkpoint=str(folders[0]))


def test_local_yaml_tasks_through_simple_evaluate(single, hflm, monkeypatch):
    """The repo's generate_until (exact match) and multiple-choice tasks: the same per-sample
    answers and metrics as lm-eval's transformers model on the same weights."""
    monkeypatch.chdir(REPO)
    results = {}
    for name, model in (("ours", single), ("hf", hflm)):
        results[name] = lm_eval.simple_evaluate(
            model=model,
            tasks=["rlae_qa_gen", "rlae_mc"],
            limit=6,
            task_manager=TaskManager(include_path=str(TASKS), include_defaults=False),
            log_samples=True,
        )
    for task in ("rlae_qa_gen", "rlae_mc"):
        ours, theirs = (results[n]["samples"][task] for n in ("ours", "hf"))
        assert len(ours) == 6
        for a, b in zip(ours, theirs):
            if task == "rlae_mc":
                np.testing.assert_allclose(
                    [float(r[0]) for r in a["filtered_resps"]],
                    [float(r[0]) for r in b["filtered_resps"]],
                    atol=1e-4,
                )
            else:
                assert a["filtered_resps"] == b["filtered_resps"]
    assert (
        results["ours"]["results"]["rlae_mc"]["acc,none"]
        == results["hf"]["results"]["rlae_mc"]["acc,none"]
    )
    assert (
        results["ours"]["results"]["rlae_qa_gen"]["exact_match,none"]
        == results["hf"]["results"]["rlae_qa_gen"]["exact_match,none"]
    )


@pytest.mark.slow
def test_command_line(folders, tmp_path, monkeypatch):
    """`python -m launch.lm_eval ...` takes the harness's own flags and writes its results file
    (slow: the command line indexes every built-in harness task first, ~8 s of CPU)."""
    from launch.lm_eval import main

    monkeypatch.chdir(REPO)
    main(
        [
            "--model_args",
            f"members={folders[0]}",
            "--tasks",
            "rlae_mc",
            "--include_path",
            str(TASKS),
            "--limit",
            "2",
            "--batch_size",
            "4",
            "--output_path",
            str(tmp_path),
        ]
    )
    written = json.loads(next(tmp_path.rglob("results_*.json")).read_text())
    assert set(written["results"]["rlae_mc"]) >= {"acc,none", "acc_norm,none"}


@pytest.mark.slow
def test_agent_checkpoint_serves_its_mean_weights(tmp_path):
    """An RLAE run folder (an untrained agent, checkpointed): sequence-level log-likelihoods mix the
    members' exact values with the agent's first-span mean weights, which depend on the context;
    the token-level mixture (the agent re-weighing every span) differs from them; generation
    runs."""
    from rlae_jax.toy.members import demo_model_config
    from rlae_jax.harness.scoring import mixture_loglikelihood
    from rlae_jax.models import Member, build_model
    from rlae_jax.rl.trainer import RLAETrainer, RLConfig
    from rlae_jax.tasks.synthetic import SYNTHETIC, tokenizer_corpus
    from rlae_jax.toy.tokenizer_trainer import train_byte_level_bpe, train_metaspace_bpe

    tokenizers = [
        train_byte_level_bpe(tokenizer_corpus(), 300),
        train_metaspace_bpe(tokenizer_corpus(), 120),
    ]
    kinds = ("gpt2", "llama")
    members = [
        Member.from_model(build_model(demo_model_config(k, t, hidden_size=32), seed=i), t, name=k)
        for i, (k, t) in enumerate(zip(kinds, tokenizers))
    ]
    ensemble = Ensemble(members)
    config = RLConfig(max_new_tokens=8, span_length=2, hidden_sizes=(16,), batch_size=8)
    trainer = RLAETrainer(config, ensemble, SYNTHETIC, SYNTHETIC.load("train", limit=8), tmp_path)
    trainer.save(trainer.restore_or_init())
    trainer.manager.wait_until_finished()
    agent = RlaeLM(members=members, checkpoint=str(tmp_path), max_batch=4, ensemble_ll="sequence")
    alone = [RlaeLM(members=[m], max_batch=4) for m in members]
    pairs = [("rev c a t =", " t a c"), ("up d o g ; rev a b =", " D O G ; b a")]
    got = agent.loglikelihood(requests("loglikelihood", pairs))
    scores = [m.loglikelihood(requests("loglikelihood", pairs)) for m in alone]
    log_probs = np.array([[s[i][0] for s in scores] for i in range(len(pairs))])
    weights = agent.harness.first_span_weights(
        [[encode(m.tokenizer, c) for c, _ in pairs] for m in members]
    )
    np.testing.assert_allclose(weights.sum(1), 1.0, rtol=1e-6)
    assert np.all((weights > 0) & (weights < 1)) and not np.allclose(weights[0], weights[1])
    expected, _ = mixture_loglikelihood(log_probs, np.zeros_like(log_probs, bool), weights)
    np.testing.assert_allclose([lp for lp, _ in got], expected, rtol=1e-6)
    token = RlaeLM(members=members, checkpoint=str(tmp_path), max_batch=4)
    mixed = [lp for lp, _ in token.loglikelihood(requests("loglikelihood", pairs))]
    assert np.all(np.isfinite(mixed)) and np.abs(np.array(mixed) - expected).min() > 1e-3
    gen = [(c, {"max_gen_toks": 8}) for c, _ in pairs]
    texts = agent.generate_until(requests("generate_until", gen))
    assert len(texts) == 2 and all(isinstance(t, str) for t in texts)
