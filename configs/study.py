"""The RLAE study on the two real members: `python -m launch.study` (`--config.quick=True`: the
smoke run of the slow job; `--config=configs/control.py`: the positive control).

SmolLM2-135M-Instruct (its chat template) and Gemma-3-270M (a base model: the plain
"question\\nAnswer:" format) answer a mixture chosen by the complementarity probe on validation
(docs/probe.md, docs/probe/mixture.json): one-digit a ± b, where SmolLM2 leads, and gcd:easy, where
Gemma leads, as bare answers after one worked example of the family. Ransom notes are held out for
transfer. The learners train on the mixture; each learner's evaluation action and the best baseline
are chosen on validation before the test split is read (rlae_jax/experiments/study.py).

One-digit a ± b has only 200 distinct problems: 100 train (one of them the worked example), and
validation and test draw from the other 100, so they share problems with each other (never with
training).
"""

import ml_collections

SUMS = (
    'rg/chain_sum:{"answer_format": "bare", "max_digits": 1, "max_terms": 2, "min_digits": 1, '
    '"min_terms": 2, "train_size": 100}'
)
GCD = 'rg/gcd:easy{"answer_format": "bare", "train_size": 2000}'
RANSOM = (
    'rg/ransom_note:{"answer_format": "bare", "max_magazine_length": 10, "max_note_length": 4, '
    '"train_size": 2000}'
)


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.quick = False  # CI smoke settings (see finalize)
    config.output_dir = "outputs/study"
    config.members = ("smollm2-135m-instruct", "gemma-3-270m")
    config.families = (("a±b", SUMS), ("gcd", GCD))  # (row label, task spec): the mixture
    config.holdout = (("ransom note", RANSOM),)  # test only: transfer without retraining
    config.shots = 1  # worked examples of its own family before each question
    config.train_examples = 99  # per family, after the shot
    config.validation_examples = 64  # per family: the evaluation action and the best baseline
    config.eval_examples = 200  # test problems per family (the mixture's test split: 400)
    config.eval_batch_size = 64
    config.seeds = 3
    # (name, kind, family_feature): the ablation agent is also told its problem's family
    config.learners = (
        ("RLAE_PPO", "ppo", False),
        ("RLAE_MAPPO", "mappo", False),
        ("RLAE_PPO + family id", "ppo", True),
    )
    config.eval_actions = ("mean", "mode")  # chosen per learner on validation
    config.bootstrap = 2000  # two-level resamples for the 95% intervals
    config.tune_fixed_resolution = 10  # simplex grid of 1/10 steps
    config.tune_examples = 128  # training problems scored per grid point
    config.router_examples = 96
    config.router_steps = 300
    config.threshold = 0.5
    config.top_k = 4
    config.rl = ml_collections.ConfigDict(
        dict(
            num_updates=32,
            batch_size=64,  # rows: 16 questions × 4 samples → 2048 episodes per run
            samples_per_question=4,
            advantage="group",
            normalize_observations=True,
            max_new_tokens=4,  # a bare answer of up to three digits and its line end
            span_length=1,  # a weight decision per token: four per answer
            reward="correctness",
            learning_rate=1e-3,
            lr_schedule="constant",
            hidden_sizes=(64, 64),
            feature_set="full",  # the members' hidden states (as in the paper)
            entropy_coef=0.01,
            num_epochs=4,
            num_minibatches=4,
            checkpoint_every=8,
        )
    )
    return config


def finalize(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Derived settings: the quick run checks that every part runs, on few problems and updates."""
    if config.quick:
        config.seeds = 1
        config.validation_examples = 8
        config.eval_examples = 16
        config.eval_batch_size = 16
        config.eval_actions = ("mean",)  # each evaluation action is one more compile
        # PPO and the family-id ablation: MAPPO's trainer runs end to end in tests/test_demo.py
        config.learners = tuple(learner for learner in config.learners if learner[1] == "ppo")
        config.tune_fixed_resolution = 1
        config.tune_examples = 16
        config.router_examples = 0  # 1.8 of its 10.6 min; tests/test_baselines.py pins the router
        config.bootstrap = 200
        config.rl.num_updates = 2
        config.rl.batch_size = 16
        config.rl.checkpoint_every = 1
    return config
