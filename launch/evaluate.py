"""Evaluate single members, uniform/fixed weights, GaC threshold, UniTE top-k, PackLLM, the
baselines fitted on the training split (tuned fixed weights, supervised router) and trained RLAE
agents on one task split; writes results.json, results.md and per-span weight plots."""

import json
import pathlib

import jax
import numpy as np
from absl import app, logging
from ml_collections import config_flags

from rlae_jax.ensemble import Ensemble
from rlae_jax.toy.members import load_members
from rlae_jax.engine import DecodeConfig
from rlae_jax.engine.strategies import resolve_strategy
from rlae_jax.experiments.evaluation import (
    baseline_strategies,
    run_strategy,
    summarize,
    write_report,
)
from rlae_jax.experiments.plots import plot_weights_along_answers
from rlae_jax.rl.baselines import RouterConfig, train_router, tune_fixed_weights
from rlae_jax.rl.rollout import policy_weight_fn
from rlae_jax.rl.trainer import RLConfig, load_agent_state
from rlae_jax.tasks import get_task

CONFIG = config_flags.DEFINE_config_file("config", "configs/evaluate.py", "evaluation config")


def fitted_baselines(config, ensemble, task) -> dict:
    """Baselines fitted on the training split (`rlae_jax.rl.baselines`): fixed weights tuned over a
    simplex grid and the supervised span router, as name -> weight_fn."""
    if not (config.tune_fixed_resolution or config.router):
        return {}
    train = task.load(config.train_split, config.data_source or None, limit=config.train_limit)
    fitted = {}
    if config.tune_fixed_resolution:
        decode = DecodeConfig(max_new_tokens=config.max_new_tokens, record_features=False)
        search = tune_fixed_weights(
            ensemble, task, train, decode, config.tune_fixed_resolution, config.batch_size
        )
        name = f"fixed {np.round(search.weights, 2).tolist()} (tuned on {config.train_split})"
        fitted[name] = resolve_strategy("fixed", len(ensemble), weights=search.weights)
    if config.router:
        router_config = RouterConfig(feature_set=config.router_feature_set)
        fitted["supervised router"] = train_router(ensemble, task, train, router_config)
    return fitted


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # orbax and jax INFO lines drown the progress bars
    config = CONFIG.value
    members = load_members(
        config.members, config.dtype, config.member_steps, config.cache_dir or None
    )
    ensemble = Ensemble(members)
    task = get_task(config.task)
    examples = task.load(config.split, config.data_source or None, limit=config.limit)
    results = {}
    baselines = (
        baseline_strategies(members, config.threshold, config.top_k) if config.baselines else {}
    )
    for name, weight_fn in baselines.items():
        strategy_config = DecodeConfig(max_new_tokens=config.max_new_tokens, record_features=False)
        results[name] = run_strategy(
            name, ensemble, task, examples, weight_fn, strategy_config, config.batch_size
        )
    for name, weight_fn in fitted_baselines(config, ensemble, task).items():
        strategy_config = DecodeConfig(
            max_new_tokens=config.max_new_tokens,
            span_length=config.span_length,
            record_features=False,
        )
        results[name] = run_strategy(
            name, ensemble, task, examples, weight_fn, strategy_config, config.batch_size
        )
    output = pathlib.Path(config.output_dir).absolute()
    output.mkdir(parents=True, exist_ok=True)
    for workdir in [w for w in config.checkpoints.split(",") if w]:
        saved = json.loads((pathlib.Path(workdir) / "config.json").read_text())["rl"]
        rl_config = RLConfig.from_dict(saved, max_new_tokens=config.max_new_tokens)
        state = load_agent_state(workdir, rl_config, members)
        setup = rl_config.setup(members)
        name = f"RLAE_{rl_config.kind.upper()} ({pathlib.Path(workdir).name})"
        weight_fn = policy_weight_fn(state, setup, jax.random.key(0), evaluation=True)
        results[name] = run_strategy(
            name,
            ensemble,
            task,
            examples,
            weight_fn,
            setup.evaluation_decode,
            config.batch_size,
        )
        shown = list(range(min(4, len(examples))))
        result = results[name]
        plot_weights_along_answers(
            [
                [
                    ensemble.alignment.union_bytes(u).decode("utf-8", "replace") or "<eos>"
                    for u in result.union_ids[i]
                ]
                for i in shown
            ],
            [result.span_weights[i] for i in shown],
            setup.decode.span_length,
            [m.name for m in members],
            [examples[i].prompt for i in shown],
            output / f"weights_{pathlib.Path(workdir).name}.png",
        )
    table = write_report(
        {name: summarize([r]) for name, r in results.items()},
        output,
        f"{config.task} {config.split} ({len(examples)} examples)",
    )
    print(table)
    print(f"\nresults, table and plots in {output}")


if __name__ == "__main__":
    app.run(main)
