"""A pure-JAX PPO / MAPPO learner: `update(train_state, transitions) -> (train_state, metrics)`.

The agent type decides observation and action shapes (see `networks`); everything here works on
pytrees with leading `[T, B]` (rollout) or `[M]` (minibatch) axes. A rollout feeds the agent
`normalize(train_state.input_stats(), obs)` and stores the raw `obs` in its Transitions. The update
is jittable and vmappable over seeds.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax
from flax import nnx

from rlae_jax.rl.gae import generalized_advantages, group_advantages
from rlae_jax.rl.losses import (
    LossConfig,
    explained_variance,
    masked_mean,
    masked_std,
    normalize_advantages,
    ppo_loss,
)
from rlae_jax.rl.normalization import RunningStats, init_stats, normalize, update_stats


ADVANTAGES = ("gae", "group")
LR_SCHEDULES = ("constant", "cosine")


@dataclasses.dataclass(frozen=True)
class PPOConfig:
    """Learner hyper-parameters.

    `advantage`: "gae" (GAE(gamma, gae_lambda) with the critic) or "group" (each row's return minus
    the mean of its question's `group_size` rows, divided by their std when `group_std`; see
    `gae.group_advantages`); the critic learns under both and its explained variance is reported.
    `normalize_advantages` rescales them over the whole batch's valid spans (minibatches of a few
    spans give noisy scales). `normalize_observations` feeds the agent running-normalised
    observations (`TrainState.obs_stats`).
    `lr_schedule`: "constant", or "cosine": linear warm-up over `lr_warmup_updates` from
    `lr_floor` x `learning_rate`, then a cosine to `lr_floor` x `learning_rate` at `total_updates`,
    held there after it; the rate never reaches 0 (`lr_floor` > 0)."""

    gamma: float = 0.99
    gae_lambda: float = 0.95
    advantage: str = "gae"
    group_size: int = 1
    group_std: bool = False
    normalize_advantages: bool = True
    normalize_observations: bool = True
    num_epochs: int = 4
    num_minibatches: int = 4
    learning_rate: float = 3e-4
    lr_schedule: str = "constant"
    lr_warmup_updates: int = 0
    lr_floor: float = 0.1
    total_updates: int = 0
    max_grad_norm: float = 0.5
    loss: LossConfig = LossConfig()

    def __post_init__(self):
        if self.advantage not in ADVANTAGES:
            raise ValueError(
                f"unknown advantage {self.advantage!r}; known: {', '.join(ADVANTAGES)}"
            )
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(
                f"unknown lr_schedule {self.lr_schedule!r}; known: {', '.join(LR_SCHEDULES)}"
            )
        if self.learning_rate <= 0 or not 0 < self.lr_floor <= 1:
            raise ValueError(
                f"learning_rate must be > 0 and lr_floor in (0, 1], got {self.learning_rate} and "
                f"{self.lr_floor}"
            )
        if self.lr_schedule == "cosine" and self.total_updates <= self.lr_warmup_updates:
            raise ValueError(
                f"the cosine schedule needs total_updates ({self.total_updates}) > "
                f"lr_warmup_updates ({self.lr_warmup_updates})"
            )
        if self.group_size < 1:
            raise ValueError(f"group_size must be >= 1, got {self.group_size}")

    @property
    def steps_per_update(self) -> int:
        return self.num_epochs * self.num_minibatches

    def learning_rate_schedule(self) -> optax.Schedule:
        """Learning rate as a function of the optimiser step (one per minibatch)."""
        if self.lr_schedule == "constant":
            return optax.constant_schedule(self.learning_rate)
        floor = self.learning_rate * self.lr_floor
        return optax.warmup_cosine_decay_schedule(
            init_value=floor,
            peak_value=self.learning_rate,
            warmup_steps=self.lr_warmup_updates * self.steps_per_update,
            decay_steps=self.total_updates * self.steps_per_update,
            end_value=floor,
        )

    @functools.cache
    def optimizer(self) -> optax.GradientTransformation:
        """clip_by_global_norm then Adam with the learning-rate schedule. One object per (equal)
        config: a TrainState holds it as a static field, so a new object would make every jitted
        step that takes the state compile again."""
        return optax.chain(
            optax.clip_by_global_norm(self.max_grad_norm),
            optax.adam(self.learning_rate_schedule(), eps=1e-5),
        )


@flax.struct.dataclass
class Transitions:
    """One batch of episodes, `[T, B]` spans × episodes (T = static maximum, padded).

    obs: agent observation pytree with leading `[T, B]` (`[T, B, F]` for PPO, `MultiAgentObs` for
    MAPPO)
    span_index: `[T, B]` int32
    actions: `[T, B, N]` (PPO: weights on the simplex; MAPPO: per-agent log-Gamma actions y,
        weights = softmax(y); see `networks`)
    log_probs: behaviour log-probs `[T, B]` (PPO) or `[T, B, N]` (MAPPO)
    values: `[T, B]`; rewards: `[T, B]`
    dones: `[T, B]` 1 at the last span of an episode; valid: `[T, B]` 0 on padded spans.
    Episodes end within T (bootstrap value 0).
    """

    obs: Any
    span_index: jax.Array
    actions: jax.Array
    log_probs: jax.Array
    values: jax.Array
    rewards: jax.Array
    dones: jax.Array
    valid: jax.Array


@flax.struct.dataclass
class TrainState:
    """Agent `(graphdef, params)`, optimiser state, RNG key, update count, the running statistics
    of the agent's observations (`normalization.RunningStats`); `tx`, `config` static."""

    graphdef: nnx.GraphDef = flax.struct.field(pytree_node=False)
    params: nnx.State
    opt_state: optax.OptState
    key: jax.Array
    update_count: jax.Array
    obs_stats: RunningStats
    tx: optax.GradientTransformation = flax.struct.field(pytree_node=False)
    config: PPOConfig = flax.struct.field(pytree_node=False)

    def input_stats(self) -> RunningStats | None:
        """The stats the agent's inputs are normalised with (None: they are not)."""
        return self.obs_stats if self.config.normalize_observations else None


def create_train_state(agent: nnx.Module, config: PPOConfig, key: jax.Array) -> TrainState:
    """Split `agent` into (graphdef, params) and initialise the optimiser and the stats."""
    graphdef, params = nnx.split(agent)
    tx = config.optimizer()
    return TrainState(
        graphdef=graphdef,
        params=params,
        opt_state=tx.init(params),
        key=key,
        update_count=jnp.zeros((), jnp.int32),
        obs_stats=init_stats(agent.zero_observation()),
        tx=tx,
        config=config,
    )


def all_finite(tree) -> jax.Array:
    """True when every leaf of `tree` is finite."""
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree.leaves(tree)]))


def advantages_and_returns(
    config: PPOConfig, transitions: Transitions
) -> tuple[jax.Array, jax.Array, dict[str, jax.Array]]:
    """The configured advantages `[T, B]` (normalised over the batch when configured), the
    critic's GAE value targets `[T, B]`, and both advantages' spreads and their correlation."""
    valid = transitions.valid
    gae, returns = generalized_advantages(
        transitions.rewards,
        transitions.values,
        transitions.dones,
        valid,
        jnp.zeros(transitions.rewards.shape[1:], transitions.values.dtype),
        config.gamma,
        config.gae_lambda,
    )
    group = group_advantages(transitions.rewards, valid, config.group_size, config.group_std)
    covariance = masked_mean(
        (gae - masked_mean(gae, valid)) * (group - masked_mean(group, valid)), valid
    )
    spreads = masked_std(gae, valid), masked_std(group, valid)
    metrics = {
        "gae_advantage_std": spreads[0],
        "group_advantage_std": spreads[1],
        "advantage_correlation": covariance / jnp.maximum(spreads[0] * spreads[1], 1e-12),
        "explained_variance": explained_variance(transitions.values, returns, valid),
    }
    advantages = gae if config.advantage == "gae" else group
    if config.normalize_advantages:
        advantages = valid * normalize_advantages(advantages, valid)
    return advantages, returns, metrics


def minibatch_loss(train_state: TrainState, params: nnx.State, minibatch):
    """PPO loss of one minibatch `(Transitions with normalised obs, advantages, returns)` `[M]`."""
    steps, advantages, returns = minibatch
    agent = nnx.merge(train_state.graphdef, params)
    log_probs, entropy, values = agent.evaluate(steps.obs, steps.span_index, steps.actions)
    return ppo_loss(
        log_probs,
        steps.log_probs,
        advantages,
        values,
        steps.values,
        returns,
        entropy,
        steps.valid,
        train_state.config.loss,
    )


def minibatch_step(train_state: TrainState, inputs_finite: jax.Array, carry, minibatch):
    """One Adam step on `(params, opt_state)`; kept only when inputs, loss and gradients are
    finite."""
    params, opt_state = carry
    loss_fn = functools.partial(minibatch_loss, train_state)
    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, minibatch)
    updates, new_opt_state = train_state.tx.update(grads, opt_state, params)
    new_params = optax.apply_updates(params, updates)
    finite = inputs_finite & jnp.isfinite(loss) & all_finite(grads)
    keep_new = lambda new, old: jnp.where(finite, new, old)
    carry = (
        jax.tree.map(keep_new, new_params, params),
        jax.tree.map(keep_new, new_opt_state, opt_state),
    )
    return carry, {**metrics, "grad_norm": optax.tree.norm(grads), "skipped": ~finite}


def run_epochs(train_state: TrainState, samples, inputs_finite: jax.Array, key: jax.Array):
    """`num_epochs` shuffled passes of `num_minibatches` steps over `samples` (leaves `[T·B,
    ...]`) → (params, opt_state), per-step metrics `[epochs, minibatches]`."""
    config = train_state.config
    num_samples = jax.tree.leaves(samples)[0].shape[0]
    step = functools.partial(minibatch_step, train_state, inputs_finite)

    def epoch(carry, epoch_key):
        permutation = jax.random.permutation(epoch_key, num_samples)
        minibatches = jax.tree.map(
            lambda x: x[permutation].reshape(config.num_minibatches, -1, *x.shape[1:]), samples
        )
        return jax.lax.scan(step, carry, minibatches)

    return jax.lax.scan(
        epoch,
        (train_state.params, train_state.opt_state),
        jax.random.split(key, config.num_epochs),
    )


def update(
    train_state: TrainState, transitions: Transitions
) -> tuple[TrainState, dict[str, jax.Array]]:
    """Advantages, then `num_epochs` × `num_minibatches` clipped-PPO steps over the T·B flattened
    spans, the observations normalised with the stats of before this batch; then the batch's valid
    observations are merged into the stats.

    A minibatch step whose loss or gradients are non-finite is skipped (parameters and optimiser
    state kept), and every step is skipped when the advantages, returns or behaviour log-probs
    are (e.g. a NaN reward); `metrics['nonfinite']` is then True and
    `metrics['skipped_minibatches']` counts the skipped steps.
    Loss metrics are means over all minibatch steps; `learning_rate` is this update's first step's.
    """
    config = train_state.config
    num_samples = transitions.rewards.size
    if num_samples % config.num_minibatches:
        raise ValueError(
            f"T*B = {num_samples} is not divisible by num_minibatches = {config.num_minibatches}"
        )
    advantages, returns, metrics = advantages_and_returns(config, transitions)
    inputs_finite = all_finite((advantages, returns, transitions.log_probs))
    inputs = transitions.replace(obs=normalize(train_state.input_stats(), transitions.obs))
    samples = jax.tree.map(
        lambda x: x.reshape(num_samples, *x.shape[2:]), (inputs, advantages, returns)
    )
    key, epoch_key = jax.random.split(train_state.key)
    (params, opt_state), step_metrics = run_epochs(train_state, samples, inputs_finite, epoch_key)
    skipped = step_metrics.pop("skipped")
    metrics |= jax.tree.map(jnp.mean, step_metrics)
    metrics["skipped_minibatches"] = jnp.sum(skipped)
    metrics["nonfinite"] = jnp.any(skipped)
    metrics["learning_rate"] = config.learning_rate_schedule()(
        train_state.update_count * config.steps_per_update
    )
    new_state = train_state.replace(
        params=params,
        opt_state=opt_state,
        key=key,
        update_count=train_state.update_count + 1,
        obs_stats=update_stats(train_state.obs_stats, transitions.obs, transitions.valid),
    )
    return new_state, metrics


def raise_if_nonfinite(metrics: dict[str, Any], update_index: int) -> None:
    """Host-side check for a training loop: stop with a message naming the update."""
    if bool(metrics["nonfinite"]):
        raise FloatingPointError(
            f"update {update_index}: non-finite loss or gradients in "
            f"{int(metrics['skipped_minibatches'])} "
            "minibatch step(s); those steps were skipped (check rewards and observations for "
            "NaN/inf)"
        )
