"""Evaluate every strategy on a task split:
`python -m launch.evaluate --config=configs/evaluate.py --config.members=A,B --config.task=gsm8k
 --config.checkpoints=outputs/ppo,outputs/mappo`.

`checkpoints`: comma-separated RLAE training workdirs (their config.json says how each was trained).
An agent restores for any `max_new_tokens` and task (cross-task transfer); one trained with
feature_set "portable" also on other members of the same count.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.members = "demo"
    config.dtype = "float32"
    config.member_steps = 1500
    config.cache_dir = ""
    config.task = "synthetic"
    config.data_source = ""
    config.split = "test"
    config.limit = 256
    config.checkpoints = ""
    config.max_new_tokens = 20
    config.batch_size = 64
    config.threshold = 0.5
    config.top_k = 4
    config.baselines = True  # False: evaluate only the checkpoints (and the fitted baselines below)
    # baselines fitted on `train_split` (its first `train_limit` rows); spans of `span_length`
    config.train_split = "train"
    config.train_limit = 256
    config.tune_fixed_resolution = 0  # > 0: best fixed weights on a simplex grid of this step
    config.router = False  # a supervised span router on teacher-forced labels
    config.router_feature_set = "portable"
    config.span_length = 4
    config.output_dir = "outputs/evaluate"
    return config
