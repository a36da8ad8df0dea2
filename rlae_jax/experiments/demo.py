"""The embedded RLAE demo: train two complementary members, RLAE_PPO and RLAE_MAPPO over seeds,
evaluate every strategy on held-out problems, and write a table and plots (see configs/demo.py)."""

from __future__ import annotations

import pathlib
import time

import jax

from rlae_jax.ensemble import Ensemble
from rlae_jax.align import build_alignment
from rlae_jax.toy.members import load_members
from rlae_jax.engine.loop import DecodeConfig
from rlae_jax.experiments.evaluation import (
    baseline_strategies,
    run_strategy,
    summarize,
    write_report,
)
from rlae_jax.experiments.plots import plot_reward_curves, plot_weights_along_answers
from rlae_jax.rl.rollout import policy_weight_fn
from rlae_jax.rl.trainer import RLAETrainer, RLConfig
from rlae_jax.tasks.synthetic import SYNTHETIC

RL_KINDS = {"RLAE_PPO": "ppo", "RLAE_MAPPO": "mappo"}


def ordering_verdict(summary: dict) -> tuple[bool, str]:
    """Do both RLAE agents beat the best baseline by more than their own seed spread (std)?"""
    baselines = {k: v for k, v in summary.items() if k not in RL_KINDS}
    best_name = max(baselines, key=lambda k: baselines[k]["accuracy_mean"])
    best = baselines[best_name]["accuracy_mean"]
    lines, ok = [], True
    for name in RL_KINDS:
        row = summary[name]
        margin = row["accuracy_mean"] - best
        passed = margin > row["accuracy_std"]
        ok &= passed
        lines.append(
            f"{name}: {row['accuracy_mean']:.3f} vs best baseline {best_name!r} {best:.3f} "
            f"(margin {margin:+.3f}, seed std {row['accuracy_std']:.3f}) -> "
            f"{'PASS' if passed else 'FAIL'}"
        )
    return ok, "\n".join(lines)


def run_demo(config) -> dict:
    """Run the whole demo → the summary table as a dict (also written to `config.output_dir`)."""
    started = time.time()
    output = pathlib.Path(config.output_dir).absolute()
    output.mkdir(parents=True, exist_ok=True)
    ensemble = demo_ensemble(config)
    train_examples = SYNTHETIC.load("train", limit=4096)
    test_examples = SYNTHETIC.load("test", limit=config.eval_examples)
    per_strategy = baseline_results(ensemble, test_examples, config)
    workdirs: dict[str, list[pathlib.Path]] = {}
    for name, kind in RL_KINDS.items():
        per_strategy[name], workdirs[name] = agent_results(
            name, kind, ensemble, (train_examples, test_examples), config, output
        )
    summary = {name: summarize(results) for name, results in per_strategy.items()}
    table = write_report(
        summary,
        output,
        f"RLAE demo: synthetic complementary-skills task, {len(test_examples)} test problems",
    )
    ok, verdict = ordering_verdict(summary)
    plot_demo(workdirs, per_strategy["RLAE_PPO"][0], ensemble, test_examples, config)
    minutes = (time.time() - started) / 60
    report = f"{table}\n\n{verdict}\n\nwall time {minutes:.1f} min; outputs in {output}"
    (output / "summary.txt").write_text(report + "\n")
    print(report)
    return {"summary": summary, "ordering_ok": ok, "output_dir": str(output), "minutes": minutes}


def demo_ensemble(config) -> Ensemble:
    """The two demo members and their alignment, each from its cache under `config.cache_dir`
    (default ~/.cache/rlae_jax) or built and cached."""
    cache = config.cache_dir or None
    members = load_members("demo", member_steps=config.member_steps, cache_dir=cache)
    return Ensemble(
        members,
        build_alignment(
            [m.tokenizer for m in members],
            vocab_sizes=[m.config.vocab_size for m in members],
            cache_dir=None if cache is None else pathlib.Path(cache) / "alignments",
        ),
    )


def baseline_results(ensemble, test_examples, config) -> dict[str, list]:
    """Every baseline strategy's one evaluation on `test_examples` (per-token weights)."""
    decode_config = DecodeConfig(
        max_new_tokens=config.rl.max_new_tokens, span_length=1, record_features=False
    )
    return {
        name: [run_strategy(name, ensemble, SYNTHETIC, test_examples, weight_fn, decode_config)]
        for name, weight_fn in baseline_strategies(ensemble.members).items()
    }


def agent_results(
    name, kind, ensemble, examples, config, output
) -> tuple[list, list[pathlib.Path]]:
    """Train one RLAE agent per seed on `examples[0]` (workdirs under `output/runs`) and evaluate
    each deterministically on `examples[1]` → (results, workdirs)."""
    train_examples, test_examples = examples
    results, workdirs = [], []
    for seed in range(config.seeds):
        workdir = output / "runs" / f"{kind}-seed{seed}"
        trainer = RLAETrainer(
            RLConfig.from_dict(config.rl, ignore=("checkpoint_every",), kind=kind, seed=seed),
            ensemble,
            SYNTHETIC,
            train_examples,
            workdir,
            checkpoint_every=config.rl.checkpoint_every,
        )
        state = trainer.train()
        weight_fn = policy_weight_fn(state, trainer.setup, jax.random.key(seed), evaluation=True)
        results.append(
            run_strategy(
                name, ensemble, SYNTHETIC, test_examples, weight_fn, trainer.setup.evaluation_decode
            )
        )
        workdirs.append(workdir)
    return results, workdirs


def plot_demo(workdirs, ppo, ensemble, test_examples, config) -> None:
    """Reward and accuracy curves of every run, and the weights RLAE_PPO's first seed (`ppo`, its
    evaluation result) gave along the answers to four two-part problems."""
    output = pathlib.Path(config.output_dir).absolute()
    plot_reward_curves(workdirs, output / "reward_curves.png")
    plot_reward_curves(workdirs, output / "accuracy_curves.png", metric="accuracy")
    two_part = [i for i, e in enumerate(test_examples) if ";" in e.prompt][:4]
    plot_weights_along_answers(
        [
            [
                ensemble.alignment.union_bytes(u).decode("utf-8", "replace") or "<eos>"
                for u in ppo.union_ids[i]
            ]
            for i in two_part
        ],
        [ppo.span_weights[i] for i in two_part],
        config.rl.span_length,
        ensemble.names,
        [test_examples[i].prompt for i in two_part],
        output / "weights_along_answers.png",
    )
