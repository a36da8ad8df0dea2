"""The main job: `python -m launch.demo` runs the quick study on the real pair (configs/demo.py)
and prints its table; `--config=configs/demo_synthetic.py` is the synthetic smoke test
(two tiny members trained here, no downloads). `--config.quick=True` shrinks either."""

from absl import app, logging
from ml_collections import config_flags

from configs.study import finalize as finalize_study
from configs.demo_synthetic import finalize as finalize_synthetic
from rlae_jax.experiments.demo import run_demo
from rlae_jax.experiments.study import run_study

CONFIG = config_flags.DEFINE_config_file("config", "configs/demo.py", "demo config")


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # orbax and jax INFO lines drown the progress bars
    if CONFIG.value.experiment == "study":
        run_study(finalize_study(CONFIG.value))
        return
    result = run_demo(finalize_synthetic(CONFIG.value))
    if not result["ordering_ok"]:
        print(
            "WARNING: the RLAE agents did not beat every baseline by more than their seed spread "
            "in this run"
        )


if __name__ == "__main__":
    app.run(main)
