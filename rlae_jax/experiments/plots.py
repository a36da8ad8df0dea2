"""PNG plots: reward curves of training runs and per-span weights along example answers."""

from __future__ import annotations

import json
import pathlib
from typing import Sequence

import numpy as np


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def read_metrics(workdir: str | pathlib.Path) -> list[dict]:
    with open(pathlib.Path(workdir) / "metrics.jsonl") as f:
        return [json.loads(line) for line in f]


def plot_reward_curves(
    runs: dict[str, Sequence[str | pathlib.Path]], path: pathlib.Path, metric: str = "reward"
) -> pathlib.Path:
    """One line per label (mean of its seeds' workdirs, band = min..max) of `metric` by update."""
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(6, 4))
    for label, workdirs in runs.items():
        curves = [[row[metric] for row in read_metrics(w)] for w in workdirs]
        length = min(len(c) for c in curves)
        values = np.array([c[:length] for c in curves])
        updates = np.arange(1, length + 1)
        axis.plot(updates, values.mean(0), label=f"{label} ({len(curves)} seeds)")
        axis.fill_between(updates, values.min(0), values.max(0), alpha=0.2)
    axis.set_xlabel("update")
    axis.set_ylabel(metric)
    axis.set_title(f"RLAE training {metric}")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def plot_weights_along_answers(
    token_texts: Sequence[Sequence[str]],
    span_weights: Sequence[np.ndarray],
    span_length: int,
    member_names: Sequence[str],
    prompts: Sequence[str],
    path: pathlib.Path,
) -> pathlib.Path:
    """Per example: each member's weight at every generated token (steps), tokens as labels."""
    plt = pyplot()
    figure, axes = plt.subplots(
        len(token_texts), 1, figsize=(8, 2.2 * len(token_texts)), squeeze=False
    )
    for axis, tokens, weights, prompt in zip(axes[:, 0], token_texts, span_weights, prompts):
        per_token = np.repeat(weights, span_length, axis=0)[: len(tokens)]
        steps = np.arange(len(tokens))
        for member, name in enumerate(member_names):
            axis.step(steps, per_token[:, member], where="mid", label=name)
        axis.set_ylim(-0.05, 1.05)
        axis.set_xticks(steps)
        axis.set_xticklabels([repr(t)[1:-1] for t in tokens], fontsize=8)
        axis.set_title(f"{prompt!r}", fontsize=9)
        axis.set_ylabel("weight")
    axes[0, 0].legend(loc="upper right", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def plot_learning_curves(
    runs: dict[str, Sequence[str | pathlib.Path]],
    families: Sequence[str],
    members: Sequence[str],
    path: pathlib.Path,
) -> pathlib.Path:
    """One row per learner (its seeds' mean, band = min..max): reward and policy entropy by update,
    then per member its mean weight on each family's rows (`family_weight_mean [F, N]`; an update
    whose batch held none of a family is a gap)."""
    plt = pyplot()
    columns = 2 + len(members)
    figure, axes = plt.subplots(
        len(runs), columns, figsize=(3.2 * columns, 2.6 * len(runs)), squeeze=False
    )
    for row, (label, workdirs) in zip(axes, runs.items()):
        metrics = [read_metrics(w) for w in workdirs]
        length = min(len(m) for m in metrics)
        updates = np.arange(1, length + 1)

        def band(axis, values, name):
            values = np.array(values, np.float64)[:, :length]
            axis.plot(updates, np.nanmean(values, 0), label=name)
            axis.fill_between(updates, np.nanmin(values, 0), np.nanmax(values, 0), alpha=0.2)

        for axis, metric in zip(row, ("reward", "entropy")):
            band(axis, [[r[metric] for r in m] for m in metrics], label)
            axis.set_title(f"{label}: {metric}", fontsize=9)
        for n, (axis, member) in enumerate(zip(row[2:], members)):
            for f, family in enumerate(families):
                per_seed = [
                    [
                        np.nan if r["family_rows"][f] == 0 else r["family_weight_mean"][f][n]
                        for r in m
                    ]
                    for m in metrics
                ]
                band(axis, per_seed, family)
            axis.set_ylim(-0.05, 1.05)
            axis.set_title(f"{label}: weight of {member}", fontsize=9)
            axis.legend(fontsize=7)
        for axis in row:
            axis.set_xlabel("update", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
