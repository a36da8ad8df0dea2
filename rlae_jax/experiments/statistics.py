"""The study's intervals: a two-level percentile bootstrap over seeds, then problems.

A learner's score is a `[S, E]` array (seeds × problems): its variance has two sources, the
training seed and the problems drawn, and averaging over seeds first would hide the first. Each
resample draws S seeds with replacement and E problems with replacement (the same problems for every
seed, so paired differences stay paired) and takes the mean. A deterministic strategy is a `[1, E]`
array; for it the bootstrap is the ordinary one over problems.
"""

from __future__ import annotations

import numpy as np

CONFIDENCE = 95.0


def as_seeds_by_problems(scores) -> np.ndarray:
    """`scores` as float64 `[S, E]` (a 1-D `[E]` is one seed); ValueError when empty."""
    array = np.asarray(scores, np.float64)
    array = array[None] if array.ndim == 1 else array
    if array.ndim != 2 or 0 in array.shape:
        raise ValueError(f"scores must be [seeds, problems] with both > 0, got {array.shape}")
    return array


def two_level_bootstrap(scores, resamples: int, seed: int = 0) -> tuple[float, float]:
    """95% percentile interval of the mean of `scores [S, E]` (or `[E]`), resampling seeds and then
    problems with replacement."""
    scores = as_seeds_by_problems(scores)
    seeds, problems = scores.shape
    rng = np.random.default_rng(seed)
    seed_draws = rng.integers(0, seeds, (resamples, seeds))
    problem_draws = rng.integers(0, problems, (resamples, problems))
    seed_means = scores[seed_draws].mean(axis=1)  # [R, E]: each resample's seeds, averaged
    means = np.take_along_axis(seed_means, problem_draws, axis=1).mean(axis=1)
    tail = (100.0 - CONFIDENCE) / 2
    low, high = np.percentile(means, [tail, 100.0 - tail])
    return float(low), float(high)


def paired_difference(learner, baseline) -> np.ndarray:
    """`[S, E]` a learner's per-seed scores minus the baseline's per-problem score (its mean over
    its own seeds): the array whose two-level bootstrap is the difference's interval."""
    learner, baseline = as_seeds_by_problems(learner), as_seeds_by_problems(baseline)
    if learner.shape[1] != baseline.shape[1]:
        raise ValueError(
            f"paired scores need the same problems: {learner.shape[1]} vs {baseline.shape[1]}"
        )
    return learner - baseline.mean(axis=0, keepdims=True)


def summary(scores, resamples: int, seed: int = 0) -> dict:
    """{"mean", "interval", "per_seed"} of `scores [S, E]`."""
    scores = as_seeds_by_problems(scores)
    return {
        "mean": float(scores.mean()),
        "interval": two_level_bootstrap(scores, resamples, seed),
        "per_seed": scores.mean(axis=1).tolist(),
    }
