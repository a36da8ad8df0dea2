"""Evaluate every strategy on a task split:
`python -m launch.evaluate --config=configs/evaluate.py --config.members=A,B --config.task=gsm8k
 --config.checkpoints=outputs/ppo,outputs/mappo`.

`checkpoints`: comma-separated RLAE training workdirs (their config.json says how each was trained);
an agent trained on one task can be evaluated on another (cross-task transfer) as long as the
members are the same.
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
    config.output_dir = "outputs/evaluate"
    return config
