"""The embedded default end to end (quick settings): members trained here, RLAE_PPO and RLAE_MAPPO
trained over 2 seeds, every strategy evaluated — and the ordering the README claims must hold."""

import json

import numpy as np
import pytest

from configs.demo_synthetic import finalize, get_config
from rlae_jax.experiments.demo import run_demo


@pytest.mark.slow
def test_quick_demo_rlae_beats_every_baseline(tmp_path):
    config = get_config()
    config.quick = True
    config.output_dir = str(tmp_path / "demo")
    config.cache_dir = str(tmp_path / "cache")
    result = run_demo(finalize(config))
    summary = result["summary"]
    assert result["ordering_ok"], json.dumps(summary, indent=1)
    best_single = max(v["accuracy_mean"] for k, v in summary.items() if k.startswith("single:"))
    for agent in ("RLAE_PPO", "RLAE_MAPPO"):
        assert summary[agent]["accuracy_mean"] - summary[agent]["accuracy_std"] > best_single
    for name in ("results.json", "results.md", "reward_curves.png", "weights_along_answers.png"):
        assert (tmp_path / "demo" / name).stat().st_size > 0
    for run in (
        tmp_path / "demo" / "runs"
    ).iterdir():  # the real ensemble's reward rises during training
        rewards = [json.loads(line)["reward"] for line in open(run / "metrics.jsonl")]
        assert np.mean(rewards[-10:]) > np.mean(rewards[:10]) + 0.05, run.name
