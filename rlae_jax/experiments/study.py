"""The RLAE study on real members and real tasks (configs/study_small.py).

Every strategy answers the held-out problems of every task family with the same engine. The
learners — RLAE_PPO and RLAE_MAPPO (several seeds), the best fixed weights on a simplex grid and a
supervised span router — see only the *first* family's training split, so on the other families
they are evaluated for transfer without retraining. Intervals are 95% percentile bootstraps over
problems (of the per-problem mean over seeds); `vs best baseline` is a paired bootstrap of a
learner's per-problem score minus that of the best untrained baseline on the family. Outputs:
results.json, results.md, reward_curves.png, weights_along_answers.png.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import pathlib
import pickle
import time
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from rlae_jax.engine import DecodeConfig
from rlae_jax.engine.prefix import EncodedPrompts
from rlae_jax.ensemble import Ensemble
from rlae_jax.engine.strategies import FixedWeights, ThresholdGating
from rlae_jax.experiments.evaluation import StrategyResult, baseline_strategies, run_strategies
from rlae_jax.experiments.plots import plot_reward_curves, plot_weights_along_answers
from rlae_jax.models.loading import from_pretrained
from rlae_jax.rl.baselines import RouterConfig, train_router, tune_fixed_weights
from rlae_jax.rl.rollout import policy_weight_fn
from rlae_jax.rl.trainer import RLAETrainer, RLConfig
from rlae_jax.tasks import get_task

RL_KINDS = {"RLAE_PPO": "ppo", "RLAE_MAPPO": "mappo"}
LEARNED = ("tuned fixed weights", "supervised router", *RL_KINDS)


@dataclasses.dataclass
class Family:
    """One task family: `shots` worked examples, the `train` pool and the held-out `test`, and
    both splits encoded once for the ensemble (`Ensemble.encode`)."""

    spec: str
    task: object
    shots: list
    train: list
    test: list
    encoded_train: EncodedPrompts | None = None
    encoded_test: EncodedPrompts | None = None


def load_family(spec: str, config) -> Family:
    """The family's splits; the shots are the first training problems, the pool the next ones."""
    task = get_task(spec)
    pool = task.load("train", limit=config.train_examples + config.shots)
    test = task.load("test", limit=config.eval_examples)
    return Family(spec, task, pool[: config.shots], pool[config.shots :], test)


def bootstrap_interval(scores: np.ndarray, resamples: int, seed: int = 0) -> tuple[float, float]:
    """95% percentile interval of the mean of `scores [E]` over problems resampled with
    replacement."""
    rng = np.random.default_rng(seed)
    means = scores[rng.integers(0, len(scores), (resamples, len(scores)))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(low), float(high)


def per_problem(results: Sequence[StrategyResult]) -> np.ndarray:
    """`[E]` each problem's score averaged over the seeds' results."""
    return np.mean([r.scores for r in results], axis=0)


def family_rows(per_strategy: dict[str, list[StrategyResult]], resamples: int) -> dict:
    """Per strategy: accuracy (mean over seeds), its interval, per-seed accuracies, seconds per
    answer; the member oracle; and each learner's paired difference from the best baseline."""
    rows = {}
    for name, results in per_strategy.items():
        scores = per_problem(results)
        rows[name] = {
            "accuracy": float(scores.mean()),
            "interval": bootstrap_interval(scores, resamples),
            "accuracy_per_seed": [r.accuracy for r in results],
            "seconds_per_answer": float(np.mean([r.seconds_per_answer for r in results])),
        }
    singles = [per_problem(r) for n, r in per_strategy.items() if n.startswith("single:")]
    oracle = np.max(singles, axis=0)
    rows["oracle (either member right)"] = {
        "accuracy": float(oracle.mean()),
        "interval": bootstrap_interval(oracle, resamples),
    }
    baselines = [n for n in per_strategy if n not in LEARNED]
    best = max(baselines, key=lambda n: rows[n]["accuracy"])
    for name in LEARNED:
        if name in per_strategy:
            gap = per_problem(per_strategy[name]) - per_problem(per_strategy[best])
            rows[name]["vs_best_baseline"] = {
                "baseline": best,
                "difference": float(gap.mean()),
                "interval": bootstrap_interval(gap, resamples, seed=1),
            }
    return rows


def markdown_table(report: dict, families: Sequence[str]) -> str:
    """Strategies × families: accuracy [95% interval], seconds per answer; learners' paired
    difference from the best baseline below."""
    train_family = families[0]
    header = [f"{f} (train)" if f == train_family else f"{f} (transfer)" for f in families]
    lines = [
        "| strategy | " + " | ".join(header) + " | s/answer |",
        "|---|" + "---|" * (len(families) + 1),
    ]
    names = list(report[families[0]])
    for name in names:
        cells = []
        for family in families:
            row = report[family][name]
            low, high = row["interval"]
            cells.append(f"{row['accuracy']:.3f} [{low:.3f}, {high:.3f}]")
        seconds = [report[f][name].get("seconds_per_answer") for f in families]
        timing = f"{np.mean(seconds):.3f}" if seconds[0] is not None else ""
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {timing} |")
    lines += ["", "Learners minus the best untrained baseline (paired bootstrap):", ""]
    for name in LEARNED:
        parts = []
        for family in families:
            gap = report[family].get(name, {}).get("vs_best_baseline")
            if gap:
                low, high = gap["interval"]
                parts.append(
                    f"{family}: {gap['difference']:+.3f} [{low:+.3f}, {high:+.3f}] "
                    f"vs {gap['baseline']}"
                )
        if parts:
            lines.append(f"- {name}: " + "; ".join(parts))
    return "\n".join(lines)


class Study:
    """Holds the members, alignment, families and the per-strategy results while the study runs."""

    def __init__(self, config):
        self.config, self.output = config, pathlib.Path(config.output_dir).absolute()
        self.output.mkdir(parents=True, exist_ok=True)
        self.seconds: dict[str, float] = {}
        with self.timed("load members and alignment"):
            self.ensemble = Ensemble([from_pretrained(name, name=name) for name in config.members])
        with self.timed("load and encode tasks"):
            self.families = [load_family(spec, config) for spec in config.families]
            new_tokens = config.rl.max_new_tokens
            for family in self.families:  # each split formatted and tokenised once
                family.encoded_train = self.ensemble.encode(
                    family.task, family.train, family.shots, new_tokens
                )
            # the test splits to one shape: every strategy compiles once for all families
            tests = [(family.task, family.test, family.shots) for family in self.families]
            for family, encoded in zip(
                self.families, self.ensemble.encode_splits(tests, new_tokens)
            ):
                family.encoded_test = encoded
        self.results: dict[str, dict[str, list[StrategyResult]]] = {
            f.spec: {} for f in self.families
        }
        self.decode = DecodeConfig(
            max_new_tokens=config.rl.max_new_tokens,
            span_length=config.rl.span_length,
            record_features=False,
        )

    @contextlib.contextmanager
    def timed(self, phase: str):
        """Add the block's wall time to `seconds[phase]`."""
        print(f"[study] {phase} ...", flush=True)
        began = time.time()
        yield
        self.seconds[phase] = self.seconds.get(phase, 0.0) + time.time() - began

    def baselines(self) -> dict[str, tuple]:
        """Single members, uniform and threshold (GaC), top-k (UniTE), PackLLM: name → (weight_fn,
        DecodeConfig)."""
        strategies = baseline_strategies(
            self.ensemble.members, self.config.threshold, self.config.top_k, fixed_grid=()
        )
        out = {}
        for name, (weight_fn, selection) in strategies.items():
            # GaC gates every token
            span = 1 if isinstance(weight_fn, ThresholdGating) else self.decode.span_length
            out[name] = (
                weight_fn,
                dataclasses.replace(self.decode, selection=selection, span_length=span),
            )
        return out

    def fair_baselines(self) -> dict[str, tuple]:
        """The best fixed weights and the supervised router, both from the training family."""
        train = self.families[0]
        with self.timed("tune fixed weights"):
            count = self.config.tune_examples
            self.tuned = tune_fixed_weights(
                self.ensemble,
                train.task,
                train.train[:count],
                self.decode,
                self.config.tune_fixed_resolution,
                self.config.eval_batch_size,
                shots=train.shots,
                encoded=train.encoded_train.head(count),
            )
        with self.timed("train router"):
            router = train_router(
                self.ensemble,
                train.task,
                train.train[: self.config.router_examples],
                RouterConfig(
                    feature_set=self.config.rl.feature_set, steps=self.config.router_steps
                ),
                shots=train.shots,
            )
        return {
            "tuned fixed weights": (FixedWeights(jnp.asarray(self.tuned.weights)), self.decode),
            "supervised router": (router, self.decode),
        }

    def agents(self) -> tuple[dict[str, tuple], dict[str, list[pathlib.Path]]]:
        """RLAE_PPO and RLAE_MAPPO trained over the seeds on the training family → ("NAME#seed" →
        (deterministic policy, DecodeConfig)), and the run folders."""
        train = self.families[0]
        strategies, workdirs = {}, {name: [] for name in RL_KINDS}
        for name, kind in RL_KINDS.items():
            for seed in range(self.config.seeds):
                workdir = self.output / "runs" / f"{kind}-seed{seed}"
                with self.timed(f"train {name}"):
                    trainer = RLAETrainer(
                        RLConfig.from_dict(
                            self.config.rl, ignore=("checkpoint_every",), kind=kind, seed=seed
                        ),
                        self.ensemble,
                        train.task,
                        train.train,
                        workdir,
                        checkpoint_every=self.config.rl.checkpoint_every,
                        shots=train.shots,
                        encoded=train.encoded_train,
                    )
                    state = trainer.train()
                policy = policy_weight_fn(
                    state, trainer.setup, jax.random.key(seed), evaluation=True
                )
                strategies[f"{name}#{seed}"] = (policy, trainer.setup.evaluation_decode)
                workdirs[name].append(workdir)
        return strategies, workdirs

    def evaluate(self, strategies: dict[str, tuple]) -> None:
        """Every strategy on every family's test split, one prefill per batch for all of them;
        seeds ("NAME#seed") gather under NAME."""
        for family in self.families:
            with self.timed(f"evaluate on {family.spec}"):
                results = run_strategies(
                    strategies,
                    self.ensemble,
                    family.task,
                    family.test,
                    self.config.eval_batch_size,
                    family.shots,
                    encoded=family.encoded_test,
                )
            for name, result in results.items():
                group = name.split("#")[0]
                self.results[family.spec].setdefault(group, []).append(result)
            print(
                "  " + ", ".join(f"{n} {r.accuracy:.3f}" for n, r in results.items()),
                flush=True,
            )

    def plots(self, workdirs: dict[str, list[pathlib.Path]]) -> None:
        plot_reward_curves(workdirs, self.output / "reward_curves.png")
        train = self.families[0]
        ppo = self.results[train.spec]["RLAE_PPO"][0]
        shown = range(min(4, len(train.test)))
        plot_weights_along_answers(
            [
                [
                    self.ensemble.alignment.union_bytes(u).decode("utf-8", "replace") or "<eos>"
                    for u in ppo.union_ids[i]
                ]
                for i in shown
            ],
            [ppo.span_weights[i] for i in shown],
            self.config.rl.span_length,
            list(self.config.members),
            [train.test[i].prompt for i in shown],
            self.output / "weights_along_answers.png",
        )

    def report(self, minutes: float) -> dict:
        specs = [f.spec for f in self.families]
        report = {spec: family_rows(self.results[spec], self.config.bootstrap) for spec in specs}
        table = markdown_table(report, specs)
        title = (
            f"## RLAE study: {' + '.join(self.config.members)}, {len(self.families[0].test)} "
            f"held-out problems per family, {self.config.seeds} seeds, {minutes:.1f} min"
        )
        (self.output / "results.md").write_text(f"{title}\n\n{table}\n")
        payload = {
            "config": self.config.to_dict(),
            "families": report,
            "tuned_fixed_weights": self.tuned.weights.tolist(),
            "seconds_per_phase": self.seconds,
            "splits_encoded": self.ensemble.encodings,  # each family's two splits, once each
            "minutes": minutes,
            "examples": {
                spec: {
                    name: [
                        {"prompt": e.prompt, "answer": e.answer, "text": t}
                        for e, t in zip(family.test[:3], results[0].texts[:3])
                    ]
                    for name, results in self.results[spec].items()
                }
                for spec, family in zip(specs, self.families)
            },
        }
        (self.output / "results.json").write_text(json.dumps(payload, indent=1, default=str))
        print(f"{title}\n\n{table}\n\noutputs in {self.output}", flush=True)
        return payload


def run_study(config) -> dict:
    """The whole study → results.json's content (also written to `config.output_dir`)."""
    started = time.time()
    study = Study(config)
    strategies = study.baselines()
    strategies.update(study.fair_baselines())
    agents, workdirs = study.agents()
    study.evaluate({**strategies, **agents})
    with open(study.output / "results.pkl", "wb") as file:  # every answer, for later analysis
        pickle.dump(study.results, file)
    study.plots(workdirs)
    return study.report((time.time() - started) / 60)
