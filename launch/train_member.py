"""Train a demo member (tokenizer + model) with the project's JAX LM trainer and save it as a
Hugging Face folder: `python -m launch.train_member --config.skill=capitalizer`."""

from absl import app, logging
from ml_collections import config_flags

from rlae_jax.toy.members import demo_member, train_demo_member
from rlae_jax.models import save_pretrained

CONFIG = config_flags.DEFINE_config_file(
    "config", "configs/train_member.py", "member training config"
)


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # orbax and jax INFO lines drown the progress bars
    config = CONFIG.value
    if config.output:
        folder = save_pretrained(
            train_demo_member(config.skill, config.steps, config.seed), config.output
        )
        print(f"saved {config.skill} to {folder}")
    else:
        member = demo_member(config.skill, config.steps, config.seed)
        print(f"{config.skill}: {member.num_params} parameters, cached")


if __name__ == "__main__":
    app.run(main)
