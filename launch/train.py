"""Train an RLAE agent (PPO or MAPPO):
`python -m launch.train --config=configs/train.py [--config.x=y]`. Resumes automatically from the
newest checkpoint in `--config.workdir`."""

from absl import app, logging
from ml_collections import config_flags

from rlae_jax.ensemble import Ensemble
from rlae_jax.runtime import sharding
from rlae_jax.toy.members import load_members
from rlae_jax.rl.trainer import RLAETrainer, RLConfig
from rlae_jax.tasks import get_task

CONFIG = config_flags.DEFINE_config_file("config", "configs/train.py", "training config")


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # orbax and jax INFO lines drown the progress bars
    config = CONFIG.value
    sharding.maybe_initialize_distributed(config.distributed)
    mesh = None
    if config.mesh_data * config.mesh_model > 1 or config.distributed:
        mesh = sharding.make_mesh(config.mesh_data, config.mesh_model)
    members = load_members(
        config.members, config.dtype, config.member_steps, config.cache_dir or None
    )
    task = get_task(config.task)
    examples = task.load(config.split, config.data_source or None, limit=config.limit)
    trainer = RLAETrainer(
        RLConfig.from_dict(config.rl),
        Ensemble(members),
        task,
        examples,
        config.workdir,
        checkpoint_every=config.checkpoint_every,
        keep=config.keep_checkpoints,
        mesh=mesh,
    )
    trainer.train(config.stop_after or None)
    print(f"done: checkpoints and metrics in {trainer.workdir}")


if __name__ == "__main__":
    app.run(main)
