"""Running observation normalisation: mean and variance of every observation entry, merged batch
by batch (Chan et al.'s parallel update), kept in the TrainState so it is saved with the agent.

The agent's raw observation mixes hidden states of hundreds of dimensions with probabilities in
[0, 1]; without rescaling the tanh torsos saturate on the first and ignore the second.
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp

VARIANCE_EPS = 1e-8
CLIP = 10.0  # normalised entries beyond ±CLIP standard deviations are clipped


@flax.struct.dataclass
class RunningStats:
    """`count` [] (valid observations merged so far), `mean` and `var` (population): pytrees shaped
    like one observation (PPO `[F]`; MAPPO `MultiAgentObs(state [F], agent_obs [N, F_a])`)."""

    count: jax.Array
    mean: Any
    var: Any


def init_stats(observation: Any) -> RunningStats:
    """Stats of no data for observations shaped like `observation` (one row, no batch axes):
    mean 0 and variance 1, so normalising with them leaves an observation as it is."""
    return RunningStats(
        count=jnp.zeros((), jnp.float32),
        mean=jax.tree.map(lambda x: jnp.zeros(x.shape, jnp.float32), observation),
        var=jax.tree.map(lambda x: jnp.ones(x.shape, jnp.float32), observation),
    )


def update_stats(stats: RunningStats, observations: Any, mask: jax.Array) -> RunningStats:
    """Merge the rows of `observations` (leaves `[*batch, ...]`) where `mask [*batch]` is 1.

    With n_a, mean_a, var_a so far and n_b, mean_b, var_b of the batch, n = n_a + n_b and
    d = mean_b - mean_a:  mean = mean_a + d n_b / n,  var = (n_a var_a + n_b var_b + d² n_a n_b / n)
    / n (the prior of no data weighs n_a = 0). An empty batch leaves the stats unchanged."""
    mask = mask.astype(jnp.float32)
    batch_axes = tuple(range(mask.ndim))
    n_a, n_b = stats.count, jnp.sum(mask)
    n = jnp.maximum(n_a + n_b, 1.0)

    def merge(mean_a, var_a, x):
        weights = jnp.reshape(mask, mask.shape + (1,) * (x.ndim - mask.ndim))
        mean_b = jnp.sum(x * weights, axis=batch_axes) / jnp.maximum(n_b, 1.0)
        var_b = jnp.sum(jnp.square(x - mean_b) * weights, axis=batch_axes) / jnp.maximum(n_b, 1.0)
        delta = mean_b - mean_a
        mean = mean_a + delta * n_b / n
        var = (n_a * var_a + n_b * var_b + jnp.square(delta) * n_a * n_b / n) / n
        return jnp.where(n_b > 0, mean, mean_a), jnp.where(n_b > 0, var, var_a)

    means, treedef = jax.tree.flatten(stats.mean)
    merged = [
        merge(mean_a, var_a, x.astype(jnp.float32))
        for mean_a, var_a, x in zip(
            means, treedef.flatten_up_to(stats.var), treedef.flatten_up_to(observations)
        )
    ]
    return RunningStats(
        count=n_a + n_b,
        mean=treedef.unflatten([mean for mean, _ in merged]),
        var=treedef.unflatten([var for _, var in merged]),
    )


def normalize(stats: RunningStats | None, observations: Any) -> Any:
    """clip((x - mean) / sqrt(var + 1e-8), ±CLIP) for observation leaves `[*batch, ...]`;
    `observations` unchanged when `stats` is None (normalisation switched off)."""
    if stats is None:
        return observations
    return jax.tree.map(
        lambda x, mean, var: jnp.clip(
            (x - mean) / jnp.sqrt(var + VARIANCE_EPS), -CLIP, CLIP
        ).astype(x.dtype),
        observations,
        stats.mean,
        stats.var,
    )
