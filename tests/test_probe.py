"""The complementarity probe: its statistics and selection rule on hand-computed score arrays, the
"bare" answer format it added to reasoning-gym tasks, and (slow) the quick probe end to end on the
real pair."""

import json

import numpy as np
import pytest

from rlae_jax.experiments.probe import (
    UNIFORM,
    cell_stats,
    cell_table,
    constant_baseline,
    copy_rate,
    leader,
    mixture_of,
    outcome_counts,
    promising,
    select_mixture,
    weights_matter,
    with_fields,
)

MEMBERS = ("smol", "gemma")


def test_outcome_counts_split_problems_by_who_is_right():
    counts = outcome_counts(np.array([1, 1, 0, 0, 1]), np.array([1, 0, 1, 0, 0]))
    assert counts == {"both": 1, "only_a": 2, "only_b": 1, "neither": 1}
    with pytest.raises(ValueError, match="shape"):
        outcome_counts(np.ones(3), np.ones(4))


def test_constant_baseline_is_the_most_frequent_normalised_target():
    assert constant_baseline(["Yes", "yes ", "No", "Yes"]) == ("yes", 0.75)
    assert constant_baseline(["4", "7", "4", "9", "1"]) == ("4", 0.4)


def test_copy_rate_counts_answers_equal_to_a_shot_answer():
    assert copy_rate(["4", None, " 7", "5"], ["4", "7"]) == 0.5
    assert copy_rate(["4", "7"], []) is None  # no worked examples, nothing to copy


def test_weights_matter_where_strategies_disagree():
    scores = np.array([[1, 0, 1, 0], [1, 1, 0, 0], [1, 0, 0, 0]])
    assert weights_matter(scores) == 0.5  # problems 1 and 2


def test_cell_stats_by_hand():
    scores = {
        "smol": np.array([1, 1, 0, 0]),
        "gemma": np.array([0, 1, 1, 0]),
        UNIFORM: np.array([0, 1, 0, 0]),
    }
    answers = {
        "smol": ["3", "5", "9", None],
        "gemma": ["2", "5", "3", "3"],
        UNIFORM: ["2", "5", "1", "1"],
    }
    stats = cell_stats(scores, answers, ["3", "5", "3", "8"], ["3"], MEMBERS)
    assert stats["accuracy"] == {"smol": 0.5, "gemma": 0.5, UNIFORM: 0.25}
    assert stats["oracle"] == 0.75
    assert stats["any_strategy"] == 0.75  # uniform is right only where a member is
    assert stats["constant"] == {"answer": "3", "accuracy": 0.5}
    assert stats["counts"] == {"both": 1, "only_a": 1, "only_b": 1, "neither": 1}
    assert stats["weights_matter"] == 0.5  # problems 0 and 2: the members disagree
    assert stats["copy_rate"] == {"smol": 0.25, "gemma": 0.5, UNIFORM: 0.0}
    assert stats["target_copy_rate"] == 0.5


def test_cell_table_rows_match_the_header():
    scores = {"smol": np.array([1, 0]), "gemma": np.array([0, 0]), UNIFORM: np.array([1, 1])}
    answers = {name: ["4", "4"] for name in scores}
    stats = cell_stats(scores, answers, ["4", "5"], [], MEMBERS)
    lines = cell_table({"bare/0-shot": {"rg/x": stats}}, MEMBERS)
    assert len({line.count("|") for line in lines}) == 1
    # uniform is right on problem 1, where neither member is: any strategy 1.00, oracle 0.50
    assert lines[2] == (
        "| rg/x | bare/0-shot | 2 | 0.50 | 0.00 | 1.00 | 0.50 | 0.50 | 1.00 "
        "| 1.00 | 0/1/0/1 | 1.00 | – / – (–) |"
    )


def stats_of(smol: float, gemma: float, constant: float) -> dict:
    return {"accuracy": {"smol": smol, "gemma": gemma}, "constant": {"accuracy": constant}}


def test_leader_must_beat_the_other_member_and_the_constant_answer():
    assert leader(stats_of(0.6, 0.3, 0.5), MEMBERS, 0.05) == "smol"
    assert leader(stats_of(0.3, 0.6, 0.2), MEMBERS, 0.05) == "gemma"
    assert leader(stats_of(0.52, 0.3, 0.5), MEMBERS, 0.05) is None  # the constant is as good
    assert leader(stats_of(0.62, 0.6, 0.2), MEMBERS, 0.05) is None  # a lead within the margin


# three families: smol is right on all of "fa", gemma on 3 of 4 of "fb", "fc" is a tie
SCORES = {
    "fa": {"smol": [1, 1, 1, 1], "gemma": [0, 0, 0, 0], UNIFORM: [1, 1, 0, 0]},
    "fb": {"smol": [0, 0, 0, 0], "gemma": [1, 1, 1, 0], UNIFORM: [0, 1, 1, 0]},
    "fc": {"smol": [1, 0, 0, 0], "gemma": [0, 1, 0, 0], UNIFORM: [0, 0, 0, 0]},
}


def family_stats(constant: float = 0.25) -> dict:
    return {
        family: {
            "accuracy": {name: float(np.mean(s)) for name, s in scores.items()},
            "constant": {"accuracy": constant},
            "oracle": float(np.mean(np.maximum(scores["smol"], scores["gemma"]))),
            "weights_matter": 0.5,
        }
        for family, scores in SCORES.items()
    }


def test_mixture_pools_problems_and_prefers_uniform_on_ties():
    mixture = mixture_of(["fa", "fb"], SCORES, MEMBERS)
    assert mixture.oracle == 7 / 8
    # smol and uniform both score 4/8 on the pooled problems
    assert (mixture.best_fixed, mixture.best_fixed_accuracy) == (UNIFORM, 0.5)
    assert mixture.gap == 7 / 8 - 0.5


def test_select_mixture_by_the_rule():
    chosen = select_mixture(family_stats(), SCORES, MEMBERS, margin=0.05, min_gap=0.08)
    assert chosen["families"] == ["fa", "fb"]
    assert chosen["holdout"] == ["fc"]
    assert chosen["leaders"] == {"fa": "smol", "fb": "gemma", "fc": None}
    assert chosen["gap"] == pytest.approx(0.375)
    assert chosen["meets_rule"]


def test_select_mixture_says_why_it_fails():
    too_wide = select_mixture(family_stats(), SCORES, MEMBERS, margin=0.05, min_gap=0.5)
    assert not too_wide["meets_rule"] and "gap 0.375 < 0.5" in too_wide["reason"]
    # a constant answer as good as gemma on "fb" leaves gemma leading nowhere
    no_gemma = select_mixture(family_stats(constant=0.75), SCORES, MEMBERS, 0.05, 0.08)
    assert not no_gemma["meets_rule"] and no_gemma["families"] == []
    assert "['smol']" in no_gemma["reason"]


def test_select_mixture_needs_a_family_each_member_leads():
    # smol leads "fa" and "fd"; pooling them leaves room (gap 1/8) but gemma leads nowhere
    scores = {
        "fa": SCORES["fa"],
        "fc": SCORES["fc"],
        "fd": {"smol": [1, 1, 1, 0], "gemma": [0, 0, 0, 1], UNIFORM: [0, 0, 0, 0]},
    }
    stats = {f: s for f, s in family_stats().items() if f != "fb"}
    stats["fd"] = {"accuracy": {"smol": 0.75, "gemma": 0.25}, "constant": {"accuracy": 0.25}}
    chosen = select_mixture(stats, scores, MEMBERS, margin=0.05, min_gap=0.08)
    assert chosen["families"] == [] and not chosen["meets_rule"]


def test_promising_takes_each_members_best_families_in_turn():
    def cell(smol, gemma, matter=0.0, constant=0.0):
        return {
            "accuracy": {"smol": smol, "gemma": gemma},
            "weights_matter": matter,
            "constant": {"accuracy": constant},
        }

    # gemma leads everywhere; smol's best families are those it trails least; on "a" gemma only
    # matches the constant answer, so its lead there counts for nothing
    stats = {
        "a": cell(0.0, 0.5, constant=0.5),
        "b": cell(0.2, 0.3),
        "c": cell(0.1, 0.4),
        "d": cell(0.2, 0.3, matter=0.5),
        "e": cell(0.0, 0.2),
    }
    assert promising(stats, MEMBERS, 3) == ["d", "c", "b"]
    assert promising(stats, MEMBERS, 10) == ["d", "c", "b", "e", "a"]


def test_with_fields_writes_a_spec_get_task_reads():
    assert with_fields("rg/gcd:easy", train_size=2000) == 'rg/gcd:easy{"train_size": 2000}'
    own = 'rg/lcm:{"max_value": 40, "train_size": 300}'
    assert json.loads(with_fields(own, dict(train_size=2000), answer_format="bare")[7:]) == {
        "answer_format": "bare",
        "max_value": 40,
        "train_size": 300,
    }
    with pytest.raises(ValueError, match="not JSON"):
        with_fields("rg/gcd:{oops", train_size=1)


def test_bare_answer_format_targets_the_answer_and_scores_the_first_line():
    pytest.importorskip("reasoning_gym")
    from rlae_jax.tasks import get_task

    bare = get_task('rg/products:easy{"answer_format": "bare", "train_size": 50}')
    sentence = get_task('rg/products:easy{"train_size": 50}')
    example = bare.load("train", limit=1)[0]
    assert bare.target(example) == example.answer
    assert sentence.target(example) == f"The answer is {example.answer}."
    assert example.prompt.endswith("Reply with only the answer.")
    run_on = f" {example.answer}\n\nWhat is 2 * 3?\nAnswer: 6"
    assert bare.reward(run_on, example) == 1.0  # the next question's answer is not read
    assert sentence.reward(run_on, example) == 0.0  # the sentence format reads the last number
    with pytest.raises(ValueError, match="answer_format"):
        get_task('rg/products:easy{"answer_format": "loud"}')


@pytest.mark.slow
def test_quick_probe_end_to_end_on_the_real_pair(tmp_path):
    pytest.importorskip("reasoning_gym")
    from configs.probe import finalize, get_config
    from rlae_jax.experiments.probe import run_probe

    config = get_config()
    config.quick = True
    config.output_dir = str(tmp_path / "probe")
    try:
        report = run_probe(finalize(config))
    except (FileNotFoundError, ImportError) as err:  # the real members are not installed
        pytest.skip(f"real members unavailable: {err}")
    folder = tmp_path / "probe-quick"
    saved = json.loads((folder / "results.json").read_text())
    cells = saved["stages"]["screen"]["cells"]["bare/1-shot"]
    assert sorted(cells) == ["rg/products:easy", "rg/syllogism"]
    for family, stats in cells.items():
        scores = saved["stages"]["screen"]["scores"]["bare/1-shot"][family]
        assert sum(stats["counts"].values()) == stats["problems"] == 8
        for name, accuracy in stats["accuracy"].items():
            assert accuracy == pytest.approx(np.mean(scores[name]))
        smol, gemma = (np.array(scores[m]) for m in report["members"])
        assert stats["counts"]["only_a"] == int(np.sum((smol > 0) & (gemma == 0)))
        assert stats["any_strategy"] == pytest.approx(np.mean(np.max(list(scores.values()), 0)))
    swept = saved["stages"]["sweep"]["cells"]["bare/0-shot"]
    assert all(stats["copy_rate"][report["members"][0]] is None for stats in swept.values())
    mixture = json.loads((folder / "mixture.json").read_text())
    assert mixture["setting"] in ("bare/1-shot", "bare/0-shot") and "meets_rule" in mixture
    assert "| rg/syllogism | bare/1-shot | 8 |" in (folder / "results.md").read_text()
