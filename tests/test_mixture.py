"""MixtureTask: interleaved splits, family lookup, each family's own shots and reward."""

import dataclasses

import pytest

from rlae_jax.tasks import SYNTHETIC, get_task
from rlae_jax.tasks.mixture import MixtureTask

REVERSE, CAPITALIZE = get_task("synthetic_reverse"), get_task("synthetic_capitalize")


@pytest.fixture(scope="module")
def mixture():
    shots = (REVERSE.load("train", limit=1), ())
    return MixtureTask.of([REVERSE, CAPITALIZE], shots)


def test_load_interleaves_families_and_tags_each_example(mixture):
    examples = mixture.load("test", limit=3)
    assert [mixture.family_of(e) for e in examples] == [0, 1, 0, 1, 0, 1]
    assert [e.prompt.split()[0] for e in examples] == ["rev", "up"] * 3
    assert mixture.families_of(examples).tolist() == [0, 1, 0, 1, 0, 1]
    own = REVERSE.load("test", limit=3)
    assert [mixture.member(e)[1] for e in examples[::2]] == own


def test_uneven_families_keep_every_example(mixture):
    examples = mixture.interleave([REVERSE.load("test", limit=3), CAPITALIZE.load("test", limit=1)])
    assert [mixture.family_of(e) for e in examples] == [0, 1, 0, 0]


def test_render_uses_the_family_shots_and_refuses_others(mixture):
    reverse, capitalize = mixture.load("test", limit=1)
    shot = mixture.shots[0][0]
    formatter = lambda messages: " | ".join(m["content"] for m in messages)  # noqa: E731
    rg = get_task("rg/gcd:easy")
    shots = rg.load("train", limit=1)
    rg_mixture = MixtureTask.of([rg, CAPITALIZE], (shots, ()))
    question = rg_mixture.load("test", limit=1)[0]
    assert rg_mixture.render(question, formatter=formatter).startswith(shots[0].prompt)
    assert mixture.render(capitalize, formatter=formatter) == capitalize.prompt
    assert shot.prompt not in mixture.render(capitalize, formatter=formatter)
    with pytest.raises(ValueError, match="own shots"):
        mixture.render(reverse, shots=[shot])


def test_reward_is_the_family_accuracy(mixture):
    reverse, capitalize = mixture.load("test", limit=1)
    assert mixture.reward(reverse.answer, reverse) == 1.0
    assert mixture.reward(capitalize.answer, capitalize) == 1.0
    half = capitalize.answer[: len(capitalize.answer) // 2]
    assert SYNTHETIC.reward(half, capitalize) > 0  # partial credit in the family's own reward
    assert mixture.reward(half, capitalize) == 0.0  # 0/1 in the mixture


def test_foreign_examples_are_named(mixture):
    foreign = REVERSE.load("test", limit=1)[0]
    with pytest.raises(ValueError, match="not an example of the mixture"):
        mixture.family_of(foreign)
    with pytest.raises(ValueError, match="not an example"):
        mixture.family_of(dataclasses.replace(foreign, id="7|x"))
    with pytest.raises(ValueError, match="one shot tuple per family"):
        MixtureTask.of([REVERSE, CAPITALIZE], [()])
