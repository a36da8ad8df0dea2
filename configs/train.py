"""RLAE training: `python -m launch.train --config=configs/train.py --config.members=A,B
--config.task=gsm8k ...`.

`members`: "demo" or comma-separated HF folders / hub ids / .gguf files. `task`: synthetic, gsm8k,
arc_challenge, mmlu, piqa, triviaqa, nq_open. `data_source`: a JSONL file or folder (schemas in
rlae_jax/tasks/README.md); empty reads the Hugging Face hub (needs `datasets` and a network).
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.members = "demo"
    config.dtype = "float32"
    config.member_steps = 1500  # demo members only
    config.cache_dir = ""
    config.task = "synthetic"
    config.data_source = ""
    config.split = "train"
    config.limit = 4096
    config.workdir = "outputs/train"
    config.stop_after = 0  # stop (resumably) after this many updates; 0 = run to rl.num_updates
    config.checkpoint_every = 10
    config.keep_checkpoints = 3
    config.distributed = False  # jax.distributed.initialize() for multi-host runs
    config.mesh_data = 1
    config.mesh_model = 1
    # reward: "correctness" (0/1: exact match on synthetic, the task's reward otherwise) or
    # "char_accuracy" (synthetic only). feature_set: "full", "no_hidden" or "portable" (no
    # member-specific widths: the agent can be evaluated on another pair of the same size).
    config.rl = ml_collections.ConfigDict(
        dict(
            kind="ppo",
            seed=0,
            num_updates=150,
            batch_size=32,
            max_new_tokens=20,
            expansion_budget=2,
            span_length=4,
            reward="correctness",
            learning_rate=1e-3,
            hidden_sizes=(64, 64),
            feature_set="full",
            shared_actor=True,
            entropy_coef=0.0,
            num_epochs=4,
            num_minibatches=4,
            gamma=1.0,
            gae_lambda=0.95,
            clip_eps=0.2,
            length_penalty=0.0,
        )
    )
    return config
