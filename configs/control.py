"""The positive control: `python -m launch.study --config=configs/control.py`.

It checks the learning machinery where the answer is known, not whether RLAE beats ensembles in
general. A third member is the demo's "reverser" (a tiny model trained here on the synthetic
letter-list task, rlae_jax/tasks/synthetic.py) beside the real pair, and the mixture is one-digit
a ± b (only the real members can answer) with synthetic reversals (only the reverser can). Routing
each family to its member (the family oracle) is the target; no fixed weights can do both.
"""

from configs.study import SUMS, finalize
from configs.study import get_config as study_config

__all__ = ["finalize", "get_config"]


def get_config():
    config = study_config()
    config.output_dir = "outputs/control"
    config.members = ("smollm2-135m-instruct", "gemma-3-270m", "demo:reverser")
    config.families = (("a±b", SUMS), ("reverse", "synthetic_reverse"))
    config.holdout = ()
    # no worked example: the reverser's context is 128 tokens and it was trained on bare questions
    # (with no example the real pair's a ± b answers also differ most: docs/probe.md)
    config.shots = 0
    # the control should learn fast: half the study's episodes, no family-id ablation (the family
    # is plain in the prompt's first token), fewer problems
    config.learners = (("RLAE_PPO", "ppo", False), ("RLAE_MAPPO", "mappo", False))
    config.rl.num_updates = 16
    config.seeds = 2
    config.validation_examples = 32
    config.eval_examples = 100
    config.tune_fixed_resolution = 4  # three members: 15 grid points (1/10 steps would be 66)
    config.router_examples = 0  # the control compares with the family oracle and fixed weights
    config.rl.max_new_tokens = 8  # a reversal of up to four letters, " d c b a"
    config.rl.span_length = 2  # four weight decisions per answer
    return config
