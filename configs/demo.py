"""The main job: `python -m launch.demo`, the quick version of the study (configs/study.py) on the
real pair, SmolLM2-135M-Instruct + Gemma-3-270M, installed from the package registry (no hub).

The study's mixture (one-digit a ± b + gcd) and held-out family, one seed of RLAE_PPO with 1,024
episodes, every untrained baseline and the tuned fixed weights, on fewer problems; RLAE_MAPPO, the
family-id ablation, the router, more seeds and the 400-problem test split are the full study's.
Sized for ≤ 15 minutes on 2 CPU cores, most of it compiling one decode per strategy.
`--config=configs/demo_synthetic.py` is the synthetic smoke test (5–6 min).
"""

from configs.study import finalize
from configs.study import get_config as study_config

__all__ = ["finalize", "get_config"]


def get_config():
    config = study_config()
    config.experiment = "study"  # launch.demo runs rlae_jax/experiments/study.py
    config.output_dir = "outputs/demo"
    config.seeds = 1
    config.learners = (("RLAE_PPO", "ppo", False),)
    config.eval_actions = ("mean",)
    config.router_examples = 0  # no supervised router
    config.validation_examples = 16
    config.eval_examples = 50
    config.tune_fixed_resolution = 4
    config.tune_examples = 64
    config.rl.num_updates = 16
    return config
