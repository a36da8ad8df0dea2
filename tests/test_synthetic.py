"""The demo task: problems, member skills, and the in-graph reward equal to the host reward."""

import collections

import jax.numpy as jnp
import numpy as np
import pytest

from rlae_jax.align import build_alignment
from rlae_jax.tasks import get_task
from rlae_jax.tasks import synthetic
from rlae_jax.tasks.synthetic import (
    SKILLS,
    SYNTHETIC,
    TRAIN_SIZE,
    Problem,
    char_accuracy,
    reward_in_graph,
    sample_problems,
    split_of,
    target_bytes,
    tokenizer_corpus,
)
from rlae_jax.toy.tokenizer_trainer import train_byte_level_bpe, train_metaspace_bpe


def test_problem_text_and_skills():
    problem = Problem((("rev", ("c", "a", "t")), ("up", ("d", "o", "g"))))
    assert problem.prompt == "rev c a t ; up d o g ="
    assert problem.answer() == " t a c ; D O G"
    assert problem.answer(SKILLS["reverser"]) == " t a c ; d o g"
    assert problem.answer(SKILLS["capitalizer"]) == " c a t ; D O G"


def test_splits_are_deterministic_and_disjoint_in_seed():
    assert SYNTHETIC.load("test", limit=16) == SYNTHETIC.load("test", limit=16)
    assert SYNTHETIC.load("test", limit=16) != SYNTHETIC.load("train", limit=16)
    two_part = get_task("synthetic_two_part").load("test", limit=16)
    assert all(";" in e.prompt for e in two_part)


def test_splits_share_no_prompt_by_construction():
    train = {e.prompt for e in SYNTHETIC.load("train", limit=TRAIN_SIZE)}
    for task in (SYNTHETIC, get_task("synthetic_two_part")):
        for split in ("validation", "test"):
            examples = task.load(split, limit=256)
            assert len(examples) == 256 and not train & {e.prompt for e in examples}
            assert {split_of(e.prompt) for e in examples} == {split}
    kinds = collections.Counter(e.prompt.count(";") for e in SYNTHETIC.load("test", limit=256))
    assert kinds == {0: 128, 1: 128}  # a quarter each of rev, up, rev;up, up;rev as before


def test_the_old_leaking_split_is_refused_with_the_count(monkeypatch):
    """Before the fix, test problems were drawn from their own seed without the split hash: 29 of
    the 256 test prompts were also training prompts. The load-time check names that count."""

    def unfiltered(self, split, count):
        seed = 1000 + synthetic.SPLIT_SEEDS[split]
        return [
            synthetic.Example(id=str(i), prompt=p.prompt, answer=p.answer(), aliases=())
            for i, p in enumerate(sample_problems(count, seed=seed, kinds=self.kinds))
        ]

    monkeypatch.setattr(synthetic.SyntheticTask, "sample", unfiltered)
    monkeypatch.setattr(
        synthetic,
        "training_prompts",
        lambda: [e.prompt for e in unfiltered(SYNTHETIC, "train", TRAIN_SIZE)],
    )
    message = "^synthetic: 29 of 256 test prompts also occur in the training split$"
    with pytest.raises(ValueError, match=message):
        SYNTHETIC.load("test", limit=256)


def test_member_corpus_is_unchanged_by_the_split_filter():
    assert sample_problems(3, seed=7) == sample_problems(3, seed=7, keep=lambda problem: True)
    # as before the fix
    assert [p.prompt for p in sample_problems(2, seed=0)] == ["rev k i e e =", "up b a ="]


def test_in_graph_reward_equals_host_reward():
    texts = tokenizer_corpus()
    tokenizers = [train_byte_level_bpe(texts, 300), train_metaspace_bpe(texts, 120)]
    alignment = build_alignment(tokenizers, use_cache=False)
    examples = SYNTHETIC.load("test", limit=12)
    rng = np.random.default_rng(0)
    candidates = [" t a c", " T A C ;", examples[0].answer, "", " x"]
    union_rows, completions = [], []
    for row, example in enumerate(examples):
        text = (
            example.answer
            if row % 3 == 0
            else candidates[row % len(candidates)] + " " * int(rng.integers(0, 2))
        )
        ids = alignment.to_union(0, tokenizers[0].encode(text)) + [alignment.eos_union_id]
        union_rows.append(ids)
        completions.append(alignment.decode(ids))
    width = max(map(len, union_rows)) + 2
    union_ids = np.full((len(examples), width), -1, np.int32)
    for row, ids in enumerate(union_rows):
        union_ids[row, : len(ids)] = ids
    table, lengths = alignment.byte_table()
    reward, exact = reward_in_graph(
        jnp.asarray(union_ids),
        jnp.asarray(target_bytes(examples, 64)),
        jnp.asarray(table),
        jnp.asarray(lengths),
    )
    np.testing.assert_allclose(
        np.asarray(reward), SYNTHETIC.rewards(completions, examples), rtol=1e-6
    )
    np.testing.assert_array_equal(
        np.asarray(exact), [SYNTHETIC.exact_match(c, e) for c, e in zip(completions, examples)]
    )
    assert np.asarray(exact)[0] == 1.0 and char_accuracy(b"", b"abc") == 0.0
