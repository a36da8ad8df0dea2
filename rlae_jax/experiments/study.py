"""The RLAE study: can an agent learn which member to trust, on a mixture where the right member
changes by problem? (configs/study.py; `python -m launch.study`)

The learners — RLAE_PPO and RLAE_MAPPO over seeds, the same PPO agent also told the problem's
family (the oracle-feature ablation), the best fixed weights on a simplex grid and a supervised span
router — train on a mixture of task families (`tasks.mixture.MixtureTask`), each family after its
own worked examples. Everything else is fixed before the test set is read: each learner's
evaluation action and the best baseline are chosen on a validation split. Every strategy then
answers the test split of every mixture family and of the held-out families (transfer, no
retraining). Intervals are two-level bootstraps (seeds, then problems; `statistics.py`); each
learner's primary comparison is its paired difference from the tuned fixed weights on the mixture.
Outputs: results.json (every run's per-update metrics included), results.md, learning_curves.png,
weights_along_answers.png.
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
from rlae_jax.engine.strategies import FixedWeights, ThresholdGating
from rlae_jax.ensemble import Ensemble
from rlae_jax.experiments import statistics
from rlae_jax.experiments.evaluation import StrategyResult, baseline_strategies, run_strategies
from rlae_jax.experiments.plots import (
    plot_learning_curves,
    plot_weights_along_answers,
    read_metrics,
)
from rlae_jax.models.loading import from_pretrained
from rlae_jax.rl.baselines import RouterConfig, train_router, tune_fixed_weights
from rlae_jax.rl.rollout import policy_weight_fn
from rlae_jax.rl.trainer import RLAETrainer, RLConfig
from rlae_jax.tasks import get_task
from rlae_jax.tasks.mixture import MixtureTask
from rlae_jax.toy.members import demo_member

MIXTURE = "mixture"  # the row label of the mixture families' test splits taken together
TUNED = "tuned fixed weights"


@dataclasses.dataclass
class Split:
    """One family's problems of one split: `family` its index in the mixture (None: held out),
    rendered by `task` after `shots`, encoded once."""

    name: str
    split: str
    task: object
    examples: list
    family: int | None
    shots: tuple = ()
    encoded: EncodedPrompts | None = None

    @property
    def key(self) -> str:
        return f"{self.split}/{self.name}"


@dataclasses.dataclass
class Learner:
    """A trained RL agent: its state and setup per seed, its run folders and the evaluation action
    chosen on validation."""

    name: str
    kind: str
    family_feature: bool
    states: list = dataclasses.field(default_factory=list)
    setups: list = dataclasses.field(default_factory=list)
    workdirs: list = dataclasses.field(default_factory=list)
    eval_action: str | None = None

    def weight_fns(self, split: Split, action: str) -> dict[str, tuple]:
        """ "NAME#seed" → (the agent taking `action`, its decode) on `split`; none for a
        family-feature agent on a held-out family (it has no family id to be given)."""
        if self.family_feature and split.family is None:
            return {}
        out = {}
        for seed, (state, setup) in enumerate(zip(self.states, self.setups)):
            setup = dataclasses.replace(setup, eval_action=action)
            family = split.family if self.family_feature else None
            policy = policy_weight_fn(
                state, setup, jax.random.key(seed), evaluation=True, family=family
            )
            out[f"{self.name}#{seed}"] = (policy, setup.evaluation_decode)
        return out


def load_member(name: str):
    """A registry name, hub id, folder or GGUF file; "demo:<skill>" is a demo member (reverser or
    capitalizer), trained here once and cached: a specialist for the positive control."""
    if name.startswith("demo:"):
        return demo_member(name.removeprefix("demo:"))
    return from_pretrained(name, name=name)


class Study:
    """Members, splits, learners and every strategy's results while the study runs."""

    def __init__(self, config):
        self.config, self.output = config, pathlib.Path(config.output_dir).absolute()
        self.output.mkdir(parents=True, exist_ok=True)
        self.seconds: dict[str, float] = {}
        with self.timed("load members and alignment"):
            self.ensemble = Ensemble([load_member(name) for name in config.members])
        with self.timed("load and encode tasks"):
            self.load_splits()
        self.results: dict[str, dict[str, list[StrategyResult]]] = {}
        self.decode = DecodeConfig(
            max_new_tokens=config.rl.max_new_tokens,
            span_length=config.rl.span_length,
            record_features=False,
        )

    def load_splits(self) -> None:
        """The mixture's training split; validation and test splits of every mixture family and the
        held-out families' test splits, all encoded to one shape (one compile per strategy)."""
        config, shots = self.config, self.config.shots
        tasks = [get_task(spec) for _, spec in config.families]
        pools = [task.load("train", limit=config.train_examples + shots) for task in tasks]
        self.mixture = MixtureTask.of(tasks, [pool[:shots] for pool in pools])
        self.train = self.mixture.interleave([pool[shots:] for pool in pools])
        self.splits = [
            Split(name, split, self.mixture, self.mixture.tag(f, task.load(split, limit=count)), f)
            for split, count in (
                ("validation", config.validation_examples),
                ("test", config.eval_examples),
            )
            for f, ((name, _), task) in enumerate(zip(config.families, tasks))
        ]
        for name, spec in config.holdout:
            task = get_task(spec)
            held_out = task.load("test", limit=config.eval_examples)
            self.splits.append(
                Split(name, "test", task, held_out, None, tuple(task.load("train", limit=shots)))
            )
        new_tokens = config.rl.max_new_tokens
        # the trainer's groups: each family's rows from the family's own prefix, one shape
        per_family = [
            [e for e in self.train if self.mixture.family_of(e) == f] for f in range(len(tasks))
        ]
        self.encoded_train = self.ensemble.encode_splits(
            [(self.mixture, examples, ()) for examples in per_family], new_tokens
        )
        # the tuned weights score the first problems of the interleaved split
        self.encoded_tune = self.ensemble.encode(
            self.mixture, self.train[: config.tune_examples], (), new_tokens
        )
        encoded = self.ensemble.encode_splits(
            [(s.task, s.examples, s.shots) for s in self.splits], new_tokens
        )
        for split, one in zip(self.splits, encoded):
            split.encoded = one

    def of(self, split: str) -> list[Split]:
        return [s for s in self.splits if s.split == split]

    @contextlib.contextmanager
    def timed(self, phase: str):
        """Add the block's wall time to `seconds[phase]`."""
        print(f"[study] {phase} ...", flush=True)
        began = time.time()
        yield
        self.seconds[phase] = self.seconds.get(phase, 0.0) + time.time() - began

    # ---- strategies ---------------------------------------------------------------------------

    def baselines(self) -> dict[str, tuple]:
        """Single members, uniform and threshold (GaC), top-k (UniTE), PackLLM: name → (weight_fn,
        DecodeConfig)."""
        strategies = baseline_strategies(
            self.ensemble.members, self.config.threshold, self.config.top_k, fixed_grid=()
        )
        out = {}
        for name, weight_fn in strategies.items():
            # GaC gates every token
            span = 1 if isinstance(weight_fn, ThresholdGating) else self.decode.span_length
            out[name] = (weight_fn, dataclasses.replace(self.decode, span_length=span))
        return out

    def fair_baselines(self) -> dict[str, tuple]:
        """The best fixed weights and (unless `config.router_examples` is 0) the supervised router,
        both from the mixture's training split."""
        with self.timed("tune fixed weights"):
            self.tuned = tune_fixed_weights(
                self.ensemble,
                self.mixture,
                self.train[: self.config.tune_examples],
                self.decode,
                self.config.tune_fixed_resolution,
                self.config.eval_batch_size,
                encoded=self.encoded_tune,
            )
        fitted = {TUNED: (FixedWeights(jnp.asarray(self.tuned.weights)), self.decode)}
        if self.config.router_examples:
            with self.timed("train router"):
                router = train_router(
                    self.ensemble,
                    self.mixture,
                    self.train[: self.config.router_examples],
                    RouterConfig(
                        feature_set=self.config.rl.feature_set, steps=self.config.router_steps
                    ),
                )
            fitted["supervised router"] = (router, self.decode)
        return fitted

    def train_learners(self) -> list[Learner]:
        """Every configured learner (name, kind, family_feature) trained over the seeds on the
        mixture's training split."""
        learners = []
        for name, kind, family_feature in self.config.learners:
            learner = Learner(name, kind, family_feature)
            for seed in range(self.config.seeds):
                workdir = self.output / "runs" / f"{name.replace(' ', '_')}-seed{seed}"
                rl = RLConfig.from_dict(
                    self.config.rl,
                    ignore=("checkpoint_every",),
                    kind=kind,
                    seed=seed,
                    num_families=len(self.config.families),
                    family_feature=family_feature,
                )
                with self.timed(f"train {name}"):
                    trainer = RLAETrainer(
                        rl,
                        self.ensemble,
                        self.mixture,
                        self.train,
                        workdir,
                        checkpoint_every=self.config.rl.checkpoint_every,
                        encoded=self.encoded_train,
                    )
                    learner.states.append(trainer.train())
                learner.setups.append(trainer.setup)
                learner.workdirs.append(workdir)
            learners.append(learner)
        return learners

    # ---- evaluation ---------------------------------------------------------------------------

    def evaluate(self, split: Split, strategies: dict[str, tuple], phase: str) -> None:
        """`strategies` on `split` (one prefill per batch for all of them); seeds ("NAME#seed")
        gather under NAME in `results[split.key]`."""
        with self.timed(phase):
            results = run_strategies(
                strategies,
                self.ensemble,
                split.task,
                split.examples,
                self.config.eval_batch_size,
                split.shots,
                encoded=split.encoded,
            )
        for name, result in results.items():
            self.results.setdefault(split.key, {}).setdefault(name.split("#")[0], []).append(result)
        print(f"  {split.key}: " + ", ".join(f"{n} {r.accuracy:.3f}" for n, r in results.items()))

    def choose_on_validation(self, fixed: dict[str, tuple], learners: list[Learner]) -> str:
        """Evaluate everything on validation; set each learner's evaluation action to the best of
        `config.eval_actions` there → the name of the best non-RL strategy there."""
        for split in self.of("validation"):
            strategies = dict(fixed)
            for learner in learners:
                for action in self.config.eval_actions:
                    for name, value in learner.weight_fns(split, action).items():
                        strategies[name.replace("#", f" @{action}#")] = value
            self.evaluate(split, strategies, "evaluate on validation")
        accuracy = {
            name: float(self.pooled(name, "validation").mean())
            for name in self.results[self.of("validation")[0].key]
        }
        for learner in learners:
            learner.eval_action = max(
                self.config.eval_actions, key=lambda a: accuracy[f"{learner.name} @{a}"]
            )
        self.validation_accuracy = accuracy
        return max(fixed, key=lambda name: accuracy[name])

    def evaluate_test(self, fixed: dict[str, tuple], learners: list[Learner]) -> None:
        for split in self.of("test"):
            strategies = dict(fixed)
            for learner in learners:
                strategies.update(learner.weight_fns(split, learner.eval_action))
            self.evaluate(split, strategies, "evaluate on test")

    def pooled(self, name: str, split: str) -> np.ndarray:
        """`[S, E]` strategy `name`'s scores on the mixture families' `split` splits, concatenated
        over families (each seed's own row)."""
        return np.concatenate(
            [
                np.stack([r.scores for r in self.results[s.key][name]])
                for s in self.of(split)
                if s.family is not None
            ],
            axis=1,
        )

    # ---- report -------------------------------------------------------------------------------

    def scores(self, name: str, split: Split | None) -> np.ndarray:
        """`[S, E]` on one split, or pooled over the mixture's test splits (`split` None)."""
        if split is None:
            return self.pooled(name, "test")
        return np.stack([r.scores for r in self.results[split.key][name]])

    def oracles(self) -> dict[str, dict[str, np.ndarray]]:
        """Per row label: "member oracle" (either member right, per problem) and, for the mixture,
        "family oracle" (each family routed to the single member best on its validation split)."""
        singles = [n for n in self.results[self.of("test")[0].key] if n.startswith("single:")]
        out = {}
        for label, split in self.rows():
            out[label] = {"member oracle": np.max([self.scores(n, split) for n in singles], 0)}
        family_best = []
        for split in self.of("test"):
            if split.family is None:
                continue
            validation = next(s for s in self.of("validation") if s.family == split.family).key
            best = max(singles, key=lambda n: self.results[validation][n][0].accuracy)
            family_best.append(self.scores(best, split))
            out[split.name]["family oracle"] = family_best[-1]
        out[MIXTURE]["family oracle"] = np.concatenate(family_best, axis=1)
        return out

    def rows(self) -> list[tuple[str, Split | None]]:
        """(label, split) of the report's columns: the mixture, then every test split."""
        return [(MIXTURE, None)] + [(s.name, s) for s in self.of("test")]

    def weights_by_family(self, learners: list[Learner]) -> dict:
        """Per learner, mixture family and member: the mean weight over each answer's spans, as
        a two-level summary over seeds and problems."""
        out = {}
        for learner in learners:
            out[learner.name] = {}
            for split in self.of("test"):
                if split.family is None:
                    continue
                per_seed = np.stack(
                    [
                        np.stack([w.mean(axis=0) for w in r.span_weights])
                        for r in self.results[split.key][learner.name]
                    ]
                )  # [S, E, N]
                out[learner.name][split.name] = {
                    member: statistics.summary(per_seed[..., n], self.config.bootstrap)
                    for n, member in enumerate(self.ensemble.names)
                }
        return out

    def report(self, learners: list[Learner], best: str, minutes: float) -> dict:
        resamples, names = self.config.bootstrap, list(self.results[self.of("test")[0].key])
        oracles, table = self.oracles(), {}
        for label, split in self.rows():
            table[label] = {}
            for name in names:
                if split is not None and name not in self.results[split.key]:
                    continue
                row = statistics.summary(self.scores(name, split), resamples)
                for baseline, key in ((TUNED, "vs_tuned_fixed"), (best, "vs_best")):
                    if any(name == learner.name for learner in learners):
                        gap = statistics.paired_difference(
                            self.scores(name, split), self.scores(baseline, split)
                        )
                        row[key] = {"baseline": baseline, **statistics.summary(gap, resamples, 1)}
                table[label][name] = row
            for name, scores in oracles[label].items():
                table[label][name] = statistics.summary(scores, resamples)
        payload = {
            "config": self.config.to_dict(),
            "table": table,
            "best_baseline_on_validation": best,
            "validation_accuracy": self.validation_accuracy,
            "eval_actions": {learner.name: learner.eval_action for learner in learners},
            "comparisons": {
                "primary": len(learners),
                "note": "each learner vs the tuned fixed weights on the mixture; every other "
                "difference (per family, vs the best baseline, transfer) is secondary",
            },
            "weights_by_family": self.weights_by_family(learners),
            "tuned_fixed_weights": self.tuned.weights.tolist(),
            "episodes_per_run": self.config.rl.num_updates * self.config.rl.batch_size,
            "runs": {
                learner.name: [read_metrics(w) for w in learner.workdirs] for learner in learners
            },
            "seconds_per_phase": self.seconds,
            "splits_encoded": self.ensemble.encodings,
            "minutes": minutes,
        }
        (self.output / "results.json").write_text(json.dumps(payload, indent=1, default=str))
        text = markdown_report(payload, self.title(minutes), self.ensemble.names)
        (self.output / "results.md").write_text(text)
        print(f"{text}\noutputs in {self.output}", flush=True)
        return payload

    def title(self, minutes: float) -> str:
        families = " + ".join(name for name, _ in self.config.families)
        episodes = self.config.rl.num_updates * self.config.rl.batch_size
        return (
            f"## RLAE study: {' + '.join(self.config.members)} on {families}; "
            f"{self.config.eval_examples} test problems per family, {self.config.seeds} seeds, "
            f"{episodes} episodes per run, {minutes:.1f} min"
        )

    def plots(self, learners: list[Learner]) -> None:
        family_names = [name for name, _ in self.config.families]
        plot_learning_curves(
            {learner.name: learner.workdirs for learner in learners},
            family_names,
            self.ensemble.names,
            self.output / "learning_curves.png",
        )
        texts, weights, prompts = [], [], []
        for split in self.of("test"):
            if split.family is None:
                continue
            result = self.results[split.key][learners[0].name][0]
            for i in range(min(2, len(split.examples))):
                texts.append(
                    [
                        self.ensemble.alignment.union_bytes(u).decode("utf-8", "replace") or "<eos>"
                        for u in result.union_ids[i]
                    ]
                )
                weights.append(result.span_weights[i])
                prompts.append(split.examples[i].prompt)
        plot_weights_along_answers(
            texts,
            weights,
            self.config.rl.span_length,
            self.ensemble.names,
            prompts,
            self.output / "weights_along_answers.png",
        )


def cell(summary: dict, signed: bool = False) -> str:
    low, high = summary["interval"]
    form = "+.3f" if signed else ".3f"
    return f"{summary['mean']:{form}} [{low:{form}}, {high:{form}}]"


def markdown_report(payload: dict, title: str, members: Sequence[str]) -> str:
    """The accuracy table (strategies × mixture, families, held-out), the learners' differences,
    and their mean weights by family."""
    table, labels = payload["table"], list(payload["table"])
    names = list(table[MIXTURE])
    lines = [
        title,
        "",
        "| strategy | " + " | ".join(labels) + " |",
        "|---|" + "---|" * len(labels),
    ]
    for name in names:
        cells = [cell(table[label][name]) if name in table[label] else "" for label in labels]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    best = payload["best_baseline_on_validation"]
    lines += [
        "",
        f"Learners minus a baseline (paired, two-level 95% bootstrap; best baseline on "
        f"validation: {best}; {payload['comparisons']['primary']} primary comparisons, vs tuned "
        "fixed weights on the mixture):",
        "",
    ]
    for name, action in payload["eval_actions"].items():
        parts = [f"vs tuned fixed {cell(table[MIXTURE][name]['vs_tuned_fixed'], True)}"]
        parts.append(f"vs {best} {cell(table[MIXTURE][name]['vs_best'], True)}")
        lines.append(f"- {name} (evaluation action {action}, on validation): " + "; ".join(parts))
    lines += ["", "Mean weight per family (two-level 95% bootstrap):", ""]
    for name, families in payload["weights_by_family"].items():
        parts = [
            f"{family}: " + ", ".join(f"{m} {cell(s[m])}" for m in members)
            for family, s in families.items()
        ]
        lines.append(f"- {name}: " + "; ".join(parts))
    return "\n".join(lines) + "\n"


def run_study(config) -> dict:
    """The whole study → results.json's content (also written to `config.output_dir`)."""
    started = time.time()
    study = Study(config)
    fixed = study.baselines()
    fixed.update(study.fair_baselines())
    learners = study.train_learners()
    best = study.choose_on_validation(fixed, learners)
    study.evaluate_test(fixed, learners)
    with open(study.output / "results.pkl", "wb") as file:  # every answer, for later analysis
        pickle.dump(study.results, file)
    study.plots(learners)
    return study.report(learners, best, (time.time() - started) / 60)
