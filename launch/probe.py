"""The complementarity probe on the real pair: `python -m launch.probe --config=configs/probe.py`
(`--config.quick=True`: the smoke run). Writes results.json, results.md and mixture.json to
`--config.output_dir` (see rlae_jax/experiments/probe.py)."""

from absl import app, logging
from ml_collections import config_flags

from configs.probe import finalize
from rlae_jax.experiments.probe import run_probe

CONFIG = config_flags.DEFINE_config_file("config", "configs/probe.py", "probe config")


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    run_probe(finalize(CONFIG.value))


if __name__ == "__main__":
    app.run(main)
