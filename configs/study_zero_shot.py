"""The study where the weights matter most on the real pair: `python -m launch.study
--config=configs/study_zero_shot.py`.

With no worked example, bare answers, the token-level mixture beats both members on one-digit sums
and products, and the weights change the reward on most problems (configs/probe_zero_shot.py;
measurements in docs/probe.md). The agent must learn when to mix, not only whom to trust.
Answers of up to 12 tokens with a weight decision every 4.
One-digit a + b and a × b have 100 distinct problems each, so 40 are training problems and their
validation and test problems repeat (never a training problem).
"""

from configs.probe_zero_shot import ONE_DIGIT
from configs.study import finalize
from configs.study import get_config as study_config

__all__ = ["finalize", "get_config"]

BARE = '"answer_format": "bare"'


def get_config():
    config = study_config()
    config.output_dir = "outputs/study_zero_shot"
    config.families = (
        (
            "a+b",
            'rg/basic_arithmetic:{"allow_negation": false, "allow_parentheses": false, '
            f'"operators": ["+"], {ONE_DIGIT}, {BARE}}}',
        ),
        ("a±b", f"rg/chain_sum:{{{ONE_DIGIT}, {BARE}}}"),
        ("a×b", f"rg/products:{{{ONE_DIGIT}, {BARE}}}"),
    )
    config.holdout = (("lcm", f'rg/lcm:{{"max_value": 40, "train_size": 300, {BARE}}}'),)
    config.shots = 0
    config.train_examples = 40  # per family: every training problem of a + b and a × b
    config.validation_examples = 32
    config.eval_examples = 100
    config.seeds = 1
    config.learners = (("RLAE_PPO", "ppo", False), ("RLAE_MAPPO", "mappo", False))
    config.tune_fixed_resolution = 4
    config.tune_examples = 64
    config.router_examples = 0
    config.rl.batch_size = 48  # 12 questions × 4 samples: four questions per family
    config.rl.num_updates = 42  # 2,016 episodes per run
    config.rl.max_new_tokens = 12  # " 2 + 3 = 5" and its line end
    config.rl.span_length = 4  # three weight decisions per answer
    return config
