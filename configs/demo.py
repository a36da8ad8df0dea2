"""The main job: `python -m launch.demo`, the quick version of the study (configs/study.py) on the
real pair, SmolLM2-135M-Instruct + Gemma-3-270M, installed from the package registry (no hub).

The study's mixture (one-digit a ± b + gcd) and held-out family, one seed of RLAE_PPO, RLAE_MAPPO
and the family-id ablation at the full study's training budget, and fewer validation and test
problems. `--config=configs/demo_synthetic.py` is the one-minute synthetic smoke test.
"""

from configs.study import finalize
from configs.study import get_config as study_config

__all__ = ["finalize", "get_config"]


def get_config():
    config = study_config()
    config.experiment = "study"  # launch.demo runs rlae_jax/experiments/study.py
    config.output_dir = "outputs/demo"
    config.seeds = 1
    config.validation_examples = 32
    config.eval_examples = 100
    config.tune_fixed_resolution = 4
    config.tune_examples = 64
    return config
