"""Train one demo member with the project's JAX LM trainer:
`python -m launch.train_member --config.skill=reverser --config.output=outputs/reverser`."""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.skill = "reverser"  # or "capitalizer"
    config.steps = 1500
    config.seed = 0
    config.output = ""  # HF-format folder to write; empty = the demo's member cache
    return config
