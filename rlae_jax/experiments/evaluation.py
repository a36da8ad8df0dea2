"""Evaluate ensemble strategies — single members, fixed weights, GaC threshold, UniTE top-k, PackLLM
and trained RLAE agents — on one task split with the same engine, and write results a person can
read."""

from __future__ import annotations

import dataclasses
import json
import pathlib
import time
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from rlae_jax.engine import DecodeConfig, PromptBatch, to_host
from rlae_jax.engine.prefix import EncodedPrompts
from rlae_jax.engine.loop import (
    DecodeContext,
    prefill_jit,
    reads_prompt_nll,
    restart_jit,
    run_growing,
)
from rlae_jax.engine.room import room_ladder
from rlae_jax.engine.state import Sampling
from rlae_jax.ensemble import Ensemble
from rlae_jax.engine.strategies import FixedWeights, check_weight_fn, resolve_strategy
from rlae_jax.models.member import Member
from rlae_jax.tasks.base import accuracy_of


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


@dataclasses.dataclass
class Answers:
    """One strategy's answers as the batches come: texts, span weights, union ids, tokens made and
    each batch's seconds per row."""

    texts: list = dataclasses.field(default_factory=list)
    span_weights: list = dataclasses.field(default_factory=list)
    union_ids: list = dataclasses.field(default_factory=list)
    tokens: int = 0
    seconds_per_row: list = dataclasses.field(default_factory=list)

    def add(self, output, rows: int, seconds: float, batch_size: int) -> None:
        self.texts += output.texts[:rows]
        self.span_weights += output.span_weights[:rows]
        self.union_ids += output.union_ids[:rows]
        self.tokens += int(np.asarray(output.result.lengths)[:rows].sum())
        self.seconds_per_row.append(seconds / batch_size)

    def result(self, name: str, task, examples: Sequence) -> StrategyResult:
        scores = np.array([accuracy_of(task, t, e) for t, e in zip(self.texts, examples)])
        seconds = float(np.median(self.seconds_per_row))
        return StrategyResult(
            name=name,
            accuracy=float(scores.mean()),
            reward=float(np.mean(task.rewards(self.texts, examples))),
            tokens_per_second=self.tokens / len(examples) / seconds,
            texts=self.texts,
            span_weights=self.span_weights,
            union_ids=self.union_ids,
            scores=scores.astype(np.float32),
            seconds_per_answer=seconds,
        )


def run_strategies(
    strategies: Mapping[str, tuple[Any, DecodeConfig]],
    ensemble: Ensemble,
    task,
    examples: Sequence,
    batch_size: int = 64,
    shots: Sequence = (),
    *,
    encoded: EncodedPrompts | None = None,
    shared_prefix: bool = True,
    progress: bool = True,
) -> dict[str, StrategyResult]:
    """Every strategy (name → (weight_fn, DecodeConfig), one `max_new_tokens`) answers every
    example, greedily; scored by the task. `encoded`: the examples already encoded by
    `ensemble.encode` (each member in its own format after the shots), else they are encoded here;
    with `shared_prefix`, the tokens every prompt shares are prefilled once. A batch of
    `batch_size` rows (the last filled with repeats of its final example, dropped) is prefilled
    once and every strategy decodes from that prefill (`restart`), growing caches as needed. A
    strategy's seconds_per_answer is the median over batches of (prefill + its decode) per row,
    which leaves out a batch that compiled when there are three or more."""
    check_strategies(strategies)
    (_, config), *_ = strategies.values()
    if encoded is None:
        encoded = ensemble.encode(
            task, examples, shots, config.max_new_tokens, shared_prefix=shared_prefix
        )
    encoded.check_count(len(examples))
    answers = {name: Answers() for name in strategies}
    starts = range(0, len(examples), batch_size)
    for start in tqdm(
        starts, desc=f"evaluating {len(strategies)} strategies", disable=not progress
    ):
        rows = min(batch_size, len(examples) - start)
        indices = list(range(start, start + rows)) + [start + rows - 1] * (batch_size - rows)
        prompts = ensemble.batch(encoded, indices)
        for name, (result, seconds) in decode_strategies(strategies, ensemble, prompts).items():
            config_n = strategies[name][1]
            answers[name].add(
                to_host(result, ensemble.alignment, config_n), rows, seconds, batch_size
            )
    return {name: a.result(name, task, examples) for name, a in answers.items()}


def check_strategies(strategies: Mapping[str, tuple[Any, DecodeConfig]]) -> None:
    """One-line errors for a strategy that is not (weight_fn, DecodeConfig) or whose
    `max_new_tokens` differs from the others'."""
    for name, value in strategies.items():
        if not (isinstance(value, tuple) and len(value) == 2):
            raise TypeError(f"strategy {name!r}: give (weight_fn, DecodeConfig), got {value!r:.80}")
        check_weight_fn(value[0], f"strategy {name!r}")
        if not isinstance(value[1], DecodeConfig):
            raise TypeError(
                f"strategy {name!r}: its second item must be a DecodeConfig, got "
                f"{type(value[1]).__name__}"
            )
    if len({c.max_new_tokens for _, c in strategies.values()}) > 1:
        raise ValueError("run_strategies: every strategy needs the same max_new_tokens")


def decode_strategies(strategies, ensemble, prompts: PromptBatch) -> dict[str, tuple[Any, float]]:
    """One prefill of `prompts`, then every strategy decodes from it → name → (DecodeResult,
    seconds of the prefill plus its decode)."""
    (_, config), *_ = strategies.values()
    count = len(ensemble.members)
    uniform = FixedWeights(jnp.full((count,), 1.0 / count, jnp.float32))
    with_nll = any(reads_prompt_nll(weight_fn) for weight_fn, _ in strategies.values())
    sampling = Sampling(jax.random.key(0), jnp.float32(0), jnp.float32(1))
    ladder = room_ladder(ensemble, prompts, config)
    began = time.perf_counter()
    context, state = jax.block_until_ready(
        prefill_jit(
            DecodeContext.start(ensemble, uniform, sampling, config),
            prompts,
            lengths=ladder[0],
            with_prompt_nll=with_nll,
        )
    )
    prefill_seconds = time.perf_counter() - began
    decoded = {}
    for name, (weight_fn, config_n) in strategies.items():
        began = time.perf_counter()
        ready = restart_jit(context, state, weight_fn, config=config_n)
        result = jax.block_until_ready(run_growing(*ready, prompts, ladder))
        decoded[name] = (result, prefill_seconds + time.perf_counter() - began)
    return decoded


def run_strategy(
    name: str,
    ensemble: Ensemble,
    task,
    examples: Sequence,
    weight_fn,
    config: DecodeConfig,
    batch_size: int = 64,
    shots: Sequence = (),
) -> StrategyResult:
    """`run_strategies` with one strategy."""
    strategies = {name: (weight_fn, config)}
    return run_strategies(strategies, ensemble, task, examples, batch_size, shots)[name]


def baseline_strategies(
    members: Sequence[Member],
    threshold: float = 0.5,
    top_k: int = 4,
    fixed_grid: Sequence[float] = (0.25, 0.5, 0.75),
) -> dict[str, Any]:
    """Named baselines → weight_fn objects (each with its `selection`) for `run_strategy`."""
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
