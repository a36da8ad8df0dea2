"""The fair baselines on a case whose answer is known: the reference answers are what member 0
(a peaked random model) generates alone, greedily; member 1 has a zero LM head (a uniform
next-token distribution), so it never gives the reference the higher probability. Tuned fixed
weights must score every grid point with weight on member 0 at 1 and member 1 alone at 0, the
teacher-forced labels must all name member 0, and the router fitted on them must reproduce the
references when it sets the weights."""

import dataclasses
import pathlib
import re
import sys

import jax
import numpy as np
import pytest

from rlae_jax.engine.loop import DecodeConfig
from rlae_jax.engine.strategies import resolve_strategy
from rlae_jax.experiments.evaluation import run_strategy
from rlae_jax.rl.baselines import (
    RouterConfig,
    fit_router,
    reference_chunks,
    router_dataset,
    simplex_grid,
    teacher_forced_labels,
    train_router,
    tune_fixed_weights,
)
from rlae_jax.engine.features import token_log_probs
from rlae_jax.models.prompts import left_pad
from rlae_jax.tasks.base import Example
from rlae_jax.toy.tokenizer_trainer import train_byte_level_bpe, train_metaspace_bpe

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from test_sharding import tiny_member  # noqa: E402
from tiny_models import CORPUS, uncached_ensemble  # noqa: E402

PROMPTS = [
    "Once upon a time",
    "Hello world!",
    "The quick brown",
    "Alice and Bob",
    "12 + 30 =",
    "a tiny corpus",
    "the meeting at",
    "robot who liked",
]
CONFIG = DecodeConfig(max_new_tokens=6, span_length=2, record_features=False)


class ExactTask:
    """Prompts as they are; 1 for a completion equal to the reference, else 0."""

    name = "exact"

    def render(self, example, tokenizer=None, shots=(), formatter=None):
        return example.prompt

    def target(self, example):
        return example.answer

    def reward(self, completion, example):
        return float(completion == example.answer)

    def rewards(self, completions, examples):
        return np.array([self.reward(c, e) for c, e in zip(completions, examples)], np.float32)


def uniform_member(member):
    """The member with a zero LM head: every next token equally likely."""
    zero = lambda path, x: x * 0.0 if re.search(r"lm_head", jax.tree_util.keystr(path)) else x
    return member.replace(state=jax.tree_util.tree_map_with_path(zero, member.state))


@pytest.fixture(scope="module")
def case():
    members = [
        tiny_member("gpt2", train_byte_level_bpe(CORPUS, 300), 0, "peaked"),
        uniform_member(tiny_member("llama", train_metaspace_bpe(CORPUS, 120), 1, "uniform")),
    ]
    ensemble = uncached_ensemble(members)
    task = ExactTask()
    blank = [Example(id=str(i), prompt=p, answer="", aliases=("",)) for i, p in enumerate(PROMPTS)]
    alone = resolve_strategy("single", 2, primary=0)
    texts = run_strategy("member 0", ensemble, task, blank, alone, CONFIG).texts
    examples = [dataclasses.replace(e, answer=t, aliases=(t,)) for e, t in zip(blank, texts) if t]
    assert len(examples) >= 6, texts
    return ensemble, task, examples


def test_simplex_grid():
    grid = simplex_grid(3, 4)
    assert grid.shape == (15, 3)  # C(6, 2)
    np.testing.assert_allclose(grid.sum(1), 1.0, rtol=1e-6)
    assert len({tuple(row) for row in grid}) == 15 and grid.min() == 0.0
    np.testing.assert_array_equal(simplex_grid(2, 2), [[0, 1], [0.5, 0.5], [1, 0]])
    with pytest.raises(ValueError, match="resolution >= 1"):
        simplex_grid(2, 0)


def test_tuned_fixed_weights_reproduce_the_member_that_knows(case, capfd):
    ensemble, task, examples = case
    search = tune_fixed_weights(ensemble, task, examples, CONFIG, resolution=4)
    assert "evaluating 5 strategies: 100%" in capfd.readouterr().err  # the grid's progress bar
    # any weight on member 0 keeps its greedy choices (a uniform member shifts no argmax)
    np.testing.assert_array_equal(search.grid[:, 0], [0, 0.25, 0.5, 0.75, 1])
    np.testing.assert_array_equal(search.accuracy, [0, 1, 1, 1, 1])
    np.testing.assert_array_equal(search.weights, [0.25, 0.75])  # the first of equals


def test_reference_chunks():
    assert reference_chunks("abcdefghij", 4) == [("", "abcd"), ("abcd", "efgh"), ("abcdefgh", "ij")]


def test_router_fit_learns_a_rule_of_the_observation():
    observations = np.random.default_rng(0).normal(size=(256, 5)).astype(np.float32)
    labels = (observations[:, 2] > 0.3).astype(np.int32)
    router = fit_router(observations, labels, 2, RouterConfig(steps=300))
    predicted = np.asarray(router.logits(jax.numpy.asarray(observations))).argmax(-1)
    assert (predicted == labels).mean() > 0.95


def test_router_labels_and_weights_follow_the_member_that_knows(case, capfd):
    ensemble, task, examples = case
    members = ensemble.members
    prompts, answers = [e.prompt for e in examples], [e.answer for e in examples]
    labels = teacher_forced_labels(members, [prompts, prompts], answers, 4)
    assert len(labels) == sum(len(reference_chunks(e.answer, 4)) for e in examples)
    assert set(labels.tolist()) <= {0, -1} and (labels == 0).mean() > 0.8, labels
    config = RouterConfig(chunk_chars=4, steps=50)
    capfd.readouterr()
    observations, dataset_labels = router_dataset(ensemble, task, examples, config)
    assert capfd.readouterr().err == ""  # quiet unless asked
    np.testing.assert_array_equal(dataset_labels, labels[labels >= 0])
    assert observations.shape[0] == len(dataset_labels) and np.isfinite(observations).all()
    router = train_router(ensemble, task, examples, config)
    bars = capfd.readouterr().err  # train_router's progress bars, one per phase
    for phase in ("router features", f"labels ({members[0].name})", f"labels ({members[1].name})"):
        assert f"{phase}: 100%" in bars, bars
    result = run_strategy("router", ensemble, task, examples, router, CONFIG)
    assert result.accuracy == 1.0, (result.texts, [e.answer for e in examples])
    weights = np.concatenate([w for w in result.span_weights])
    assert weights[:, 0].min() > 0.9, weights


def test_token_log_probs_in_chunks_equal_the_full_log_softmax(case):
    member = case[0].members[0]
    ids, mask = left_pad([member.tokenizer.encode(p) for p in PROMPTS], 0)
    ids, mask = jax.numpy.asarray(ids), jax.numpy.asarray(mask)
    full = jax.nn.log_softmax(member.logits(ids, mask)[:, :-1], axis=-1)
    expected = np.take_along_axis(np.asarray(full), np.asarray(ids)[:, 1:, None], -1)[..., 0]
    for chunk in (1, 3, 16, 64):
        got = np.asarray(token_log_probs(member, ids, mask, chunk))
        np.testing.assert_allclose(got, expected, atol=1e-5)
