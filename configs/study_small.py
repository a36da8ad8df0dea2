"""The RLAE study on the two real members: `python -m launch.study --config=configs/study_small.py`
(add `--config.quick=True` for the ≤ 10-minute CI run).

SmolLM2-135M-Instruct (its chat template) and Gemma-3-270M (a base model: the plain
"question\\nAnswer:" format) answer reasoning-gym problems after one worked example. RLAE_PPO and
RLAE_MAPPO train on the first family's training split over several seeds; every strategy (single
members, uniform and threshold (GaC), top-k union (UniTE), PackLLM, the best fixed weights tuned on
the training split, a supervised router, and the agents) is evaluated on held-out problems of every
family; the other families measure transfer without retraining (see rlae_jax/experiments/study.py).

Sized for 2 CPU cores: answers of at most `max_new_tokens` union tokens, one shot, batches of 32. A
larger config (more families to train on, longer answers, more updates) needs a GPU: the same
command runs there unchanged.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.quick = False  # CI smoke settings (see finalize)
    config.output_dir = "outputs/study"
    config.members = ("smollm2-135m-instruct", "gemma-3-270m")
    # the first family trains the agents, the tuned fixed weights and the router
    # members' accuracies differ on each (a 32-problem probe: SmolLM2 0.28 / Gemma 0.59 on
    # syllogisms, 0.06 / 0.13 on family relationships, 0.03 / 0.09 on leg counting); syllogisms give
    # the learners the most reward signal
    config.families = (
        "rg/syllogism",
        "rg/family_relationships",
        "rg/leg_counting:easy",
    )
    config.shots = 1  # worked examples before each question (from the training split)
    config.train_examples = 512  # training-split problems the learners draw from
    config.eval_examples = 200  # held-out problems per family
    config.eval_batch_size = 40
    config.seeds = 3
    config.bootstrap = 2000  # resamples for the 95% intervals
    config.tune_fixed_resolution = 4  # simplex grid 1/4 steps
    config.tune_examples = 80  # training problems scored per grid point
    config.router_examples = 96
    config.router_steps = 300
    config.threshold = 0.5
    config.top_k = 4
    config.rl = ml_collections.ConfigDict(
        dict(
            num_updates=10,
            batch_size=16,
            max_new_tokens=8,
            span_length=4,
            reward="correctness",
            learning_rate=1e-3,
            hidden_sizes=(64, 64),
            # the members' hidden states (as in the paper): "portable" reads each member's prompt
            # NLL, a second pass over every prompt through a 262k-row LM head (~3x the prefill)
            feature_set="full",
            entropy_coef=0.0,
            num_epochs=4,
            num_minibatches=4,
            checkpoint_every=5,
        )
    )
    return config


def finalize(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Derived settings: the quick run checks that every part runs, on few problems and updates."""
    if config.quick:
        config.seeds = 1
        config.eval_examples = 16
        config.eval_batch_size = 16
        config.train_examples = 64
        config.tune_fixed_resolution = 2
        config.tune_examples = 16
        config.router_examples = 16
        config.router_steps = 50
        config.bootstrap = 200
        config.rl.num_updates = 2
        config.rl.batch_size = 16
        config.rl.checkpoint_every = 1
    return config
