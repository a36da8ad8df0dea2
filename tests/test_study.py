"""The study's statistics (two-level bootstrap against a NumPy reference, paired differences) and,
in the slow job, the quick study on the real members end to end (`python -m launch.study
--config.quick=True`)."""

import importlib
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from rlae_jax.experiments import statistics
from rlae_jax.rl.trainer import RLConfig
from rlae_jax.tasks import get_task

ROOT = pathlib.Path(__file__).resolve().parents[1]


def reference_two_level(scores, resamples, seed):
    """Loop form: draw seeds, then problems (the same problems for every drawn seed)."""
    rng = np.random.default_rng(seed)
    seeds, problems = scores.shape
    seed_draws = rng.integers(0, seeds, (resamples, seeds))
    problem_draws = rng.integers(0, problems, (resamples, problems))
    means = []
    for r in range(resamples):
        total = 0.0
        for s in seed_draws[r]:
            total += np.mean([scores[s, e] for e in problem_draws[r]])
        means.append(total / seeds)
    return tuple(np.percentile(means, [2.5, 97.5]))


def test_two_level_bootstrap_matches_a_numpy_reference():
    scores = np.random.default_rng(3).integers(0, 2, (3, 40)).astype(np.float32)
    got = statistics.two_level_bootstrap(scores, 300, seed=7)
    assert got == pytest.approx(reference_two_level(scores, 300, 7), abs=1e-12)


def test_one_seed_is_the_ordinary_bootstrap_with_the_binomial_width():
    scores = np.random.default_rng(4).integers(0, 2, 400).astype(np.float32)
    low, high = statistics.two_level_bootstrap(scores, 4000)
    p = scores.mean()
    assert low < p < high
    assert high - low == pytest.approx(2 * 1.96 * np.sqrt(p * (1 - p) / 400), rel=0.15)
    assert statistics.two_level_bootstrap(np.ones((2, 30)), 100) == (1.0, 1.0)


def test_seed_variance_widens_the_interval():
    """Two seeds that disagree completely on every problem: averaging them first (one level) would
    give a point interval; the two-level bootstrap keeps the seed spread."""
    scores = np.stack([np.ones(200), np.zeros(200)])
    one_level = statistics.two_level_bootstrap(scores.mean(0), 1000)
    low, high = statistics.two_level_bootstrap(scores, 1000)
    assert one_level == (0.5, 0.5)
    assert low == 0.0 and high == 1.0


def test_paired_difference_and_summary():
    learner = np.array([[1, 1, 0, 1], [1, 0, 0, 1]], np.float32)
    baseline = np.array([1, 0, 0, 0], np.float32)
    gap = statistics.paired_difference(learner, baseline)
    np.testing.assert_array_equal(gap, [[0, 1, 0, 1], [0, 0, 0, 1]])
    row = statistics.summary(gap, 500)
    assert row["mean"] == pytest.approx(3 / 8)
    assert row["per_seed"] == pytest.approx([0.5, 0.25])
    assert row["interval"][0] >= 0.0  # never worse on any problem
    with pytest.raises(ValueError, match="same problems"):
        statistics.paired_difference(learner, baseline[:3])
    with pytest.raises(ValueError, match="seeds, problems"):
        statistics.summary(np.zeros((0, 3)), 10)


@pytest.mark.slow
def test_quick_study_runs_on_the_real_members(tmp_path):
    pytest.importorskip("reasoning_gym", reason="the study needs pip install 'rlae_jax[tasks]'")
    from rlae_jax.models.installed import installed_gguf

    try:
        installed_gguf("smollm2-135m-instruct"), installed_gguf("gemma-3-270m")
    except FileNotFoundError as err:
        pytest.skip(f"real members not installed: {err}")
    out = tmp_path / "study"
    subprocess.run(
        [sys.executable, "-m", "launch.study", "--config.quick=True", f"--config.output_dir={out}"],
        cwd=ROOT,
        check=True,
        timeout=1800,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    payload = json.loads((out / "results.json").read_text())
    learners = {"RLAE_PPO", "RLAE_PPO + family id"}  # quick: no MAPPO
    expected = {
        "single:smollm2-135m-instruct",
        "single:gemma-3-270m",
        "uniform (GaC)",
        "top-4 union (UniTE)",
        "PackLLM (prompt ppl)",
        "tuned fixed weights",
        "member oracle",
        "family oracle",
        *learners,
    }
    table = payload["table"]
    assert list(table) == ["mixture", "a±b", "gcd", "ransom note"]
    assert expected <= set(table["mixture"]), sorted(table["mixture"])
    assert "RLAE_PPO + family id" not in table["ransom note"]  # no family id to give it
    # the mixture's rows are its families' rows, pooled
    for name in expected:
        pooled = (table["a±b"][name]["mean"] + table["gcd"][name]["mean"]) / 2
        assert table["mixture"][name]["mean"] == pytest.approx(pooled), name
    for label, rows in table.items():
        for name, row in rows.items():
            low, high = row["interval"]
            assert 0.0 <= low <= row["mean"] <= high <= 1.0, (label, name, row)
    oracle = table["mixture"]["member oracle"]["mean"]
    assert all(table["mixture"][n]["mean"] <= oracle for n in expected if n.startswith("single"))
    for name in learners:
        gap = table["mixture"][name]["vs_tuned_fixed"]
        own, tuned = table["mixture"][name]["mean"], table["mixture"]["tuned fixed weights"]["mean"]
        assert gap["mean"] == pytest.approx(own - tuned)
        assert payload["eval_actions"][name] in ("mean", "mode")
        runs = payload["runs"][name]
        assert len(runs) == 1 and len(runs[0]) == 2  # one seed, two updates
        assert {"reward", "entropy", "family_weight_mean", "informative_share"} <= set(runs[0][0])
        assert runs[0][-1]["train_step_compiles"] == 1
    assert payload["best_baseline_on_validation"] in payload["validation_accuracy"]
    assert payload["comparisons"]["primary"] == len(learners)
    weights = payload["weights_by_family"]["RLAE_PPO"]["gcd"]
    assert sum(w["mean"] for w in weights.values()) == pytest.approx(1.0, abs=1e-5)
    # each split formatted and tokenised once: 2 training families, the tuning problems, and the
    # 2 validation and 3 test splits
    assert payload["splits_encoded"] == 8
    for name in ("results.md", "learning_curves.png", "weights_along_answers.png"):
        assert (out / name).stat().st_size > 0


@pytest.mark.parametrize("module", ["study", "control", "study_zero_shot", "demo"])
def test_study_configs_name_real_tasks_and_valid_rl_settings(module):
    """A typo in a study config's task spec or RL key fails here, not minutes into a run."""
    pytest.importorskip("reasoning_gym", reason="the tasks extra: pip install 'rlae_jax[tasks]'")
    config = importlib.import_module(f"configs.{module}")
    config = config.finalize(config.get_config())
    for _, spec in (*config.families, *config.holdout):
        assert get_task(spec).name == spec
    rl = RLConfig.from_dict(config.rl, ignore=("checkpoint_every",), kind="ppo", seed=0)
    assert rl.max_new_tokens >= rl.span_length
    questions = rl.batch_size // rl.samples_per_question  # each update draws every family evenly
    assert questions * rl.samples_per_question == rl.batch_size
    assert questions % len(config.families) == 0


@pytest.mark.parametrize("module", ["probe", "probe_zero_shot"])
def test_probe_configs_name_real_tasks(module):
    pytest.importorskip("reasoning_gym", reason="the tasks extra: pip install 'rlae_jax[tasks]'")
    config = importlib.import_module(f"configs.{module}")
    config = config.finalize(config.get_config())
    assert [get_task(spec).name for spec in config.families] == list(config.families)
