"""The study's statistics (bootstrap intervals, oracle, paired differences) and, in the slow job,
the quick study on the real members end to end (`python -m launch.study --config.quick=True`)."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from rlae_jax.experiments.evaluation import StrategyResult
from rlae_jax.experiments.study import bootstrap_interval, family_rows, markdown_table

ROOT = pathlib.Path(__file__).resolve().parents[1]


def result(name, scores, seconds=0.5):
    scores = np.asarray(scores, np.float32)
    return StrategyResult(name, float(scores.mean()), 0.0, 1.0, [], [], [], scores, seconds)


def test_bootstrap_interval_matches_a_numpy_reference():
    scores = np.random.default_rng(3).integers(0, 2, 200).astype(np.float32)
    low, high = bootstrap_interval(scores, 4000, seed=7)
    rng = np.random.default_rng(7)
    means = [scores[rng.integers(0, 200, 200)].mean() for _ in range(4000)]
    assert (low, high) == pytest.approx(tuple(np.percentile(means, [2.5, 97.5])), abs=1e-6)
    assert low < scores.mean() < high
    # binomial standard error: the 95% interval is about ±1.96·sqrt(p(1-p)/n)
    half = 1.96 * np.sqrt(scores.mean() * (1 - scores.mean()) / 200)
    assert high - low == pytest.approx(2 * half, rel=0.15)
    assert bootstrap_interval(np.ones(50, np.float32), 100) == (1.0, 1.0)


def test_family_rows_oracle_and_paired_difference():
    per_strategy = {
        "single:a": [result("single:a", [1, 1, 0, 0, 0, 0])],
        "single:b": [result("single:b", [0, 1, 1, 0, 0, 0])],
        "uniform (GaC)": [result("uniform", [1, 1, 1, 0, 0, 0])],
        "RLAE_PPO": [result("p0", [1, 1, 1, 1, 0, 0]), result("p1", [1, 1, 1, 0, 0, 0])],
    }
    rows = family_rows(per_strategy, 500)
    assert rows["oracle (either member right)"]["accuracy"] == pytest.approx(3 / 6)
    assert rows["RLAE_PPO"]["accuracy"] == pytest.approx(3.5 / 6)
    assert rows["RLAE_PPO"]["accuracy_per_seed"] == pytest.approx([4 / 6, 3 / 6])
    gap = rows["RLAE_PPO"]["vs_best_baseline"]
    assert gap["baseline"] == "uniform (GaC)"
    assert gap["difference"] == pytest.approx(0.5 / 6)
    assert gap["interval"][0] >= 0.0  # the agent is never worse on any problem
    table = markdown_table({"rg/x": rows, "rg/y": rows}, ["rg/x", "rg/y"])
    assert "rg/x (train)" in table and "rg/y (transfer)" in table
    assert "| RLAE_PPO | 0.583 [" in table


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
        [
            sys.executable,
            "-m",
            "launch.study",
            "--config.quick=True",
            f"--config.output_dir={out}",
        ],
        cwd=ROOT,
        check=True,
        timeout=1800,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    payload = json.loads((out / "results.json").read_text())
    expected = {
        "single:smollm2-135m-instruct",
        "single:gemma-3-270m",
        "uniform (GaC)",
        "top-4 union (UniTE)",
        "PackLLM (prompt ppl)",
        "tuned fixed weights",
        "supervised router",
        "RLAE_PPO",
        "RLAE_MAPPO",
        "oracle (either member right)",
    }
    assert len(payload["families"]) == 3
    assert payload["splits_encoded"] == 2 * 3  # train and test of each family, formatted once
    for family, rows in payload["families"].items():
        assert expected <= set(rows), (family, sorted(rows))
        for name, row in rows.items():
            low, high = row["interval"]
            assert 0.0 <= low <= row["accuracy"] <= high <= 1.0, (family, name, row)
    for name in ("results.md", "reward_curves.png", "weights_along_answers.png"):
        assert (out / name).stat().st_size > 0
