"""The embedded default, no downloads: `python -m launch.demo [--config.quick=True]`.

Trains (or reuses) two tiny members with different tokenizers, trains RLAE_PPO and RLAE_MAPPO over
seeds, evaluates every strategy on held-out problems, prints the table and writes plots."""

from absl import app, logging
from ml_collections import config_flags

from configs.demo import finalize
from rlae_jax.experiments.demo import run_demo

CONFIG = config_flags.DEFINE_config_file("config", "configs/demo.py", "demo config")


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # orbax and jax INFO lines drown the progress bars
    result = run_demo(finalize(CONFIG.value))
    if not result["ordering_ok"]:
        print(
            "WARNING: the RLAE agents did not beat every baseline by more than their seed spread "
            "in this run"
        )


if __name__ == "__main__":
    app.run(main)
