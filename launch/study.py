"""The RLAE study on the two real members: `python -m launch.study --config=configs/study.py`
(`--config.quick=True`: the ≤ 10-minute smoke run). Writes results.json, results.md and plots to
`--config.output_dir` (see rlae_jax/experiments/study.py)."""

from absl import app, logging
from ml_collections import config_flags

from configs.study import finalize
from rlae_jax.experiments.study import run_study

CONFIG = config_flags.DEFINE_config_file("config", "configs/study.py", "study config")


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # orbax and jax INFO lines drown the progress bars
    run_study(finalize(CONFIG.value))


if __name__ == "__main__":
    app.run(main)
