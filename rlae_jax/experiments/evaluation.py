"""Evaluate ensemble strategies — single members, fixed weights, GaC threshold, UniTE top-k, PackLLM
and trained RLAE agents — on one task split with the same engine, and write results a person can
read."""

from __future__ import annotations

import dataclasses
import json
import pathlib
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from rlae_jax.align import Alignment
from rlae_jax.engine import DecodeConfig, decode_jit, to_host, tokenize_for_members
from rlae_jax.engine.strategies import resolve_strategy
from rlae_jax.models.member import Member
from rlae_jax.models.prompts import member_prompts


@dataclasses.dataclass
class StrategyResult:
    """One strategy's results on a split: per example `texts[i]`, `span_weights[i]` `[spans, N]`,
    `union_ids[i]` and `scores[i]` (0/1 accuracy, `[E]`)."""

    name: str
    accuracy: float
    reward: float
    tokens_per_second: float
    texts: list[str]
    span_weights: list[np.ndarray]
    union_ids: list[list[int]]
    scores: np.ndarray
    seconds_per_answer: float


def accuracy_of(task, completion: str, example) -> float:
    """Exact match for the synthetic task, else the task's (0/1) reward."""
    exact = getattr(task, "exact_match", None)
    return exact(completion, example) if exact else task.reward(completion, example)


def run_strategy(
    name: str,
    members: Sequence[Member],
    alignment: Alignment,
    task,
    examples: Sequence,
    weight_fn,
    config: DecodeConfig,
    batch_size: int = 64,
    warmup: bool = True,
    shots: Sequence = (),
) -> StrategyResult:
    """Generate every example's answer with `weight_fn` and score it. Each member reads the question
    in its own chat format (`member_prompts`, after the few-shot `shots`). Every batch has
    `batch_size` rows (the last is filled with repeats of its final example, whose answers are
    dropped), so one compiled decode serves the split. `warmup` first runs the first batch untimed
    (compiling), so tokens_per_second times generation only; seconds_per_answer is the median
    batch's time per row, which leaves out a batch that compiled when there are three or more."""
    texts, span_weights, union_ids, batch_seconds, tokens = [], [], [], [], 0
    key = jax.random.key(0)
    for start in range(0, len(examples), batch_size):
        chunk = list(examples[start : start + batch_size])
        real_rows = len(chunk)
        chunk += chunk[-1:] * (batch_size - real_rows)
        prompts = tokenize_for_members(
            members, member_prompts(members, task, chunk, shots), config.max_new_tokens
        )

        def call():
            return jax.block_until_ready(
                decode_jit(
                    members,
                    alignment,
                    prompts,
                    weight_fn,
                    key,
                    jnp.float32(0),
                    jnp.float32(1),
                    config=config,
                )
            )

        if start == 0 and warmup:  # compile outside the timing
            call()
        began = time.perf_counter()
        result = call()
        batch_seconds.append(time.perf_counter() - began)
        out = to_host(result, alignment, config)
        tokens += int(np.asarray(result.lengths)[:real_rows].sum())
        texts += out.texts[:real_rows]
        span_weights += out.span_weights[:real_rows]
        union_ids += out.union_ids[:real_rows]
    scores = np.array([accuracy_of(task, t, e) for t, e in zip(texts, examples)], np.float32)
    reward = float(np.mean(task.rewards(texts, examples)))
    return StrategyResult(
        name,
        float(scores.mean()),
        reward,
        tokens / max(sum(batch_seconds), 1e-9),
        texts,
        span_weights,
        union_ids,
        scores,
        float(np.median(batch_seconds)) / batch_size,
    )


def baseline_strategies(
    members: Sequence[Member],
    threshold: float = 0.5,
    top_k: int = 4,
    fixed_grid: Sequence[float] = (0.25, 0.5, 0.75),
) -> dict[str, Any]:
    """Named baselines → weight_fn objects (and their selection modes) for `run_strategy`."""
    n = len(members)
    specs = {f"single:{m.name or i}": ("single", dict(primary=i)) for i, m in enumerate(members)}
    specs["uniform (GaC)"] = ("uniform", {})
    if n == 2:
        for w in fixed_grid:
            if w != 0.5:
                specs[f"fixed [{w:.2f}, {1 - w:.2f}]"] = ("fixed", dict(weights=[w, 1 - w]))
    specs[f"threshold (GaC, τ={threshold}, primary 0)"] = (
        "threshold",
        dict(threshold=threshold, primary=0),
    )
    specs[f"top-{top_k} union (UniTE)"] = ("topk", dict(top_k=top_k))
    specs["PackLLM (prompt ppl)"] = ("packllm", {})
    return {name: resolve_strategy(kind, n, **kwargs) for name, (kind, kwargs) in specs.items()}


def write_report(results: dict[str, dict], folder: pathlib.Path, title: str) -> str:
    """Write results.json, results.md (accuracy mean ± std over seeds, reward, tokens/s) → table."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.json").write_text(json.dumps(results, indent=1))
    lines = [
        f"## {title}",
        "",
        "| strategy | accuracy (mean ± std) | reward | tokens/s | seeds |",
        "|---|---|---|---|---|",
    ]
    for name, row in results.items():
        lines.append(
            f"| {name} | {row['accuracy_mean']:.3f} ± {row['accuracy_std']:.3f} | "
            f"{row['reward_mean']:.3f} "
            f"| {row['tokens_per_second']:.0f} | {row['seeds']} |"
        )
    table = "\n".join(lines)
    (folder / "results.md").write_text(table + "\n")
    return table


def summarize(per_seed: Sequence[StrategyResult]) -> dict:
    """Mean ± std over seeds of one strategy's results."""
    accuracy = np.array([r.accuracy for r in per_seed])
    return {
        "accuracy_mean": float(accuracy.mean()),
        "accuracy_std": float(accuracy.std()),
        "reward_mean": float(np.mean([r.reward for r in per_seed])),
        "tokens_per_second": float(np.mean([r.tokens_per_second for r in per_seed])),
        "seeds": len(per_seed),
        "accuracy_per_seed": accuracy.tolist(),
    }
