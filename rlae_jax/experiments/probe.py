"""Complementarity probe: before an RL study, measure per task family whether the weights over the
real pair can change the reward at all (`python -m launch.probe --config=configs/probe.py`).

For every family (a reasoning-gym spec) and setting (answer format, shot count), each member
answers validation problems in its own format (SmolLM2 its chat template, Gemma the plain
"question\\nAnswer:" format) alone (`generate_member`) and with uniform weights (`run_strategies`),
scored by the task's verifier. Per cell (`cell_stats`): each member's accuracy, the constant-answer
baseline (the most frequent target's share), uniform weights, the per-problem oracle (either member
right), the both / only-A / only-B / neither counts, the share of problems where the weights change
the reward (the strategies' scores differ), and the copy rate (answers equal to a worked example's
answer) beside the share of targets that equal one.

Three stages, all on the validation split (the test split is never read): a screen of every family
in one setting, a sweep of other settings over the most promising families (`promising`), and
fresh problems for the best setting; `select_mixture` picks the study's training mixture and a
held-out transfer family from the last stage (`run_probe`).
"""

from __future__ import annotations

import collections
import dataclasses
import datetime
import itertools
import json
import os
import pathlib
import platform
import time
from typing import Mapping, Sequence

import numpy as np
from tqdm import tqdm

from rlae_jax.engine import DecodeConfig
from rlae_jax.engine.strategies import resolve_strategy
from rlae_jax.ensemble import Ensemble
from rlae_jax.experiments.evaluation import run_strategies
from rlae_jax.models.generate import generate_member
from rlae_jax.models.loading import from_pretrained
from rlae_jax.tasks import get_task

UNIFORM = "uniform"


def normalized(text: str) -> str:
    """Case- and whitespace-insensitive form of an answer, for counting equal answers."""
    return " ".join(str(text).lower().split())


def outcome_counts(a: np.ndarray, b: np.ndarray) -> dict[str, int]:
    """Problems both members solve, only A, only B, neither; `a`, `b`: 0/1 scores `[E]`."""
    a, b = np.asarray(a) > 0, np.asarray(b) > 0
    if a.shape != b.shape:
        raise ValueError(f"score arrays differ in shape: {a.shape} vs {b.shape}")
    return {
        "both": int(np.sum(a & b)),
        "only_a": int(np.sum(a & ~b)),
        "only_b": int(np.sum(~a & b)),
        "neither": int(np.sum(~a & ~b)),
    }


def constant_baseline(targets: Sequence[str]) -> tuple[str, float]:
    """The most frequent target (normalised) and its share: what always giving it would score."""
    if not targets:
        raise ValueError("constant_baseline: no targets")
    answer, count = collections.Counter(map(normalized, targets)).most_common(1)[0]
    return answer, count / len(targets)


def copy_rate(answers: Sequence[str | None], shot_answers: Sequence[str]) -> float | None:
    """Share of `answers` equal (normalised) to a worked example's answer; None without shots.
    A missing answer (None) is no copy."""
    if not shot_answers:
        return None
    shown = {normalized(a) for a in shot_answers}
    return float(np.mean([a is not None and normalized(a) in shown for a in answers]))


def weights_matter(scores: np.ndarray) -> float:
    """Share of problems whose score differs between the strategies; `scores` `[S, E]`."""
    scores = np.asarray(scores)
    return float(np.mean(scores.max(axis=0) != scores.min(axis=0)))


def cell_stats(
    scores: Mapping[str, np.ndarray],
    answers: Mapping[str, Sequence[str | None]],
    targets: Sequence[str],
    shot_answers: Sequence[str],
    members: Sequence[str],
) -> dict:
    """One family × setting. `scores[strategy]`: 0/1 `[E]` for the two `members` (by name),
    `UNIFORM` and any fixed weights; `answers[strategy]`: the answer texts the verifier read."""
    a, b = (np.asarray(scores[m]) for m in members)
    answer, share = constant_baseline(targets)
    return {
        "problems": len(targets),
        "accuracy": {name: float(np.mean(s)) for name, s in scores.items()},
        "constant": {"answer": answer, "accuracy": share},
        "oracle": float(np.mean(np.maximum(a, b))),
        # a problem counts when any measured strategy (either member, uniform, fixed weights) is
        # right: where mixing beats both members, the room for weights chosen per problem
        "any_strategy": float(np.mean(np.max([np.asarray(s) for s in scores.values()], axis=0))),
        "counts": outcome_counts(a, b),
        "weights_matter": weights_matter(np.stack([np.asarray(s) for s in scores.values()])),
        "copy_rate": {name: copy_rate(answers[name], shot_answers) for name in answers},
        "target_copy_rate": copy_rate(targets, shot_answers),
    }


def leader(stats: dict, members: Sequence[str], margin: float) -> str | None:
    """The member that beats both the other member and the constant-answer baseline by at least
    `margin` on this cell, else None. `margin` exists because a lead of one problem in a few dozen
    is noise."""
    accuracy, constant = stats["accuracy"], stats["constant"]["accuracy"]
    for mine, other in (members, members[::-1]):
        if accuracy[mine] >= max(accuracy[other], constant) + margin:
            return mine
    return None


@dataclasses.dataclass(frozen=True)
class Mixture:
    """A candidate training mixture: its families, the per-problem oracle and the best fixed
    weights (the best strategy scored over all its problems, a weight vector shared by every
    family) with its accuracy; `gap` = oracle − best fixed."""

    families: tuple[str, ...]
    oracle: float
    best_fixed: str
    best_fixed_accuracy: float

    @property
    def gap(self) -> float:
        return self.oracle - self.best_fixed_accuracy


def mixture_of(
    families: Sequence[str], scores: Mapping[str, Mapping[str, np.ndarray]], members: Sequence[str]
) -> Mixture:
    """`scores[family][strategy]`: 0/1 `[E_f]`; every family's problems pooled."""
    pooled = {
        name: np.concatenate([np.asarray(scores[f][name]) for f in families])
        for name in scores[families[0]]
    }
    oracle = np.maximum(pooled[members[0]], pooled[members[1]])
    best = max(pooled, key=lambda name: (pooled[name].mean(), name == UNIFORM))
    return Mixture(tuple(families), float(oracle.mean()), best, float(pooled[best].mean()))


def select_mixture(
    stats: Mapping[str, dict],
    scores: Mapping[str, Mapping[str, np.ndarray]],
    members: Sequence[str],
    margin: float,
    min_gap: float,
    max_families: int = 4,
) -> dict:
    """The training mixture by the selection rule, and one held-out family for transfer.

    Rule: ≥ 2 families; each member leads (`leader`) on one of them; the pooled oracle minus the
    best fixed weights ≥ `min_gap`; among those, the largest gap (then more families). Held out:
    the best remaining family by oracle − best single member. Returns {"families", "holdout",
    "leaders", "oracle", "best_fixed", "best_fixed_accuracy", "gap", "meets_rule"} and, when no
    mixture meets the rule, the best mixture that has a leader for each member (or none) with
    "reason"."""
    leaders = {f: leader(s, members, margin) for f, s in stats.items()}
    candidates = sorted(f for f, who in leaders.items() if who)
    covering = [
        mixture_of(group, scores, members)
        for size in range(2, min(max_families, len(candidates)) + 1)
        for group in itertools.combinations(candidates, size)
        if {leaders[f] for f in group} == set(members)
    ]
    best = max(covering, key=lambda m: (m.gap, len(m.families)), default=None)
    if best is None:
        who = sorted({m for m in leaders.values() if m})
        return {
            "families": [],
            "holdout": [],
            "leaders": leaders,
            "meets_rule": False,
            "reason": f"members leading somewhere: {who or 'none'}; the rule needs both",
        }
    result = dataclasses.asdict(best) | {"gap": best.gap, "leaders": leaders}
    result["families"] = list(best.families)
    result["holdout"] = holdout(stats, members, exclude=best.families)
    result["meets_rule"] = best.gap >= min_gap and bool(result["holdout"])
    if not result["meets_rule"]:
        result["reason"] = (
            f"best mixture's gap {best.gap:.3f} < {min_gap}"
            if best.gap < min_gap
            else "no family left to hold out"
        )
    return result


def holdout(stats: Mapping[str, dict], members: Sequence[str], exclude: Sequence[str]) -> list:
    """The family outside `exclude` with the largest oracle − best single member (ties: more
    problems where the weights matter), as a one-element list; empty when none is left."""
    rest = [f for f in stats if f not in exclude]

    def room(family):
        s = stats[family]
        return (s["oracle"] - max(s["accuracy"][m] for m in members), s["weights_matter"])

    return [max(rest, key=room)] if rest else []


# ---------------------------------------------------------------- running the probe
@dataclasses.dataclass(frozen=True)
class Setting:
    """How the members are asked: the task's answer format and the worked examples before it."""

    answer_format: str
    shots: int

    @property
    def name(self) -> str:
        return f"{self.answer_format}/{self.shots}-shot"


def settings_of(pairs: Sequence[Sequence]) -> list[Setting]:
    """Settings from (answer_format, shots) pairs."""
    return [Setting(str(answer_format), int(shots)) for answer_format, shots in pairs]


def with_fields(spec: str, defaults: Mapping | None = None, **fields) -> str:
    """`spec` with task or config fields set in its JSON part (`defaults` only where the spec does
    not set them), so `get_task` of the result rebuilds the same task: with_fields("rg/gcd:easy",
    train_size=2000) → 'rg/gcd:easy{"train_size": 2000}'."""
    head, _, config = spec.partition(":")
    preset = "easy" if config.startswith("easy") else ""
    try:
        changes = json.loads(config.removeprefix("easy") or "{}")
    except json.JSONDecodeError as err:
        raise ValueError(f"{spec!r}: the config after ':' is not JSON ({err.msg})") from None
    merged = {**(defaults or {}), **changes, **fields}
    return f"{head}:{preset}{json.dumps(merged, sort_keys=True)}"


def ensemble_strategies(count: int, decode, fixed_grid: Sequence[float]) -> dict:
    """name → (weight_fn, DecodeConfig): uniform weights and, for two members, `fixed w/1-w` for
    each w of `fixed_grid`."""
    specs = {UNIFORM: ("uniform", {})}
    for w in fixed_grid if count == 2 else ():
        specs[f"fixed {w:.2f}/{1 - w:.2f}"] = ("fixed", dict(weights=[w, 1 - w]))
    return {
        name: (resolve_strategy(kind, count, **options), decode)
        for name, (kind, options) in specs.items()
    }


def member_texts(member, prompts: Sequence[str], batch_size: int, max_new_tokens: int) -> list:
    """One member's greedy continuations of `prompts`, in batches of `batch_size` rows (the last
    filled with repeats, dropped), so batches share compiled shapes."""
    texts = []
    for start in range(0, len(prompts), batch_size):
        chunk = list(prompts[start : start + batch_size])
        rows = len(chunk)
        chunk += chunk[-1:] * (batch_size - rows)
        texts += generate_member(member, chunk, max_new_tokens)[:rows]
    return texts


class Probe:
    """The ensemble (members with their alignment and formats), the loaded splits and the report
    while the probe runs."""

    def __init__(self, config):
        self.config, self.output = config, pathlib.Path(config.output_dir).absolute()
        self.output.mkdir(parents=True, exist_ok=True)
        self.names = list(config.members)
        self.ensemble = Ensemble([from_pretrained(name, name=name) for name in self.names])
        decode = DecodeConfig(
            max_new_tokens=config.max_new_tokens,
            span_length=config.span_length,
            record_features=False,
        )
        self.uniform = ensemble_strategies(len(self.names), decode, ())
        self.with_grid = ensemble_strategies(len(self.names), decode, config.fixed_grid)
        self.splits: dict[tuple, list] = {}
        self.report = {
            "config": config.to_dict(),
            "members": self.names,
            "skipped": {},
            "stages": {},
            "machine": machine(),
        }
        # measured cells by (family, setting, problems, strategies), kept across runs so a
        # stopped probe resumes where it stopped
        self.done_path = self.output / "cells.json"
        self.done = json.loads(self.done_path.read_text()) if self.done_path.exists() else {}

    def spec(self, spec: str, answer_format: str) -> str:
        """The full task spec: the family with its answer format and training-split size."""
        return with_fields(
            spec, dict(train_size=self.config.train_size), answer_format=answer_format
        )

    def split(self, spec: str, answer_format: str, split: str, count: int) -> list:
        """The first `count` problems of a split, loaded once per family and format."""
        if count == 0:  # zero shots (`load` reads limit=0 as "the default size")
            return []
        key = (spec, answer_format, split)
        if len(self.splits.get(key, ())) < count:
            self.splits[key] = get_task(self.spec(spec, answer_format)).load(split, limit=count)
        return self.splits[key][:count]

    def loadable(self, families: Sequence[str], formats: Sequence[str], count: int) -> list:
        """The families whose validation split has `count` problems outside the training split;
        the others are reported under "skipped" with the reason."""
        kept = []
        for spec in tqdm(families, desc="loading families", unit="family"):
            try:
                for answer_format in formats:
                    self.split(spec, answer_format, "validation", count)
                kept.append(spec)
            except ValueError as err:
                self.report["skipped"][spec] = str(err)
        return kept

    def measure(self, spec: str, setting: Setting, start: int, count: int, strategies) -> tuple:
        """`measure_once`, or its result from an earlier run of the same output folder."""
        key = json.dumps(
            [spec, setting.name, start, count, self.config.max_new_tokens, sorted(strategies)]
        )
        if key not in self.done:
            stats, scores = self.measure_once(spec, setting, start, count, strategies)
            self.done[key] = [
                stats,
                {n: np.asarray(s).astype(int).tolist() for n, s in scores.items()},
            ]
            self.done_path.write_text(json.dumps(self.done))
        stats, scores = self.done[key]
        return stats, {name: np.asarray(s) for name, s in scores.items()}

    def measure_once(self, spec: str, setting: Setting, start: int, count: int, strategies):
        """Validation problems start..start+count-1 of `spec` under `setting`: each member alone
        (`generate_member`) and the ensemble `strategies` (`run_strategies`, no shared prefix, so
        families of one prompt-length bucket share compiled shapes) → (cell_stats with two sample
        answers, per-strategy 0/1 scores)."""
        task = get_task(self.spec(spec, setting.answer_format))
        examples = self.split(spec, setting.answer_format, "validation", start + count)[start:]
        shots = self.split(spec, setting.answer_format, "train", setting.shots)
        size, tokens = self.config.batch_size, self.config.max_new_tokens
        prompts = self.ensemble.prompts(task, examples, shots)
        texts = {
            name: member_texts(member, own, size, tokens)
            for name, member, own in zip(self.names, self.ensemble.members, prompts)
        }
        results = run_strategies(
            strategies,
            self.ensemble,
            task,
            examples,
            size,
            shots,
            shared_prefix=False,
            progress=False,
        )
        texts.update({name: r.texts for name, r in results.items()})
        scores = {name: task.rewards(own, examples) for name, own in texts.items()}
        answers = {name: [task.answer_of(t) for t in own] for name, own in texts.items()}
        stats = cell_stats(
            scores, answers, [e.answer for e in examples], [s.answer for s in shots], self.names
        )
        stats["samples"] = [
            {"target": e.answer, **{n: t[i] for n, t in texts.items()}}
            for i, e in enumerate(examples[:2])
        ]
        return stats, scores

    def stage(
        self, label: str, cells: Sequence[tuple[Setting, str]], start: int, count: int, strategies
    ) -> tuple[dict, dict]:
        """Every (setting, family) cell → (stats, scores), each [setting name][family]; the
        report is saved after every cell."""
        stats, scores = collections.defaultdict(dict), collections.defaultdict(dict)
        record = {"problems": count, "first_problem": start, "cells": stats, "scores": {}}
        self.report["stages"][label] = record
        began = time.time()
        with tqdm(total=len(cells) * count, desc=label, unit="problem") as bar:
            for setting, spec in cells:
                bar.set_postfix_str(f"{setting.name} {spec}"[:50])
                stats[setting.name][spec], scores[setting.name][spec] = self.measure(
                    spec, setting, start, count, strategies
                )
                record["scores"] = lists(scores)
                record["minutes"] = (time.time() - began) / 60
                self.save()
                bar.update(count)
        return stats, scores

    def save(self) -> None:
        (self.output / "results.json").write_text(json.dumps(self.report, indent=1, default=str))


def lists(scores: Mapping[str, Mapping[str, Mapping[str, np.ndarray]]]) -> dict:
    """Scores as nested lists of 0/1 ints, for JSON."""
    return {
        setting: {
            spec: {name: np.asarray(s).astype(int).tolist() for name, s in cell.items()}
            for spec, cell in cells.items()
        }
        for setting, cells in scores.items()
    }


def machine() -> dict:
    """Where the probe ran: CPU model, cores, platform, date."""
    model = platform.processor()
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as info:
            names = [line.split(":", 1)[1].strip() for line in info if "model name" in line]
        model = names[0] if names else model
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


def ranked(selection: dict) -> tuple:
    """Sort key of a setting's selection: meeting the rule first, then the gap."""
    return selection["meets_rule"], selection.get("gap", -1.0)


def promising(stats: Mapping[str, dict], members: Sequence[str], count: int) -> list:
    """The `count` families worth more problems, taken in turn from each member's ranking by its
    lead over the better of the other member and the constant answer (`leader`'s criterion; ties:
    more problems where the weights matter), so both members' best families get looked at even
    where one member leads nowhere."""

    def ranking(mine, other):
        def key(spec):
            accuracy, constant = stats[spec]["accuracy"], stats[spec]["constant"]["accuracy"]
            return accuracy[mine] - max(accuracy[other], constant), stats[spec]["weights_matter"]

        return sorted(stats, key=key, reverse=True)

    turns = itertools.chain.from_iterable(zip(ranking(*members), ranking(*members[::-1])))
    return list(dict.fromkeys(turns))[:count]


def best_setting(stats: dict, scores: dict, families: Sequence[str], names, rule) -> tuple:
    """The setting whose selection (`select_mixture` over `families`) ranks highest → (its name,
    every setting's selection)."""
    choices = {
        setting: select_mixture(
            {f: cells[f] for f in families if f in cells}, scores[setting], names, *rule
        )
        for setting, cells in stats.items()
    }
    return max(choices, key=lambda s: ranked(choices[s])), choices


def run_probe(config) -> dict:
    """Screen every family in the screen settings, sweep the other settings on the most promising
    families (the same problems), confirm the best setting on fresh problems, choose the mixture
    → the report (also results.json, results.md and mixture.json in `config.output_dir`)."""
    started = time.time()
    probe = Probe(config)
    names, rule = probe.names, (config.margin, config.min_gap, config.max_mixture)
    screen, sweep = settings_of(config.screen_settings), settings_of(config.sweep_settings)
    formats = sorted({s.answer_format for s in screen + sweep})
    families = probe.loadable(
        config.families, formats, config.screen_problems + config.confirm_problems
    )
    stats, scores = probe.stage(
        "screen",
        [(s, f) for s in screen for f in families],
        0,
        config.screen_problems,
        probe.uniform,
    )
    swept = promising(stats[screen[0].name], names, config.sweep_families)
    if sweep:
        more = probe.stage(
            "sweep",
            [(s, f) for s in sweep for f in swept],
            0,
            config.screen_problems,
            probe.uniform,
        )
        stats, scores = {**stats, **more[0]}, {**scores, **more[1]}
    best, choices = best_setting(stats, scores, swept, names, rule)
    setting = next(s for s in screen + sweep if s.name == best)
    confirm_stats, confirm_scores = probe.stage(
        "confirm",
        [(setting, f) for f in promising(stats[best], names, config.confirm_families)],
        config.screen_problems,
        config.confirm_problems,
        probe.with_grid,
    )
    mixture = select_mixture(confirm_stats[best], confirm_scores[best], names, *rule)
    mixture.update(setting=best, shots=setting.shots, answer_format=setting.answer_format)
    for key in ("families", "holdout"):
        mixture[f"{key}_specs"] = [probe.spec(f, setting.answer_format) for f in mixture[key]]
    probe.report.update(
        setting_selection=choices, mixture=mixture, minutes=(time.time() - started) / 60
    )
    probe.save()
    (probe.output / "mixture.json").write_text(json.dumps(mixture, indent=1))
    text = markdown(probe.report)
    (probe.output / "results.md").write_text(text)
    print(text, flush=True)
    return probe.report


def percent(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def cell_row(spec: str, setting: str, stats: dict, members: Sequence[str]) -> str:
    """One markdown row: accuracies, constant baseline, oracle, best fixed, counts, the share
    where weights matter, copy rates (members / targets)."""
    accuracy, counts, copy = stats["accuracy"], stats["counts"], stats["copy_rate"]
    best = max(accuracy, key=accuracy.get)
    return (
        f"| {spec} | {setting} | {stats['problems']} | "
        + " | ".join(percent(accuracy[m]) for m in members)
        + f" | {percent(accuracy[UNIFORM])} | {percent(stats['constant']['accuracy'])} "
        f"| {percent(stats['oracle'])} | {percent(stats['any_strategy'])} "
        f"| {percent(accuracy[best])} "
        f"| {counts['both']}/{counts['only_a']}/{counts['only_b']}/{counts['neither']} "
        f"| {percent(stats['weights_matter'])} | "
        + " / ".join(percent(copy[m]) for m in members)
        + f" ({percent(stats['target_copy_rate'])}) |"
    )


def cell_table(cells: Mapping[str, Mapping[str, dict]], members: Sequence[str]) -> list[str]:
    """Markdown table of every (setting, family) cell, family by family."""
    short = [m.split("-")[0] for m in members]
    lines = [
        f"| family | setting | n | {' | '.join(short)} | uniform | constant | oracle "
        "| any strategy | best fixed "
        f"| both/only {short[0]}/only {short[1]}/neither | weights matter "
        f"| copy {' / '.join(short)} (targets) |",
        "|---|---|" + "---|" * (len(members) + 9),
    ]
    specs = dict.fromkeys(spec for stats in cells.values() for spec in stats)
    for spec in specs:
        for setting, stats in cells.items():
            if spec in stats:
                lines.append(cell_row(spec, setting, stats[spec], members))
    return lines


def markdown(report: dict) -> str:
    """results.md: the chosen mixture (with its specs as JSON) and each stage's table."""
    mixture, members = report["mixture"], report["members"]
    stages = report["stages"]
    lines = [
        f"## Complementarity probe: {' + '.join(members)}",
        "",
        f"{report['machine']['date']}, {report['machine']['cpu']} ({report['machine']['cores']} "
        f"cores), {report['minutes']:.1f} min this run (cells an earlier run of this output "
        "folder measured are read from its cells.json); validation split only.",
        "",
        f"**Mixture** ({mixture['setting']}): {', '.join(mixture['families']) or 'none'}; "
        f"held out: {', '.join(mixture['holdout']) or 'none'}; meets the rule: "
        f"{mixture['meets_rule']}"
        + (
            f" (oracle {mixture['oracle']:.3f} − best fixed {mixture['best_fixed']} "
            f"{mixture['best_fixed_accuracy']:.3f} = {mixture['gap']:.3f})"
            if "gap" in mixture
            else ""
        )
        + (f"; {mixture['reason']}" if "reason" in mixture else ""),
        "",
        "```json",
        json.dumps({k: mixture[k] for k in ("families_specs", "holdout_specs", "shots")}),
        "```",
    ]
    for label, stage in stages.items():
        lines += [
            "",
            f"### {label}: {stage['problems']} validation problems per cell "
            f"(from #{stage['first_problem']}), {stage.get('minutes', 0):.1f} min this run",
            "",
        ]
        lines += cell_table(stage["cells"], members)
    if report["skipped"]:
        lines += ["", "Skipped:", ""] + [f"- {k}: {v}" for k, v in report["skipped"].items()]
    return "\n".join(lines) + "\n"
